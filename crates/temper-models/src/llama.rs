//! The Llama family (`LlamaForCausalLM`; Mistral and Qwen2 share the layout): RMSNorm,
//! SwiGLU MLP, grouped-query attention, rotate-half RoPE with optional scaling, optional
//! attention biases (Qwen2), tied or untied output layer.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{Bool, Int};

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::fused::{rope, swiglu};
use crate::layers::{
    Embedding, KvCache, LayerCache, Linear, LinearConfig, RmsNorm, WeightLayout, attention,
    extend_cache, neftune, rope_cos_sin, rope_inv_freq, tied_logits,
};
use crate::weights::{WeightWriter, Weights};

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
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

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

    fn inv_freq(&self) -> Vec<f32> {
        rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling.as_ref())
    }

    /// A randomly initialised model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Llama<B> {
        let Projections([q, k, v, o, gate, up, down]) = self.projections();
        let eps = self.rms_norm_eps;
        let layers = (0..self.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                self_attn: LlamaAttention {
                    q_proj: q.init(device),
                    k_proj: k.init(device),
                    v_proj: v.init(device),
                    o_proj: o.init(device),
                    n_heads: self.num_attention_heads,
                    n_kv_heads: self.num_key_value_heads,
                    head_dim: self.head_dim,
                },
                mlp: LlamaMlp {
                    gate_proj: gate.init(device),
                    up_proj: up.init(device),
                    down_proj: down.init(device),
                },
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

    /// Builds the model from checkpoint tensors with HF key names.
    pub fn load<B: Backend>(&self, weights: &mut Weights, device: &B::Device) -> Result<Llama<B>> {
        let Projections([q, k, v, o, gate, up, down]) = self.projections();
        let (eps, h) = (self.rms_norm_eps, self.hidden_size);
        let torch = WeightLayout::Torch;
        let mut layers = Vec::with_capacity(self.num_hidden_layers);
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            // Some exports keep the precomputed rotary frequencies; they are derived here.
            weights.ignore(&format!("{p}.self_attn.rotary_emb.inv_freq"));
            layers.push(LlamaDecoderLayer {
                self_attn: LlamaAttention {
                    q_proj: Linear::load(
                        weights,
                        &format!("{p}.self_attn.q_proj"),
                        &q,
                        torch,
                        device,
                    )?,
                    k_proj: Linear::load(
                        weights,
                        &format!("{p}.self_attn.k_proj"),
                        &k,
                        torch,
                        device,
                    )?,
                    v_proj: Linear::load(
                        weights,
                        &format!("{p}.self_attn.v_proj"),
                        &v,
                        torch,
                        device,
                    )?,
                    o_proj: Linear::load(
                        weights,
                        &format!("{p}.self_attn.o_proj"),
                        &o,
                        torch,
                        device,
                    )?,
                    n_heads: self.num_attention_heads,
                    n_kv_heads: self.num_key_value_heads,
                    head_dim: self.head_dim,
                },
                mlp: LlamaMlp {
                    gate_proj: Linear::load(
                        weights,
                        &format!("{p}.mlp.gate_proj"),
                        &gate,
                        torch,
                        device,
                    )?,
                    up_proj: Linear::load(
                        weights,
                        &format!("{p}.mlp.up_proj"),
                        &up,
                        torch,
                        device,
                    )?,
                    down_proj: Linear::load(
                        weights,
                        &format!("{p}.mlp.down_proj"),
                        &down,
                        torch,
                        device,
                    )?,
                },
                input_layernorm: RmsNorm::load(
                    weights,
                    &format!("{p}.input_layernorm.weight"),
                    h,
                    eps,
                    device,
                )?,
                post_attention_layernorm: RmsNorm::load(
                    weights,
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    eps,
                    device,
                )?,
            });
        }
        let model = LlamaModel {
            embed_tokens: Embedding::load(
                weights,
                "model.embed_tokens.weight",
                self.vocab_size,
                h,
                device,
            )?,
            layers,
            norm: RmsNorm::load(weights, "model.norm.weight", h, eps, device)?,
        };
        let lm_head = if self.tie_word_embeddings {
            // Tied: a saved copy of the embedding is allowed and ignored.
            weights.ignore("lm_head.weight");
            None
        } else {
            let config = LinearConfig::new(h, self.vocab_size);
            Some(Linear::load(weights, "lm_head", &config, torch, device)?)
        };
        Ok(Llama {
            model,
            lm_head,
            config: self.clone(),
            inv_freq: self.inv_freq(),
            embedding_noise: None,
        })
    }
}

impl<B: Backend> Llama<B> {
    /// # Shapes
    /// input_ids, position_ids: `[batch, seq_len]`, mask: `[batch, 1, seq_len, seq_len]`
    /// -> logits `[batch, seq_len, vocab_size]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let hidden = self.hidden(input_ids, position_ids, mask, cache);
        self.logits(hidden)
    }

    /// The final hidden states (after the last norm), before the output layer.
    pub fn hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let (cos, sin) = rope_cos_sin(position_ids, &self.inv_freq);
        let mut x = neftune(
            self.model.embed_tokens.forward(input_ids),
            self.embedding_noise,
        );
        for (i, layer) in self.model.layers.iter().enumerate() {
            let attended = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                cos.clone(),
                sin.clone(),
                mask.clone(),
                cache.as_deref_mut().map(|c| &mut c.layers[i]),
            );
            x = x + attended;
            x = x.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(x));
        }
        self.model.norm.forward(x)
    }

    /// The output layer: `lm_head`, or the transposed embedding when tied.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(lm_head) => lm_head.forward(hidden),
            None => tied_logits(hidden, self.model.embed_tokens.weight.val()),
        }
    }

    /// See [`crate::CausalLm::map_linears`].
    pub fn map_linears(mut self, map: &mut impl FnMut(&str, Linear<B>) -> Linear<B>) -> Self {
        self.model.layers = self
            .model
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, mut layer)| {
                let p = format!("model.layers.{i}");
                layer.self_attn.q_proj =
                    map(&format!("{p}.self_attn.q_proj"), layer.self_attn.q_proj);
                layer.self_attn.k_proj =
                    map(&format!("{p}.self_attn.k_proj"), layer.self_attn.k_proj);
                layer.self_attn.v_proj =
                    map(&format!("{p}.self_attn.v_proj"), layer.self_attn.v_proj);
                layer.self_attn.o_proj =
                    map(&format!("{p}.self_attn.o_proj"), layer.self_attn.o_proj);
                layer.mlp.gate_proj = map(&format!("{p}.mlp.gate_proj"), layer.mlp.gate_proj);
                layer.mlp.up_proj = map(&format!("{p}.mlp.up_proj"), layer.mlp.up_proj);
                layer.mlp.down_proj = map(&format!("{p}.mlp.down_proj"), layer.mlp.down_proj);
                layer
            })
            .collect();
        self.lm_head = self.lm_head.map(|l| map("lm_head", l));
        self
    }

    pub fn save(&self, writer: &mut WeightWriter) {
        let torch = WeightLayout::Torch;
        writer.push_tensor(
            "model.embed_tokens.weight",
            self.model.embed_tokens.weight.val(),
        );
        for (i, layer) in self.model.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let attn = &layer.self_attn;
            attn.q_proj
                .save(writer, &format!("{p}.self_attn.q_proj"), torch);
            attn.k_proj
                .save(writer, &format!("{p}.self_attn.k_proj"), torch);
            attn.v_proj
                .save(writer, &format!("{p}.self_attn.v_proj"), torch);
            attn.o_proj
                .save(writer, &format!("{p}.self_attn.o_proj"), torch);
            layer
                .mlp
                .gate_proj
                .save(writer, &format!("{p}.mlp.gate_proj"), torch);
            layer
                .mlp
                .up_proj
                .save(writer, &format!("{p}.mlp.up_proj"), torch);
            layer
                .mlp
                .down_proj
                .save(writer, &format!("{p}.mlp.down_proj"), torch);
            writer.push_tensor(
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.weight.val(),
            );
            writer.push_tensor(
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.weight.val(),
            );
        }
        writer.push_tensor("model.norm.weight", self.model.norm.weight.val());
        if let Some(lm_head) = &self.lm_head {
            lm_head.save(writer, "lm_head", torch);
        }
    }
}

impl<B: Backend> LlamaAttention<B> {
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
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([batch, seq_len, n, self.head_dim]);
        // Rotated while each token's heads are still contiguous, then heads-first.
        let q = rope(
            split(self.q_proj.forward(x.clone()), self.n_heads),
            cos.clone(),
            sin.clone(),
        );
        let k = rope(
            split(self.k_proj.forward(x.clone()), self.n_kv_heads),
            cos,
            sin,
        );
        let v = split(self.v_proj.forward(x), self.n_kv_heads);
        let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
        let (k, v) = extend_cache(cache, k, v);
        let out = attention(q, k, v, Some(mask)).swap_dims(1, 2).reshape([
            batch,
            seq_len,
            self.n_heads * self.head_dim,
        ]);
        self.o_proj.forward(out)
    }
}

impl<B: Backend> LlamaMlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down_proj.forward(swiglu(
            self.gate_proj.forward(x.clone()),
            self.up_proj.forward(x),
        ))
    }
}
