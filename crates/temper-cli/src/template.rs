//! `temper template ...`

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;
use temper_chat::{BUILTIN_TEMPLATES, ChatTemplate, Conversation, RenderOptions, Span, TrainOn};

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Render a conversation and show which bytes each message produced.
    Render {
        /// A built-in name, a `.jinja` file, or a `tokenizer_config.json` (`FILE#name` picks
        /// one of a list of named templates).
        #[arg(long)]
        template: String,
        /// A JSON file: a `messages` array, or `{"messages": [...], "tools": [...]}`.
        #[arg(long)]
        messages: PathBuf,
        /// Append the header of an assistant turn.
        #[arg(long)]
        add_generation_prompt: bool,
        /// Print `{"text", "spans": [{"role", "message", "start", "end", "trained"}]}` (byte offsets).
        #[arg(long)]
        json: bool,
        /// Which messages are trained: assistant, all, last_assistant.
        #[arg(long, default_value = "assistant")]
        train_on: TrainOn,
        /// The `bos_token` the template sees (a tokenizer_config.json sets its own).
        #[arg(long)]
        bos_token: Option<String>,
        /// The `eos_token` the template sees.
        #[arg(long)]
        eos_token: Option<String>,
        /// Extra template variables, `KEY=JSON` (e.g. `enable_thinking=false`).
        #[arg(long = "var", value_parser = crate::key_value)]
        vars: Vec<(String, String)>,
    },
    /// List the built-in templates.
    List,
}

#[derive(Debug, Serialize)]
struct RenderedJson<'a> {
    text: &'a str,
    spans: Vec<SpanJson<'a>>,
}

#[derive(Debug, Serialize)]
struct SpanJson<'a> {
    role: &'a str,
    message: usize,
    start: usize,
    end: usize,
    trained: bool,
}

pub fn run(command: TemplateCommand) -> Result<()> {
    match command {
        TemplateCommand::List => {
            for (name, source) in BUILTIN_TEMPLATES {
                println!("{name:8} {} bytes", source.len());
            }
            Ok(())
        }
        TemplateCommand::Render {
            template,
            messages,
            add_generation_prompt,
            json,
            train_on,
            bos_token,
            eos_token,
            vars,
        } => {
            let mut template = ChatTemplate::load(&template)?;
            if bos_token.is_some() || eos_token.is_some() {
                let bos = bos_token.or_else(|| template.bos_token().map(str::to_owned));
                let eos = eos_token.or_else(|| template.eos_token().map(str::to_owned));
                template = template.with_special_tokens(bos, eos);
            }
            let text = std::fs::read_to_string(&messages)
                .with_context(|| format!("cannot read {}", messages.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text).map_err(|error| {
                let message = error.to_string();
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                anyhow::anyhow!(
                    "{}:{}: invalid JSON: {message} (column {})",
                    messages.display(),
                    error.line(),
                    error.column()
                )
            })?;
            let conversation = Conversation::from_json(&value, &messages.display().to_string())?;
            let mut options = RenderOptions {
                add_generation_prompt,
                ..Default::default()
            };
            for (key, raw) in vars {
                let value = serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw));
                options.extra.insert(key, value);
            }
            let rendered = template.render(&conversation, &options, train_on)?;
            if json {
                let spans = rendered.spans.iter().map(span_json).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&RenderedJson {
                        text: &rendered.text,
                        spans
                    })?
                );
            } else {
                if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    eprintln!("(trained text is between [[ and ]])");
                }
                print!(
                    "{}",
                    crate::data::highlight(
                        &rendered.text,
                        &rendered
                            .spans
                            .iter()
                            .filter(|s| s.trained)
                            .map(|s| s.start..s.end)
                            .collect::<Vec<_>>()
                    )
                );
                println!();
            }
            Ok(())
        }
    }
}

fn span_json(span: &Span) -> SpanJson<'_> {
    SpanJson {
        role: span.role.as_str(),
        message: span.message,
        start: span.start,
        end: span.end,
        trained: span.trained,
    }
}
