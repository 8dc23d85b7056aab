//! Compiled chat templates: loading (built-in, `.jinja`, `tokenizer_config.json`) and rendering.

use std::path::Path;
use std::sync::OnceLock;

use minijinja::{Environment, ErrorKind, Value};
use serde_json::Map;

use crate::error::{Error, Result};
use crate::message::{Conversation, Message};
use crate::python;
use crate::shape::Probes;
use crate::spans::{self, Rendered};

/// Names and sources of the built-in templates.
pub const BUILTIN_TEMPLATES: [(&str, &str); 8] = [
    ("alpaca", include_str!("../templates/alpaca.jinja")),
    ("chatml", include_str!("../templates/chatml.jinja")),
    ("llama3", include_str!("../templates/llama3.jinja")),
    ("zephyr", include_str!("../templates/zephyr.jinja")),
    ("mistral", include_str!("../templates/mistral.jinja")),
    ("gemma", include_str!("../templates/gemma.jinja")),
    ("gemma3", include_str!("../templates/gemma3.jinja")),
    ("phi3", include_str!("../templates/phi3.jinja")),
];

/// The name under which the one template of a [`ChatTemplate`] is stored in its environment.
const TEMPLATE_NAME: &str = "chat_template";
/// The filter that `{% generation %}` blocks are rewritten into.
const GENERATION_FILTER: &str = "__temper_generation";
/// Prefix of the error detail of `raise_exception`, so it can be told apart from other errors.
const RAISED_PREFIX: &str = "raise_exception: ";

// Sentinels: Unicode noncharacters, which no text is supposed to contain. The renderer emits
// them in place of the BOS/EOS strings and around `{% generation %}` output, so that spans can be
// located exactly and then mapped onto the final text (see `spans`).
pub(crate) const BOS_SENTINEL: char = '\u{FDD0}';
pub(crate) const EOS_SENTINEL: char = '\u{FDD1}';
pub(crate) const GENERATION_START: char = '\u{FDD2}';
pub(crate) const GENERATION_END: char = '\u{FDD3}';
/// Stands in for a message's strings while their rendered positions are located (see
/// `shape`).
pub(crate) const CONTENT_SENTINEL: char = '\u{FDD4}';

/// The most instructions one render may run. Real chat templates use a few hundred per
/// message, so this renders conversations of tens of thousands of messages; a template that
/// loops without end (or over `range(100000)` twice) stops here with an error instead of
/// running for hours.
pub const RENDER_FUEL: u64 = 50_000_000;

/// The deepest nesting of macro calls and includes a render may reach.
pub const RENDER_RECURSION_LIMIT: usize = 200;

/// A Jinja environment configured as `transformers` configures its own:
/// `trim_blocks`, `lstrip_blocks`, loop controls, Python string/dict methods, Python printing,
/// its `tojson`, `raise_exception` and `strftime_now`; with a budget per render
/// ([`RENDER_FUEL`], [`RENDER_RECURSION_LIMIT`]).
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(RENDER_FUEL));
    env.set_recursion_limit(RENDER_RECURSION_LIMIT);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, _state, value| {
        out.write_str(&python::py_str(value))?;
        Ok(())
    });
    // jinja2: `none is iterable` is false; minijinja says true for none and undefined.
    env.add_test("iterable", |value: Value| {
        !matches!(
            value.kind(),
            minijinja::value::ValueKind::None | minijinja::value::ValueKind::Undefined
        ) && value.try_iter().is_ok()
    });
    env.add_filter("tojson", python::tojson);
    env.add_filter("string", |value: Value| python::py_str(&value));
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("{RAISED_PREFIX}{message}"),
            ))
        },
    );
    env.add_function(
        "strftime_now",
        |state: &minijinja::State, format: String| python::strftime_now(state, &format),
    );
    env.add_filter(GENERATION_FILTER, |body: String| {
        format!("{GENERATION_START}{body}{GENERATION_END}")
    });
    env
}

/// A compiled chat template plus the special-token strings it is rendered with.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    name: String,
    source: String,
    env: Environment<'static>,
    has_generation_blocks: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Renders of conversation shapes, shared by clones (which render alike).
    probes: Probes,
}

/// Options of one render.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Append the header that starts an assistant turn (`apply_chat_template`'s flag).
    pub add_generation_prompt: bool,
    /// Extra template variables (`enable_thinking`, `date_string`, ...).
    pub extra: Map<String, serde_json::Value>,
}

impl ChatTemplate {
    /// Compiles template source. `name` is used in error messages.
    pub fn from_source(name: impl Into<String>, source: impl Into<String>) -> Result<ChatTemplate> {
        let name = name.into();
        let source = source.into();
        // jinja2 turns every newline of the template source ("\r\n", "\r") into "\n".
        let normalized = source.replace("\r\n", "\n").replace('\r', "\n");
        let (rewritten, has_generation_blocks) = rewrite_generation_blocks(&normalized);
        let mut env = environment();
        env.add_template_owned(TEMPLATE_NAME, rewritten)
            .map_err(|error| Error::Syntax {
                template: name.clone(),
                message: describe(&error),
            })?;
        Ok(ChatTemplate {
            name,
            source,
            env,
            has_generation_blocks,
            bos_token: None,
            eos_token: None,
            probes: Probes::default(),
        })
    }

    /// One of [`BUILTIN_TEMPLATES`], with the BOS/EOS strings of the models it comes from
    /// (a tokenizer's own tokens replace them in the data pipeline).
    pub fn builtin(name: &str) -> Result<ChatTemplate> {
        let (_, source) = BUILTIN_TEMPLATES
            .iter()
            .find(|(builtin, _)| *builtin == name)
            .ok_or_else(|| unknown_template(name))?;
        let (bos, eos) = match name {
            "llama3" => (Some("<|begin_of_text|>"), Some("<|eot_id|>")),
            "zephyr" | "mistral" => (Some("<s>"), Some("</s>")),
            "gemma" | "gemma3" => (Some("<bos>"), Some("<eos>")),
            "phi3" => (Some("<s>"), Some("<|endoftext|>")),
            "chatml" => (None, Some("<|im_end|>")),
            _ => (None, None),
        };
        Ok(ChatTemplate::from_source(name, *source)?
            .with_special_tokens(bos.map(str::to_owned), eos.map(str::to_owned)))
    }

    /// A built-in name, a `.jinja` file, or a `tokenizer_config.json` (optionally
    /// `tokenizer_config.json#tool_use` to pick a named template from a list).
    pub fn load(spec: &str) -> Result<ChatTemplate> {
        if BUILTIN_TEMPLATES.iter().any(|(name, _)| *name == spec) {
            return ChatTemplate::builtin(spec);
        }
        let (path, selector) = match spec.rsplit_once('#') {
            Some((path, selector)) if path.ends_with(".json") => (path, Some(selector)),
            _ => (spec, None),
        };
        let path = Path::new(path);
        if !path.is_file() {
            return Err(unknown_template(spec));
        }
        if path.extension().is_some_and(|ext| ext == "json") {
            return ChatTemplate::from_tokenizer_config(path, selector);
        }
        let source = std::fs::read_to_string(path).map_err(|error| Error::Io {
            path: path.to_owned(),
            error,
        })?;
        ChatTemplate::from_source(path.display().to_string(), source)
    }

    /// Reads `chat_template` (a string, or a list of `{"name", "template"}`) and the BOS/EOS
    /// tokens from a Hugging Face `tokenizer_config.json`. With a list, `selector` picks a
    /// name; without one the template named `default` is used.
    pub fn from_tokenizer_config(path: &Path, selector: Option<&str>) -> Result<ChatTemplate> {
        Self::read_tokenizer_config(path, selector)?.ok_or_else(|| Error::TokenizerConfig {
            path: path.to_owned(),
            message: "has no `chat_template` key".to_owned(),
        })
    }

    /// [`ChatTemplate::from_tokenizer_config`] for a file that may be absent or carry no
    /// `chat_template` (many tokenizers have none): `None` then. A file that is there but
    /// unreadable or malformed is still an error.
    pub fn from_tokenizer_config_if_any(path: &Path) -> Result<Option<ChatTemplate>> {
        if !path.is_file() {
            return Ok(None);
        }
        Self::read_tokenizer_config(path, None)
    }

    fn read_tokenizer_config(path: &Path, selector: Option<&str>) -> Result<Option<ChatTemplate>> {
        let config_error = |message: String| Error::TokenizerConfig {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|error| Error::Io {
            path: path.to_owned(),
            error,
        })?;
        let config: serde_json::Value = serde_json::from_str(&text).map_err(|error| {
            config_error(format!("line {}: invalid JSON: {error}", error.line()))
        })?;
        let source = match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(source)) => {
                if let Some(selector) = selector {
                    return Err(config_error(format!(
                        "`chat_template` is a single template, so it has no template named `{selector}`"
                    )));
                }
                source.clone()
            }
            Some(serde_json::Value::Array(named)) => {
                let wanted = selector.unwrap_or("default");
                let mut names = Vec::new();
                let mut found = None;
                for (index, entry) in named.iter().enumerate() {
                    let name = entry.get("name").and_then(|v| v.as_str());
                    let template = entry.get("template").and_then(|v| v.as_str());
                    let (Some(name), Some(template)) = (name, template) else {
                        return Err(config_error(format!(
                            "`chat_template[{index}]` must be an object with string keys `name` and `template`"
                        )));
                    };
                    names.push(name.to_owned());
                    if name == wanted {
                        found = Some(template.to_owned());
                    }
                }
                found.ok_or_else(|| {
                    config_error(format!(
                        "no chat template named `{wanted}`; it has: {}",
                        names.join(", ")
                    ))
                })?
            }
            Some(other) => {
                return Err(config_error(format!(
                    "`chat_template` must be a string or a list of named templates, found {}",
                    crate::message::json_kind(other)
                )));
            }
        };
        let name = match selector {
            Some(selector) => format!("{}#{selector}", path.display()),
            None => path.display().to_string(),
        };
        let mut template = ChatTemplate::from_source(name, source)?;
        template.bos_token = special_token(&config, "bos_token");
        template.eos_token = special_token(&config, "eos_token");
        Ok(Some(template))
    }

    /// Sets the strings passed as `bos_token` and `eos_token`.
    pub fn with_special_tokens(
        mut self,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Self {
        self.bos_token = bos_token;
        self.eos_token = eos_token;
        // Other special tokens render other text.
        self.probes = Probes::default();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn probes(&self) -> &Probes {
        &self.probes
    }

    /// The template source as it was given (before `{% generation %}` is rewritten).
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Whether the template marks assistant output with `{% generation %}` blocks.
    pub fn has_generation_blocks(&self) -> bool {
        self.has_generation_blocks
    }

    /// Renders the conversation to text, exactly as `apply_chat_template(tokenize=False)`.
    pub fn render_text(
        &self,
        conversation: &Conversation,
        options: &RenderOptions,
    ) -> Result<String> {
        let messages: Vec<Value> = template_json(&conversation.messages)?
            .iter()
            .map(Value::from_serialize)
            .collect();
        let raw = self.render_raw(
            &messages,
            conversation,
            options.add_generation_prompt,
            options,
        )?;
        let clean = spans::strip_generation_marks(&raw);
        Ok(spans::finalize(&clean.text, self.bos_token(), self.eos_token()).0)
    }

    /// Renders the conversation and locates the bytes each message produced.
    /// See [`crate::spans`] for how, and [`Rendered`] for what comes back.
    pub fn render(
        &self,
        conversation: &Conversation,
        options: &RenderOptions,
        train_on: crate::TrainOn,
    ) -> Result<Rendered> {
        spans::render_with_spans(self, conversation, options, train_on, true)
    }

    /// Like [`ChatTemplate::render`], but spends renders only on the trained spans: the
    /// trained spans are the same, while consecutive untrained messages may come back as one
    /// span attributed to the last of them. What the data pipeline uses.
    pub fn render_for_training(
        &self,
        conversation: &Conversation,
        options: &RenderOptions,
        train_on: crate::TrainOn,
    ) -> Result<Rendered> {
        spans::render_with_spans(self, conversation, options, train_on, false)
    }

    /// Renders messages (already converted to template values) with sentinels in place of the
    /// special tokens and around generation blocks.
    pub(crate) fn render_raw(
        &self,
        messages: &[Value],
        conversation: &Conversation,
        add_generation_prompt: bool,
        options: &RenderOptions,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|error| Error::Render {
                template: self.name.clone(),
                message: describe(&error),
            })?;
        let mut context: Vec<(String, Value)> = Vec::with_capacity(8 + options.extra.len());
        for (key, value) in &options.extra {
            context.push((key.clone(), Value::from_serialize(value)));
        }
        context.push(("messages".to_owned(), Value::from(messages.to_vec())));
        context.push((
            "tools".to_owned(),
            match &conversation.tools {
                Some(tools) => Value::from_serialize(tools),
                None => Value::from(()),
            },
        ));
        context.push(("documents".to_owned(), Value::from(())));
        context.push((
            "add_generation_prompt".to_owned(),
            Value::from(add_generation_prompt),
        ));
        if self.bos_token.is_some() {
            context.push((
                "bos_token".to_owned(),
                Value::from(BOS_SENTINEL.to_string()),
            ));
        }
        if self.eos_token.is_some() {
            context.push((
                "eos_token".to_owned(),
                Value::from(EOS_SENTINEL.to_string()),
            ));
        }
        let context: Value = context.into_iter().collect();
        #[cfg(test)]
        RENDERS.with(|renders| renders.set(renders.get() + 1));
        let _rendering = crate::budget::Rendering::start(&self.name);
        template
            .render(context)
            .map_err(|error| self.render_error(&error))
    }

    fn render_error(&self, error: &minijinja::Error) -> Error {
        if let Some(message) = error
            .detail()
            .and_then(|detail| detail.strip_prefix(RAISED_PREFIX))
        {
            return Error::Raised {
                template: self.name.clone(),
                message: message.to_owned(),
            };
        }
        Error::Render {
            template: self.name.clone(),
            message: describe(error),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// How many renders this thread has run, for tests of what span location costs.
    pub(crate) static RENDERS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The messages as the JSON a template sees, after checking that no text contains a sentinel.
pub(crate) fn template_json(messages: &[Message]) -> Result<Vec<serde_json::Value>> {
    messages
        .iter()
        .enumerate()
        .map(|(index, message)| {
            let json = message.to_template_json();
            check_reserved(&json, index)?;
            Ok(json)
        })
        .collect()
}

fn check_reserved_text(text: &str, index: usize) -> Result<()> {
    // The reserved code points are U+FDD0..=U+FDD4, encoded as EF B7 90..=94.
    if !text.as_bytes().contains(&0xEF) {
        return Ok(());
    }
    match text.chars().find(|c| ('\u{FDD0}'..='\u{FDD4}').contains(c)) {
        Some(c) => Err(Error::ReservedCodePoint {
            index,
            code_point: c as u32,
        }),
        None => Ok(()),
    }
}

fn check_reserved(value: &serde_json::Value, index: usize) -> Result<()> {
    match value {
        serde_json::Value::String(text) => check_reserved_text(text, index),
        serde_json::Value::Array(items) => items
            .iter()
            .try_for_each(|item| check_reserved(item, index)),
        serde_json::Value::Object(object) => object
            .values()
            .try_for_each(|item| check_reserved(item, index)),
        _ => Ok(()),
    }
}

/// Rewrites `{% generation %}...{% endgeneration %}` (an extension tag of transformers) into a
/// filter block that wraps the output in sentinels. Both are block tags, so `trim_blocks`,
/// `lstrip_blocks` and `-` whitespace control behave the same.
fn rewrite_generation_blocks(source: &str) -> (String, bool) {
    static START: OnceLock<regex_lite::Regex> = OnceLock::new();
    static END: OnceLock<regex_lite::Regex> = OnceLock::new();
    let start = START.get_or_init(|| {
        regex_lite::Regex::new(r"\{%([-+]?)\s*generation\s*([-+]?)%\}").expect("valid regex")
    });
    let end = END.get_or_init(|| {
        regex_lite::Regex::new(r"\{%([-+]?)\s*endgeneration\s*([-+]?)%\}").expect("valid regex")
    });
    if !start.is_match(source) {
        return (source.to_owned(), false);
    }
    let rewritten = start.replace_all(
        source,
        format!("{{%${{1}} filter {GENERATION_FILTER} ${{2}}%}}").as_str(),
    );
    let rewritten = end.replace_all(&rewritten, "{%${1} endfilter ${2}%}");
    (rewritten.into_owned(), true)
}

/// A special token of a `tokenizer_config.json` (`bos_token`, `eos_token`, ...), written
/// there as a string or as an AddedToken object `{"content": ..}`.
pub fn special_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(token) => Some(token.clone()),
        serde_json::Value::Object(object) => object.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn unknown_template(name: &str) -> Error {
    Error::UnknownTemplate {
        name: name.to_owned(),
        builtins: BUILTIN_TEMPLATES
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A one-line description of a minijinja error, with the template line when known.
fn describe(error: &minijinja::Error) -> String {
    if error.kind() == ErrorKind::OutOfFuel {
        return format!(
            "the template ran more than {RENDER_FUEL} instructions for one render; it loops without end or over far too much"
        );
    }
    let mut message = match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    };
    if let Some(line) = error.line() {
        message.push_str(&format!(" (template line {line})"));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Conversation, Message};

    fn render_error(source: &str) -> String {
        let template =
            ChatTemplate::from_source("budget.jinja", source).unwrap_or_else(|e| panic!("{e}"));
        let conversation = Conversation::new(vec![Message::user("hi"), Message::assistant("yo")]);
        template
            .render_text(&conversation, &RenderOptions::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn templates_that_would_run_for_hours_stop_with_an_error_naming_them() {
        let endless =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let error = render_error(endless);
        assert!(error.contains("budget.jinja"), "{error}");
        assert!(
            error.contains("ran more than 50000000 instructions"),
            "{error}"
        );
        // A macro that calls itself twice per level: 2^30 calls.
        let doubling = "{% macro d(n) %}{% if n > 0 %}{{ d(n - 1) }}{{ d(n - 1) }}{% endif %}{% endmacro %}{{ d(30) }}";
        let error = render_error(doubling);
        assert!(error.contains("ran more than"), "{error}");
        // Unbounded recursion meets the recursion limit.
        let deep = "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}";
        let error = render_error(deep);
        assert!(
            error.contains("budget.jinja") && error.contains("recursion limit"),
            "{error}"
        );
    }
}
