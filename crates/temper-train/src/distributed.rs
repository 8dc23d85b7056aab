//! Data parallelism on burn-collective: every rank holds the model, trains on its share of each
//! step's rows, and the ranks sum what they computed with all-reduces before an optimizer step
//! that is then the same on every rank.
//!
//! ```text
//! rank r:  counts ──all-reduce──> global trained tokens T
//!          micro-batches, each loss sum scaled by 1/T ──> gradients g_r
//!          [which parameters have gradients, loss sums] ──all-reduce──>
//!          g_r in buckets of parameters ──all-reduce (sum)──> g = Σ_r g_r
//!          clip by the norm of g, AdamW: identical on every rank
//! ```
//!
//! Summing gradients of losses already divided by the whole step's trained tokens gives the
//! single-process gradient of the same rows: token-weighted, not a mean of rank means.

use std::time::{Duration, Instant};

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use crate::error::{Error, Result};
use crate::loss::LossSums;

/// Gradient elements per all-reduce (PyTorch DDP's 25 MB buckets of f32).
pub const BUCKET_ELEMENTS: usize = 25 * 1024 * 1024 / 4;

/// Bits of each piece a count is split into for an f32 all-reduce: sums of up to 4,096 ranks'
/// pieces stay below 2^24, where f32 holds every integer.
const COUNT_PIECE_BITS: u32 = 12;
const COUNT_PIECES: usize = 64 / COUNT_PIECE_BITS as usize + 1;

/// The collective of `world_size` ranks that are threads of this process.
pub fn local_config(world_size: usize) -> CollectiveConfig {
    CollectiveConfig::default().with_num_devices(world_size)
}

/// One rank of a data-parallel run, whose collective operations run on backend `B` (an
/// autodiff backend's inner backend: gradients are reduced outside the graph).
#[derive(Debug)]
pub struct Rank<B: Backend> {
    pub rank: usize,
    pub world_size: usize,
    device: B::Device,
}

impl<B: Backend> Rank<B> {
    /// Joins the collective of `world_size` ranks as `rank` on `device`; blocks until every rank
    /// has joined. Every rank must then issue the same collective operations in the same order.
    pub fn join(
        rank: usize,
        world_size: usize,
        device: &B::Device,
        config: CollectiveConfig,
    ) -> Result<Self> {
        let joined = Rank {
            rank,
            world_size,
            device: device.clone(),
        };
        burn_collective::register::<B>(joined.peer(), device.clone(), config)
            .map_err(|error| joined.error("joining", error))?;
        Ok(joined)
    }

    /// Leaves the collective (after the last operation).
    pub fn leave(self) -> Result<()> {
        burn_collective::finish_collective::<B>(self.peer())
            .map_err(|error| self.error("leaving", error))
    }

    /// Whether this rank writes the run's files.
    pub fn is_first(&self) -> bool {
        self.rank == 0
    }

    fn peer(&self) -> PeerId {
        PeerId(self.rank as u32)
    }

    fn error(&self, doing: &str, error: impl std::fmt::Debug) -> Error {
        Error::Collective {
            rank: self.rank,
            message: format!("{doing}: {error:?}"),
        }
    }

    /// The element-wise sum of `values` over the ranks.
    pub fn sum(&self, values: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let reduced = burn_collective::all_reduce::<B>(
            self.peer(),
            values.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(|error| self.error("all-reduce", error))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
    }

    /// Exact sums of counts over the ranks (through f32, in pieces of 12 bits).
    pub fn sum_counts(&self, counts: &[u64]) -> Result<Vec<u64>> {
        let mask = (1u64 << COUNT_PIECE_BITS) - 1;
        let pieces: Vec<f32> = counts
            .iter()
            .flat_map(|&count| {
                (0..COUNT_PIECES)
                    .map(move |k| ((count >> (k as u32 * COUNT_PIECE_BITS)) & mask) as f32)
            })
            .collect();
        let summed = read_f32(self.sum(floats::<B>(pieces, &self.device))?);
        Ok(summed
            .chunks(COUNT_PIECES)
            .map(|pieces| {
                pieces.iter().enumerate().fold(0u64, |sum, (k, &piece)| {
                    sum + ((piece as u64) << (k as u32 * COUNT_PIECE_BITS))
                })
            })
            .collect())
    }

    /// Whether every rank passed the same `value` (the same answer on every rank).
    pub fn agree(&self, value: u64) -> Result<bool> {
        // Bytes of `value` and their squares; they agree when each byte's sums over the ranks
        // have no variance: n * sum(x^2) == sum(x)^2.
        let counts: Vec<u64> = value
            .to_le_bytes()
            .iter()
            .flat_map(|&byte| [u64::from(byte), u64::from(byte) * u64::from(byte)])
            .collect();
        let summed = self.sum_counts(&counts)?;
        let n = self.world_size as u64;
        Ok(summed
            .chunks(2)
            .all(|sums| n * sums[1] == sums[0] * sums[0]))
    }

    /// Sums `grads` of `module`'s trainable parameters over the ranks, in buckets of about
    /// [`BUCKET_ELEMENTS`], with the ranks' loss sums. A parameter gets a gradient when any rank
    /// computed one (a rank without rows contributes zeros). Returns the summed gradients, the
    /// summed loss sums and the time spent in all-reduces.
    pub fn sum_gradients<A: AutodiffBackend<InnerBackend = B>, M: AutodiffModule<A>>(
        &self,
        module: &M,
        mut grads: GradientsParams,
        sums: LossSums,
    ) -> Result<(GradientsParams, LossSums, Duration)> {
        let device = &self.device;
        let mut collect = Collect::<B> {
            grads: &mut grads,
            params: Vec::new(),
        };
        module.visit(&mut collect);
        let params = collect.params;
        let started = Instant::now();
        // Which parameters have a gradient somewhere, and the loss sums.
        let mut head: Vec<f32> = params
            .iter()
            .map(|p| if p.grad.is_some() { 1.0 } else { 0.0 })
            .collect();
        head.extend([sums.nll as f32, sums.tokens as f32, sums.correct as f32]);
        let head = read_f32(self.sum(floats::<B>(head, device))?);
        let (present, totals) = head.split_at(params.len());
        let sums = LossSums {
            nll: f64::from(totals[0]),
            tokens: totals[1].round() as usize,
            correct: totals[2].round() as usize,
        };
        let present: Vec<Flat<B>> = params
            .into_iter()
            .zip(present)
            .filter(|(_, present)| **present > 0.0)
            .map(|(param, _)| param)
            .collect();
        let mut summed = Vec::with_capacity(present.len());
        for bucket in buckets(&present) {
            let parts: Vec<Tensor<B, 1>> = bucket
                .iter()
                .map(|param| match &param.grad {
                    Some(grad) => grad.clone(),
                    None => Tensor::zeros([param.elements], device),
                })
                .collect();
            let reduced = self.sum(Tensor::cat(parts, 0))?;
            let mut at = 0;
            for param in bucket {
                summed.push((param.id, reduced.clone().slice(at..at + param.elements)));
                at += param.elements;
            }
        }
        let took = started.elapsed();
        let mut register = Register::<B, _> {
            grads: GradientsParams::new(),
            summed: summed.into_iter().peekable(),
        };
        module.visit(&mut register);
        Ok((register.grads, sums, took))
    }
}

/// A hash of `module`'s trainable weights (their f32 bits, in parameter order): replicas that
/// stepped identically have the same.
pub fn trainable_hash<B: Backend, M: Module<B>>(module: &M) -> u64 {
    struct Hash(u64);
    impl<B: Backend> ModuleVisitor<B> for Hash {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !param.is_require_grad() {
                return;
            }
            // FNV-1a over the little-endian bytes.
            for value in read_f32(param.val().flatten::<1>(0, D - 1)) {
                for byte in value.to_bits().to_le_bytes() {
                    self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
                }
            }
        }
    }
    let mut hash = Hash(0xcbf2_9ce4_8422_2325);
    module.visit(&mut hash);
    hash.0
}

/// A trainable parameter's gradient, flattened.
struct Flat<B: Backend> {
    id: ParamId,
    elements: usize,
    grad: Option<Tensor<B, 1>>,
}

/// Consecutive parameters of about [`BUCKET_ELEMENTS`] (a larger parameter is a bucket alone).
fn buckets<B: Backend>(params: &[Flat<B>]) -> Vec<&[Flat<B>]> {
    let mut buckets = Vec::new();
    let (mut start, mut elements) = (0, 0);
    for (i, param) in params.iter().enumerate() {
        if elements > 0 && elements + param.elements > BUCKET_ELEMENTS {
            buckets.push(&params[start..i]);
            (start, elements) = (i, 0);
        }
        elements += param.elements;
    }
    if start < params.len() {
        buckets.push(&params[start..]);
    }
    buckets
}

/// Takes the gradients of the trainable parameters out, flattened, in parameter order.
struct Collect<'a, B: Backend> {
    grads: &'a mut GradientsParams,
    params: Vec<Flat<B>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() {
            return;
        }
        let elements = param.shape().num_elements();
        let grad = self
            .grads
            .remove::<B::InnerBackend, D>(param.id)
            .map(|grad| grad.reshape([elements]));
        self.params.push(Flat {
            id: param.id,
            elements,
            grad,
        });
    }
}

/// Registers the summed gradients under their parameters, in their shapes.
struct Register<B: Backend, I: Iterator<Item = (ParamId, Tensor<B, 1>)>> {
    grads: GradientsParams,
    summed: std::iter::Peekable<I>,
}

impl<B: AutodiffBackend, I: Iterator<Item = (ParamId, Tensor<B::InnerBackend, 1>)>> ModuleVisitor<B>
    for Register<B::InnerBackend, I>
{
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.summed.peek().is_some_and(|(id, _)| *id == param.id)
            && let Some((id, grad)) = self.summed.next()
        {
            let dims: [usize; D] = param.shape().dims();
            self.grads.register(id, grad.reshape(dims));
        }
    }
}

fn floats<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let len = values.len();
    Tensor::from_data(TensorData::new(values, [len]), device)
}

fn read_f32<B: Backend>(tensor: Tensor<B, 1>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default()
}
