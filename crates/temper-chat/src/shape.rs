//! Conversations of one shape render alike, so the renders that locate their messages are
//! shared.
//!
//! Every non-empty string at the top level of a message (its content, an alpaca record's
//! `instruction` and `input`, a reasoning field, ...) is replaced by a marker:
//! [`CONTENT_SENTINEL`], the string's index, [`CONTENT_SENTINEL`]. What is left (roles, which
//! strings are empty, every other value, the tools, the options) is the conversation's shape,
//! and the render of the masked messages (a [`Probe`]) is the same for every conversation of
//! that shape: a dataset of a million single-turn records has a handful of shapes. A probe is
//! only a claim about where the strings go; [`crate::spans`] checks it against each
//! conversation's own render before using it.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};

use crate::message::{Conversation, Role};
use crate::spans::{Clean, RenderValues};
use crate::template::{CONTENT_SENTINEL, RenderOptions};

/// Shapes a template keeps probes for before it starts over.
const PROBES_KEPT: usize = 4096;

/// A conversation's messages with their strings replaced by markers.
pub(crate) struct Masked<'a> {
    /// What the shape's probe is stored under: the masked messages, the tools, the options.
    pub(crate) key: String,
    /// The messages as template JSON, unmasked.
    messages: &'a [Value],
    /// The strings the markers stand for, by marker.
    pub(crate) strings: Vec<&'a str>,
    /// The marker of each message's content, when it has text.
    pub(crate) content: Vec<Option<usize>>,
}

impl<'a> Masked<'a> {
    /// Masks `messages`, the conversation's messages as template JSON objects.
    pub(crate) fn new(
        messages: &'a [Value],
        conversation: &Conversation,
        options: &RenderOptions,
        add_generation_prompt: bool,
    ) -> Masked<'a> {
        let mut key = String::with_capacity(128);
        let mut strings = Vec::new();
        let mut content = vec![None; messages.len()];
        for (i, message) in messages.iter().enumerate() {
            key.push('{');
            for (name, value) in fields(message) {
                // Debug quoting keeps the key unambiguous whatever the names hold.
                let _ = write!(key, "{name:?}:");
                match masked_string(name, value) {
                    Some(text) => {
                        if name == "content" {
                            content[i] = Some(strings.len());
                        }
                        let _ = write!(key, "#{},", strings.len());
                        strings.push(text);
                    }
                    None => {
                        let _ = write!(key, "{value},");
                    }
                }
            }
            key.push('}');
        }
        let rest = (&conversation.tools, &options.extra, add_generation_prompt);
        key.push_str(&serde_json::to_string(&rest).unwrap_or_default());
        Masked {
            key,
            messages,
            strings,
            content,
        }
    }

    /// The masked messages as template values.
    fn values(&self) -> Vec<minijinja::Value> {
        let mut strings = 0;
        self.messages
            .iter()
            .map(|message| {
                let object: Map<String, Value> = fields(message)
                    .map(|(name, value)| {
                        let value = match masked_string(name, value) {
                            Some(_) => {
                                strings += 1;
                                Value::String(marker(strings - 1))
                            }
                            None => value.clone(),
                        };
                        (name.clone(), value)
                    })
                    .collect();
                minijinja::Value::from_serialize(object)
            })
            .collect()
    }
}

/// The top-level fields of a message's template JSON.
fn fields(message: &Value) -> impl Iterator<Item = (&String, &Value)> {
    message.as_object().into_iter().flatten()
}

/// The string a marker stands in for: every non-empty string but the role (templates test
/// roles, and whether a string is empty).
fn masked_string<'v>(name: &str, value: &'v Value) -> Option<&'v str> {
    value
        .as_str()
        .filter(|text| name != "role" && !text.is_empty())
}

/// The text that stands for string `index` while probing.
fn marker(index: usize) -> String {
    format!("{CONTENT_SENTINEL}{index}{CONTENT_SENTINEL}")
}

/// What rendering one shape shows.
#[derive(Debug)]
pub(crate) struct Probe {
    /// The render of the masked messages split at its markers: the text before the first, then
    /// each marker with the text after it. `None` when the render failed or cut a marker.
    pub(crate) parts: Option<(String, Vec<(usize, String)>)>,
    /// For each role: what the template writes after the content of that role's last message
    /// when that message ends the conversation (up to the next marker, if any).
    pub(crate) tails: Vec<(Role, String)>,
}

impl Probe {
    /// Renders the masked messages, and for each role the messages up to its last one.
    pub(crate) fn render(
        masked: &Masked<'_>,
        conversation: &Conversation,
        add_generation_prompt: bool,
        render_values: &RenderValues<'_>,
    ) -> Probe {
        let values = masked.values();
        let split = |clean: Clean| split_markers(&clean.text, masked.strings.len());
        let parts = render_values(&values, add_generation_prompt)
            .ok()
            .and_then(split);
        let mut tails = Vec::new();
        if parts.is_none() {
            return Probe { parts, tails };
        }
        let roles: Vec<Role> = conversation.messages.iter().map(|m| m.role).collect();
        for role in Role::ALL {
            let Some((last, marker)) = (0..roles.len())
                .rev()
                .filter(|&i| roles[i] == role)
                .find_map(|i| Some((i, masked.content[i]?)))
            else {
                continue;
            };
            let Some((_, as_last)) = render_values(&values[..=last], false).ok().and_then(split)
            else {
                continue;
            };
            let mut after = as_last.iter().filter(|(m, _)| *m == marker);
            if let (Some((_, tail)), None) = (after.next(), after.next()) {
                tails.push((role, tail.clone()));
            }
        }
        Probe { parts, tails }
    }
}

/// `text` split at markers of `strings` strings, or `None` if a marker is cut or unknown.
fn split_markers(text: &str, strings: usize) -> Option<(String, Vec<(usize, String)>)> {
    let mut pieces = text.split(CONTENT_SENTINEL);
    let first = pieces.next()?.to_owned();
    let mut parts = Vec::new();
    while let Some(index) = pieces.next() {
        let index: usize = index.parse().ok().filter(|&index| index < strings)?;
        parts.push((index, pieces.next()?.to_owned()));
    }
    Some((first, parts))
}

/// A template's probes by shape, shared by the threads that render with it.
#[derive(Clone, Default)]
pub(crate) struct Probes(Arc<Mutex<HashMap<String, Arc<Probe>>>>);

impl Probes {
    /// The probe of `key`'s shape, made by `make` the first time.
    pub(crate) fn get_or_make(&self, key: &str, make: impl FnOnce() -> Probe) -> Arc<Probe> {
        if let Some(probe) = self.lock().get(key) {
            return probe.clone();
        }
        // Made outside the lock: two threads may both make a new shape's probe, alike.
        let probe = Arc::new(make());
        let mut probes = self.lock();
        if probes.len() >= PROBES_KEPT {
            probes.clear();
        }
        probes.insert(key.to_owned(), probe.clone());
        probe
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Probe>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Probes({} shapes)", self.lock().len())
    }
}
