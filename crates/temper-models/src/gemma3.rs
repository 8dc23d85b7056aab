//! Gemma 3's text model (`Gemma3ForCausalLM`): the Llama family's attention with per-head
//! q/k norms and scores scaled by `query_pre_attn_scalar ** -0.5`, RMSNorms that scale by
//! `1 + weight`, a norm before and after both attention and MLP, a GeGLU MLP (tanh GELU),
//! token embeddings scaled by `sqrt(hidden_size)`, and interleaved layers: sliding-window
//! layers with a local RoPE base, global layers with the (possibly scaled) global one.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{Bool, Int};

use crate::config::{Gemma3Config, ModelConfig};
use crate::layers::{
    Embedding, KvCache, Linear, LinearConfig, RmsNorm, head_logits, head_weight, neftune,
    rope_cos_sin, rope_inv_freq,
};
use crate::layout::Layout;
use crate::llama::{self, LayerMasks, LlamaAttention, LlamaMlp, decoder_linears};
use crate::model::Architecture;

#[derive(Module, Debug)]
pub struct Gemma3<B: Backend> {
    pub model: Gemma3Model<B>,
    /// `None` when tied to `model.embed_tokens` (as in every Gemma 3 checkpoint).
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub config: Gemma3Config,
    /// RoPE of the global layers, then of the sliding-window layers.
    #[module(skip)]
    pub inv_freq: [Vec<f32>; 2],
    #[module(skip)]
    pub embedding_noise: Option<f64>,
}

#[derive(Module, Debug)]
pub struct Gemma3Model<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<Gemma3DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

#[derive(Module, Debug)]
pub struct Gemma3DecoderLayer<B: Backend> {
    pub self_attn: LlamaAttention<B>,
    /// With tanh GELU.
    pub mlp: LlamaMlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub pre_feedforward_layernorm: RmsNorm<B>,
    pub post_feedforward_layernorm: RmsNorm<B>,
}

impl Gemma3Config {
    /// A model with zero norms (scale one) and random projections.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Gemma3<B> {
        let c = &self.decoder;
        let norm = || RmsNorm::init_offset_from_one(c.hidden_size, c.rms_norm_eps, device);
        let layers = (0..c.num_hidden_layers)
            .map(|_| Gemma3DecoderLayer {
                self_attn: c.init_attention(
                    (self.query_pre_attn_scalar as f64).powf(-0.5),
                    RmsNorm::init_offset_from_one,
                    device,
                ),
                mlp: c.init_mlp(true, device),
                input_layernorm: norm(),
                post_attention_layernorm: norm(),
                pre_feedforward_layernorm: norm(),
                post_feedforward_layernorm: norm(),
            })
            .collect();
        Gemma3 {
            model: Gemma3Model {
                embed_tokens: Embedding::init(c.vocab_size, c.hidden_size, device),
                layers,
                norm: norm(),
            },
            lm_head: (!c.tie_word_embeddings)
                .then(|| LinearConfig::new(c.hidden_size, c.vocab_size).init(device)),
            config: self.clone(),
            inv_freq: [
                c.inv_freq(),
                rope_inv_freq(c.head_dim, self.rope_local_base_freq, None),
            ],
            embedding_noise: None,
        }
    }
}

impl<B: Backend> Architecture<B> for Gemma3<B> {
    fn layout(&self) -> &'static Layout {
        &llama::LAYOUT
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::Gemma3(self.config.clone())
    }

    fn hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let c = &self.config.decoder;
        let [global, local] = &self.inv_freq;
        let global = rope_cos_sin(position_ids.clone(), global);
        let local = rope_cos_sin(position_ids, local);
        let masks = LayerMasks::new(c, mask);
        // transformers multiplies by the scale as a tensor of the weights' dtype.
        let scale = (c.hidden_size as f32).sqrt();
        let mut x = neftune(
            self.model.embed_tokens.forward(input_ids).mul_scalar(scale),
            self.embedding_noise,
        );
        for (i, layer) in self.model.layers.iter().enumerate() {
            let (layer_mask, slides) = masks.layer(c, i);
            let (cos, sin) = if slides { &local } else { &global };
            let attended = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                cos.clone(),
                sin.clone(),
                layer_mask,
                cache.as_deref_mut().map(|c| &mut c.layers[i]),
            );
            x = x + layer.post_attention_layernorm.forward(attended);
            let mlp = layer
                .mlp
                .forward(layer.pre_feedforward_layernorm.forward(x.clone()));
            x = x + layer.post_feedforward_layernorm.forward(mlp);
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
