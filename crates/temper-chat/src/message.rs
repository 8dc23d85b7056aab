//! Chat messages and conversations.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Who produced a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// All roles, in the order they are usually listed.
    pub const ALL: [Role; 4] = [Role::System, Role::User, Role::Assistant, Role::Tool];

    /// The name templates see in `message['role']`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    /// Parses the exact role names of the OpenAI/HF `messages` format.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a conversation.
///
/// `extra` keeps every other key of the source message (`tool_calls`, `name`,
/// `reasoning_content`, an alpaca record's `instruction` and `input`, ...) so that templates
/// which read them see them exactly as `transformers` would pass them.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    /// The text of the message. `None` for an assistant message that only carries tool calls.
    pub content: Option<String>,
    /// Overrides the training policy for this message: `Some(true)` always trains it,
    /// `Some(false)` never does.
    pub train: Option<bool>,
    pub extra: Map<String, Value>,
}

impl Message {
    /// A message with a role and text and nothing else.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: Some(content.into()),
            train: None,
            extra: Map::new(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Message::new(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Message::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new(Role::Assistant, content)
    }

    /// Sets the per-message training override.
    pub fn with_train(mut self, train: bool) -> Self {
        self.train = Some(train);
        self
    }

    /// Adds an extra key that templates can read (`message['input']`, `message.tool_calls`, ...).
    pub fn with_extra(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Reads a message in the OpenAI/HF format: `{"role": .., "content": .., "train": ..}` plus
    /// any other keys. `context` names the place for error messages (`file.jsonl:3: message 2`).
    pub fn from_json(value: &Value, context: &str) -> Result<Message> {
        let object = value.as_object().ok_or_else(|| Error::Message {
            context: context.to_owned(),
            message: format!(
                "expected a JSON object with `role` and `content`, found {}",
                json_kind(value)
            ),
        })?;
        let (mut role, mut content, mut train, mut extra) = (None, None, None, Map::new());
        for (key, field) in object {
            match key.as_str() {
                "role" => {
                    let name = field.as_str().ok_or_else(|| Error::Message {
                        context: context.to_owned(),
                        message: format!("`role` must be a string, found {}", json_kind(field)),
                    })?;
                    role = Some(Role::parse(name).ok_or_else(|| Error::Message {
                        context: context.to_owned(),
                        message: format!(
                            "unknown role `{name}`: expected one of system, user, assistant, tool"
                        ),
                    })?);
                }
                "content" => match field {
                    Value::String(text) => content = Some(text.clone()),
                    Value::Null => content = None,
                    other => {
                        return Err(Error::Message {
                            context: context.to_owned(),
                            message: format!(
                                "`content` must be a string, found {} (multimodal content blocks are not supported)",
                                json_kind(other)
                            ),
                        });
                    }
                },
                "train" => match field {
                    Value::Bool(value) => train = Some(*value),
                    Value::Null => {}
                    other => {
                        return Err(Error::Message {
                            context: context.to_owned(),
                            message: format!(
                                "`train` must be true or false, found {}",
                                json_kind(other)
                            ),
                        });
                    }
                },
                // transformers drops keys whose value is None before rendering.
                _ if field.is_null() => {}
                _ => {
                    extra.insert(key.clone(), field.clone());
                }
            }
        }
        let role = role.ok_or_else(|| Error::Message {
            context: context.to_owned(),
            message: "missing field `role`".to_owned(),
        })?;
        // Templates concatenate `content`; only a tool-calling assistant turn may lack it.
        if content.is_none() && !(role == Role::Assistant && extra.contains_key("tool_calls")) {
            return Err(Error::Message {
                context: context.to_owned(),
                message: format!(
                    "`content` is missing or null; a {role} message needs text (only an assistant message with `tool_calls` may go without)"
                ),
            });
        }
        Ok(Message {
            role,
            content,
            train,
            extra,
        })
    }

    /// The message as the JSON object a template sees, shaped as `transformers` shapes it.
    pub fn to_template_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("role".to_owned(), Value::from(self.role.as_str()));
        if let Some(content) = &self.content {
            object.insert("content".to_owned(), Value::from(content.as_str()));
        }
        for (key, value) in &self.extra {
            object.insert(key.clone(), value.clone());
        }
        alias_reasoning_fields(object)
    }
}

/// transformers copies a message's reasoning (`reasoning_content`, `thinking` or `reasoning`)
/// to `thinking` (first) and `reasoning_content` (last), because templates read different names.
fn alias_reasoning_fields(object: Map<String, Value>) -> Value {
    let reasoning = ["reasoning_content", "thinking", "reasoning"]
        .into_iter()
        .find_map(|key| object.get(key).filter(|value| !value.is_null()).cloned());
    let Some(reasoning) = reasoning else {
        return Value::Object(object);
    };
    let mut aliased = Map::new();
    aliased.insert("thinking".to_owned(), reasoning.clone());
    // Python's `{"thinking": r, **message, "reasoning_content": r}`: an existing key keeps its
    // position and takes the later value.
    for (key, value) in object {
        aliased.insert(key, value);
    }
    aliased.insert("reasoning_content".to_owned(), reasoning);
    Value::Object(aliased)
}

/// A conversation: messages, and the tool schemas a template may list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conversation {
    pub messages: Vec<Message>,
    pub tools: Option<Vec<Value>>,
}

impl Conversation {
    pub fn new(messages: Vec<Message>) -> Self {
        Conversation {
            messages,
            tools: None,
        }
    }

    /// Reads a `messages` JSON array.
    pub fn from_json_messages(value: &Value, context: &str) -> Result<Conversation> {
        let items = value.as_array().ok_or_else(|| Error::Message {
            context: context.to_owned(),
            message: format!("`messages` must be an array, found {}", json_kind(value)),
        })?;
        let messages = items
            .iter()
            .enumerate()
            .map(|(index, item)| Message::from_json(item, &format!("{context}: message {index}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Conversation::new(messages))
    }

    /// Reads either a bare `messages` array or an object `{"messages": [...], "tools": [...]}`.
    pub fn from_json(value: &Value, context: &str) -> Result<Conversation> {
        match value {
            Value::Array(_) => Conversation::from_json_messages(value, context),
            Value::Object(object) => {
                let messages = object.get("messages").ok_or_else(|| Error::Message {
                    context: context.to_owned(),
                    message: "expected a `messages` array or an object with a `messages` key"
                        .to_owned(),
                })?;
                let mut conversation = Conversation::from_json_messages(messages, context)?;
                match object.get("tools") {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(tools)) => conversation.tools = Some(tools.clone()),
                    Some(other) => {
                        return Err(Error::Message {
                            context: context.to_owned(),
                            message: format!(
                                "`tools` must be an array, found {}",
                                json_kind(other)
                            ),
                        });
                    }
                }
                Ok(conversation)
            }
            other => Err(Error::Message {
                context: context.to_owned(),
                message: format!("expected a `messages` array, found {}", json_kind(other)),
            }),
        }
    }
}

/// "a string", "an object", ... for error messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Which messages are trained on (their tokens get loss).
///
/// A message's own `train` flag overrides the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainOn {
    /// Every assistant message (TRL's `assistant_only_loss`).
    #[default]
    Assistant,
    /// Every message, whatever its role.
    All,
    /// Only the last assistant message.
    LastAssistant,
}

impl TrainOn {
    /// Whether each message of `messages` is trained under this policy.
    pub fn trained(self, messages: &[Message]) -> Vec<bool> {
        let last_assistant = messages.iter().rposition(|m| m.role == Role::Assistant);
        messages
            .iter()
            .enumerate()
            .map(|(index, message)| {
                message.train.unwrap_or(match self {
                    TrainOn::Assistant => message.role == Role::Assistant,
                    TrainOn::All => true,
                    TrainOn::LastAssistant => Some(index) == last_assistant,
                })
            })
            .collect()
    }
}

impl std::str::FromStr for TrainOn {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "assistant" => Ok(TrainOn::Assistant),
            "all" => Ok(TrainOn::All),
            "last_assistant" => Ok(TrainOn::LastAssistant),
            other => Err(format!(
                "unknown training policy `{other}`: expected assistant, all or last_assistant"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_turns_are_not_trained_by_default() {
        let messages = [
            Message::system("s"),
            Message::user("u"),
            Message::assistant("a"),
        ];
        assert_eq!(TrainOn::Assistant.trained(&messages), [false, false, true]);
        assert_eq!(TrainOn::All.trained(&messages), [true, true, true]);
    }

    #[test]
    fn only_the_last_assistant_turn_is_trained_when_asked() {
        let messages = [
            Message::user("u1"),
            Message::assistant("a1"),
            Message::user("u2"),
            Message::assistant("a2"),
        ];
        assert_eq!(
            TrainOn::LastAssistant.trained(&messages),
            [false, false, false, true]
        );
    }

    #[test]
    fn a_message_train_flag_overrides_the_policy() {
        let messages = [
            Message::user("u").with_train(true),
            Message::assistant("a").with_train(false),
        ];
        assert_eq!(TrainOn::Assistant.trained(&messages), [true, false]);
    }

    #[test]
    fn unknown_roles_are_rejected_with_context() {
        let error = Message::from_json(
            &json!({"role": "robot", "content": "x"}),
            "f.jsonl:3: message 1",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            "f.jsonl:3: message 1: unknown role `robot`: expected one of system, user, assistant, tool"
        );
    }

    #[test]
    fn null_keys_are_dropped_and_reasoning_is_aliased() {
        let message = Message::from_json(
            &json!({"role": "assistant", "content": "x", "name": null, "reasoning": "r"}),
            "here",
        )
        .unwrap();
        assert_eq!(
            message.to_template_json(),
            json!({"thinking": "r", "role": "assistant", "content": "x", "reasoning": "r", "reasoning_content": "r"})
        );
    }
}
