//! Deterministic shuffling per seed and epoch, resumable mid-epoch.
//!
//! The order of epoch `e` is a Fisher-Yates shuffle driven by SplitMix64 seeded from
//! `(seed, e)`, so it never depends on a crate's RNG version. [`SamplerState`] (seed, epoch,
//! position) is all that a checkpoint needs to resume at the same example.

use serde::{Deserialize, Serialize};

/// SplitMix64: tiny, fast, and fully specified.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (Lemire's method with rejection, so without modulo bias).
    pub fn below(&mut self, bound: u64) -> u64 {
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            let low = product as u64;
            if low >= bound.wrapping_neg() % bound.max(1) {
                return (product >> 64) as u64;
            }
        }
    }
}

/// The order in which `n` items are visited in `epoch`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Where a sampler is: enough to resume at the same item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub seed: u64,
    pub epoch: u64,
    /// Items of this epoch already handed out.
    pub position: usize,
}

/// Hands out item indices epoch after epoch, each epoch in its own shuffled order.
#[derive(Debug, Clone)]
pub struct Sampler {
    len: usize,
    state: SamplerState,
    order: Vec<usize>,
}

impl Sampler {
    pub fn new(len: usize, seed: u64) -> Sampler {
        Sampler::from_state(
            len,
            SamplerState {
                seed,
                epoch: 0,
                position: 0,
            },
        )
    }

    pub fn from_state(len: usize, state: SamplerState) -> Sampler {
        Sampler {
            len,
            order: epoch_order(len, state.seed, state.epoch),
            state,
        }
    }

    pub fn state(&self) -> SamplerState {
        self.state
    }

    /// The next item, moving to the next epoch after the last one.
    pub fn next_index(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        if self.state.position == self.len {
            self.state.epoch += 1;
            self.state.position = 0;
            self.order = epoch_order(self.len, self.state.seed, self.state.epoch);
        }
        let index = self.order[self.state.position];
        self.state.position += 1;
        Some(index)
    }

    /// The next `count` items.
    pub fn next_batch(&mut self, count: usize) -> Vec<usize> {
        (0..count).map_while(|_| self.next_index()).collect()
    }

    /// The next `count` items of one epoch: fewer at the epoch's end, so that no optimizer
    /// step mixes two epochs and an epoch is exactly one pass.
    ///
    /// ```text
    /// 5 items, count 2:   epoch 0: [a b] [c d] [e]   epoch 1: [. .] ...
    /// ```
    pub fn next_batch_in_epoch(&mut self, count: usize) -> Vec<usize> {
        let left = if self.state.position == self.len {
            self.len
        } else {
            self.len - self.state.position
        };
        self.next_batch(count.min(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_epoch_is_a_permutation_that_depends_on_seed_and_epoch() {
        let a = epoch_order(100, 7, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 7, 0));
        assert_ne!(a, epoch_order(100, 7, 1));
        assert_ne!(a, epoch_order(100, 8, 0));
    }

    #[test]
    fn the_shuffle_is_pinned() {
        // A changed shuffle silently changes every training run: keep this exact.
        assert_eq!(epoch_order(10, 42, 0), [8, 3, 6, 5, 4, 0, 9, 2, 1, 7]);
    }

    #[test]
    fn batches_in_an_epoch_stop_at_its_end() {
        let mut sampler = Sampler::new(5, 1);
        let sizes: Vec<(usize, u64)> = (0..5)
            .map(|_| {
                let batch = sampler.next_batch_in_epoch(2);
                (batch.len(), sampler.state().epoch)
            })
            .collect();
        assert_eq!(sizes, [(2, 0), (2, 0), (1, 0), (2, 1), (2, 1)]);
    }

    #[test]
    fn a_restored_sampler_continues_where_it_stopped() {
        let mut sampler = Sampler::new(7, 3);
        let first = sampler.next_batch(10);
        let state = sampler.state();
        let rest = sampler.next_batch(9);
        let mut resumed = Sampler::from_state(
            7,
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap(),
        );
        assert_eq!(resumed.next_batch(9), rest);
        assert_eq!(first.len(), 10);
        assert_eq!(state.epoch, 1);
    }
}
