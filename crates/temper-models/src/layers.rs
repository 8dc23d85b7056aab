//! The building blocks both architectures share: linear, embedding, norms, rotary position
//! embedding and masked multi-head attention.

use burn::config::Config;
use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use burn::tensor::{Bool, DType, Distribution, Int, TensorData};

use crate::config::RopeScaling;
use crate::fused::masked_softmax;

/// A dense projection `y = x W + b`.
#[derive(Config, Debug)]
pub struct LinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether there is a bias.
    #[config(default = false)]
    pub bias: bool,
}

/// A dense projection whose weight is kept as `[in, out]`, with an optional low-rank update
/// beside it (LoRA; attached, initialised, merged and saved by `temper-lora`).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_input, d_output]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_output]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The low-rank update, when an adapter is attached.
    pub lora: Option<LowRank<B>>,
}

/// A low-rank update `scaling * dropout(x) A B` added to a projection's output.
///
/// The factors are kept in the layout the forward multiplies by (`[in, r]`, `[r, out]`);
/// PEFT stores their transposes (`lora_A.weight [r, in]`, `lora_B.weight [out, r]`).
/// Parameter paths end in `lora.lora_a` / `lora.lora_b`, which is how `temper-lora` finds
/// them in any module.
#[derive(Module, Debug)]
pub struct LowRank<B: Backend> {
    /// `[d_input, rank]`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[rank, d_output]`.
    pub lora_b: Param<Tensor<B, 2>>,
    /// `alpha / rank` (or `alpha / sqrt(rank)` with rsLoRA).
    pub scaling: f64,
    /// Dropout probability on the update's input, applied only under autodiff (training).
    pub dropout: f64,
}

impl<B: Backend> LowRank<B> {
    /// A zero update (both factors zero) of `rank`; `temper-lora` gives it PEFT's
    /// initialisation.
    pub fn zeros(
        d_input: usize,
        d_output: usize,
        rank: usize,
        scaling: f64,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        LowRank {
            lora_a: Param::from_tensor(Tensor::zeros([d_input, rank], device)),
            lora_b: Param::from_tensor(Tensor::zeros([rank, d_output], device)),
            scaling,
            dropout,
        }
    }

    /// # Shapes
    /// input: `[..., d_input]` -> `[..., d_output]`
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        let input = if self.dropout > 0.0 && B::ad_enabled(&input.device()) {
            let keep = Tensor::<B, D>::random(
                input.shape(),
                Distribution::Bernoulli(1.0 - self.dropout),
                &input.device(),
            );
            input * keep / (1.0 - self.dropout)
        } else {
            input
        };
        let a = self.lora_a.val().unsqueeze::<D>();
        let b = self.lora_b.val().unsqueeze::<D>();
        input.matmul(a).matmul(b) * self.scaling
    }

    /// The update as a dense `[d_input, d_output]` matrix: `scaling * A B`.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.lora_a.val().matmul(self.lora_b.val()) * self.scaling
    }
}

impl LinearConfig {
    /// Normal(0, 0.02) weights and zero biases, as HF initialises them (drawn when first
    /// read, so a layer whose weights are then loaded never draws them).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Linear<B> {
        Linear {
            weight: lazy_param([self.d_input, self.d_output], Init::Normal(0.02), device),
            bias: self
                .bias
                .then(|| lazy_param([self.d_output], Init::Zeros, device)),
            lora: None,
        }
    }
}

/// How a parameter's first value is drawn.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    Zeros,
    Ones,
}

/// A trainable parameter of `shape` whose value is made by `init` when it is first read.
/// Loading replaces it before that, so a loaded model never allocates random weights.
pub fn lazy_param<B: Backend, const D: usize>(
    shape: [usize; D],
    init: Init,
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::uninitialized(
        ParamId::new(),
        move |device, require_grad| {
            let tensor = match init {
                Init::Normal(std) => Tensor::random(shape, Distribution::Normal(0.0, std), device),
                Init::Zeros => Tensor::zeros(shape, device),
                Init::Ones => Tensor::ones(shape, device),
            };
            tensor.set_require_grad(require_grad)
        },
        device.clone(),
        true,
        shape.into(),
    )
}

impl<B: Backend> Linear<B> {
    /// # Shapes
    /// input: `[..., d_input]` -> `[..., d_output]`
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        // All rows as one matrix: the CPU backend multiplies a `[batch, seq, d]` input by the
        // broadcast weight as `batch` separate matmuls, reading the whole weight for each
        // (decoding 16 sequences at once read every weight 16 times per token).
        let mut dims = input.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let input = input.reshape([rows, dims[D - 1]]);
        let output = crate::fused::linear(
            input.clone(),
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
        );
        let output = match &self.lora {
            Some(lora) => output + lora.forward(input),
            None => output,
        };
        dims[D - 1] = self.dims()[1];
        output.reshape(dims)
    }

    /// `[d_input, d_output]` of the weight.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.lazy_shape().dims()
    }
}

/// NEFTune (Jain et al., 2023, as transformers applies it): while training, adds uniform
/// noise in `±alpha / sqrt(seq_len * d_model)` to the token embeddings.
///
/// # Shapes
/// embeddings: `[batch, seq_len, d_model]`
pub fn neftune<B: Backend>(embeddings: Tensor<B, 3>, alpha: Option<f64>) -> Tensor<B, 3> {
    let device = embeddings.device();
    match alpha {
        Some(alpha) if alpha > 0.0 && B::ad_enabled(&device) => {
            let [_, seq_len, d_model] = embeddings.dims();
            let magnitude = alpha / ((seq_len * d_model) as f64).sqrt();
            let noise = Tensor::random(
                embeddings.shape(),
                Distribution::Uniform(-magnitude, magnitude),
                &device,
            );
            embeddings + noise
        }
        _ => embeddings,
    }
}

/// A token (or position) embedding table.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    /// `[n_embeddings, d_model]`.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    pub fn init(n: usize, d_model: usize, device: &B::Device) -> Self {
        Embedding {
            weight: lazy_param([n, d_model], Init::Normal(0.02), device),
        }
    }

    /// # Shapes
    /// ids: `[batch, seq_len]` -> `[batch, seq_len, d_model]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let rows = burn::tensor::module::embedding(self.weight.val(), ids);
        // A table kept in f16 for inference gives f32 rows (see `CausalLm::with_f16_weights`).
        match rows.dtype() {
            DType::F16 => rows.cast(DType::F32),
            _ => rows,
        }
    }
}

/// LayerNorm with weight and bias (GPT-2).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn init(d_model: usize, epsilon: f64, device: &B::Device) -> Self {
        LayerNorm {
            weight: lazy_param([d_model], Init::Ones, device),
            bias: lazy_param([d_model], Init::Zeros, device),
            epsilon,
        }
    }

    /// # Shapes
    /// input: `[batch, seq_len, d_model]`
    pub fn forward(&self, input: Tensor<B, 3>) -> Tensor<B, 3> {
        crate::fused::layer_norm(input, self.weight.val(), self.bias.val(), self.epsilon)
    }
}

/// RMSNorm: `x / sqrt(mean(x^2) + eps) * weight` (Llama), or `* (1 + weight)` (Gemma, whose
/// weights are stored as offsets from one).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub epsilon: f64,
    pub offset_from_one: bool,
}

impl<B: Backend> RmsNorm<B> {
    pub fn init(d_model: usize, epsilon: f64, device: &B::Device) -> Self {
        RmsNorm {
            weight: lazy_param([d_model], Init::Ones, device),
            epsilon,
            offset_from_one: false,
        }
    }

    /// Gemma's norm: `* (1 + weight)`, the weight starting at zero.
    pub fn init_offset_from_one(d_model: usize, epsilon: f64, device: &B::Device) -> Self {
        RmsNorm {
            weight: lazy_param([d_model], Init::Zeros, device),
            epsilon,
            offset_from_one: true,
        }
    }

    /// # Shapes
    /// input: `[batch, seq_len, d_model]`
    pub fn forward(&self, input: Tensor<B, 3>) -> Tensor<B, 3> {
        let weight = match self.offset_from_one {
            true => self.weight.val().add_scalar(1.0),
            false => self.weight.val(),
        };
        crate::fused::rms_norm(input, weight, self.epsilon)
    }

    /// The norm of each head (Qwen3's and Gemma 3's q/k norms).
    ///
    /// # Shapes
    /// input: `[batch, seq_len, heads, head_dim]`
    pub fn forward_heads(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, seq_len, heads, head_dim] = input.dims();
        self.forward(input.reshape([batch, seq_len * heads, head_dim]))
            .reshape([batch, seq_len, heads, head_dim])
    }
}

/// Rotary inverse frequencies of HF's rotate-half RoPE, with `rope_scaling` applied.
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let base: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    let scaled: Vec<f64> = match scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old_context = *original_max_position_embeddings as f64;
            let low_freq_wavelen = old_context / low_freq_factor;
            let high_freq_wavelen = old_context / high_freq_factor;
            base.iter()
                .map(|&freq| {
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    if wavelen < high_freq_wavelen {
                        freq
                    } else if wavelen > low_freq_wavelen {
                        freq / factor
                    } else {
                        let smooth = (old_context / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    }
                })
                .collect()
        }
    };
    scaled.into_iter().map(|f| f as f32).collect()
}

/// `cos` and `sin` of the rotary angles for each position (apply them with
/// [`crate::fused::rope`]).
///
/// # Shapes
/// position_ids: `[batch, seq_len]` -> two of `[batch, seq_len, head_dim]`
pub fn rope_cos_sin<B: Backend>(
    position_ids: Tensor<B, 2, Int>,
    inv_freq: &[f32],
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let device = position_ids.device();
    let half = inv_freq.len();
    let inv: Tensor<B, 3> = Tensor::<B, 1>::from_floats(inv_freq, &device).reshape([1, 1, half]);
    let freqs = position_ids.float().unsqueeze_dim::<3>(2) * inv;
    let angles = Tensor::cat(vec![freqs.clone(), freqs], 2);
    (angles.clone().cos(), angles.sin())
}

/// Which key each query may not see: block-diagonal causal over segments.
///
/// ```text
/// segment_ids  1 1 1 2 2 0        a query sees keys of its own segment at or before it;
///              q\k 0 1 2 3 4 5    padding (segment 0) is seen by no one
///              0   . x x x x x    (and sees only itself, so no softmax row is empty).
///              1   . . x x x x
///              2   . . . x x x    x = masked
///              3   x x x . x x
///              4   x x x . . x
///              5   x x x x x .
/// ```
///
/// # Shapes
/// segment_ids: `[batch, seq_len]` -> `[batch, 1, seq_len, seq_len]` (true = masked)
pub fn block_causal_mask<B: Backend>(segment_ids: Tensor<B, 2, Int>) -> Tensor<B, 4, Bool> {
    let [batch, seq_len] = segment_ids.dims();
    let device = segment_ids.device();
    let queries = segment_ids
        .clone()
        .unsqueeze_dim::<3>(2)
        .expand([batch, seq_len, seq_len]);
    let keys = segment_ids
        .unsqueeze_dim::<3>(1)
        .expand([batch, seq_len, seq_len]);
    let same_segment = queries.equal(keys.clone());
    let real_key = keys.not_equal_elem(0);
    let index = Tensor::<B, 1, Int>::arange(0..seq_len as i64, &device);
    let query_index = index
        .clone()
        .reshape([1, seq_len, 1])
        .expand([batch, seq_len, seq_len]);
    let key_index = index
        .reshape([1, 1, seq_len])
        .expand([batch, seq_len, seq_len]);
    let causal = query_index.clone().greater_equal(key_index.clone());
    let diagonal = query_index.equal(key_index);
    let allowed = same_segment
        .bool_and(real_key)
        .bool_and(causal)
        .bool_or(diagonal);
    allowed.bool_not().unsqueeze_dim::<4>(1)
}

/// `mask` narrowed to a sliding window: a query also may not see a key `window` or more
/// positions before it, so it sees itself and the `window - 1` keys before. The last query
/// is the last key (in training there are as many keys as queries; in decoding the cached
/// keys come first). In packed rows an example's positions are consecutive, so the window
/// counts positions within it.
///
/// # Shapes
/// mask: `[batch, 1, seq_q, seq_k]` (true = masked) -> the same
pub fn sliding_window_mask<B: Backend>(
    mask: Tensor<B, 4, Bool>,
    window: usize,
) -> Tensor<B, 4, Bool> {
    let [batch, heads, seq_q, seq_k] = mask.dims();
    let device = mask.device();
    let first_query = seq_k.saturating_sub(seq_q) as i64;
    let query = Tensor::<B, 1, Int>::arange(first_query..first_query + seq_q as i64, &device)
        .reshape([1, 1, seq_q, 1])
        .expand([batch, heads, seq_q, seq_k]);
    let key = Tensor::<B, 1, Int>::arange(0..seq_k as i64, &device)
        .reshape([1, 1, 1, seq_k])
        .expand([batch, heads, seq_q, seq_k]);
    let too_far = query.sub(key).greater_equal_elem(window as i64);
    mask.bool_or(too_far)
}

/// Scaled dot-product attention with grouped-query heads.
///
/// Query heads `g * n_rep .. (g + 1) * n_rep` share key/value head `g`. Instead of repeating
/// the keys and values `n_rep` times, each group's queries are stacked along the sequence
/// (`[batch, n_kv_heads, n_rep * seq_q, head_dim]`, a reshape of consecutive heads) and
/// multiplied with their shared head once:
///
/// ```text
/// query heads   q0 q1 q2 | q3 q4 q5       n_heads = 6, n_kv_heads = 2, n_rep = 3
/// stacked       [q0;q1;q2] [q3;q4;q5]     -> scores [batch, 2, 3 * seq_q, seq_k]
/// key heads        k0         k1          seen as [batch, 6, seq_q, seq_k] for the mask
/// ```
///
/// # Shapes
/// query: `[batch, n_heads, seq_q, head_dim]`, key/value: `[batch, n_kv_heads, seq_k, head_dim]`,
/// mask: `[batch, 1, seq_q, seq_k]` (true = masked) -> `[batch, n_heads, seq_q, head_dim]`.
/// Scores are scaled by `scale` (`head_dim ** -0.5` for most models).
pub fn attention<B: Backend>(
    query: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    scale: f64,
) -> Tensor<B, 4> {
    let [batch, n_heads, seq_q, head_dim] = query.dims();
    let [_, n_kv_heads, seq_k, _] = key.dims();
    let n_rep = n_heads / n_kv_heads;
    let stacked = query.reshape([batch, n_kv_heads, n_rep * seq_q, head_dim]);
    let scores = stacked
        .matmul(key.swap_dims(2, 3))
        .reshape([batch, n_heads, seq_q, seq_k]);
    let probs = masked_softmax(scores, mask, scale);
    probs
        .reshape([batch, n_kv_heads, n_rep * seq_q, seq_k])
        .matmul(value)
        .reshape([batch, n_heads, seq_q, head_dim])
}

/// The keys and values of one layer for the positions seen so far: `[batch, n_kv_heads, len, head_dim]`.
pub type LayerCache<B> = Option<(Tensor<B, 4>, Tensor<B, 4>)>;

/// Keys and values of every layer, for incremental decoding.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<LayerCache<B>>,
    /// Positions already in the cache.
    pub len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            layers: vec![None; n_layers],
            len: 0,
        }
    }

    /// Keeps only the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        for (key, value) in self.layers.iter_mut().flatten() {
            let [batch, heads, _, head_dim] = key.dims();
            *key = key.clone().slice([0..batch, 0..heads, 0..len, 0..head_dim]);
            let [batch, heads, _, head_dim] = value.dims();
            *value = value
                .clone()
                .slice([0..batch, 0..heads, 0..len, 0..head_dim]);
        }
        self.len = self.len.min(len);
    }

    /// Keeps only the batch rows `rows` (in that order): rows that finished stop costing
    /// compute.
    pub fn keep_rows(&mut self, rows: &[usize]) {
        for (key, value) in self.layers.iter_mut().flatten() {
            let device = key.device();
            let index = Tensor::<B, 1, Int>::from_data(
                TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]),
                &device,
            );
            *key = key.clone().select(0, index.clone());
            *value = value.clone().select(0, index);
        }
    }
}

/// Prepends cached keys/values and stores the result (no-op without a cache).
pub fn extend_cache<B: Backend>(
    cache: Option<&mut LayerCache<B>>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let Some(slot) = cache else {
        return (key, value);
    };
    let (key, value) = match slot.take() {
        Some((past_key, past_value)) => (
            Tensor::cat(vec![past_key, key], 2),
            Tensor::cat(vec![past_value, value], 2),
        ),
        None => (key, value),
    };
    *slot = Some((key.clone(), value.clone()));
    (key, value)
}

/// Logits of an output layer that is `lm_head`, or tied to the token embedding `embed`.
///
/// # Shapes
/// hidden: `[batch, seq_len, d_model]` -> `[batch, seq_len, vocab]`
pub fn head_logits<B: Backend>(
    lm_head: Option<&Linear<B>>,
    embed: &Embedding<B>,
    hidden: Tensor<B, 3>,
) -> Tensor<B, 3> {
    match lm_head {
        Some(lm_head) => lm_head.forward(hidden),
        None => tied_logits(hidden, embed.weight.val()),
    }
}

/// The `[vocab, d_model]` weight of such an output layer, when it is a plain f32 matrix (no
/// bias, no adapter, not kept in f16) that a fused loss may use directly.
pub fn head_weight<B: Backend>(
    lm_head: Option<&Linear<B>>,
    embed: &Embedding<B>,
) -> Option<Tensor<B, 2>> {
    let weight = match lm_head {
        None => embed.weight.val(),
        Some(head) if head.bias.is_none() && head.lora.is_none() => head.weight.val().transpose(),
        Some(_) => return None,
    };
    (weight.dtype() == DType::F32).then_some(weight)
}

/// Logits from an output layer tied to the token embedding `weight` (`[vocab, d_model]`).
///
/// # Shapes
/// hidden: `[batch, seq_len, d_model]` -> `[batch, seq_len, vocab]`
pub fn tied_logits<B: Backend>(hidden: Tensor<B, 3>, weight: Tensor<B, 2>) -> Tensor<B, 3> {
    let [batch, seq_len, d_model] = hidden.dims();
    let rows = batch * seq_len;
    if weight.dtype() == DType::F16 {
        let vocab = weight.dims()[0];
        let logits =
            crate::fused::linear(hidden.reshape([rows, d_model]), weight.transpose(), None);
        return logits.reshape([batch, seq_len, vocab]);
    }
    // A matmul against the transposed (strided) embedding is pathologically slow on the CPU
    // backend when there are few rows (decoding: 150 ms instead of 4 ms for SmolLM2's 49k x 576
    // table), and with more rows it copies the whole table into a contiguous transpose on
    // every call. Multiplied from the other side, only the `[vocab, rows]` result is
    // transposed: cheaper while there are fewer rows than the table has columns.
    if rows <= d_model {
        let vocab = weight.dims()[0];
        let logits = weight.matmul(hidden.reshape([rows, d_model]).transpose());
        return logits.transpose().reshape([batch, seq_len, vocab]);
    }
    burn::tensor::module::linear(hidden, weight.transpose(), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;

    #[test]
    fn lora_dropout_applies_only_while_training() {
        let device = Default::default();
        let mut update = LowRank::<Autodiff<Flex>>::zeros(8, 6, 2, 2.0, 0.5, &device);
        update.lora_a = Param::from_tensor(Tensor::ones([8, 2], &device));
        update.lora_b = Param::from_tensor(Tensor::ones([2, 6], &device));
        let input = Tensor::<Autodiff<Flex>, 2>::ones([64, 8], &device);
        // Without dropout every output is 2 * 8 * 2 = 32; with p = 0.5 and rescaling by 2 the
        // outputs vary around 32.
        let training = update
            .forward(input.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(training.iter().any(|v| (*v - 32.0).abs() > 1e-3));
        let mean = training.iter().sum::<f32>() / training.len() as f32;
        assert!((mean - 32.0).abs() < 4.0, "{mean}");
        let inference = update.valid().forward(input.inner());
        assert_eq!(
            inference.into_data().to_vec::<f32>().unwrap(),
            vec![32.0; 64 * 6]
        );
    }

    #[test]
    fn neftune_adds_bounded_noise_only_while_training() {
        let device = Default::default();
        let embeddings = Tensor::<Autodiff<Flex>, 3>::zeros([2, 10, 40], &device);
        let noisy = neftune(embeddings.clone(), Some(5.0));
        let bound = 5.0 / (10.0f32 * 40.0).sqrt();
        let largest = noisy.abs().max().into_scalar();
        assert!(
            largest > 0.5 * bound && largest <= bound,
            "{largest} vs {bound}"
        );
        let inference = neftune(Tensor::<Flex, 3>::zeros([2, 10, 40], &device), Some(5.0));
        assert_eq!(inference.abs().max().into_scalar(), 0.0);
        assert_eq!(neftune(embeddings, None).abs().max().into_scalar(), 0.0);
    }
}
