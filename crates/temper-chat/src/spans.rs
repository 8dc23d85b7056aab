//! Locating the bytes each message produced in a rendered conversation.
//!
//! Most real templates have no markers saying where a message starts or where the assistant's
//! answer begins. Searching the text for a header such as `<|im_start|>assistant` is fragile
//! (the same text may occur in a message), so spans are found by *incremental rendering*:
//!
//! ```text
//! full render           |<s>[user header]Hi[eot][asst header]Hello![eot]|
//! render(messages[..1])  |<s>[user header]Hi[eot]|                          -> message 0 ends here
//! render(messages[..1],  |<s>[user header]Hi[eot][asst header]|             -> message 1's answer
//!        add_generation_prompt)                                                starts here
//! ```
//!
//! * message `i` ends where the render of `messages[..=i]` stops agreeing with the full
//!   render (the longest common prefix), and the next message starts there;
//! * an assistant message's trained part starts after the header that
//!   `add_generation_prompt` produces for `messages[..i]`;
//! * so the end-of-turn text (`<|im_end|>`, `<|eot_id|>`, `</s>`, ...) and whatever the template
//!   writes before the next message belongs to the assistant's trained span, and the model learns
//!   to stop.
//!
//! BOS/EOS are rendered as private sentinel characters while spans are located, so a template
//! that appends `eos_token` only to its last message cannot make two renders agree on a few
//! coincidental bytes of `</s>` and `<|user|>`. Templates with `{% generation %}` blocks
//! (TRL's `*_training` templates) mark the trained bytes themselves, and those marks are used
//! for assistant messages instead of the header rule.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::message::{Conversation, Role, TrainOn};
use crate::template::{
    BOS_SENTINEL, ChatTemplate, EOS_SENTINEL, GENERATION_END, GENERATION_START, RenderOptions,
    template_messages,
};

/// A rendered conversation: the text and the byte spans that produced it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendered {
    pub text: String,
    /// Ordered, non-overlapping byte ranges of `text`. Bytes outside every span (for example
    /// an assistant header, or the generation prompt) are template text that is not trained.
    pub spans: Vec<Span>,
}

impl Rendered {
    /// The byte ranges whose tokens get loss.
    pub fn trained_ranges(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.spans
            .iter()
            .filter(|span| span.trained)
            .map(|span| span.start..span.end)
    }
}

/// A byte range of the rendered text produced by one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Span {
    /// The index of the message in the conversation.
    pub message: usize,
    pub role: Role,
    pub start: usize,
    pub end: usize,
    pub trained: bool,
}

/// Text with sentinels removed, and where `{% generation %}` output was.
pub(crate) struct Clean {
    pub(crate) text: String,
    pub(crate) generation: Vec<(usize, usize)>,
}

pub(crate) fn strip_generation_marks(raw: &str) -> Clean {
    if !raw.contains([GENERATION_START, GENERATION_END]) {
        return Clean {
            text: raw.to_owned(),
            generation: Vec::new(),
        };
    }
    let mut text = String::with_capacity(raw.len());
    let mut generation = Vec::new();
    let mut depth = 0usize;
    let mut open = 0usize;
    for ch in raw.chars() {
        match ch {
            GENERATION_START => {
                if depth == 0 {
                    open = text.len();
                }
                depth += 1;
            }
            GENERATION_END => {
                depth = depth.saturating_sub(1);
                if depth == 0 && text.len() > open {
                    generation.push((open, text.len()));
                }
            }
            c => text.push(c),
        }
    }
    Clean { text, generation }
}

/// Replaces BOS/EOS sentinels by the real strings. Returns the final text and, for every byte
/// offset of `raw` (and one past the end), the matching offset in the final text.
pub(crate) fn finalize(raw: &str, bos: Option<&str>, eos: Option<&str>) -> (String, Vec<usize>) {
    let mut text = String::with_capacity(raw.len() + 16);
    let mut offsets = Vec::with_capacity(raw.len() + 1);
    for ch in raw.chars() {
        let replacement = match ch {
            BOS_SENTINEL => bos,
            EOS_SENTINEL => eos,
            _ => None,
        };
        let start = text.len();
        match replacement {
            Some(replacement) => text.push_str(replacement),
            None => text.push(ch),
        }
        offsets.extend(std::iter::repeat_n(start, ch.len_utf8()));
    }
    offsets.push(text.len());
    (text, offsets)
}

/// Length in bytes of the longest common prefix, on a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut len = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(len) {
        len -= 1;
    }
    len
}

/// Stands in for an assistant message's content while its rendered position is located. A
/// noncharacter, so it cannot occur in real text (messages containing one are refused).
const CONTENT_SENTINEL: char = '\u{FDD4}';

pub(crate) fn render_with_spans(
    template: &ChatTemplate,
    conversation: &Conversation,
    options: &RenderOptions,
    train_on: TrainOn,
    exact_untrained_spans: bool,
) -> Result<Rendered> {
    let messages = template_messages(&conversation.messages)?;
    let n = messages.len();
    let agp = options.add_generation_prompt;
    let render_values =
        |values: &[minijinja::Value], add_generation_prompt: bool| -> Result<Clean> {
            template
                .render_raw(values, conversation, add_generation_prompt, options)
                .map(|raw| strip_generation_marks(&raw))
        };
    let render = |count: usize, add_generation_prompt: bool| {
        render_values(&messages[..count], add_generation_prompt)
    };
    let full = render(n, agp)?;
    let trained = train_on.trained(&conversation.messages);

    // Where each message's text stops agreeing with the full render when it is rendered as the
    // last message. Exact for most templates; early for templates that render the last turn
    // differently (Qwen3's think tags, gpt-oss' <|return|>), which the trained ranges below fix.
    // Each costs a render, so with `exact_untrained_spans == false` only the ones that decide a
    // trained range are computed; the others let untrained messages merge into the next span.
    let is_trained_answer =
        |i: usize| trained[i] && conversation.messages[i].role == Role::Assistant;
    let needs_end = |i: usize| {
        exact_untrained_spans
            || template.has_generation_blocks()
            || (trained[i] && !is_trained_answer(i))
            || (i + 1 < n && trained[i + 1] && !is_trained_answer(i + 1))
    };
    let agreed_end = |i: usize, previous: usize| -> Result<usize> {
        let end = if i + 1 == n && !agp {
            full.text.len()
        } else {
            match render(i + 1, false) {
                Ok(prefix) => common_prefix(&full.text, &prefix.text),
                // Some templates refuse a conversation that is only a system message ("No user
                // query found"). An untrained message is then merged into the next one's span;
                // a trained one cannot be located and is an error.
                Err(_) if !trained[i] => previous,
                Err(error) => return Err(span_error(template, i, error)),
            }
        };
        Ok(end.max(previous))
    };
    let mut agreed_ends: Vec<usize> = Vec::with_capacity(n);
    for i in 0..n {
        let previous = agreed_ends.last().copied().unwrap_or(0);
        agreed_ends.push(if needs_end(i) {
            agreed_end(i, previous)?
        } else {
            previous
        });
    }

    // The trained byte ranges of each trained assistant message.
    let mut answers: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    if template.has_generation_blocks() {
        // Each `{% generation %}` range belongs to the last assistant message that starts before it.
        for &(g_start, g_end) in &full.generation {
            let owner = (0..n)
                .filter(|&i| conversation.messages[i].role == Role::Assistant)
                .take_while(|&i| i == 0 || agreed_ends[i - 1] <= g_start)
                .last();
            if let Some(owner) = owner.filter(|&i| trained[i]) {
                answers[owner].push((g_start, g_end));
            }
        }
    } else {
        for i in (0..n).filter(|&i| is_trained_answer(i)) {
            let located = locate_answer(template, conversation, options, &full, i, &render_values)?;
            answers[i].push(match located {
                Some(range) => range,
                None => {
                    // The template looks at the content itself (or there is none): fall back to
                    // "after the generation prompt's header, up to where the texts disagree".
                    let start = if i == 0 { 0 } else { agreed_end(i - 1, 0)? };
                    let end = agreed_end(i, start)?;
                    let header_end = match render(i, true) {
                        Ok(prompt) => common_prefix(&full.text, &prompt.text).clamp(start, end),
                        Err(_) if i == 0 => start,
                        Err(error) => return Err(span_error(template, i, error)),
                    };
                    (header_end, end)
                }
            });
        }
    }

    // Tile the text: message i covers cursor..end, its trained ranges inside, the rest untrained.
    let mut spans = Vec::with_capacity(2 * n);
    let mut push = |message: usize, role: Role, start: usize, end: usize, trained: bool| {
        if end > start {
            spans.push(Span {
                message,
                role,
                start,
                end,
                trained,
            });
        }
    };
    let mut cursor = 0;
    for (i, message) in conversation.messages.iter().enumerate() {
        let role = message.role;
        let answer_end = answers[i].iter().map(|&(_, end)| end).max().unwrap_or(0);
        let end = agreed_ends[i].max(answer_end).max(cursor);
        if !is_trained_answer(i) {
            push(i, role, cursor, end, trained[i]);
        } else {
            let mut inner = cursor;
            for &(a_start, a_end) in &answers[i] {
                let a_start = a_start.max(inner);
                push(i, role, inner, a_start, false);
                push(i, role, a_start, a_end, true);
                inner = inner.max(a_end);
            }
            push(i, role, inner, end, false);
        }
        cursor = end;
    }

    let (text, offsets) = finalize(&full.text, template.bos_token(), template.eos_token());
    for span in &mut spans {
        span.start = offsets[span.start];
        span.end = offsets[span.end];
    }
    Ok(Rendered { text, spans })
}

/// Finds assistant message `i`'s answer in the full render: its content plus the end-of-turn
/// text that follows it. The content is located by rendering once more with the content
/// replaced by a sentinel; the end-of-turn text is what follows the content both in the full
/// render and when the message is rendered as the last one. Returns `None` when the template
/// does not render the content verbatim and exactly once.
fn locate_answer(
    template: &ChatTemplate,
    conversation: &Conversation,
    options: &RenderOptions,
    full: &Clean,
    i: usize,
    render_values: &dyn Fn(&[minijinja::Value], bool) -> Result<Clean>,
) -> Result<Option<(usize, usize)>> {
    let n = conversation.messages.len();
    if conversation.messages[i]
        .content
        .as_deref()
        .is_none_or(str::is_empty)
    {
        return Ok(None);
    }
    let mut probe = conversation.messages.clone();
    probe[i].content = Some(CONTENT_SENTINEL.to_string());
    let values: Vec<minijinja::Value> = probe
        .iter()
        .map(|m| minijinja::Value::from_serialize(m.to_template_json()))
        .collect();
    let find_once = |text: &str| -> Option<usize> {
        let at = text.find(CONTENT_SENTINEL)?;
        (text[at + CONTENT_SENTINEL.len_utf8()..]
            .find(CONTENT_SENTINEL)
            .is_none())
        .then_some(at)
    };
    let Ok(probe_full) = render_values(&values, options.add_generation_prompt) else {
        return Ok(None);
    };
    let Some(at) = find_once(&probe_full.text) else {
        return Ok(None);
    };
    let after = at + CONTENT_SENTINEL.len_utf8();
    let (prefix, suffix) = (&probe_full.text[..at], &probe_full.text[after..]);
    if prefix.len() + suffix.len() > full.text.len()
        || !full.text.starts_with(prefix)
        || !full.text.ends_with(suffix)
    {
        return Ok(None);
    }
    let (content_start, content_end) = (prefix.len(), full.text.len() - suffix.len());
    if i + 1 == n && !options.add_generation_prompt {
        // Everything after the last message's content is its end-of-turn text.
        return Ok(Some((content_start, full.text.len())));
    }
    let as_last = match render_values(&values[..=i], false) {
        Ok(as_last) => as_last,
        Err(error) => return Err(span_error(template, i, error)),
    };
    let Some(at_last) = find_once(&as_last.text) else {
        return Ok(None);
    };
    let tail = &full.text[content_end..];
    let tail_as_last = &as_last.text[at_last + CONTENT_SENTINEL.len_utf8()..];
    let mut end_of_turn = common_prefix(tail, tail_as_last);
    if end_of_turn < tail_as_last.len() {
        // The texts diverge inside the end-of-turn text, e.g. gpt-oss ends a middle turn with
        // `<|end|>` and the last one with `<|return|>`: they agree on `<|`, which is no token of
        // its own. Never end inside an unclosed `<...>`.
        let agreed = &tail[..end_of_turn];
        if let Some(open) = agreed
            .rfind('<')
            .filter(|&open| !agreed[open..].contains('>'))
        {
            end_of_turn = open;
        }
    }
    Ok(Some((content_start, content_end + end_of_turn)))
}

fn span_error(template: &ChatTemplate, index: usize, error: Error) -> Error {
    Error::Render {
        template: template.name().to_owned(),
        message: format!(
            "the conversation renders, but its first {} message(s) alone do not, so message spans cannot be located: {error}",
            index + 1
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use expect_test::{Expect, expect};

    /// Renders and shows the text with each span bracketed: `[role+|...|]` for trained spans,
    /// `[role|...|]` for the others.
    fn check(
        template: &str,
        messages: Vec<Message>,
        agp: bool,
        train_on: TrainOn,
        expected: Expect,
    ) {
        let template = ChatTemplate::builtin(template)
            .unwrap()
            .with_special_tokens(Some("<s>".into()), Some("</s>".into()));
        let options = RenderOptions {
            add_generation_prompt: agp,
            ..Default::default()
        };
        let rendered = template
            .render(&Conversation::new(messages), &options, train_on)
            .unwrap();
        let mut shown = String::new();
        let mut cursor = 0;
        for span in &rendered.spans {
            shown.push_str(&rendered.text[cursor..span.start]);
            let mark = if span.trained { "+" } else { "" };
            shown.push_str(&format!(
                "[{}{mark}|{}|]",
                span.role,
                &rendered.text[span.start..span.end]
            ));
            cursor = span.end;
        }
        shown.push_str(&rendered.text[cursor..]);
        expected.assert_eq(&shown);
    }

    fn chat() -> Vec<Message> {
        vec![
            Message::system("Be brief."),
            Message::user("Hi"),
            Message::assistant("Hello!"),
            Message::user("Capital of France?"),
            Message::assistant("Paris."),
        ]
    }

    #[test]
    fn chatml_trains_answers_and_their_end_of_turn() {
        check(
            "chatml",
            chat(),
            false,
            TrainOn::Assistant,
            expect![[r#"
                [system|<|im_start|>system
                Be brief.<|im_end|>
                |][user|<|im_start|>user
                Hi<|im_end|>
                |][assistant|<|im_start|>assistant
                |][assistant+|Hello!<|im_end|>
                |][user|<|im_start|>user
                Capital of France?<|im_end|>
                |][assistant|<|im_start|>assistant
                |][assistant+|Paris.<|im_end|>
                |]"#]],
        );
    }

    #[test]
    fn the_generation_prompt_is_not_part_of_any_message() {
        check(
            "llama3",
            vec![
                Message::user("Hi"),
                Message::assistant("Hello!"),
                Message::user("Bye"),
            ],
            true,
            TrainOn::Assistant,
            expect![[r#"
                [user|<s><|start_header_id|>user<|end_header_id|>

                Hi<|eot_id|>|][assistant|<|start_header_id|>assistant<|end_header_id|>

                |][assistant+|Hello!<|eot_id|>|][user|<|start_header_id|>user<|end_header_id|>

                Bye<|eot_id|>|]<|start_header_id|>assistant<|end_header_id|>

            "#]],
        );
    }

    #[test]
    fn an_eos_that_only_ends_the_conversation_is_not_borrowed_by_earlier_turns() {
        // phi3 appends eos_token after the last message only; earlier turns end at <|end|>\n.
        check(
            "phi3",
            vec![
                Message::user("Hi"),
                Message::assistant("Hello!"),
                Message::user("Bye"),
                Message::assistant("Ciao"),
            ],
            false,
            TrainOn::Assistant,
            expect![[r#"
                [user|<|user|>
                Hi<|end|>
                |][assistant|<|assistant|>
                |][assistant+|Hello!<|end|>
                |][user|<|user|>
                Bye<|end|>
                |][assistant|<|assistant|>
                |][assistant+|Ciao<|end|>
                </s>|]"#]],
        );
    }

    #[test]
    fn alpaca_trains_the_output_and_eos() {
        check(
            "alpaca",
            vec![
                Message::user("Translate.\n\nBonjour")
                    .with_extra("instruction", "Translate.")
                    .with_extra("input", "Bonjour"),
                Message::assistant("Hello"),
            ],
            false,
            TrainOn::Assistant,
            expect![[r#"
                [user|### Instruction:
                Translate.

                ### Input:
                Bonjour

                ### Response:
                |][assistant+|Hello</s>|]"#]],
        );
    }

    #[test]
    fn last_assistant_policy_trains_one_turn() {
        check(
            "zephyr",
            vec![
                Message::user("a"),
                Message::assistant("b"),
                Message::user("c"),
                Message::assistant("d"),
            ],
            false,
            TrainOn::LastAssistant,
            expect![[r#"
                [user|<|user|>
                a</s>
                |][assistant|<|assistant|>
                b</s>
                |][user|<|user|>
                c</s>
                |][assistant|<|assistant|>
                |][assistant+|d</s>
                |]"#]],
        );
    }

    #[test]
    fn sentinel_code_points_in_messages_are_refused() {
        let template = ChatTemplate::builtin("chatml").unwrap();
        let conversation = Conversation::new(vec![Message::user("a\u{FDD1}b")]);
        let error = template
            .render(&conversation, &RenderOptions::default(), TrainOn::All)
            .unwrap_err();
        assert!(error.to_string().contains("U+FDD1"), "{error}");
    }
}
