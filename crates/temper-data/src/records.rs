//! Reading dataset records in the alpaca, `messages`, ShareGPT, prompt/completion or
//! plain-text format, detected per file or given explicitly, from any file format
//! [`crate::formats`] reads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use temper_chat::{Conversation, Message, Role, json_kind};

use crate::error::{Error, Location, Problem, Result};
use crate::formats::record_error;

/// The shape of the records of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"instruction", "input", "output", "system"?}`.
    Alpaca,
    /// `{"messages": [{"role", "content"}, ...], "tools"?}` (OpenAI / TRL conversational).
    Messages,
    /// `{"conversations": [{"from", "value"}, ...]}`.
    Sharegpt,
    /// `{"prompt", "completion"}`, both strings or both message lists.
    PromptCompletion,
    /// `{"text"}`: every token is trained.
    Text,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Alpaca,
        Format::Messages,
        Format::Sharegpt,
        Format::PromptCompletion,
        Format::Text,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Alpaca => "alpaca",
            Format::Messages => "messages",
            Format::Sharegpt => "sharegpt",
            Format::PromptCompletion => "prompt_completion",
            Format::Text => "text",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown format `{s}`: expected one of alpaca, messages, sharegpt, prompt_completion, text"))
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON key names of each field, for datasets that name them differently
/// (`--field instruction=question`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldNames {
    pub instruction: String,
    pub input: String,
    pub output: String,
    pub system: String,
    pub messages: String,
    pub role: String,
    pub content: String,
    pub conversations: String,
    pub from: String,
    pub value: String,
    pub prompt: String,
    pub completion: String,
    pub text: String,
}

impl Default for FieldNames {
    fn default() -> Self {
        FieldNames {
            instruction: "instruction".into(),
            input: "input".into(),
            output: "output".into(),
            system: "system".into(),
            messages: "messages".into(),
            role: "role".into(),
            content: "content".into(),
            conversations: "conversations".into(),
            from: "from".into(),
            value: "value".into(),
            prompt: "prompt".into(),
            completion: "completion".into(),
            text: "text".into(),
        }
    }
}

impl FieldNames {
    /// Applies one `field=json_key` mapping.
    pub fn set(&mut self, field: &str, key: &str) -> Result<()> {
        let slot = match field {
            "instruction" => &mut self.instruction,
            "input" => &mut self.input,
            "output" => &mut self.output,
            "system" => &mut self.system,
            "messages" => &mut self.messages,
            "role" => &mut self.role,
            "content" => &mut self.content,
            "conversations" => &mut self.conversations,
            "from" => &mut self.from,
            "value" => &mut self.value,
            "prompt" => &mut self.prompt,
            "completion" => &mut self.completion,
            "text" => &mut self.text,
            other => {
                return Err(Error::Config {
                    key: format!("fields.{other}"),
                    message: "unknown field: expected one of instruction, input, output, system, messages, role, content, conversations, from, value, prompt, completion, text".into(),
                });
            }
        };
        *slot = key.to_owned();
        Ok(())
    }
}

/// What to do with a record that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop with the record's `FILE:LINE:` (or `FILE:row ROW:`) message.
    #[default]
    Fail,
    /// Skip it and count it by reason.
    Skip,
}

/// One usable training example before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// Rendered with a chat template.
    Chat(Conversation),
    /// A plain prompt and completion: the completion (and EOS) is trained.
    Completion { prompt: String, completion: String },
    /// Plain text: all of it (and EOS) is trained.
    Text(String),
}

/// A sample and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The record's file, and the line of its first character or its row.
    pub at: Location,
    pub format: Format,
    pub sample: Sample,
}

/// The records of one file and the ones that were skipped.
#[derive(Debug, Clone, Default)]
pub struct ReadOutcome {
    pub records: Vec<Record>,
    /// Records seen in the files, usable or not.
    pub read: usize,
    /// Skipped records by problem (only with [`OnError::Skip`]).
    pub skipped: BTreeMap<Problem, usize>,
    /// The first message of each kind of skip, so a report can show an example.
    pub first_skips: BTreeMap<Problem, String>,
}

impl ReadOutcome {
    /// How many records were skipped, for any reason.
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }

    /// Adds skip counts made elsewhere (first messages already here stay).
    pub(crate) fn add_skips(
        &mut self,
        skipped: &BTreeMap<Problem, usize>,
        first_skips: &BTreeMap<Problem, String>,
    ) {
        for (problem, count) in skipped {
            *self.skipped.entry(*problem).or_default() += count;
        }
        for (problem, first) in first_skips {
            self.first_skips
                .entry(*problem)
                .or_insert_with(|| first.clone());
        }
    }

    /// Counts a skipped record (or returns the error under [`OnError::Fail`]).
    pub fn skip_or_fail(&mut self, error: Error, on_error: OnError) -> Result<()> {
        match (on_error, error.problem()) {
            (OnError::Skip, Some(problem)) => {
                *self.skipped.entry(problem).or_default() += 1;
                self.first_skips
                    .entry(problem)
                    .or_insert_with(|| error.to_string());
                Ok(())
            }
            _ => Err(error),
        }
    }
}

/// How to read a file.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// `None` detects the format from the first record.
    pub format: Option<Format>,
    pub fields: FieldNames,
    pub on_error: OnError,
    /// Skip (and count) records with an empty response, whatever `on_error` says.
    pub drop_empty_outputs: bool,
    /// Where to count the bytes read from the file, for a progress bar.
    pub bytes_read: Option<Arc<AtomicU64>>,
}

/// Reads the records of one file of any format [`crate::formats`] reads.
pub fn read_file(path: &Path, options: &ReadOptions) -> Result<ReadOutcome> {
    let mut outcome = ReadOutcome::default();
    read_file_into(path, options, &mut outcome)?;
    Ok(outcome)
}

/// Reads the records of one file into `outcome`; the format is detected per file.
pub(crate) fn read_file_into(
    path: &Path,
    options: &ReadOptions,
    outcome: &mut ReadOutcome,
) -> Result<()> {
    read_file_each(path, options, outcome, &mut |record, outcome| {
        outcome.records.push(record);
        Ok(())
    })
}

/// Reads the records of one file, handing each usable one to `each` as it is read and
/// counting (or failing on) the others in `outcome`; the format is detected per file.
pub(crate) fn read_file_each(
    path: &Path,
    options: &ReadOptions,
    outcome: &mut ReadOutcome,
    each: &mut dyn FnMut(Record, &mut ReadOutcome) -> Result<()>,
) -> Result<()> {
    let file: Arc<Path> = Arc::from(path);
    let mut format = options.format;
    let read_before = outcome.read;
    for item in crate::formats::open(&file, options.bytes_read.clone())? {
        outcome.read += 1;
        match parse_item(item, &file, &mut format, options) {
            Ok(record) => each(record, outcome)?,
            Err(error) => {
                let on_error = match error.problem() {
                    Some(Problem::EmptyResponse) if options.drop_empty_outputs => OnError::Skip,
                    _ => options.on_error,
                };
                outcome.skip_or_fail(error, on_error)?;
            }
        }
    }
    if outcome.read == read_before {
        return Err(Error::File {
            path: path.to_owned(),
            message: "contains no records".into(),
        });
    }
    Ok(())
}

/// The first usable record of a file (its records share its format), if it has one.
pub(crate) fn first_record(path: &Path, options: &ReadOptions) -> Result<Option<Record>> {
    let file: Arc<Path> = Arc::from(path);
    let mut format = options.format;
    for item in crate::formats::open(&file, None)? {
        match parse_item(item, &file, &mut format, options) {
            Ok(record) => return Ok(Some(record)),
            // A bad record is reported when the file is read; a broken file stops here.
            Err(error) if error.problem().is_some() => {}
            Err(error) => return Err(error),
        }
    }
    Ok(None)
}

/// A record from a file's raw item, detecting the file's `format` from its first record.
fn parse_item(
    item: crate::formats::RawRecord,
    file: &Arc<Path>,
    format: &mut Option<Format>,
    options: &ReadOptions,
) -> Result<Record> {
    let (position, value) = item?;
    let at = Location::new(file, position);
    let format = match *format {
        Some(format) => format,
        None => *format.insert(detect_format(&at, &value, &options.fields)?),
    };
    let sample = parse_record(&at, &value, format, &options.fields)?;
    Ok(Record { at, format, sample })
}

/// The format of a file, from the keys of its first record.
pub fn detect_format(at: &Location, value: &Value, fields: &FieldNames) -> Result<Format> {
    let Some(object) = value.as_object() else {
        return Err(record_error(
            at.clone(),
            Problem::WrongType,
            format!("expected a JSON object, found {}", json_kind(value)),
        ));
    };
    let has = |key: &str| object.contains_key(key);
    let format = if has(&fields.messages) {
        Format::Messages
    } else if has(&fields.conversations) {
        Format::Sharegpt
    } else if has(&fields.instruction) && has(&fields.output) {
        Format::Alpaca
    } else if has(&fields.prompt) && has(&fields.completion) {
        Format::PromptCompletion
    } else if has(&fields.text) {
        Format::Text
    } else {
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        return Err(record_error(
            at.clone(),
            Problem::UnknownFormat,
            format!(
                "cannot tell the dataset format from the keys [{}]: expected `{}` (messages), `{}` (sharegpt), `{}`+`{}` (alpaca), `{}`+`{}` (prompt_completion) or `{}` (text); set the format or map field names",
                keys.join(", "),
                fields.messages,
                fields.conversations,
                fields.instruction,
                fields.output,
                fields.prompt,
                fields.completion,
                fields.text
            ),
        ));
    };
    Ok(format)
}

/// Reads one record of a known format.
pub fn parse_record(
    at: &Location,
    value: &Value,
    format: Format,
    fields: &FieldNames,
) -> Result<Sample> {
    let record = RecordReader { at, format };
    let object = value.as_object().ok_or_else(|| {
        record.error(
            Problem::WrongType,
            format!("expected a JSON object, found {}", json_kind(value)),
        )
    })?;
    match format {
        Format::Alpaca => record.alpaca(object, fields),
        Format::Messages => {
            let messages = record.required(object, &fields.messages)?;
            let mut conversation = Conversation::new(record.messages(
                messages,
                &fields.messages,
                &fields.role,
                &fields.content,
            )?);
            match object.get("tools") {
                None | Some(Value::Null) => {}
                Some(Value::Array(tools)) => conversation.tools = Some(tools.clone()),
                Some(other) => {
                    return Err(record.error(
                        Problem::WrongType,
                        format!("`tools` must be an array, found {}", json_kind(other)),
                    ));
                }
            }
            record.validate_chat(conversation)
        }
        Format::Sharegpt => {
            let turns = record.required(object, &fields.conversations)?;
            let messages =
                record.messages(turns, &fields.conversations, &fields.from, &fields.value)?;
            record.validate_chat(Conversation::new(messages))
        }
        Format::PromptCompletion => record.prompt_completion(object, fields),
        Format::Text => {
            let text = record.string(object, &fields.text)?;
            if text.trim().is_empty() {
                return Err(record.error(
                    Problem::EmptyResponse,
                    format!("`{}` is empty", fields.text),
                ));
            }
            Ok(Sample::Text(text.to_owned()))
        }
    }
}

struct RecordReader<'a> {
    at: &'a Location,
    format: Format,
}

impl RecordReader<'_> {
    fn error(&self, problem: Problem, message: impl Into<String>) -> Error {
        record_error(self.at.clone(), problem, message)
    }

    fn required<'v>(&self, object: &'v Map<String, Value>, key: &str) -> Result<&'v Value> {
        object.get(key).ok_or_else(|| {
            self.error(
                Problem::MissingField,
                format!("missing field `{key}` ({} format)", self.format),
            )
        })
    }

    fn string<'v>(&self, object: &'v Map<String, Value>, key: &str) -> Result<&'v str> {
        let value = self.required(object, key)?;
        value.as_str().ok_or_else(|| {
            self.error(
                Problem::WrongType,
                format!("`{key}` must be a string, found {}", json_kind(value)),
            )
        })
    }

    fn optional_string<'v>(
        &self,
        object: &'v Map<String, Value>,
        key: &str,
    ) -> Result<Option<&'v str>> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(self.error(
                Problem::WrongType,
                format!("`{key}` must be a string, found {}", json_kind(other)),
            )),
        }
    }

    fn alpaca(&self, object: &Map<String, Value>, fields: &FieldNames) -> Result<Sample> {
        let instruction = self.string(object, &fields.instruction)?;
        let input = self
            .optional_string(object, &fields.input)?
            .unwrap_or_default();
        let output = self.string(object, &fields.output)?;
        let system = self.optional_string(object, &fields.system)?;
        if instruction.trim().is_empty() {
            return Err(self.error(
                Problem::MissingField,
                format!("`{}` is empty", fields.instruction),
            ));
        }
        if output.trim().is_empty() {
            return Err(self.error(
                Problem::EmptyResponse,
                format!("`{}` is empty", fields.output),
            ));
        }
        // Chat templates see instruction and input joined; the alpaca template reads them apart.
        let content = if input.is_empty() {
            instruction.to_owned()
        } else {
            format!("{instruction}\n\n{input}")
        };
        let mut messages = Vec::with_capacity(3);
        if let Some(system) = system.filter(|s| !s.is_empty()) {
            messages.push(Message::system(system));
        }
        messages.push(
            Message::user(content)
                .with_extra("instruction", instruction)
                .with_extra("input", input),
        );
        messages.push(Message::assistant(output));
        Ok(Sample::Chat(Conversation::new(messages)))
    }

    fn prompt_completion(
        &self,
        object: &Map<String, Value>,
        fields: &FieldNames,
    ) -> Result<Sample> {
        let prompt = self.required(object, &fields.prompt)?;
        let completion = self.required(object, &fields.completion)?;
        match (prompt, completion) {
            (Value::String(prompt), Value::String(completion)) => {
                if completion.trim().is_empty() {
                    return Err(self.error(
                        Problem::EmptyResponse,
                        format!("`{}` is empty", fields.completion),
                    ));
                }
                Ok(Sample::Completion {
                    prompt: prompt.clone(),
                    completion: completion.clone(),
                })
            }
            (Value::Array(_), Value::Array(_)) => {
                let mut messages =
                    self.messages(prompt, &fields.prompt, &fields.role, &fields.content)?;
                for message in &mut messages {
                    message.train.get_or_insert(false);
                }
                let completion_messages = self.messages(
                    completion,
                    &fields.completion,
                    &fields.role,
                    &fields.content,
                )?;
                if completion_messages.is_empty() {
                    return Err(self.error(
                        Problem::EmptyResponse,
                        format!("`{}` is empty", fields.completion),
                    ));
                }
                messages.extend(completion_messages.into_iter().map(|m| {
                    let train = m.train.unwrap_or(true);
                    m.with_train(train)
                }));
                self.validate_chat(Conversation::new(messages))
            }
            _ => Err(self.error(
                Problem::WrongType,
                format!(
                    "`{}` and `{}` must both be strings or both be message lists, found {} and {}",
                    fields.prompt,
                    fields.completion,
                    json_kind(prompt),
                    json_kind(completion)
                ),
            )),
        }
    }

    /// Reads a list of messages whose role and text are under `role_key` and `text_key`.
    fn messages(
        &self,
        value: &Value,
        list_key: &str,
        role_key: &str,
        text_key: &str,
    ) -> Result<Vec<Message>> {
        // CSV has only strings: a list is written as its JSON text.
        let parsed = match value {
            Value::String(text) if text.trim_start().starts_with('[') => {
                serde_json::from_str::<Value>(text).ok()
            }
            _ => None,
        };
        let value = parsed.as_ref().unwrap_or(value);
        let items = value.as_array().ok_or_else(|| {
            self.error(
                Problem::WrongType,
                format!("`{list_key}` must be an array, found {}", json_kind(value)),
            )
        })?;
        let mut messages = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let at = format!("{list_key}[{index}]");
            let object = item.as_object().ok_or_else(|| {
                self.error(
                    Problem::WrongType,
                    format!("`{at}` must be an object, found {}", json_kind(item)),
                )
            })?;
            let role_value = object.get(role_key).ok_or_else(|| {
                self.error(Problem::MissingField, format!("`{at}` has no `{role_key}`"))
            })?;
            let role_name = role_value.as_str().ok_or_else(|| {
                self.error(
                    Problem::WrongType,
                    format!(
                        "`{at}.{role_key}` must be a string, found {}",
                        json_kind(role_value)
                    ),
                )
            })?;
            let role = parse_role(role_name).ok_or_else(|| {
                self.error(
                    Problem::UnknownRole,
                    format!("`{at}` has unknown role `{role_name}`: expected system, user, assistant or tool (or a ShareGPT alias: human, gpt, ...)"),
                )
            })?;
            let content = match object.get(text_key) {
                None | Some(Value::Null) => None,
                Some(Value::String(text)) => Some(text.clone()),
                Some(other) => {
                    return Err(self.error(
                        Problem::WrongType,
                        format!(
                            "`{at}.{text_key}` must be a string, found {}{}",
                            json_kind(other),
                            if other.as_array().is_some_and(|blocks| blocks
                                .iter()
                                .any(serde_json::Value::is_object))
                            {
                                " (multimodal content blocks are not supported)"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
            };
            let train = match object.get("train") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(train)) => Some(*train),
                Some(other) => {
                    return Err(self.error(
                        Problem::WrongType,
                        format!(
                            "`{at}.train` must be true or false, found {}",
                            json_kind(other)
                        ),
                    ));
                }
            };
            let extra = object
                .iter()
                .filter(|(key, value)| {
                    *key != role_key && *key != text_key && *key != "train" && !value.is_null()
                })
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect::<serde_json::Map<_, _>>();
            // Templates concatenate the text; only a tool-calling assistant turn may lack it.
            if content.is_none() && !(role == Role::Assistant && extra.contains_key("tool_calls")) {
                return Err(self.error(
                    Problem::MissingField,
                    format!(
                        "`{at}.{text_key}` is missing or null; a {role} message needs text (only an assistant message with `tool_calls` may go without)"
                    ),
                ));
            }
            messages.push(Message {
                role,
                content,
                train,
                extra,
            });
        }
        Ok(messages)
    }

    fn validate_chat(&self, conversation: Conversation) -> Result<Sample> {
        let messages = &conversation.messages;
        if messages.is_empty() {
            return Err(self.error(
                Problem::EmptyConversation,
                "the conversation has no messages",
            ));
        }
        if !messages.iter().any(|m| m.role == Role::Assistant) {
            return Err(self.error(
                Problem::NoAssistantTurn,
                "the conversation has no assistant message to train on",
            ));
        }
        for (index, message) in messages.iter().enumerate() {
            let empty = message
                .content
                .as_deref()
                .is_none_or(|c| c.trim().is_empty());
            if message.role == Role::Assistant && empty && !message.extra.contains_key("tool_calls")
            {
                return Err(self.error(
                    Problem::EmptyResponse,
                    format!("assistant message {index} is empty"),
                ));
            }
        }
        Ok(Sample::Chat(conversation))
    }
}

/// Role names and the usual ShareGPT aliases.
pub fn parse_role(name: &str) -> Option<Role> {
    Some(match name {
        "system" => Role::System,
        "user" | "human" => Role::User,
        "assistant" | "gpt" | "chatgpt" | "bing" | "bard" | "model" => Role::Assistant,
        "tool" | "function" | "observation" | "function_response" | "ipython" => Role::Tool,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Position;

    fn read(name: &str, contents: &str, options: ReadOptions) -> Result<ReadOutcome> {
        let dir = std::env::temp_dir().join(format!("temper-data-records-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        let outcome = read_file(&path, &options);
        std::fs::remove_file(&path).unwrap();
        outcome.map_err(|error| {
            // Make messages independent of the temp dir.
            match error {
                Error::Record {
                    at,
                    problem,
                    message,
                } => Error::Record {
                    at: Location {
                        file: Arc::from(Path::new(name)),
                        position: at.position,
                    },
                    problem,
                    message,
                },
                other => other,
            }
        })
    }

    #[test]
    fn alpaca_records_become_conversations() {
        let outcome = read(
            "a.jsonl",
            "{\"instruction\": \"Add\", \"input\": \"1 2\", \"output\": \"3\"}\n\n{\"instruction\": \"Hi\", \"output\": \"Hello\", \"system\": \"Be kind\"}\n",
            ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(outcome.records.len(), 2);
        assert_eq!(outcome.records[1].at.position, Position::Line(3));
        let Sample::Chat(conversation) = &outcome.records[0].sample else {
            panic!()
        };
        assert_eq!(
            conversation.messages[0].content.as_deref(),
            Some("Add\n\n1 2")
        );
        assert_eq!(conversation.messages[0].extra["input"], "1 2");
        let Sample::Chat(conversation) = &outcome.records[1].sample else {
            panic!()
        };
        assert_eq!(conversation.messages[0].role, Role::System);
    }

    #[test]
    fn sharegpt_aliases_map_to_roles() {
        let outcome = read(
            "s.json",
            "[\n {\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": \"gpt\", \"value\": \"yo\"}]}\n]",
            ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(outcome.records[0].format, Format::Sharegpt);
        assert_eq!(outcome.records[0].at.position, Position::Line(2));
        let Sample::Chat(conversation) = &outcome.records[0].sample else {
            panic!()
        };
        assert_eq!(conversation.messages[1].role, Role::Assistant);
    }

    #[test]
    fn bad_records_name_file_and_line_or_are_counted() {
        let contents = "{\"text\": \"ok\"}\n{\"text\": 3}\n{not json\n";
        let error = read("t.jsonl", contents, ReadOptions::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "t.jsonl:2: `text` must be a string, found a number"
        );
        let outcome = read(
            "t.jsonl",
            contents,
            ReadOptions {
                on_error: OnError::Skip,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(outcome.records.len(), 1);
        assert_eq!(outcome.skipped[&Problem::WrongType], 1);
        assert_eq!(outcome.skipped[&Problem::InvalidJson], 1);
    }

    #[test]
    fn field_names_can_be_mapped() {
        let mut fields = FieldNames::default();
        fields.set("instruction", "question").unwrap();
        fields.set("output", "answer").unwrap();
        let outcome = read(
            "q.jsonl",
            "{\"question\": \"2+2?\", \"answer\": \"4\"}\n",
            ReadOptions {
                fields,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(outcome.records[0].format, Format::Alpaca);
    }

    #[test]
    fn array_elements_report_their_own_line() {
        let error = read(
            "x.json",
            "[\n{\"text\": \"a\"},\n{\"text\": \"\"}\n]",
            ReadOptions::default(),
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "x.json:3: `text` is empty");
        let error = read(
            "y.json",
            "[\n{\"text\": \"a\"},\n{\"text\": \"b\"}\n",
            ReadOptions::default(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("not closed"), "{error}");
    }
}
