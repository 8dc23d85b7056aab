//! GGUF files of each architecture, written as llama.cpp writes them
//! (`fixtures/gguf/make_gguf.py`, from the parity fixtures' models), import to the same model
//! as the safetensors they came from: every tensor under its Hugging Face name and layout
//! (Llama's q/k rows un-permuted, Gemma's `1 + w` norms shifted back), and the configuration,
//! with llama.cpp's defaults where the metadata is silent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use temper_models::{AttentionType, CausalLm, LlamaConfig, ModelConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn each_architecture_imports_to_the_safetensors_model() {
    let device = Default::default();
    for (file, source) in [
        ("llama", "llama_gqa"),
        ("qwen2", "qwen2_bias"),
        ("qwen3", "qwen3_qk_norm_sliding"),
        ("gemma3", "gemma3_sliding"),
    ] {
        let path = fixtures().join("gguf").join(format!("{file}.gguf"));
        let (gguf, gguf_config, _) = CausalLm::<Flex>::from_gguf(&path, &device).unwrap();
        let (hf, hf_config) =
            CausalLm::<Flex>::from_hf_dir(&fixtures().join(source), &device).unwrap();

        let (g, h) = (gguf_config.decoder().unwrap(), hf_config.decoder().unwrap());
        assert_eq!(g.family, h.family, "{file}");
        let shape = |c: &LlamaConfig| {
            (
                c.vocab_size,
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.head_dim,
                c.max_position_embeddings,
            )
        };
        assert_eq!(shape(g), shape(h), "{file}");
        // GGUF stores the epsilon as an f32.
        let settings = |c: &LlamaConfig| {
            (
                c.rms_norm_eps as f32,
                c.rope_theta,
                c.tie_word_embeddings,
                c.qk_norm,
            )
        };
        assert_eq!(settings(g), settings(h), "{file}");
        assert_eq!(
            (g.attention_bias, g.o_proj_bias),
            (h.attention_bias, h.o_proj_bias),
            "{file}"
        );
        // What llama.cpp does not write: Qwen slides nowhere; Gemma 3 makes every sixth layer
        // global and scales scores by the head width.
        match &gguf_config {
            ModelConfig::Gemma3(gemma) => {
                assert_eq!(g.sliding_window, h.sliding_window);
                assert_eq!(g.layer_types, [AttentionType::SlidingAttention; 3]);
                assert_eq!(gemma.query_pre_attn_scalar, g.head_dim);
                assert_eq!(gemma.rope_local_base_freq, 10_000.0);
            }
            _ => {
                assert_eq!(g.sliding_window, None, "{file}");
                assert!(
                    g.layer_types
                        .iter()
                        .all(|t| *t == AttentionType::FullAttention)
                );
            }
        }

        let (ours, theirs) = (gguf.to_weights(), hf.to_weights());
        let keys: Vec<&str> = theirs.keys().collect();
        assert_eq!(ours.keys().collect::<Vec<_>>(), keys, "{file}");
        for key in keys {
            let (a, b) = (ours.get(key).unwrap(), theirs.get(key).unwrap());
            assert_eq!(a.shape, b.shape, "{file}: {key}");
            let worst = a
                .data
                .iter()
                .zip(&b.data)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            // F32 tensors come back exactly; the two largest of each file are Q8_0, within
            // half a quantization step of weights drawn with standard deviation 0.1.
            assert!(worst < 2e-3, "{file}: {key} differs by {worst}");
        }
    }
}
