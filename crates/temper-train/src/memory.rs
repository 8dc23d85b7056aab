//! What a training step will hold in memory, estimated before the first step so that a
//! configuration that cannot fit fails at once, with the estimate, instead of after minutes
//! of swapping.

use temper_models::Dimensions;

use temper_models::fused::chunk_rows;

const F32: u64 = 4;

/// Bytes a training step holds at its peak, by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepMemory {
    pub weights: u64,
    pub gradients: u64,
    /// AdamW's two moments of every trained parameter.
    pub optimizer: u64,
    /// What the forward pass keeps for the backward pass, for one micro-batch.
    pub activations: u64,
    /// The logits of one chunk of rows (overwritten by their gradient) and the chunk's
    /// output-weight gradient: the loss never holds a micro-batch's `[tokens, vocab]`
    /// logits (see [`crate::loss`]).
    pub logits: u64,
}

/// The shape of the largest micro-batch: `rows` rows of `length` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MicroBatch {
    pub rows: usize,
    pub length: usize,
}

impl StepMemory {
    /// An estimate for a model of `dims` with `parameters` weights, `trainable` of them
    /// trained, on `batch` (f32 throughout). It counts the tensors autodiff keeps per layer
    /// (norm inputs, projections, attention scores and probabilities, MLP intermediates); with
    /// gradient checkpointing only each layer's input is kept, plus one layer recomputed.
    pub fn estimate(
        dims: &Dimensions,
        parameters: usize,
        trainable: usize,
        batch: MicroBatch,
        gradient_checkpointing: bool,
    ) -> StepMemory {
        let tokens = (batch.rows as u64).saturating_mul(batch.length as u64);
        let per_token_layer = [
            6 * dims.width as u64,
            2 * dims.query_width as u64,
            3 * dims.key_width as u64,
            (2 * dims.heads as u64).saturating_mul(batch.length as u64),
            4 * dims.mlp_width as u64,
        ]
        .into_iter()
        .fold(0, u64::saturating_add);
        let kept_layers = |per_token: u64| match gradient_checkpointing {
            true => (dims.layers as u64)
                .saturating_mul(dims.width as u64)
                .saturating_add(per_token),
            false => (dims.layers as u64).saturating_mul(per_token),
        };
        StepMemory {
            weights: F32 * parameters as u64,
            gradients: F32 * trainable as u64,
            optimizer: 2 * F32 * trainable as u64,
            activations: F32
                .saturating_mul(tokens)
                .saturating_mul(kept_layers(per_token_layer)),
            logits: F32.saturating_mul(
                (tokens.min(chunk_rows(dims.vocab) as u64) + dims.width as u64)
                    .saturating_mul(dims.vocab as u64),
            ),
        }
    }

    pub fn total(&self) -> u64 {
        [
            self.weights,
            self.gradients,
            self.optimizer,
            self.activations,
            self.logits,
        ]
        .into_iter()
        .fold(0, u64::saturating_add)
    }
}

impl std::fmt::Display for StepMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (weights {}, gradients {}, optimizer {}, activations {}, logits {})",
            gigabytes(self.total()),
            gigabytes(self.weights),
            gigabytes(self.gradients),
            gigabytes(self.optimizer),
            gigabytes(self.activations),
            gigabytes(self.logits)
        )
    }
}

pub fn gigabytes(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

/// The environment variable that caps the memory temper plans for (bytes, or with a `K`,
/// `M` or `G` suffix): to leave room for other work, or where the machine's own numbers
/// overstate what a process may take.
pub const MEMORY_LIMIT_VAR: &str = "TEMPER_MEMORY_LIMIT";

/// Memory a process may still take: the least of Linux's `MemAvailable` plus free swap, what
/// the cgroup (v2) allows beyond what it uses, and [`MEMORY_LIMIT_VAR`]. `None` where none of
/// them can be read.
pub fn available() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let meminfo = read("/proc/meminfo").and_then(|meminfo| {
        let field = |name: &str| -> Option<u64> {
            let line = meminfo.lines().find(|line| line.starts_with(name))?;
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kib * 1024)
        };
        Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
    });
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .and_then(|max| max.trim().parse::<u64>().ok())
        .map(|max| {
            let current = read("/sys/fs/cgroup/memory.current")
                .and_then(|current| current.trim().parse::<u64>().ok())
                .unwrap_or(0);
            max.saturating_sub(current)
        });
    let limit = std::env::var(MEMORY_LIMIT_VAR)
        .ok()
        .and_then(|value| parse_size(&value));
    [meminfo, cgroup, limit].into_iter().flatten().min()
}

/// `123`, `64K`, `512M`, `8G` (powers of 1024) -> bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last()? {
        (at, 'K' | 'k') => (&text[..at], 1 << 10),
        (at, 'M' | 'm') => (&text[..at], 1 << 20),
        (at, 'G' | 'g') => (&text[..at], 1 << 30),
        _ => (text, 1),
    };
    number.trim().parse::<u64>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M's widths.
    fn smollm2() -> Dimensions {
        Dimensions {
            layers: 30,
            width: 576,
            heads: 9,
            query_width: 576,
            key_width: 192,
            mlp_width: 1536,
            vocab: 49152,
        }
    }

    #[test]
    fn each_part_scales_with_what_it_holds() {
        let batch = MicroBatch {
            rows: 4,
            length: 256,
        };
        let lora = StepMemory::estimate(&smollm2(), 134_515_008, 4_884_480, batch, false);
        assert_eq!(lora.weights, 4 * 134_515_008);
        assert_eq!(lora.optimizer, 2 * lora.gradients);
        // The 1,024 rows fit in one chunk (of up to 1,365 rows of 49,152 logits), and the
        // chunk's 49,152 x 576 output-weight gradient.
        assert_eq!(lora.logits, 4 * (1_024 + 576) * 49_152);
        let twice = StepMemory::estimate(
            &smollm2(),
            134_515_008,
            4_884_480,
            MicroBatch { rows: 8, ..batch },
            false,
        );
        assert_eq!(twice.activations, 2 * lora.activations);
        let checkpointed = StepMemory::estimate(&smollm2(), 134_515_008, 4_884_480, batch, true);
        assert!(checkpointed.activations * 10 < lora.activations);
    }

    #[test]
    fn sizes_read_with_binary_suffixes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size(" 8g "), Some(8 << 30));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999G"), None);
    }

    #[test]
    fn absurd_batches_saturate_instead_of_wrapping() {
        let batch = MicroBatch {
            rows: usize::MAX,
            length: usize::MAX,
        };
        let memory = StepMemory::estimate(&smollm2(), 1, 1, batch, false);
        assert_eq!(memory.total(), u64::MAX);
    }
}
