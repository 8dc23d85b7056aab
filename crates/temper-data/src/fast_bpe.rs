//! A faster encoder for byte-level BPE tokenizers (GPT-2 and its relatives), with results
//! identical to `tokenizers`' own `encode`: same ids, same byte offsets.
//!
//! `tokenizers` builds a `NormalizedString` with per-byte alignments for every pre-token and
//! runs an Oniguruma regex; that, not BPE, dominates its time on SFT data. This path splits
//! added tokens with Aho-Corasick, pre-tokenizes with the GPT-2 pattern in the `regex` crate
//! (emulating its one lookahead), and memoises each pre-token's BPE result per thread, calling
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
            let Some(found) = self.split.find_at(segment, position) else {
                break;
            };
            let mut piece_end = found.end();
            let piece = found.as_str();
            // `\s+(?!\S)`: a run of whitespace followed by a non-space gives up its last
            // character, which then starts the next pre-token (" word").
            if piece_end < segment.len()
                && piece.chars().all(char::is_whitespace)
                && piece.chars().nth(1).is_some()
            {
                piece_end -= piece.chars().next_back().map_or(0, char::len_utf8);
            }
            let piece_start = found.start();
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
