//! Turning records into tokenized examples, and truncating them.

use serde::{Deserialize, Serialize};
use temper_chat::{ChatTemplate, RenderOptions, TrainOn};

use crate::error::{Error, Problem, Result};
use crate::records::{Record, Sample};
use crate::tokenize::{Tokenizer, loss_mask};

/// One tokenized training example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub input_ids: Vec<u32>,
    /// `true` where the token is trained (gets loss).
    pub loss_mask: Vec<bool>,
    /// Line (or row) of the record in its file.
    pub line: usize,
}

impl Example {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    pub fn trained_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }
}

/// An example as rendered text with its trained byte ranges, before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedExample {
    pub text: String,
    pub trained: Vec<std::ops::Range<usize>>,
    /// Append EOS (trained) unless the text already ends with it: plain text and
    /// prompt/completion records have no template to end them.
    pub append_eos: bool,
}

/// Renders a record: chat samples through the template, the others as plain text.
pub fn render_record(
    record: &Record,
    template: Option<&ChatTemplate>,
    train_on: TrainOn,
) -> Result<RenderedExample> {
    match &record.sample {
        Sample::Chat(conversation) => {
            let template = template.ok_or_else(|| Error::Config {
                key: "template".into(),
                message: "chat records need a chat template: pass a built-in name, a .jinja file or a tokenizer_config.json".into(),
            })?;
            let rendered =
                template.render_for_training(conversation, &RenderOptions::default(), train_on)?;
            let trained = rendered.trained_ranges().collect();
            Ok(RenderedExample {
                text: rendered.text,
                trained,
                append_eos: false,
            })
        }
        Sample::Completion { prompt, completion } => {
            let text = format!("{prompt}{completion}");
            Ok(RenderedExample {
                trained: std::iter::once(prompt.len()..text.len()).collect(),
                text,
                append_eos: true,
            })
        }
        Sample::Text(text) => Ok(RenderedExample {
            trained: std::iter::once(0..text.len()).collect(),
            text: text.clone(),
            append_eos: true,
        }),
    }
}

/// Tokenizes a rendered example and builds its loss mask.
pub fn tokenize_rendered(
    rendered: &RenderedExample,
    tokenizer: &Tokenizer,
    line: usize,
) -> Result<Example> {
    let (mut input_ids, offsets) = tokenizer.encode(&rendered.text)?;
    let mut loss_mask = loss_mask(&offsets, &rendered.trained);
    if rendered.append_eos && input_ids.last() != Some(&tokenizer.eos.id) {
        input_ids.push(tokenizer.eos.id);
        loss_mask.push(true);
    } else if rendered.append_eos
        && let Some(last) = loss_mask.last_mut()
    {
        *last = true;
    }
    Ok(Example {
        input_ids,
        loss_mask,
        line,
    })
}

/// Renders and tokenizes a record; template errors become record errors naming its file and
/// line.
pub fn encode_record(
    record: &Record,
    template: Option<&ChatTemplate>,
    train_on: TrainOn,
    tokenizer: &Tokenizer,
) -> Result<Example> {
    let rendered = render_record(record, template, train_on).map_err(|error| match error {
        Error::Chat(error) => Error::Record {
            at: record.at.clone(),
            problem: Problem::TemplateError,
            message: error.to_string(),
        },
        other => other,
    })?;
    tokenize_rendered(&rendered, tokenizer, record.at.position.number())
}

/// What to do with an example longer than `max_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the first `max_length` tokens.
    #[default]
    KeepStart,
    /// Keep the last `max_length` tokens (the end of a long conversation).
    KeepEnd,
    /// Drop the example (counted as `too_long`).
    Drop,
    /// Stop with an error naming the record.
    Error,
}

impl std::str::FromStr for Truncation {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "keep_start" => Ok(Truncation::KeepStart),
            "keep_end" => Ok(Truncation::KeepEnd),
            "drop" => Ok(Truncation::Drop),
            "error" => Ok(Truncation::Error),
            other => Err(format!(
                "unknown truncation `{other}`: expected keep_start, keep_end, drop or error"
            )),
        }
    }
}

/// Applies `truncation` at `max_length`. `Ok(None)` means the example is dropped: too long
/// under [`Truncation::Drop`], or left with no trained token. The problem says which.
pub fn truncate(
    mut example: Example,
    max_length: usize,
    truncation: Truncation,
) -> std::result::Result<Example, (Problem, String)> {
    let truncated = example.len() > max_length;
    if truncated {
        let len = example.len();
        match truncation {
            Truncation::KeepStart => {
                example.input_ids.truncate(max_length);
                example.loss_mask.truncate(max_length);
            }
            Truncation::KeepEnd => {
                example.input_ids.drain(..len - max_length);
                example.loss_mask.drain(..len - max_length);
            }
            Truncation::Drop => {
                return Err((
                    Problem::TooLong,
                    format!("{len} tokens is more than max_length = {max_length}"),
                ));
            }
            Truncation::Error => {
                return Err((
                    Problem::TooLong,
                    format!(
                        "{len} tokens is more than max_length = {max_length} (truncation = \"error\")"
                    ),
                ));
            }
        }
    }
    if example.trained_tokens() == 0 {
        let message = if truncated {
            format!(
                "no trained token is left after truncation to max_length = {max_length} ({truncation:?})"
            )
        } else {
            "no token of this example is trained (check the messages' `train` flags and `train_on`)"
                .to_owned()
        };
        return Err((Problem::NoTrainedTokens, message));
    }
    Ok(example)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(mask: &[bool]) -> Example {
        Example {
            input_ids: (0..mask.len() as u32).collect(),
            loss_mask: mask.to_vec(),
            line: 1,
        }
    }

    #[test]
    fn keep_start_cuts_the_end_and_keep_end_cuts_the_start() {
        let e = example(&[false, false, true, true]);
        assert_eq!(
            truncate(e.clone(), 3, Truncation::KeepStart)
                .unwrap()
                .input_ids,
            [0, 1, 2]
        );
        assert_eq!(
            truncate(e, 3, Truncation::KeepEnd).unwrap().input_ids,
            [1, 2, 3]
        );
    }

    #[test]
    fn an_example_left_without_trained_tokens_is_dropped() {
        let e = example(&[false, false, false, true]);
        assert_eq!(
            truncate(e, 3, Truncation::KeepStart).unwrap_err().0,
            Problem::NoTrainedTokens
        );
    }

    #[test]
    fn drop_and_error_refuse_long_examples() {
        let e = example(&[true; 5]);
        assert_eq!(
            truncate(e.clone(), 4, Truncation::Drop).unwrap_err().0,
            Problem::TooLong
        );
        assert!(
            truncate(e.clone(), 4, Truncation::Error)
                .unwrap_err()
                .1
                .contains("truncation = \"error\"")
        );
        assert_eq!(truncate(e, 5, Truncation::Error).unwrap().len(), 5);
    }
}
