//! A faster encoder for byte-level BPE tokenizers (GPT-2 and its relatives), with results
//! identical to `tokenizers`' own `encode`: same ids, same byte offsets.
//!
//! `tokenizers` builds a `NormalizedString` with per-byte alignments for every pre-token and
//! runs an Oniguruma regex; that, not BPE, dominates its time on SFT data. This path splits
//! added tokens with Aho-Corasick, pre-tokenizes with the GPT-2 pattern (by hand over ASCII,
//! in the `regex` crate where a non-ASCII character is involved; emulating its one
//! lookahead), and memoises each pre-token's BPE result per thread, calling
//! the tokenizer's own BPE model on a miss. It is used only for tokenizers whose configuration
//! it reproduces exactly (see [`FastByteLevel::for_tokenizer`]); the test
//! `fast_path_matches_tokenizers` in `tests/pipeline.rs` compares it with `tokenizers` on
//! every shipped dataset.

use std::cell::RefCell;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;
use rustc_hash::FxHashMap;
use tokenizers::Model;

/// The GPT-2 pre-tokenization pattern without its `\s+(?!\S)` lookahead, which
/// [`FastByteLevel::pieces`] emulates.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Entries per thread before the memo is cleared.
const CACHE_LIMIT: usize = 200_000;

#[derive(Debug, Clone)]
pub(crate) struct FastByteLevel {
    added: Option<AhoCorasick>,
    added_ids: Vec<u32>,
    split: Regex,
    byte_chars: [char; 256],
}

type Piece = Box<[(u32, u32, u32)]>;

thread_local! {
    static MEMO: RefCell<FxHashMap<Box<str>, Piece>> = RefCell::new(FxHashMap::default());
}

impl FastByteLevel {
    /// The fast path for `json` (the tokenizer file), or `None` when the tokenizer does
    /// anything this path does not reproduce (a normalizer, another pre-tokenizer, offset
    /// trimming, added tokens with strip rules, BPE dropout or affixes).
    pub(crate) fn for_tokenizer(
        json: &serde_json::Value,
        tokenizer: &tokenizers::Tokenizer,
    ) -> Option<FastByteLevel> {
        let byte_level = |value: &serde_json::Value| value["type"] == "ByteLevel";
        let pre = &json["pre_tokenizer"];
        let model = &json["model"];
        let post = &json["post_processor"];
        let plain_affix = |v: &serde_json::Value| v.is_null() || v == "";
        let supported = json["normalizer"].is_null()
            && byte_level(pre)
            && pre["add_prefix_space"] == false
            && pre["use_regex"] == true
            && model["type"] == "BPE"
            && model["dropout"].is_null()
            && plain_affix(&model["continuing_subword_prefix"])
            && plain_affix(&model["end_of_word_suffix"])
            && model["byte_fallback"] != true
            && model["ignore_merges"] != true
            && (post.is_null() || (byte_level(post) && post["trim_offsets"] == false))
            && json["truncation"].is_null()
            && json["padding"].is_null()
            && json["added_tokens"].as_array().is_some_and(|tokens| {
                tokens.iter().all(|t| {
                    t["lstrip"] == false && t["rstrip"] == false && t["single_word"] == false
                })
            });
        if !supported {
            return None;
        }
        let added: Vec<(String, u32)> = json["added_tokens"]
            .as_array()?
            .iter()
            .map(|t| {
                Some((
                    t["content"].as_str()?.to_owned(),
                    u32::try_from(t["id"].as_u64()?).ok()?,
                ))
            })
            .collect::<Option<_>>()?;
        // The model must know the added ids too (a sanity check of the file).
        if added
            .iter()
            .any(|(content, id)| tokenizer.token_to_id(content) != Some(*id))
        {
            return None;
        }
        let matcher = if added.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(added.iter().map(|(content, _)| content))
                    .ok()?,
            )
        };
        Some(FastByteLevel {
            added: matcher,
            added_ids: added.into_iter().map(|(_, id)| id).collect(),
            split: Regex::new(GPT2_PATTERN).ok()?,
            byte_chars: byte_to_char(),
        })
    }

    /// Ids and byte offsets of `text`, as `tokenizers::Tokenizer::encode(text, _)` gives them.
    pub(crate) fn encode(
        &self,
        text: &str,
        model: &impl Model,
    ) -> tokenizers::Result<crate::tokenize::Encoded> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut offsets = Vec::with_capacity(text.len() / 3);
        let mut cursor = 0;
        if let Some(added) = &self.added {
            for found in added.find_iter(text) {
                self.encode_segment(text, cursor, found.start(), model, &mut ids, &mut offsets)?;
                ids.push(self.added_ids[found.pattern().as_usize()]);
                offsets.push((found.start(), found.end()));
                cursor = found.end();
            }
        }
        self.encode_segment(text, cursor, text.len(), model, &mut ids, &mut offsets)?;
        Ok((ids, offsets))
    }

    fn encode_segment(
        &self,
        text: &str,
        start: usize,
        end: usize,
        model: &impl Model,
        ids: &mut Vec<u32>,
        offsets: &mut Vec<(usize, usize)>,
    ) -> tokenizers::Result<()> {
        let segment = &text[start..end];
        let mut position = 0;
        while position < segment.len() {
            let (piece_start, mut piece_end) = match ascii_match_end(segment.as_bytes(), position) {
                Some(end) => (position, end),
                None => match self.split.find_at(segment, position) {
                    Some(found) => (found.start(), found.end()),
                    None => break,
                },
            };
            let piece = &segment[piece_start..piece_end];
            // `\s+(?!\S)`: a run of whitespace followed by a non-space gives up its last
            // character, which then starts the next pre-token (" word").
            if piece_end < segment.len()
                && piece.chars().all(char::is_whitespace)
                && piece.chars().nth(1).is_some()
            {
                piece_end -= piece.chars().next_back().map_or(0, char::len_utf8);
            }
            let piece = &segment[piece_start..piece_end];
            let base = start + piece_start;
            MEMO.with(|memo| -> tokenizers::Result<()> {
                let mut memo = memo.borrow_mut();
                if let Some(tokens) = memo.get(piece) {
                    for &(id, s, e) in tokens.iter() {
                        ids.push(id);
                        offsets.push((base + s as usize, base + e as usize));
                    }
                    return Ok(());
                }
                let tokens = self.tokenize_piece(piece, model)?;
                for &(id, s, e) in tokens.iter() {
                    ids.push(id);
                    offsets.push((base + s as usize, base + e as usize));
                }
                if memo.len() >= CACHE_LIMIT {
                    memo.clear();
                }
                memo.insert(piece.into(), tokens);
                Ok(())
            })?;
            position = piece_end;
        }
        Ok(())
    }

    /// BPE of one pre-token, with offsets widened to whole characters as `tokenizers` reports
    /// them (a token holding part of a multi-byte character covers all of it).
    fn tokenize_piece(&self, piece: &str, model: &impl Model) -> tokenizers::Result<Piece> {
        let mut mapped = String::with_capacity(piece.len() * 2);
        // For each byte of `mapped`, the original byte it stands for.
        let mut mapped_to_byte = Vec::with_capacity(piece.len() * 2 + 1);
        for (index, &byte) in piece.as_bytes().iter().enumerate() {
            let ch = self.byte_chars[byte as usize];
            mapped.push(ch);
            mapped_to_byte.extend(std::iter::repeat_n(index, ch.len_utf8()));
        }
        mapped_to_byte.push(piece.len());
        let char_start = |byte: usize| {
            (0..=byte)
                .rev()
                .find(|&b| piece.is_char_boundary(b))
                .unwrap_or(0)
        };
        let char_end = |byte: usize| {
            (byte..=piece.len())
                .find(|&b| piece.is_char_boundary(b))
                .unwrap_or(piece.len())
        };
        Ok(model
            .tokenize(&mapped)?
            .into_iter()
            .map(|token| {
                let start = char_start(mapped_to_byte[token.offsets.0]);
                let end = char_end(mapped_to_byte[token.offsets.1 - 1] + 1);
                (token.id, start as u32, end as u32)
            })
            .collect())
    }
}

/// Whether `byte` is an ASCII character of Unicode's White_Space (what `\s` matches).
fn is_ascii_space(byte: u8) -> bool {
    matches!(byte, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ')
}

/// The GPT-2 pattern's classes of ASCII characters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn ascii_class(byte: u8) -> Class {
    if byte.is_ascii_alphabetic() {
        Class::Letter
    } else if byte.is_ascii_digit() {
        Class::Number
    } else if is_ascii_space(byte) {
        Class::Space
    } else {
        Class::Other
    }
}

/// The end of the match of [`GPT2_PATTERN`] at `position` of `text`, found without the regex
/// where only ASCII is involved; `None` when a non-ASCII character could change it (the regex
/// decides those).
fn ascii_match_end(text: &[u8], position: usize) -> Option<usize> {
    let first = *text.get(position)?;
    if !first.is_ascii() {
        return None;
    }
    if first == b'\'' {
        let rest = &text[position + 1..];
        let contraction = ["s", "t", "re", "ve", "m", "ll", "d"]
            .into_iter()
            .find(|suffix| rest.starts_with(suffix.as_bytes()));
        if let Some(suffix) = contraction {
            return Some(position + 1 + suffix.len());
        }
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: a space joins the run after it.
    let start = match text.get(position + 1) {
        Some(&next) if first == b' ' && !next.is_ascii() => return None,
        Some(&next) if first == b' ' && !is_ascii_space(next) => position + 1,
        _ => position,
    };
    let class = ascii_class(text[start]);
    let mut end = start + 1;
    while let Some(&byte) = text.get(end) {
        if !byte.is_ascii() {
            return None;
        }
        if ascii_class(byte) != class {
            break;
        }
        end += 1;
    }
    Some(end)
}

/// GPT-2's reversible map from bytes to printable characters.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[byte as usize] = if printable {
            char::from(byte)
        } else {
            let ch = char::from_u32(next).unwrap_or('\0');
            next += 1;
            ch
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_scanner_matches_the_regex() {
        let pattern = Regex::new(GPT2_PATTERN).unwrap();
        // Every class and contraction, in a seeded jumble.
        let alphabet: Vec<&str> = vec![
            "a", "Z", "q", "0", "7", "'", "s", "t", "re", "ve", "m", "ll", "d", "S", " ", " ",
            "\n", "\t", "\r", "\u{b}", "\u{c}", "!", ".", ",", "-", "\u{1}", "\u{7f}", "_",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..(state % 24) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            for position in 0..text.len() {
                let expected = pattern
                    .find_at(&text, position)
                    .map(|m| (m.start(), m.end()));
                assert_eq!(
                    ascii_match_end(text.as_bytes(), position).map(|end| (position, end)),
                    expected,
                    "{text:?} at {position}"
                );
            }
        }
        // Non-ASCII is left to the regex.
        assert_eq!(ascii_match_end("caf\u{e9}".as_bytes(), 0), None);
        assert_eq!(ascii_match_end(" \u{e9}".as_bytes(), 0), None);
        assert_eq!(ascii_match_end("ab c\u{e9}".as_bytes(), 0), Some(2));
    }
}
