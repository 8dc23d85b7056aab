//! GPT-2 (`GPT2LMHeadModel`): learned positions, fused `c_attn`, HF `Conv1D` weights stored
//! `[in, out]`, tanh-GELU, LayerNorm before each sublayer, output tied to `wte`.

use crate::fused::gelu_tanh;
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{Bool, Int};

use crate::config::{Gpt2Config, ModelConfig};
use crate::layers::{
    Embedding, KvCache, LayerCache, LayerNorm, Linear, LinearConfig, attention, extend_cache,
    neftune, tied_logits,
};
use crate::layout::{Layout, WeightLayout};
use crate::model::Architecture;

#[derive(Module, Debug)]
pub struct Gpt2<B: Backend> {
    pub transformer: Gpt2Transformer<B>,
    #[module(skip)]
    pub config: Gpt2Config,
    /// NEFTune's alpha: noise added to the token embeddings while training.
    #[module(skip)]
    pub embedding_noise: Option<f64>,
}

#[derive(Module, Debug)]
pub struct Gpt2Transformer<B: Backend> {
    pub wte: Embedding<B>,
    pub wpe: Embedding<B>,
    pub h: Vec<Gpt2Block<B>>,
    pub ln_f: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct Gpt2Block<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: Gpt2Attention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Gpt2Mlp<B>,
}

#[derive(Module, Debug)]
pub struct Gpt2Attention<B: Backend> {
    /// q, k and v in one projection: `[n_embd, 3 * n_embd]`.
    pub c_attn: Linear<B>,
    pub c_proj: Linear<B>,
    pub n_head: usize,
}

#[derive(Module, Debug)]
pub struct Gpt2Mlp<B: Backend> {
    pub c_fc: Linear<B>,
    pub c_proj: Linear<B>,
}

/// GPT-2's checkpoints: `Conv1D` weights stored `[in, out]`; files of `GPT2Model` lack the
/// `transformer.` prefix; old files carry the causal-mask buffers; the output layer is tied
/// to `wte`, so a saved copy is not a parameter.
pub const LAYOUT: Layout = Layout {
    linear: WeightLayout::Conv1d,
    optional_prefix: Some("transformer."),
    ignored: &[
        "transformer.h.*.attn.bias",
        "transformer.h.*.attn.masked_bias",
        "lm_head.weight",
    ],
};

impl Gpt2Config {
    fn linears(&self) -> [LinearConfig; 4] {
        let e = self.n_embd;
        [
            LinearConfig::new(e, 3 * e).with_bias(true),
            LinearConfig::new(e, e).with_bias(true),
            LinearConfig::new(e, self.n_inner).with_bias(true),
            LinearConfig::new(self.n_inner, e).with_bias(true),
        ]
    }

    /// A randomly initialised model (HF's initialisation: normal(0, 0.02), unit norms).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Gpt2<B> {
        let [c_attn, c_proj, c_fc, mlp_proj] = self.linears();
        let eps = self.layer_norm_epsilon;
        Gpt2 {
            transformer: Gpt2Transformer {
                wte: Embedding::init(self.vocab_size, self.n_embd, device),
                wpe: Embedding::init(self.n_positions, self.n_embd, device),
                h: (0..self.n_layer)
                    .map(|_| Gpt2Block {
                        ln_1: LayerNorm::init(self.n_embd, eps, device),
                        attn: Gpt2Attention {
                            c_attn: c_attn.init(device),
                            c_proj: c_proj.init(device),
                            n_head: self.n_head,
                        },
                        ln_2: LayerNorm::init(self.n_embd, eps, device),
                        mlp: Gpt2Mlp {
                            c_fc: c_fc.init(device),
                            c_proj: mlp_proj.init(device),
                        },
                    })
                    .collect(),
                ln_f: LayerNorm::init(self.n_embd, eps, device),
            },
            config: self.clone(),
            embedding_noise: None,
        }
    }
}

impl<B: Backend> Architecture<B> for Gpt2<B> {
    fn layout(&self) -> &'static Layout {
        &LAYOUT
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::Gpt2(self.config.clone())
    }

    fn hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let t = &self.transformer;
        let mut x =
            neftune(t.wte.forward(input_ids), self.embedding_noise) + t.wpe.forward(position_ids);
        for (i, block) in t.h.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = x.clone()
                + block
                    .attn
                    .forward(block.ln_1.forward(x.clone()), mask.clone(), layer_cache);
            x = x.clone() + block.mlp.forward(block.ln_2.forward(x));
        }
        t.ln_f.forward(x)
    }

    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        tied_logits(hidden, self.transformer.wte.weight.val())
    }

    fn output_weight(&self) -> Option<Tensor<B, 2>> {
        Some(self.transformer.wte.weight.val())
    }

    fn n_layers(&self) -> usize {
        self.transformer.h.len()
    }

    fn set_embedding_noise(&mut self, alpha: Option<f64>) {
        self.embedding_noise = alpha;
    }

    fn token_embedding_mut(&mut self) -> &mut Embedding<B> {
        &mut self.transformer.wte
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear<B>> {
        self.transformer
            .h
            .iter_mut()
            .flat_map(|block| {
                [
                    &mut block.attn.c_attn,
                    &mut block.attn.c_proj,
                    &mut block.mlp.c_fc,
                    &mut block.mlp.c_proj,
                ]
            })
            .collect()
    }
}

impl<B: Backend> Gpt2Attention<B> {
    /// # Shapes
    /// x: `[batch, seq_len, n_embd]` -> `[batch, seq_len, n_embd]`
    /// With a cache, the keys and values of earlier positions are prepended and the new ones
    /// stored.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: Tensor<B, 4, Bool>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq_len, n_embd] = x.dims();
        let head_dim = n_embd / self.n_head;
        let heads = |t: Tensor<B, 3>| {
            t.reshape([batch, seq_len, self.n_head, head_dim])
                .swap_dims(1, 2)
        };
        let mut qkv = self.c_attn.forward(x).chunk(3, 2).into_iter();
        let (q, k, v) = match (qkv.next(), qkv.next(), qkv.next()) {
            (Some(q), Some(k), Some(v)) => (heads(q), heads(k), heads(v)),
            _ => unreachable!("c_attn has 3 * n_embd outputs"),
        };
        let (k, v) = extend_cache(cache, k, v);
        let out = attention(q, k, v, Some(mask), 1.0 / (head_dim as f64).sqrt())
            .swap_dims(1, 2)
            .reshape([batch, seq_len, n_embd]);
        self.c_proj.forward(out)
    }
}

impl<B: Backend> Gpt2Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.c_proj.forward(gelu_tanh(self.c_fc.forward(x)))
    }
}
