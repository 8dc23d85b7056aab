//! Exact and near duplicates among the records of a dataset, found as records stream past.
//!
//! Exact: the same text (a 128-bit hash of it). Near: at least 80% of their word 3-grams in
//! common, estimated from 64 MinHash values per record (kept as their low 16 bits, 128 bytes a
//! record): records sharing all four values of one of 16 bands are candidates, and a
//! candidate is a near duplicate when at least 80% of the 64 values agree.

use std::hash::{BuildHasher, Hash, Hasher};

use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::error::Location;

const BANDS: usize = 16;
const ROWS: usize = 4;
const HASHES: usize = BANDS * ROWS;
/// The share of agreeing MinHash values (an estimate of the Jaccard similarity of the word
/// 3-gram sets) at which two records are near duplicates.
const NEAR_DUPLICATE_AGREEMENT: f64 = 0.8;

/// What the finder needs of one record's text: computed in parallel, observed in order.
#[derive(Debug, Clone)]
pub(crate) struct Fingerprint {
    text: u128,
    minhash: [u16; HASHES],
}

impl Fingerprint {
    pub(crate) fn of(text: &str) -> Fingerprint {
        Fingerprint {
            text: text_hash(text),
            minhash: minhash(text),
        }
    }
}

/// The earlier record a record repeats, by index in observation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    Exact(usize),
    Near(usize),
}

/// Every record observed so far: its text hash and its MinHash values, bucketed by band.
#[derive(Debug)]
pub(crate) struct DuplicateFinder {
    first_with_text: FxHashMap<u128, u32>,
    first_in_bucket: Vec<FxHashMap<u64, u32>>,
    minhashes: Vec<[u16; HASHES]>,
    locations: Vec<Location>,
}

impl Default for DuplicateFinder {
    fn default() -> Self {
        DuplicateFinder {
            first_with_text: FxHashMap::default(),
            first_in_bucket: vec![FxHashMap::default(); BANDS],
            minhashes: Vec::new(),
            locations: Vec::new(),
        }
    }
}

impl DuplicateFinder {
    /// Observes the next record: the earlier one it duplicates exactly, else the earlier one it
    /// nearly duplicates (the first record of a bucket it shares), if any.
    pub(crate) fn observe(&mut self, fingerprint: &Fingerprint, at: &Location) -> Option<Repeat> {
        let index = self.minhashes.len() as u32;
        self.locations.push(at.clone());
        self.minhashes.push(fingerprint.minhash);
        let exact = *self
            .first_with_text
            .entry(fingerprint.text)
            .or_insert(index);
        let mut near = None;
        for (band, buckets) in self.first_in_bucket.iter_mut().enumerate() {
            let key = fingerprint.minhash[band * ROWS..(band + 1) * ROWS]
                .iter()
                .fold(0u64, |key, &value| key << 16 | u64::from(value));
            let first = *buckets.entry(key).or_insert(index);
            if near.is_none() && first != index && exact == index {
                let agree = fingerprint
                    .minhash
                    .iter()
                    .zip(&self.minhashes[first as usize])
                    .filter(|(a, b)| a == b)
                    .count();
                if agree as f64 >= NEAR_DUPLICATE_AGREEMENT * HASHES as f64 {
                    near = Some(first as usize);
                }
            }
        }
        if exact != index {
            Some(Repeat::Exact(exact as usize))
        } else {
            near.map(Repeat::Near)
        }
    }

    /// Where the record observed `index`-th came from.
    pub(crate) fn location(&self, index: usize) -> &Location {
        &self.locations[index]
    }
}

fn text_hash(text: &str) -> u128 {
    let half = |seed: u64| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut hasher);
        text.hash(&mut hasher);
        hasher.finish()
    };
    u128::from(half(1)) << 64 | u128::from(half(2))
}

/// A 64-bit mix of `value` (splitmix64's finaliser): one of a family of hash functions.
fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// Hashes of the lowercased alphanumeric words of `text`.
fn word_hashes(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| {
            let mut hasher = FxBuildHasher.build_hasher();
            for c in word.chars().flat_map(char::to_lowercase) {
                hasher.write_u32(c as u32);
            }
            hasher.finish()
        })
        .collect()
}

/// The low 16 bits of the minimum of each of 64 hash functions over the text's word 3-grams
/// (the whole text as one shingle when it has fewer than three words).
fn minhash(text: &str) -> [u16; HASHES] {
    let words = word_hashes(text);
    let combine = |words: &[u64]| {
        words
            .iter()
            .fold(0x9e37_79b9_7f4a_7c15u64, |h, &w| mix(h ^ w))
    };
    let shingles: Vec<u64> = if words.len() < 3 {
        vec![combine(&words)]
    } else {
        words.windows(3).map(combine).collect()
    };
    let mut minimum = [u64::MAX; HASHES];
    for shingle in shingles {
        for (k, slot) in minimum.iter_mut().enumerate() {
            *slot = (*slot).min(mix(
                shingle ^ (k as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ));
        }
    }
    minimum.map(|value| value as u16)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::error::Position;

    #[test]
    fn exact_and_near_duplicates_are_found_and_distinct_texts_are_not() {
        let base = "the quick brown fox jumps over the lazy dog near the river bank today";
        let texts = [
            base.to_owned(),
            format!("{base} again"),
            "completely different words about sorting numbers in ascending order quickly"
                .to_owned(),
            base.to_owned(),
            "The QUICK brown fox, jumps over the lazy dog near the river bank today!".to_owned(),
        ];
        let file: Arc<Path> = Arc::from(Path::new("t.jsonl"));
        let mut finder = DuplicateFinder::default();
        let found: Vec<Option<Repeat>> = texts
            .iter()
            .enumerate()
            .map(|(line, text)| {
                finder.observe(
                    &Fingerprint::of(text),
                    &Location::new(&file, Position::Line(line + 1)),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                None,
                Some(Repeat::Near(0)),
                None,
                Some(Repeat::Exact(0)),
                // Case and punctuation aside, the same words: all 3-grams shared.
                Some(Repeat::Near(0)),
            ]
        );
        assert_eq!(finder.location(1).to_string(), "t.jsonl:2");
    }
}
