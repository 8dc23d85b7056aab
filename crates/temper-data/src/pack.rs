//! Packing short examples into rows of at most `max_length` tokens, and padded batches.
//!
//! ```text
//! examples   A A A A A      B B B      C C        D D D D
//! pack 0     A A A A A C C .           position_ids 0 1 2 3 4 0 1     segment_ids 1 1 1 1 1 2 2 0
//! pack 1     D D D D B B B .           position_ids 0 1 2 3 0 1 2     segment_ids 1 1 1 1 2 2 2 0
//!                                      (restart per example)           (0 = padding)
//! ```
//!
//! Position ids restart at 0 for every example and `boundaries` (cumulative sequence lengths)
//! say where each example starts, so attention can be block-diagonal causal: no example sees
//! another, and a packed row gives the same per-example loss as the examples run alone.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::example::Example;
use crate::store::ExampleRef;

/// Examples concatenated into one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pack {
    pub input_ids: Vec<u32>,
    pub loss_mask: Vec<bool>,
    /// Restart at 0 for each example.
    pub position_ids: Vec<u32>,
    /// Start offset of each example, then the total length (`cu_seqlens`): example `k` is
    /// `boundaries[k]..boundaries[k + 1]`.
    pub boundaries: Vec<usize>,
    /// Indices of the packed examples in the input slice, in row order.
    pub examples: Vec<usize>,
}

impl Pack {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// A row holding one example.
    pub fn single(example: &Example) -> Pack {
        let mut pack = Pack::empty();
        pack.extend(&example.input_ids, example.loss_mask.iter().copied(), 0);
        pack
    }

    pub(crate) fn empty() -> Pack {
        Pack {
            input_ids: Vec::new(),
            loss_mask: Vec::new(),
            position_ids: Vec::new(),
            boundaries: vec![0],
            examples: Vec::new(),
        }
    }

    /// Appends example `index`.
    pub(crate) fn push(&mut self, example: ExampleRef<'_>, index: usize) {
        let mask = example.loss_mask.iter().map(|&m| m != 0);
        self.extend(example.input_ids, mask, index);
    }

    fn extend(&mut self, ids: &[u32], mask: impl Iterator<Item = bool>, index: usize) {
        self.input_ids.extend_from_slice(ids);
        self.loss_mask.extend(mask);
        self.position_ids.extend(0..ids.len() as u32);
        self.boundaries.push(self.input_ids.len());
        self.examples.push(index);
    }
}

/// Best-fit-decreasing packing of examples of the given `lengths`: sorted longest first
/// (ties in input order), each goes into the open bin with the least room that still fits it
/// (the earliest such bin on ties), or a new bin. Returns each bin's example indices, bins in
/// the order they were opened. Examples longer than `max_length` must be truncated first;
/// they get a bin of their own.
pub fn pack(lengths: &[usize], max_length: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    // (room left, bin index) of every bin, so the best fit is the first entry >= (len, 0).
    let mut room: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut bins: Vec<Vec<usize>> = Vec::new();
    for index in order {
        let len = lengths[index];
        match room.range((len, 0)..).next().copied() {
            Some((left, bin)) => {
                room.remove(&(left, bin));
                room.insert((left - len, bin));
                bins[bin].push(index);
            }
            None => {
                room.insert((max_length.saturating_sub(len), bins.len()));
                bins.push(vec![index]);
            }
        }
    }
    bins
}

/// Fraction of `rows` rows of `max_length` tokens that `tokens` real tokens fill.
pub fn packing_efficiency(tokens: usize, rows: usize, max_length: usize) -> f64 {
    if rows == 0 || max_length == 0 {
        return 0.0;
    }
    tokens as f64 / (rows * max_length) as f64
}

/// A batch as plain row-major data, ready to become tensors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    /// `[batch_size * seq_len]`; padding positions hold the pad id.
    pub input_ids: Vec<u32>,
    /// `[batch_size * seq_len]`; never true on padding.
    pub loss_mask: Vec<bool>,
    /// `[batch_size * seq_len]`; restart at 0 per example, 0 on padding.
    pub position_ids: Vec<u32>,
    /// `[batch_size * seq_len]`; 1, 2, ... for the examples of a row, 0 for padding. Two
    /// positions may attend to each other only if their segment ids are equal and non-zero.
    pub segment_ids: Vec<u32>,
}

impl Batch {
    /// Number of trained tokens (the normaliser of a token-weighted loss).
    pub fn trained_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }

    /// Number of non-padding tokens.
    pub fn real_tokens(&self) -> usize {
        self.segment_ids.iter().filter(|&&s| s != 0).count()
    }
}

/// The length a batch whose longest row has `longest` tokens is padded to.
pub fn padded_length(longest: usize, pad_to_multiple_of: Option<usize>) -> usize {
    match pad_to_multiple_of {
        Some(multiple) if multiple > 1 => longest.div_ceil(multiple).saturating_mul(multiple),
        _ => longest,
    }
}

/// Pads rows to the longest row (rounded up to a multiple of `pad_to_multiple_of`, if given).
/// Padding is identified by `segment_ids == 0`, never by comparing ids with `pad_id`, so a
/// tokenizer whose pad token is its EOS (GPT-2) keeps its trained EOS tokens trained.
pub fn collate(rows: &[&Pack], pad_id: u32, pad_to_multiple_of: Option<usize>) -> Batch {
    let longest = rows.iter().map(|row| row.len()).max().unwrap_or(0);
    let seq_len = padded_length(longest, pad_to_multiple_of);
    let size = rows.len() * seq_len;
    let mut batch = Batch {
        batch_size: rows.len(),
        seq_len,
        input_ids: Vec::with_capacity(size),
        loss_mask: Vec::with_capacity(size),
        position_ids: Vec::with_capacity(size),
        segment_ids: Vec::with_capacity(size),
    };
    for row in rows {
        let pad = seq_len - row.len();
        batch.input_ids.extend_from_slice(&row.input_ids);
        batch.input_ids.extend(std::iter::repeat_n(pad_id, pad));
        batch.loss_mask.extend_from_slice(&row.loss_mask);
        batch.loss_mask.extend(std::iter::repeat_n(false, pad));
        batch.position_ids.extend_from_slice(&row.position_ids);
        batch.position_ids.extend(std::iter::repeat_n(0, pad));
        for (segment, window) in row.boundaries.windows(2).enumerate() {
            batch.segment_ids.extend(std::iter::repeat_n(
                segment as u32 + 1,
                window[1] - window[0],
            ));
        }
        batch.segment_ids.extend(std::iter::repeat_n(0, pad));
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_never_splits_an_example_or_overflows() {
        let lengths = [5, 3, 2, 4, 7, 1, 8, 6];
        let bins = pack(&lengths, 8);
        let mut seen: Vec<usize> = bins.concat();
        seen.sort();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
        for bin in &bins {
            assert!(bin.iter().map(|&i| lengths[i]).sum::<usize>() <= 8);
        }
        // 36 tokens in 8-token bins: best fit needs 5 bins.
        assert_eq!(bins.len(), 5);
    }

    #[test]
    fn best_fit_picks_the_tightest_bin() {
        // Sorted: 6, 5, 3(a), 2, 2. 6 -> bin0 (room 4), 5 -> bin1 (room 5), 3 -> bin0 (room 1)
        // is tighter than bin1, then 2 -> bin1 (room 3), 2 -> bin1 (room 1).
        let bins = pack(&[3, 6, 2, 5, 2], 10);
        assert_eq!(bins, [vec![1, 0], vec![3, 2, 4]]);
        assert!((packing_efficiency(18, bins.len(), 10) - 0.9).abs() < 1e-12);
    }

    #[test]
    fn padding_is_marked_by_segment_not_by_id() {
        // GPT-2: pad id == EOS id == 50256, and the trained last token is an EOS.
        let eos = 50256;
        let a = Example {
            input_ids: vec![10, 11, eos],
            loss_mask: vec![false, true, true],
            line: 1,
        };
        let b = Example {
            input_ids: vec![12, eos],
            loss_mask: vec![false, true],
            line: 2,
        };
        let rows = [Pack::single(&a), Pack::single(&b)];
        let batch = collate(&rows.iter().collect::<Vec<_>>(), eos, Some(4));
        assert_eq!(batch.seq_len, 4);
        assert_eq!(batch.input_ids, [10, 11, eos, eos, 12, eos, eos, eos]);
        assert_eq!(
            batch.loss_mask,
            [false, true, true, false, false, true, false, false]
        );
        assert_eq!(batch.segment_ids, [1, 1, 1, 0, 1, 1, 0, 0]);
        assert_eq!(batch.trained_tokens(), 3);
    }
}
