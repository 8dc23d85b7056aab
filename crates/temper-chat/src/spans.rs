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
//! Rendering every prefix would cost a render per message, quadratic in the messages of a
//! record. So the messages are first located all at once ([`Verbatim`]): a render with every
//! string of the messages replaced by a marker finds each content's bytes, and one render per
//! role with that role's last message as the conversation's last gives the text the template
//! writes after such a message. A message ends where the full render stops agreeing with that
//! text, which is what rendering its prefix would show wherever a template renders the turns of
//! a role alike. Those renders depend only on the conversation's shape (`shape`), so records of
//! one shape share them and cost one render each. Only messages the template does not render
//! verbatim (a content it rewrites, or none) fall back to rendering prefixes.
//!
//! BOS/EOS are rendered as private sentinel characters while spans are located, so a template
//! that appends `eos_token` only to its last message cannot make two renders agree on a few
//! coincidental bytes of `</s>` and `<|user|>`. Templates with `{% generation %}` blocks
//! (TRL's `*_training` templates) mark the trained bytes themselves, and those marks are used
//! for assistant messages instead of the header rule.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::message::{Conversation, Message, Role, TrainOn};
use crate::shape::{Masked, Probe};
use crate::template::{
    BOS_SENTINEL, CONTENT_SENTINEL, ChatTemplate, EOS_SENTINEL, GENERATION_END, GENERATION_START,
    RenderOptions, template_json,
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
    // Each byte of a character maps to where the character starts.
    let copy = |run: &str, text: &mut String, offsets: &mut Vec<usize>| {
        let start = text.len();
        text.push_str(run);
        if run.is_ascii() {
            offsets.extend(start..text.len());
        } else {
            for (at, ch) in run.char_indices() {
                offsets.extend(std::iter::repeat_n(start + at, ch.len_utf8()));
            }
        }
    };
    let mut rest = raw;
    while let Some(at) = rest.find([BOS_SENTINEL, EOS_SENTINEL]) {
        copy(&rest[..at], &mut text, &mut offsets);
        let sentinel = rest[at..].chars().next().unwrap_or(BOS_SENTINEL);
        let replacement = if sentinel == BOS_SENTINEL { bos } else { eos };
        match replacement {
            Some(replacement) => {
                let start = text.len();
                text.push_str(replacement);
                offsets.extend(std::iter::repeat_n(start, sentinel.len_utf8()));
            }
            None => copy(&rest[at..at + sentinel.len_utf8()], &mut text, &mut offsets),
        }
        rest = &rest[at + sentinel.len_utf8()..];
    }
    copy(rest, &mut text, &mut offsets);
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

pub(crate) fn render_with_spans(
    template: &ChatTemplate,
    conversation: &Conversation,
    options: &RenderOptions,
    train_on: TrainOn,
    exact_untrained_spans: bool,
) -> Result<Rendered> {
    render_spans_by(
        template,
        conversation,
        options,
        train_on,
        exact_untrained_spans,
        Method::Verbatim,
    )
}

/// How messages are located: [`Verbatim`] first (what temper does), or only by rendering each
/// prefix (the reference the tests compare it with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Verbatim,
    #[cfg_attr(not(test), allow(dead_code))]
    Prefixes,
}

fn render_spans_by(
    template: &ChatTemplate,
    conversation: &Conversation,
    options: &RenderOptions,
    train_on: TrainOn,
    exact_untrained_spans: bool,
    method: Method,
) -> Result<Rendered> {
    let json = template_json(&conversation.messages)?;
    let messages: Vec<minijinja::Value> =
        json.iter().map(minijinja::Value::from_serialize).collect();
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
    let verbatim = match method {
        Method::Verbatim => {
            let masked = Masked::new(&json, conversation, options, agp);
            let probe = template.probes().get_or_make(&masked.key, || {
                Probe::render(&masked, conversation, agp, &render_values)
            });
            Verbatim::find(conversation, &masked, probe, &full)
        }
        Method::Prefixes => Verbatim::none(n),
    };

    // Where each message's text stops agreeing with the full render when it is rendered as the
    // last message. Exact for most templates; early for templates that render the last turn
    // differently (Qwen3's think tags, gpt-oss' <|return|>), which the trained ranges below fix.
    // Without `exact_untrained_spans`, only the ones that decide a trained range are computed;
    // the others let untrained messages merge into the next span.
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
        } else if let Some(end) = verbatim.turn_end(i, &full.text) {
            end
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
            let located = match verbatim.answer(i, i + 1 == n && !agp, &full.text) {
                Some(range) => Some(range),
                None => locate_answer(template, conversation, options, &full, i, &render_values)?,
            };
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

pub(crate) type RenderValues<'a> = dyn Fn(&[minijinja::Value], bool) -> Result<Clean> + 'a;

/// The messages whose content the template renders verbatim, located with the renders of the
/// conversation's shape ([`Probe`]), whatever the length of the conversation.
struct Verbatim {
    roles: Vec<Role>,
    /// Each message's content bytes in the full render, where the template writes it as it is
    /// (or trimmed), once, in message order.
    content: Vec<Option<(usize, usize)>>,
    /// The shape's probe, for what the template writes after each role's last message.
    probe: Option<Arc<Probe>>,
}

impl Verbatim {
    fn none(n: usize) -> Verbatim {
        Verbatim {
            roles: Vec::new(),
            content: vec![None; n],
            probe: None,
        }
    }

    /// Locates the contents with the probe of the conversation's shape: the full render must be
    /// the probe's text with each marker replaced by its string (or the string trimmed).
    /// Anything else locates nothing; a content the template does not write exactly once is not
    /// located.
    fn find(
        conversation: &Conversation,
        masked: &Masked<'_>,
        probe: Arc<Probe>,
        full: &Clean,
    ) -> Verbatim {
        let n = conversation.messages.len();
        let mut found = Verbatim::none(n);
        let Some((first, parts)) = &probe.parts else {
            return found;
        };
        let text = full.text.as_str();
        if !text.starts_with(first.as_str()) || (parts.is_empty() && text != first) {
            return found;
        }
        let content_of: HashMap<usize, usize> = (0..n)
            .filter_map(|i| Some((masked.content[i]?, i)))
            .collect();
        let mut content = vec![None; n];
        let mut written_times = vec![0usize; n];
        let mut at = first.len();
        for (j, (marker, next)) in parts.iter().enumerate() {
            let rest = &text[at..];
            let last = j + 1 == parts.len();
            let fits = |written: &&str| {
                rest.starts_with(*written) && {
                    let after = &rest[written.len()..];
                    if last {
                        after == next
                    } else {
                        after.starts_with(next.as_str())
                    }
                }
            };
            let string = masked.strings[*marker];
            let Some(written) = [
                string,
                string.trim(),
                string.trim_start(),
                string.trim_end(),
            ]
            .into_iter()
            .find(fits) else {
                return found;
            };
            if let Some(&i) = content_of.get(marker) {
                written_times[i] += 1;
                content[i] = Some((at, at + written.len()));
            }
            at += written.len() + next.len();
        }
        for (i, times) in written_times.into_iter().enumerate() {
            if times != 1 {
                content[i] = None;
            }
        }
        let mut located = content.iter().flatten();
        if let Some(mut previous) = located.next() {
            for range in located {
                if range.0 < previous.1 {
                    return found;
                }
                previous = range;
            }
        }
        found.content = content;
        found.roles = conversation.messages.iter().map(|m| m.role).collect();
        found.probe = Some(probe);
        found
    }

    fn tail(&self, i: usize) -> Option<&str> {
        let role = self.roles.get(i)?;
        self.probe
            .as_ref()?
            .tails
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, tail)| tail.as_str())
    }

    /// Where message `i` stops agreeing with the full render as the conversation's last message.
    fn turn_end(&self, i: usize, text: &str) -> Option<usize> {
        let (_, end) = self.content[i]?;
        Some(end + common_prefix(&text[end..], self.tail(i)?))
    }

    /// Assistant message `i`'s content and end-of-turn text, as [`locate_answer`] finds them.
    fn answer(&self, i: usize, last_without_prompt: bool, text: &str) -> Option<(usize, usize)> {
        let (start, end) = self.content[i]?;
        if last_without_prompt {
            return Some((start, text.len()));
        }
        Some((start, end + end_of_turn(&text[end..], self.tail(i)?)))
    }
}

/// The message as a template value with its content replaced by [`CONTENT_SENTINEL`].
fn with_sentinel_content(message: &Message) -> minijinja::Value {
    let mut probe = message.clone();
    probe.content = Some(CONTENT_SENTINEL.to_string());
    minijinja::Value::from_serialize(probe.to_template_json())
}

/// The byte after the one [`CONTENT_SENTINEL`] in `text`, if it occurs exactly once.
fn after_only_sentinel(text: &str) -> Option<usize> {
    let after = text.find(CONTENT_SENTINEL)? + CONTENT_SENTINEL.len_utf8();
    (!text[after..].contains(CONTENT_SENTINEL)).then_some(after)
}

/// How much of `tail` (the text after an answer's content in the full render) is the answer's
/// end-of-turn text, given `tail_as_last`, what follows the content when the answer is the
/// conversation's last message.
fn end_of_turn(tail: &str, tail_as_last: &str) -> usize {
    let agreed = common_prefix(tail, tail_as_last);
    if agreed == tail_as_last.len() {
        return agreed;
    }
    // The texts diverge inside the end-of-turn text, e.g. gpt-oss ends a middle turn with
    // `<|end|>` and the last one with `<|return|>`: they agree on `<|`, which is no token of its
    // own. Never end inside an unclosed `<...>`.
    let agreed_text = &tail[..agreed];
    agreed_text
        .rfind('<')
        .filter(|&open| !agreed_text[open..].contains('>'))
        .unwrap_or(agreed)
}

/// Finds assistant message `i`'s answer in the full render by rendering for it alone: its
/// content plus the end-of-turn text that follows it. The content is located by rendering once
/// more with the content replaced by a sentinel; the end-of-turn text is what follows the
/// content both in the full render and when the message is rendered as the last one. Returns
/// `None` when the template does not render the content verbatim and exactly once.
fn locate_answer(
    template: &ChatTemplate,
    conversation: &Conversation,
    options: &RenderOptions,
    full: &Clean,
    i: usize,
    render_values: &RenderValues<'_>,
) -> Result<Option<(usize, usize)>> {
    let n = conversation.messages.len();
    if conversation.messages[i]
        .content
        .as_deref()
        .is_none_or(str::is_empty)
    {
        return Ok(None);
    }
    let values: Vec<minijinja::Value> = conversation
        .messages
        .iter()
        .enumerate()
        .map(|(j, m)| {
            if j == i {
                with_sentinel_content(m)
            } else {
                minijinja::Value::from_serialize(m.to_template_json())
            }
        })
        .collect();
    let Ok(probe_full) = render_values(&values, options.add_generation_prompt) else {
        return Ok(None);
    };
    let Some(after) = after_only_sentinel(&probe_full.text) else {
        return Ok(None);
    };
    let at = after - CONTENT_SENTINEL.len_utf8();
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
    let Some(after_last) = after_only_sentinel(&as_last.text) else {
        return Ok(None);
    };
    let tail = &full.text[content_end..];
    let end = end_of_turn(tail, &as_last.text[after_last..]);
    Ok(Some((content_start, content_end + end)))
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

    #[test]
    fn finalize_maps_every_byte_to_where_its_character_landed() {
        let raw = format!("{BOS_SENTINEL}Hé said: «hi»{EOS_SENTINEL}\n{EOS_SENTINEL}");
        let (text, offsets) = finalize(&raw, Some("<s>"), Some("</s>"));
        assert_eq!(text, "<s>Hé said: «hi»</s>\n</s>");
        // Character by character: each byte of a character maps to the character's start.
        let mut expected = Vec::new();
        let mut at = 0;
        for ch in raw.chars() {
            expected.extend(std::iter::repeat_n(at, ch.len_utf8()));
            at += match ch {
                BOS_SENTINEL => 3,
                EOS_SENTINEL => 4,
                ch => ch.len_utf8(),
            };
        }
        expected.push(text.len());
        assert_eq!(offsets, expected);
        // Without a token to put in, a sentinel stays.
        assert_eq!(finalize(&raw, None, None).0, raw);
    }
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

    /// Renders `messages` and returns the spans and how many renders it took.
    fn count_renders(template: &ChatTemplate, messages: Vec<Message>) -> (Rendered, usize) {
        let before = crate::template::RENDERS.with(std::cell::Cell::get);
        let rendered = template
            .render(
                &Conversation::new(messages),
                &RenderOptions::default(),
                TrainOn::All,
            )
            .unwrap();
        let renders = crate::template::RENDERS.with(std::cell::Cell::get) - before;
        (rendered, renders)
    }

    #[test]
    fn locating_spans_costs_the_same_renders_for_long_conversations() {
        let template = ChatTemplate::builtin("chatml").unwrap();
        let conversation = |turns: usize| -> Vec<Message> {
            let mut messages = vec![Message::system("Be brief.")];
            for turn in 0..turns {
                messages.push(Message::user(format!("question {turn}")));
                messages.push(Message::assistant(format!("answer {turn}")));
            }
            messages
        };
        let (_, short) = count_renders(&template, conversation(2));
        let (long, renders) = count_renders(&template, conversation(2000));
        assert_eq!(renders, short, "renders grow with the conversation");
        assert_eq!(long.spans.len(), 1 + 2000 * 3);
        let last = &long.spans[long.spans.len() - 1];
        assert_eq!(&long.text[last.start..last.end], "answer 1999<|im_end|>\n");
        assert!(last.trained);
    }

    #[test]
    fn conversations_of_one_shape_share_the_renders_that_locate_them() {
        let template = ChatTemplate::builtin("alpaca")
            .unwrap()
            .with_special_tokens(None, Some("</s>".into()));
        // An alpaca record: the template writes `instruction` and `input`, not the content.
        let record = |instruction: &str, input: &str, output: &str| {
            Conversation::new(vec![
                Message::user(format!("{instruction}\n\n{input}"))
                    .with_extra("instruction", instruction)
                    .with_extra("input", input),
                Message::assistant(output),
            ])
        };
        let renders = |conversation: &Conversation| {
            let before = crate::template::RENDERS.with(std::cell::Cell::get);
            let rendered = template
                .render_for_training(conversation, &RenderOptions::default(), TrainOn::Assistant)
                .unwrap();
            let trained: Vec<String> = rendered
                .trained_ranges()
                .map(|range| rendered.text[range].to_owned())
                .collect();
            (
                trained,
                crate::template::RENDERS.with(std::cell::Cell::get) - before,
            )
        };
        let (trained, first) = renders(&record("Add", "1 2", "3"));
        assert_eq!(trained, ["3</s>"]);
        assert!(first > 1);
        // The same shape: only its own render.
        let (trained, again) = renders(&record("Subtract", "5 4", "1"));
        assert_eq!((trained, again), (vec!["1</s>".to_owned()], 1));
        // An empty input is another shape (the template tests it).
        let (trained, other) = renders(&record("Say hi", "", "Hello"));
        assert_eq!(trained, ["Hello</s>"]);
        assert!(other > 1);
        // The template checks the probe against each render: an output the template would
        // write otherwise is still located.
        let (trained, _) = renders(&record("Add", "1 2", " 3 "));
        assert_eq!(trained, [" 3 </s>"]);
    }

    /// Locating verbatim messages must train what rendering every prefix trains, on every
    /// template, conversation and option of the parity corpus.
    #[test]
    fn verbatim_spans_equal_the_spans_of_rendering_each_prefix() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
        let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap();
        let conversations: Vec<serde_json::Value> =
            serde_json::from_str(&read(fixtures.join("conversations.json"))).unwrap();
        let mut templates: Vec<_> = std::fs::read_dir(fixtures.join("templates"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        templates.sort();
        let (mut cases, mut compared, mut identical, mut failures) = (0, 0, 0, Vec::new());
        for path in templates {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let template = ChatTemplate::from_source(name.clone(), read(path))
                .unwrap()
                .with_special_tokens(Some("<s>".into()), Some("</s>".into()));
            for json in &conversations {
                let Ok(conversation) = Conversation::from_json(json, "fixture") else {
                    continue;
                };
                let mut extra = json["extra"].as_object().cloned().unwrap_or_default();
                extra.insert("date_string".into(), "26 Jul 2024".into());
                extra.insert(
                    crate::NOW_VARIABLE.into(),
                    "2024-07-26T00:00:00+00:00".into(),
                );
                for (agp, train_on, exact) in option_grid() {
                    let options = RenderOptions {
                        add_generation_prompt: agp,
                        extra: extra.clone(),
                    };
                    let spans = |method| {
                        render_spans_by(&template, &conversation, &options, train_on, exact, method)
                            .map_err(|error| error.to_string())
                    };
                    let (verbatim, prefixes) = (spans(Method::Verbatim), spans(Method::Prefixes));
                    let trained = |rendered: &Result<Rendered, String>| {
                        rendered
                            .as_ref()
                            .map(|r| r.trained_ranges().collect::<Vec<_>>())
                            .map_err(Clone::clone)
                    };
                    cases += 1;
                    if prefixes.is_ok() {
                        compared += 1;
                    }
                    // gpt-oss renders a last assistant turn without its reasoning and with
                    // `<|return|>`: rendering a prefix of a conversation with reasoning ends the
                    // turn inside its own content. Only that template's spans may differ.
                    if verbatim == prefixes {
                        identical += 1;
                    } else if !name.starts_with("gptoss")
                        && trained(&verbatim) != trained(&prefixes)
                    {
                        failures.push(format!(
                            "{name} / {} / agp={agp} / {train_on:?} / exact={exact}:\n  verbatim {verbatim:?}\n  prefixes {prefixes:?}",
                            json["name"]
                        ));
                    }
                }
            }
        }
        assert!(compared > 2000, "{compared}");
        // Untrained spans may end elsewhere: rendering a prefix of a template that renders the
        // last turn differently (gpt-oss, Qwen3 reasoning) ends a middle message inside its
        // own content, while its verbatim content says where it is.
        assert!(identical * 100 > cases * 99, "{identical} of {cases}");
        assert!(
            failures.is_empty(),
            "{} differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    fn option_grid() -> impl Iterator<Item = (bool, TrainOn, bool)> {
        [false, true].into_iter().flat_map(|agp| {
            [TrainOn::Assistant, TrainOn::All, TrainOn::LastAssistant]
                .into_iter()
                .flat_map(move |train_on| [false, true].map(|exact| (agp, train_on, exact)))
        })
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
