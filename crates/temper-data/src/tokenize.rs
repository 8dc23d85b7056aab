//! Tokenization and loss masks: rendered text + trained byte spans -> token ids + a mask.
//!
//! ```text
//! text    <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n
//! spans   [user ..........................][asst header ......][trained .........]
//! tokens  <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n Hello ! <|im_end|> \n
//! mask     .           .    .  .  .          .  .            .         .  #     # #          #
//! ```
//!
//! A token is trained when any of its bytes lies in a trained span, so a token that straddles
//! the header and the answer (SentencePiece's `▁The`) is trained. Tokens the tokenizer adds
//! itself (a BOS from its post-processor) have no bytes and are never trained.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Token ids and the byte range of the text each one covers (empty for added specials).
pub type Encoded = (Vec<u32>, Vec<(usize, usize)>);

/// A `tokenizer.json` tokenizer and the special tokens the pipeline needs.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// An exact, faster encoder for byte-level BPE tokenizers (GPT-2 style), when it applies.
    fast: Option<crate::fast_bpe::FastByteLevel>,
    path: PathBuf,
    pub bos: Option<SpecialToken>,
    pub eos: SpecialToken,
    /// The id used for padding; the EOS id when the tokenizer has no pad token (GPT-2).
    pub pad_id: u32,
}

/// A special token's text and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecialToken {
    pub text: String,
    pub id: u32,
}

/// Explicit special-token choices; `None` means "find out".
#[derive(Debug, Clone, Default)]
pub struct SpecialTokenNames {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
}

const EOS_CANDIDATES: [&str; 7] = [
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<eos>",
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
];
const BOS_CANDIDATES: [&str; 3] = ["<s>", "<|begin_of_text|>", "<bos>"];
const PAD_CANDIDATES: [&str; 4] = ["<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>"];

impl Tokenizer {
    /// Loads `tokenizer.json`. Special tokens come from `names`, else from a
    /// `tokenizer_config.json` next to the file, else from well-known token strings.
    pub fn from_file(path: &Path, names: &SpecialTokenNames) -> Result<Tokenizer> {
        let text = std::fs::read_to_string(path).map_err(|error| Error::Io {
            path: path.to_owned(),
            error,
        })?;
        Tokenizer::from_json(&text, path, names)
    }

    /// A tokenizer from the text of a `tokenizer.json`; `path` names it in messages and
    /// locates a `tokenizer_config.json` beside it.
    pub fn from_json(text: &str, path: &Path, names: &SpecialTokenNames) -> Result<Tokenizer> {
        // JSON first: `tokenizers` panics on some malformed JSON (its decoder deserializer
        // `expect`s), so only well-formed JSON reaches it.
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|error| Error::Tokenizer {
                path: path.to_owned(),
                message: format!(
                    "line {}, column {}: invalid JSON: {error}",
                    error.line(),
                    error.column()
                ),
            })?;
        Tokenizer::from_value(&json, path, names)
    }

    /// A tokenizer from a parsed `tokenizer.json` (built in memory, from a GGUF file say).
    pub fn from_value(
        json: &serde_json::Value,
        path: &Path,
        names: &SpecialTokenNames,
    ) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::deserialize(json).map_err(|error| Error::Tokenizer {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
        let mut tokenizer = Tokenizer::new(inner, path, names)?;
        tokenizer.fast = crate::fast_bpe::FastByteLevel::for_tokenizer(json, &tokenizer.inner);
        Ok(tokenizer)
    }

    /// Wraps an already loaded tokenizer (`path` is used in messages and to find a
    /// `tokenizer_config.json` beside it).
    pub fn new(
        inner: tokenizers::Tokenizer,
        path: &Path,
        names: &SpecialTokenNames,
    ) -> Result<Tokenizer> {
        let config = path
            .parent()
            .map(|dir| dir.join("tokenizer_config.json"))
            .filter(|config| config.is_file())
            .and_then(|config| std::fs::read_to_string(config).ok())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        let from_config = |key: &str| {
            config
                .as_ref()
                .and_then(|config| temper_chat::special_token(config, key))
        };
        let lookup = |key: &str, text: &str| -> Result<SpecialToken> {
            let id = inner.token_to_id(text).ok_or_else(|| Error::Tokenizer {
                path: path.to_owned(),
                message: format!("{key} `{text}` is not in the vocabulary"),
            })?;
            Ok(SpecialToken {
                text: text.to_owned(),
                id,
            })
        };
        let guess = |candidates: &[&str]| {
            candidates
                .iter()
                .find(|c| inner.token_to_id(c).is_some())
                .map(|c| c.to_string())
        };

        let eos_text = names
            .eos
            .clone()
            .or_else(|| from_config("eos_token"))
            .or_else(|| guess(&EOS_CANDIDATES));
        let eos_text = eos_text.ok_or_else(|| Error::Tokenizer {
            path: path.to_owned(),
            message: "cannot tell which token ends a sequence: set `eos_token`".into(),
        })?;
        let eos = lookup("eos_token", &eos_text)?;
        let bos = match names
            .bos
            .clone()
            .or_else(|| from_config("bos_token"))
            .or_else(|| guess(&BOS_CANDIDATES))
        {
            Some(text) => Some(lookup("bos_token", &text)?),
            None => None,
        };
        let pad = match names
            .pad
            .clone()
            .or_else(|| from_config("pad_token"))
            .or_else(|| guess(&PAD_CANDIDATES))
        {
            Some(text) => Some(lookup("pad_token", &text)?),
            None => None,
        };
        let pad_id = pad.map_or(eos.id, |pad| pad.id);
        Ok(Tokenizer {
            inner,
            fast: None,
            path: path.to_owned(),
            bos,
            eos,
            pad_id,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes text with the tokenizer's own special tokens (its post-processor's BOS).
    /// Returns ids and byte offsets; tokens the tokenizer added have empty offsets.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let (mut ids, mut offsets) = match &self.fast {
            Some(fast) => fast.encode(text, self.inner.get_model()),
            None => self.encode_reference(text),
        }
        .map_err(|error| Error::Tokenizer {
            path: self.path.clone(),
            message: error.to_string(),
        })?;
        // A template that writes BOS itself and a tokenizer that adds one: keep one.
        if let Some(bos) = &self.bos
            && ids.len() >= 2
            && ids[0] == bos.id
            && ids[1] == bos.id
        {
            let added = if offsets[0].1 == offsets[0].0 { 0 } else { 1 };
            ids.remove(added);
            offsets.remove(added);
        }
        Ok((ids, offsets))
    }

    /// `tokenizers`' own `encode` (ids and byte offsets), without the fast path.
    pub fn encode_reference(&self, text: &str) -> tokenizers::Result<Encoded> {
        let encoding = self.inner.encode(text, true)?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }

    /// The whole tokenizer as JSON (what the prepared-data cache's key hashes).
    pub(crate) fn definition(&self) -> String {
        self.inner.to_string(false).unwrap_or_default()
    }

    /// Whether the exact fast byte-level BPE encoder is in use.
    pub fn uses_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Token ids -> text (for display).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    /// The text of one token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// The loss mask of tokens with byte `offsets`, given ordered trained byte ranges: a token is
/// trained when it overlaps a trained range.
pub fn loss_mask(offsets: &[(usize, usize)], trained: &[Range<usize>]) -> Vec<bool> {
    let mut mask = Vec::with_capacity(offsets.len());
    let mut range = 0;
    for &(start, end) in offsets {
        if end <= start {
            mask.push(false);
            continue;
        }
        while range < trained.len() && trained[range].end <= start {
            range += 1;
        }
        mask.push(trained.get(range).is_some_and(|r| r.start < end));
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_overlapping_a_trained_range_are_trained() {
        let offsets = [(0, 0), (0, 3), (3, 5), (5, 9), (9, 10), (10, 12)];
        let mask = loss_mask(&offsets, &[4..6, 10..12]);
        assert_eq!(mask, [false, false, true, true, false, true]);
    }

    #[test]
    fn nothing_is_trained_without_ranges() {
        assert_eq!(loss_mask(&[(0, 1), (1, 2)], &[]), [false, false]);
    }
}
