//! Chat messages and Hugging Face chat templates, rendered exactly as
//! `transformers.apply_chat_template` renders them, plus the byte span each message produced.
//!
//! A template is compiled once ([`ChatTemplate`]) from a built-in name, a `.jinja` file or a
//! `tokenizer_config.json`, and rendered with [`ChatTemplate::render`], which returns the text
//! and ordered [`Span`]s that say which bytes are trained under a [`TrainOn`] policy. How spans
//! are found without searching for marker strings is explained in [`spans`].
//!
//! This crate does not tokenize, read datasets or know about models: byte spans are mapped to
//! tokens by `temper-data`. It has no dependency on burn.
//!
//! ```
//! use temper_chat::{ChatTemplate, Conversation, Message, RenderOptions, TrainOn};
//!
//! let template = ChatTemplate::builtin("chatml")?;
//! let conversation = Conversation::new(vec![Message::user("Hi"), Message::assistant("Hello!")]);
//! let rendered = template.render(&conversation, &RenderOptions::default(), TrainOn::Assistant)?;
//! let trained: Vec<&str> = rendered.trained_ranges().map(|r| &rendered.text[r]).collect();
//! assert_eq!(trained, ["Hello!<|im_end|>\n"]);
//! # Ok::<(), temper_chat::Error>(())
//! ```

pub mod budget;
mod error;
mod message;
mod python;
mod shape;
pub mod spans;
mod template;

pub use budget::{RENDER_MEMORY, RenderBudget};
pub use error::{Error, Result};
pub use message::{Conversation, Message, Role, TrainOn, json_kind};
pub use python::NOW_VARIABLE;
pub use spans::{Rendered, Span};
pub use template::{BUILTIN_TEMPLATES, ChatTemplate, RenderOptions, environment, special_token};
