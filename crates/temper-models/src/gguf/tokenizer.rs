//! The tokenizer a GGUF file describes, rebuilt as a Hugging Face `tokenizer.json` from its
//! `tokenizer.ggml.*` metadata: byte-level BPE (`gpt2`) and SentencePiece BPE (`llama`).

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use serde_json::{Value, json};

use super::{GgufFile, GgufValue};
use crate::config::LlamaFamily;
use crate::error::{Error, Result};

impl GgufFile {
    /// A Hugging Face `tokenizer.json` rebuilt from `tokenizer.ggml.*` as transformers rebuilds
    /// it: byte-level BPE (`gpt2`, the tokenizer model of SmolLM, Llama 3, Qwen2 and GPT-2),
    /// or SentencePiece BPE (`llama`: Llama 2, Mistral, Gemma).
    pub fn tokenizer_json(&self) -> Result<Value> {
        let model = self
            .meta("tokenizer.ggml.model")?
            .as_str()
            .unwrap_or_default();
        let tokens: Vec<&str> = self
            .meta("tokenizer.ggml.tokens")?
            .as_array()
            .unwrap_or_default()
            .iter()
            .map(|token| token.as_str().unwrap_or_default())
            .collect();
        let gemma = matches!(self.architecture(), Ok((_, LlamaFamily::Gemma3)));
        let parts = match model {
            "gpt2" => self.byte_level(&tokens)?,
            "llama" => self.sentencepiece(&tokens, gemma)?,
            other => {
                return Err(Error::Gguf {
                    path: self.path.clone(),
                    message: format!(
                        "tokenizer model `{other}` is not supported (byte-level BPE `gpt2` and SentencePiece `llama` are)"
                    ),
                });
            }
        };
        // Control tokens (type 3) are added as special tokens, user-defined ones (type 4) as
        // plain added tokens where the vocabulary has them as written; a control token outside
        // the byte alphabet of a byte-level vocabulary is a mislabel and is left out.
        let types = self
            .metadata
            .get("tokenizer.ggml.token_type")
            .and_then(GgufValue::as_array)
            .unwrap_or_default();
        let alphabet = byte_alphabet();
        let added: Vec<Value> = tokens
            .iter()
            .enumerate()
            .filter_map(|(id, text)| {
                let special = match types.get(id).and_then(GgufValue::as_i64) {
                    Some(3) => true,
                    Some(4) => false,
                    _ => return None,
                };
                let keep = match special {
                    true => model != "gpt2" || text.chars().all(|c| alphabet.contains(&c)),
                    false => parts.vocab.contains_key(*text),
                };
                keep.then(|| {
                    json!({
                        "id": id, "content": text, "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": special
                    })
                })
            })
            .collect();
        let mut model = parts.model;
        model["vocab"] = Value::Object(parts.vocab);
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": parts.normalizer,
            "pre_tokenizer": parts.pre_tokenizer,
            "post_processor": parts.post_processor,
            "decoder": parts.decoder,
            "model": model,
        }))
    }

    /// Byte-level BPE with the merges of the file and the pre-tokenizer `tokenizer.ggml.pre`
    /// names (an unknown one is an error, not a guess).
    fn byte_level(&self, tokens: &[&str]) -> Result<TokenizerParts> {
        let merges: Vec<&str> = self
            .meta("tokenizer.ggml.merges")?
            .as_array()
            .unwrap_or_default()
            .iter()
            .filter_map(GgufValue::as_str)
            .collect();
        // Tokens outside the byte alphabet are spelled in it, byte by byte.
        let alphabet = byte_alphabet();
        let vocab: serde_json::Map<String, Value> = tokens
            .iter()
            .enumerate()
            .map(|(id, text)| {
                let spelled = match text.chars().all(|c| alphabet.contains(&c)) {
                    true => (*text).to_owned(),
                    false => text.bytes().map(|b| alphabet[usize::from(b)]).collect(),
                };
                (spelled, json!(id))
            })
            .collect();
        let pre = self
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(GgufValue::as_str)
            .unwrap_or("default");
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let split = |regex: &str| {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                byte_level(false)]})
        };
        let pre_tokenizer = match pre {
            "default" | "gpt2" => byte_level(true),
            // SmolLM's (and StarCoder's) tokenizer splits digits one by one.
            "smollm" | "starcoder" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" | "falcon3" => {
                split(LLAMA3_SPLIT)
            }
            "qwen2" | "deepseek-r1-qwen" => split(QWEN2_SPLIT),
            other => {
                return Err(Error::Gguf {
                    path: self.path.clone(),
                    message: format!(
                        "tokenizer.ggml.pre `{other}` names a pre-tokenizer temper does not know (default, gpt2, smollm, starcoder, llama-bpe, llama3, qwen2, ... are known)"
                    ),
                });
            }
        };
        Ok(TokenizerParts {
            normalizer: Value::Null,
            pre_tokenizer,
            post_processor: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}),
            decoder: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
            vocab,
            model: json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "merges": merges}),
        })
    }

    /// SentencePiece BPE (`llama`): the file has no merges, so they are rebuilt from the
    /// vocabulary ranked by the pieces' scores (as transformers' GGUF loader does); byte
    /// fallback, unknown pieces fused. Spaces become `▁`, and when `add_space_prefix` (the
    /// default) one is prefixed to each stretch of text between special tokens, as the models'
    /// own `tokenizer.json` (Llama 2, Mistral) and llama.cpp do. transformers' loader differs
    /// there: it prefixes only the start of the text, and none to text that starts with a
    /// space, and ignores `add_space_prefix = false`.
    ///
    /// Gemma's files (GemmaTokenizer) differ: tokens of spaces are stored as spaces and
    /// respelled with `▁`, the merges are ranked by file position (Gemma's scores do not follow
    /// the merge order), and spaces are normalized to `▁` with no prefix.
    fn sentencepiece(&self, tokens: &[&str], gemma: bool) -> Result<TokenizerParts> {
        let (pieces, scores): (Vec<String>, Vec<f64>) = match gemma {
            true => tokens
                .iter()
                .enumerate()
                .map(|(position, token)| {
                    let piece = match token.contains(' ') && token.chars().all(python_space) {
                        true => "\u{2581}".repeat(token.chars().count()),
                        false => (*token).to_owned(),
                    };
                    (piece, -(position as f64))
                })
                .unzip(),
            false => {
                let scores: Vec<f64> = self
                    .meta("tokenizer.ggml.scores")?
                    .as_array()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(GgufValue::as_f64)
                    .collect();
                if scores.len() != tokens.len() {
                    return Err(Error::Gguf {
                        path: self.path.clone(),
                        message: format!(
                            "tokenizer.ggml.scores has {} numbers for {} tokens",
                            scores.len(),
                            tokens.len()
                        ),
                    });
                }
                (tokens.iter().map(|t| (*t).to_owned()).collect(), scores)
            }
        };
        let merges = merges_by_score(&pieces, &scores);
        let vocab: serde_json::Map<String, Value> = pieces
            .into_iter()
            .enumerate()
            .map(|(id, text)| (text, json!(id)))
            .collect();
        let unk = self
            .token_text("tokenizer.ggml.unknown_token_id")
            .unwrap_or_else(|| "<unk>".into());
        let prefix = !gemma && self.flag("tokenizer.ggml.add_space_prefix", true);
        let space = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        let (normalizer, pre_tokenizer) = match gemma {
            true => (
                space,
                json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
            ),
            false => {
                let mut normalizers = vec![space];
                if prefix {
                    normalizers.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
                }
                (
                    json!({"type": "Sequence", "normalizers": normalizers}),
                    Value::Null,
                )
            }
        };
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        Ok(TokenizerParts {
            normalizer,
            pre_tokenizer,
            post_processor: self.special_token_processor(),
            decoder: json!({"type": "Sequence", "decoders": decoders}),
            vocab,
            model: json!({"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "merges": merges}),
        })
    }

    /// A boolean of the metadata, `default` where the file has none.
    fn flag(&self, key: &str, default: bool) -> bool {
        match self.metadata.get(key) {
            Some(GgufValue::Bool(value)) => *value,
            _ => default,
        }
    }

    /// What a SentencePiece vocabulary adds around a text as transformers' tokenizer does:
    /// BOS before each sequence when `add_bos_token` (the default), EOS after each when
    /// `add_eos_token` (not the default).
    fn special_token_processor(&self) -> Value {
        let around = |key: &str, id_key: &str, default: bool| {
            let text = self.token_text(id_key)?;
            let id = self.optional_usize(id_key)?;
            self.flag(key, default).then_some((text, id))
        };
        let bos = around(
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.bos_token_id",
            true,
        );
        let eos = around(
            "tokenizer.ggml.add_eos_token",
            "tokenizer.ggml.eos_token_id",
            false,
        );
        if bos.is_none() && eos.is_none() {
            return Value::Null;
        }
        let sequence = |id: &str, type_id: u32| {
            let special = |token: &Option<(String, usize)>| {
                token
                    .as_ref()
                    .map(|(text, _)| json!({"SpecialToken": {"id": text, "type_id": type_id}}))
            };
            special(&bos)
                .into_iter()
                .chain([json!({"Sequence": {"id": id, "type_id": type_id}})])
                .chain(special(&eos))
                .collect::<Vec<Value>>()
        };
        let single = sequence("A", 0);
        let mut pair = single.clone();
        pair.extend(sequence("B", 1));
        let special_tokens: serde_json::Map<String, Value> = [&bos, &eos]
            .into_iter()
            .flatten()
            .map(|(text, id)| {
                (
                    text.clone(),
                    json!({"id": text, "ids": [id], "tokens": [text]}),
                )
            })
            .collect();
        json!({"type": "TemplateProcessing", "single": single, "pair": pair,
            "special_tokens": special_tokens})
    }
}

/// Python's `str.isspace`: Unicode white space and the four ASCII separators.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// GPT-2's byte alphabet: the character each byte is spelled with in byte-level vocabularies
/// (printable bytes as themselves, the others from U+0100 on).
fn byte_alphabet() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    std::array::from_fn(|byte| {
        let byte = byte as u8;
        if printable(byte) {
            char::from(byte)
        } else {
            let c = char::from_u32(next).unwrap_or('\u{FFFD}');
            next += 1;
            c
        }
    })
}

/// The parts of a `tokenizer.json` that differ between tokenizer kinds.
struct TokenizerParts {
    /// Token -> id, as the model's `vocab`.
    vocab: serde_json::Map<String, Value>,
    normalizer: Value,
    pre_tokenizer: Value,
    post_processor: Value,
    decoder: Value,
    model: Value,
}

/// Llama 3's pre-tokenizer split (`tokenizer.ggml.pre` = `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// BPE merges implied by a vocabulary with scores, as transformers' `generate_merges` makes
/// them: every split of a piece into two pieces is a merge with the score of the piece it
/// makes; best score first, then longer left and right pieces, then vocabulary order (pieces
/// by first position, each by its halves' ids). Lengths are in chars; a repeated piece keeps
/// its first position and its last id and score, as Python's dicts do.
fn merges_by_score(pieces: &[String], scores: &[f64]) -> Vec<[String; 2]> {
    let mut id: HashMap<&str, usize> = HashMap::with_capacity(pieces.len());
    for (index, piece) in pieces.iter().enumerate() {
        id.insert(piece.as_str(), index);
    }
    let mut seen = HashSet::with_capacity(pieces.len());
    let first: Vec<bool> = pieces.iter().map(|p| seen.insert(p.as_str())).collect();
    // (score, left chars, right chars, first position, left id, right id, left, right)
    let mut merges: Vec<_> = pieces
        .par_iter()
        .enumerate()
        .filter(|&(position, _)| first[position])
        .flat_map_iter(|(position, piece)| {
            let score = scores[id[piece.as_str()]];
            let length = piece.chars().count();
            let id = &id;
            piece
                .char_indices()
                .enumerate()
                .skip(1)
                .filter_map(move |(split, (at, _))| {
                    let (left, right) = piece.split_at(at);
                    let (&l, &r) = (id.get(left)?, id.get(right)?);
                    Some((score, split, length - split, position, l, r, left, right))
                })
        })
        .collect();
    merges.par_sort_unstable_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(b.1.cmp(&a.1))
            .then(b.2.cmp(&a.2))
            .then((a.3, a.4, a.5).cmp(&(b.3, b.4, b.5)))
    });
    merges
        .into_par_iter()
        .map(|(.., left, right)| [left.to_owned(), right.to_owned()])
        .collect()
}
