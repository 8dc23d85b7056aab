//! The Llama family (`LlamaForCausalLM`; Mistral, Qwen2 and Qwen3 share the layout): RMSNorm,
//! SwiGLU MLP, grouped-query attention, rotate-half RoPE with optional scaling, optional
//! attention biases (Qwen2), per-head q/k norms (Qwen3), sliding-window layers (Mistral,
//! Qwen with `use_sliding_window`), tied or untied output layer.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{Bool, Int};

use crate::config::{AttentionType, LlamaConfig, ModelConfig};
use crate::fused::{gelu_tanh, rope, swiglu};
use crate::layers::{
    Embedding, KvCache, LayerCache, Linear, LinearConfig, RmsNorm, attention, extend_cache,
    head_logits, head_weight, neftune, rope_cos_sin, rope_inv_freq, sliding_window_mask,
};
use crate::layout::{Layout, WeightLayout};
use crate::model::Architecture;

#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub model: LlamaModel<B>,
    /// `None` when tied to `model.embed_tokens`.
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub config: LlamaConfig,
    #[module(skip)]
    pub inv_freq: Vec<f32>,
    /// NEFTune's alpha: noise added to the token embeddings while training.
    #[module(skip)]
    pub embedding_noise: Option<f64>,
}

#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<LlamaDecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    pub self_attn: LlamaAttention<B>,
    pub mlp: LlamaMlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
}

#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    /// Qwen3: RMSNorm of each query and key head, before RoPE.
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// What scores are scaled by: `head_dim ** -0.5` (Gemma: `query_pre_attn_scalar ** -0.5`).
    pub scale: f64,
}

/// The gated MLP, `down(act(gate(x)) * up(x))`: SiLU (SwiGLU) in the Llama family, tanh GELU
/// (GeGLU) in Gemma.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    pub gelu_tanh: bool,
}

/// Llama's checkpoints: `nn.Linear` weights stored `[out, in]`; some exports keep the
/// rotary frequencies (derived here); a tied output layer's saved copy is not a parameter.
pub const LAYOUT: Layout = Layout {
    linear: WeightLayout::Torch,
    optional_prefix: None,
    ignored: &[
        "model.layers.*.self_attn.rotary_emb.inv_freq",
        "lm_head.weight",
    ],
};

/// The projections of one layer: q, k, v, o, gate, up, down.
struct Projections([LinearConfig; 7]);

impl LlamaConfig {
    fn projections(&self) -> Projections {
        let (h, d, i) = (self.hidden_size, self.head_dim, self.intermediate_size);
        let (q, kv) = (self.num_attention_heads * d, self.num_key_value_heads * d);
        Projections([
            LinearConfig::new(h, q).with_bias(self.attention_bias),
            LinearConfig::new(h, kv).with_bias(self.attention_bias),
            LinearConfig::new(h, kv).with_bias(self.attention_bias),
            LinearConfig::new(q, h).with_bias(self.o_proj_bias),
            LinearConfig::new(h, i).with_bias(self.mlp_bias),
            LinearConfig::new(h, i).with_bias(self.mlp_bias),
            LinearConfig::new(i, h).with_bias(self.mlp_bias),
        ])
    }

    pub(crate) fn inv_freq(&self) -> Vec<f32> {
        rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling.as_ref())
    }

    /// A layer's attention, its scores scaled by `scale`, with q/k norms made by `norm`
    /// where the configuration has them.
    pub(crate) fn init_attention<B: Backend>(
        &self,
        scale: f64,
        norm: impl Fn(usize, f64, &B::Device) -> RmsNorm<B>,
        device: &B::Device,
    ) -> LlamaAttention<B> {
        let Projections([q, k, v, o, ..]) = self.projections();
        let qk_norm = || {
            self.qk_norm
                .then(|| norm(self.head_dim, self.rms_norm_eps, device))
        };
        LlamaAttention {
            q_proj: q.init(device),
            k_proj: k.init(device),
            v_proj: v.init(device),
            o_proj: o.init(device),
            q_norm: qk_norm(),
            k_norm: qk_norm(),
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            scale,
        }
    }

    /// A layer's MLP, with tanh GELU (Gemma) or SiLU.
    pub(crate) fn init_mlp<B: Backend>(&self, gelu_tanh: bool, device: &B::Device) -> LlamaMlp<B> {
        let Projections([.., gate, up, down]) = self.projections();
        LlamaMlp {
            gate_proj: gate.init(device),
            up_proj: up.init(device),
            down_proj: down.init(device),
            gelu_tanh,
        }
    }

    /// A randomly initialised model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Llama<B> {
        let eps = self.rms_norm_eps;
        let layers = (0..self.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                self_attn: self.init_attention(
                    1.0 / (self.head_dim as f64).sqrt(),
                    RmsNorm::init,
                    device,
                ),
                mlp: self.init_mlp(false, device),
                input_layernorm: RmsNorm::init(self.hidden_size, eps, device),
                post_attention_layernorm: RmsNorm::init(self.hidden_size, eps, device),
            })
            .collect();
        Llama {
            model: LlamaModel {
                embed_tokens: Embedding::init(self.vocab_size, self.hidden_size, device),
                layers,
                norm: RmsNorm::init(self.hidden_size, eps, device),
            },
            lm_head: (!self.tie_word_embeddings)
                .then(|| LinearConfig::new(self.hidden_size, self.vocab_size).init(device)),
            config: self.clone(),
            inv_freq: self.inv_freq(),
            embedding_noise: None,
        }
    }
}

impl<B: Backend> Architecture<B> for Llama<B> {
    fn layout(&self) -> &'static Layout {
        &LAYOUT
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::Llama(self.config.clone())
    }

    fn hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let (cos, sin) = rope_cos_sin(position_ids, &self.inv_freq);
        let masks = LayerMasks::new(&self.config, mask);
        let mut x = neftune(
            self.model.embed_tokens.forward(input_ids),
            self.embedding_noise,
        );
        for (i, layer) in self.model.layers.iter().enumerate() {
            let (layer_mask, _) = masks.layer(&self.config, i);
            let attended = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                cos.clone(),
                sin.clone(),
                layer_mask,
                cache.as_deref_mut().map(|c| &mut c.layers[i]),
            );
            x = x + attended;
            x = x.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(x));
        }
        self.model.norm.forward(x)
    }

    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        head_logits(self.lm_head.as_ref(), &self.model.embed_tokens, hidden)
    }

    fn output_weight(&self) -> Option<Tensor<B, 2>> {
        head_weight(self.lm_head.as_ref(), &self.model.embed_tokens)
    }

    fn n_layers(&self) -> usize {
        self.model.layers.len()
    }

    fn set_embedding_noise(&mut self, alpha: Option<f64>) {
        self.embedding_noise = alpha;
    }

    fn token_embedding_mut(&mut self) -> &mut Embedding<B> {
        &mut self.model.embed_tokens
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear<B>> {
        let layers = self
            .model
            .layers
            .iter_mut()
            .map(|layer| (&mut layer.self_attn, &mut layer.mlp));
        decoder_linears(layers, self.lm_head.as_mut())
    }
}

/// Each layer's attention mask: the causal (block-diagonal) mask, or for sliding-window
/// layers the same narrowed to the window, made once for all of them.
pub(crate) struct LayerMasks<B: Backend> {
    full: Tensor<B, 4, Bool>,
    sliding: Option<Tensor<B, 4, Bool>>,
}

impl<B: Backend> LayerMasks<B> {
    pub(crate) fn new(config: &LlamaConfig, mask: Tensor<B, 4, Bool>) -> Self {
        let sliding = config
            .sliding_window
            .map(|window| sliding_window_mask(mask.clone(), window));
        LayerMasks {
            full: mask,
            sliding,
        }
    }

    /// Layer `i`'s mask, and whether the layer slides.
    pub(crate) fn layer(&self, config: &LlamaConfig, i: usize) -> (Tensor<B, 4, Bool>, bool) {
        match (config.layer_types[i], &self.sliding) {
            (AttentionType::SlidingAttention, Some(sliding)) => (sliding.clone(), true),
            _ => (self.full.clone(), false),
        }
    }
}

/// Every linear layer of a decoder stack (attention, then MLP, per layer) and its output
/// layer, in module order.
pub(crate) fn decoder_linears<'a, B: Backend>(
    layers: impl Iterator<Item = (&'a mut LlamaAttention<B>, &'a mut LlamaMlp<B>)>,
    lm_head: Option<&'a mut Linear<B>>,
) -> Vec<&'a mut Linear<B>> {
    let mut linears: Vec<&mut Linear<B>> = Vec::new();
    for (attention, mlp) in layers {
        linears.extend(attention.linears_mut());
        linears.extend(mlp.linears_mut());
    }
    linears.extend(lm_head);
    linears
}

impl<B: Backend> LlamaAttention<B> {
    /// q, k, v and o, in module order.
    pub fn linears_mut(&mut self) -> [&mut Linear<B>; 4] {
        [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
        ]
    }

    /// # Shapes
    /// x: `[batch, seq_len, hidden]`, cos/sin: `[batch, seq_len, head_dim]` -> `[batch, seq_len, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: Tensor<B, 3>,
        sin: Tensor<B, 3>,
        mask: Tensor<B, 4, Bool>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq_len, _] = x.dims();
        let split = |t: Tensor<B, 3>, n: usize, norm: &Option<RmsNorm<B>>| {
            let heads = t.reshape([batch, seq_len, n, self.head_dim]);
            match norm {
                Some(norm) => norm.forward_heads(heads),
                None => heads,
            }
        };
        // Rotated while each token's heads are still contiguous, then heads-first.
        let q = rope(
            split(self.q_proj.forward(x.clone()), self.n_heads, &self.q_norm),
            cos.clone(),
            sin.clone(),
        );
        let k = rope(
            split(
                self.k_proj.forward(x.clone()),
                self.n_kv_heads,
                &self.k_norm,
            ),
            cos,
            sin,
        );
        let v = split(self.v_proj.forward(x), self.n_kv_heads, &None);
        let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
        let (k, v) = extend_cache(cache, k, v);
        let out = attention(q, k, v, Some(mask), self.scale)
            .swap_dims(1, 2)
            .reshape([batch, seq_len, self.n_heads * self.head_dim]);
        self.o_proj.forward(out)
    }
}

impl<B: Backend> LlamaMlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (gate, up) = (self.gate_proj.forward(x.clone()), self.up_proj.forward(x));
        self.down_proj.forward(match self.gelu_tanh {
            true => gelu_tanh(gate) * up,
            false => swiglu(gate, up),
        })
    }

    /// gate, up and down, in module order.
    pub fn linears_mut(&mut self) -> [&mut Linear<B>; 3] {
        [&mut self.gate_proj, &mut self.up_proj, &mut self.down_proj]
    }
}
