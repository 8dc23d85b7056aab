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

use std::str::FromStr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use burn_communication::Address;

use crate::error::{Error, Result};
use crate::loss::LossSums;

/// Gradient elements per all-reduce (PyTorch DDP's 25 MB buckets of f32).
pub const BUCKET_ELEMENTS: usize = 25 * 1024 * 1024 / 4;

/// Bits of each piece a count is split into for an f32 all-reduce: sums of up to 4,096 ranks'
/// pieces stay below 2^24, where f32 holds every integer.
const COUNT_PIECE_BITS: u32 = 12;
const COUNT_PIECES: usize = 64 / COUNT_PIECE_BITS as usize + 1;

/// Where a data-parallel run's ranks are: `nodes` processes (machines) of the same number of
/// ranks each, joined through the orchestrator at `coordinator` when there are several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub world_size: usize,
    pub nodes: usize,
    /// This process's node, `0..nodes`.
    pub node_rank: usize,
    /// `HOST:PORT` of the orchestrator (run by node 0); node `n` serves its part of the
    /// all-reduces on `PORT + 1 + n`.
    pub coordinator: String,
    /// How long a rank waits in a collective operation (joining included) before it gives up.
    pub timeout: Duration,
}

impl Topology {
    /// One process of `world_size` ranks (threads).
    pub fn local(world_size: usize) -> Topology {
        Topology {
            world_size,
            nodes: 1,
            node_rank: 0,
            coordinator: String::new(),
            timeout: Duration::from_secs(600),
        }
    }

    /// Ranks per node.
    pub fn local_ranks(&self) -> usize {
        self.world_size / self.nodes.max(1)
    }

    /// The global ranks of `node`.
    fn ranks_of(&self, node: usize) -> std::ops::Range<usize> {
        node * self.local_ranks()..(node + 1) * self.local_ranks()
    }

    /// burn-collective's configuration for this node.
    fn config(&self) -> Result<CollectiveConfig> {
        let config = CollectiveConfig::default().with_num_devices(self.local_ranks());
        if self.nodes <= 1 {
            return Ok(config);
        }
        let bad = || {
            Error::Collective(format!(
                "coordinator `{}`: expected HOST:PORT, with PORT + 1 + node rank a port",
                self.coordinator
            ))
        };
        let (host, port) = split_address(&self.coordinator).ok_or_else(bad)?;
        let own_port = u16::try_from(usize::from(port) + 1 + self.node_rank).map_err(|_| bad())?;
        let own_host = reachable_ip(&self.coordinator)?;
        let address = |text: String| Address::from_str(&text).map_err(Error::Collective);
        Ok(config
            .with_num_nodes(self.nodes as u32)
            .with_global_address(address(format!("ws://{host}:{port}"))?)
            .with_node_address(address(format!("ws://{own_host}:{own_port}"))?)
            .with_data_service_port(own_port))
    }

    /// Joins every rank of this node: rank `local` of the node on `devices[local]` (or all on
    /// `devices[0]`). Blocks until every rank of every node joined, or the timeout.
    pub fn join<B: Backend>(&self, devices: &[B::Device]) -> Result<Vec<Rank<B>>> {
        let Some(first) = devices.first() else {
            return Err(Error::Collective("no device to join on".into()));
        };
        let config = self.config()?;
        // A collective this process ran before is finished; one that failed cannot be reset.
        std::panic::catch_unwind(burn_collective::reset_collective::<B>).map_err(|_| {
            Error::Collective(
                "this process's collective failed in an earlier run; start a new process".into(),
            )
        })?;
        let watch = Arc::new(Watch::new(self.clone()));
        let ranks: Vec<Rank<B>> = self
            .ranks_of(self.node_rank)
            .enumerate()
            .map(|(local, rank)| {
                let device = devices.get(local).unwrap_or(first).clone();
                Rank::new(rank, local, device, watch.clone())
            })
            .collect();
        // Every rank's registration blocks until all have joined: each is issued on its own
        // collective thread, then awaited.
        let pending: Vec<_> = ranks
            .iter()
            .map(|rank| {
                let (peer, device, config) = (rank.peer(), rank.device.clone(), config.clone());
                rank.submit(move || burn_collective::register::<B>(peer, device, config))
            })
            .collect::<Result<_>>()?;
        for (rank, pending) in ranks.iter().zip(pending) {
            rank.wait("joining", pending)?;
        }
        Ok(ranks)
    }
}

/// A coordinator's `HOST:PORT`, split; `None` when it is not one.
pub fn split_address(address: &str) -> Option<(&str, u16)> {
    address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse().ok()?)))
        .filter(|(host, _)| !host.is_empty())
}

/// This machine's address on the route to `coordinator` (what other nodes reach it at).
fn reachable_ip(coordinator: &str) -> Result<std::net::IpAddr> {
    let unreachable = |error: std::io::Error| {
        Error::Collective(format!(
            "coordinator `{coordinator}` cannot be reached: {error}"
        ))
    };
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(unreachable)?;
    socket.connect(coordinator).map_err(unreachable)?;
    Ok(socket.local_addr().map_err(unreachable)?.ip())
}

/// Runs the orchestrator that joins the nodes of a multi-node run on `port` (node 0 runs it);
/// returns when the process is interrupted.
pub fn orchestrate(port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::Collective(format!("the orchestrator's runtime: {error}")))?;
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

/// What the ranks of one process know of each other: when each entered the collective
/// operation it waits in, and why a rank stopped.
#[derive(Debug)]
struct Watch {
    topology: Topology,
    ranks: Mutex<Vec<RankState>>,
}

#[derive(Debug, Clone, Default)]
struct RankState {
    waiting_since: Option<Instant>,
    stopped: Option<String>,
}

impl Watch {
    fn new(topology: Topology) -> Watch {
        let ranks = vec![RankState::default(); topology.local_ranks()];
        Watch {
            topology,
            ranks: Mutex::new(ranks),
        }
    }

    fn update(&self, local: usize, change: impl FnOnce(&mut RankState)) {
        let mut ranks = self
            .ranks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(state) = ranks.get_mut(local) {
            change(state);
        }
    }

    /// Another local rank that stopped, and why.
    fn stopped_other(&self, local: usize) -> Option<(usize, String)> {
        let ranks = self
            .ranks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ranks.iter().enumerate().find_map(|(other, state)| {
            (other != local)
                .then(|| state.stopped.clone())
                .flatten()
                .map(|why| {
                    (
                        self.topology.ranks_of(self.topology.node_rank).start + other,
                        why,
                    )
                })
        })
    }

    /// Who rank `local` has been waiting for, when it gave up: the ranks of this node that
    /// are not waiting with it, else the other nodes' ranks.
    fn missing(&self, local: usize) -> String {
        let topology = &self.topology;
        let first = topology.ranks_of(topology.node_rank).start;
        let ranks = self
            .ranks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let absent: Vec<String> = ranks
            .iter()
            .enumerate()
            .filter(|(other, state)| *other != local && state.waiting_since.is_none())
            .map(|(other, _)| (first + other).to_string())
            .collect();
        if !absent.is_empty() {
            return format!("rank {} of this node", absent.join(", rank "));
        }
        let others: Vec<String> = (0..topology.nodes)
            .filter(|&node| node != topology.node_rank)
            .map(|node| {
                let ranks = topology.ranks_of(node);
                match ranks.len() {
                    1 => format!("rank {} (node {node})", ranks.start),
                    _ => format!("ranks {}-{} (node {node})", ranks.start, ranks.end - 1),
                }
            })
            .collect();
        format!("{}, which stopped or cannot be reached", others.join(", "))
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A collective operation submitted to a rank's collective thread.
struct Pending<T>(mpsc::Receiver<T>);

/// How often a waiting rank looks at the others.
const POLL: Duration = Duration::from_millis(50);

/// One rank of a data-parallel run, whose collective operations run on backend `B` (an
/// autodiff backend's inner backend: gradients are reduced outside the graph). Its operations
/// run on a thread of their own and are awaited with the topology's timeout, so a rank that
/// stops (here or on another node) stops the others with an error that names it.
pub struct Rank<B: Backend> {
    pub rank: usize,
    pub world_size: usize,
    local: usize,
    device: B::Device,
    watch: Arc<Watch>,
    jobs: mpsc::Sender<Job>,
}

impl<B: Backend> std::fmt::Debug for Rank<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} of {}", self.rank, self.world_size)
    }
}

impl<B: Backend> Rank<B> {
    fn new(rank: usize, local: usize, device: B::Device, watch: Arc<Watch>) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        // A job that never returns (a peer vanished) keeps this thread; the rank gives up
        // waiting for it after the timeout.
        let _detached = std::thread::Builder::new()
            .name(format!("collective-{rank}"))
            .spawn(move || {
                for job in queue {
                    job();
                }
            });
        Rank {
            rank,
            world_size: watch.topology.world_size,
            local,
            device,
            watch,
            jobs,
        }
    }

    /// Leaves the collective (after the last operation), once every rank is leaving: the
    /// ranks of other nodes then reach node 0's orchestrator with their goodbyes before node 0
    /// ends (and its orchestrator with it).
    pub fn leave(self) -> Result<()> {
        self.sum_counts(&[0])?;
        let peer = self.peer();
        let pending = self.submit(move || burn_collective::finish_collective::<B>(peer))?;
        self.wait("leaving", pending)
    }

    /// Marks this rank as stopped (`why`): the other ranks of this process give up waiting
    /// for it at once.
    pub fn stop(&self, why: &str) {
        self.watch
            .update(self.local, |state| state.stopped = Some(why.to_owned()));
    }

    fn peer(&self) -> PeerId {
        PeerId(self.rank as u32)
    }

    fn submit<T: Send + 'static>(
        &self,
        operation: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Pending<T>> {
        let (done, result) = mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(operation());
            }))
            .map_err(|_| {
                Error::Collective(format!("rank {}: its collective thread is gone", self.rank))
            })?;
        Ok(Pending(result))
    }

    /// Waits for a submitted operation, giving up when another local rank stopped or the
    /// timeout passed.
    fn wait<E: std::fmt::Debug>(
        &self,
        doing: &str,
        pending: Pending<std::result::Result<(), E>>,
    ) -> Result<()> {
        self.wait_for(doing, pending)?
            .map_err(|error| Error::Collective(format!("rank {} {doing}: {error:?}", self.rank)))
    }

    fn wait_for<T>(&self, doing: &str, pending: Pending<T>) -> Result<T> {
        let started = Instant::now();
        self.watch
            .update(self.local, |state| state.waiting_since = Some(started));
        let outcome = loop {
            if let Some((rank, why)) = self.watch.stopped_other(self.local) {
                break Err(Error::Collective(format!("rank {rank} stopped: {why}")));
            }
            match pending.0.recv_timeout(POLL) {
                Ok(value) => break Ok(value),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let timeout = self.watch.topology.timeout;
                    if started.elapsed() >= timeout {
                        break Err(Error::Collective(format!(
                            "rank {} waited {} s {doing} for {}",
                            self.rank,
                            timeout.as_secs(),
                            self.watch.missing(self.local)
                        )));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(Error::Collective(format!(
                        "rank {} {doing}: the collective failed (a peer's connection was lost: {})",
                        self.rank,
                        self.watch.missing(self.local)
                    )));
                }
            }
        };
        self.watch
            .update(self.local, |state| state.waiting_since = None);
        outcome
    }

    /// The element-wise sum of `values` over the ranks.
    pub fn sum(&self, values: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let (peer, primitive) = (self.peer(), values.into_primitive().tensor());
        let pending = self.submit(move || {
            burn_collective::all_reduce::<B>(peer, primitive, ReduceOperation::Sum)
        })?;
        let reduced = self
            .wait_for("in an all-reduce", pending)?
            .map_err(|error| {
                Error::Collective(format!(
                    "rank {}'s all-reduce failed ({error:?}) waiting for {}",
                    self.rank,
                    self.watch.missing(self.local)
                ))
            })?;
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
