//! Adapters as plain data, and PEFT's files for them.
//!
//! PEFT writes a directory with `adapter_config.json` and `adapter_model.safetensors`, whose
//! keys are `base_model.model.{module path}.lora_A.weight` (`[rank, d_input]`) and
//! `...lora_B.weight` (`[d_output, rank]`). The module path is the layer's name in the
//! Hugging Face model (`transformer.h.0.attn.c_attn`, `model.layers.0.self_attn.q_proj`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use serde_json::{Value, json};

use crate::config::{LoraConfig, TargetModules};
use crate::error::{Error, Result};
use crate::slots::{factors, set_factors};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";

/// The factors of one adapted layer, on the host, in PEFT's layout.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterWeights {
    pub rank: usize,
    pub d_input: usize,
    pub d_output: usize,
    /// `[rank, d_input]`, row-major.
    pub lora_a: Vec<f32>,
    /// `[d_output, rank]`, row-major.
    pub lora_b: Vec<f32>,
}

/// A trained adapter: its configuration and the factors of every adapted layer by module
/// path.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    pub config: LoraConfig,
    pub modules: BTreeMap<String, AdapterWeights>,
    /// PEFT's `fan_in_fan_out`: the base layers store weights as `[in, out]` (GPT-2's
    /// `Conv1D`). It does not change the factors' shapes, only how PEFT merges them.
    pub fan_in_fan_out: bool,
}

/// Copies the factors of every slot of `module` to the host.
pub fn extract<B: Backend, M: Module<B>>(module: &M, config: &LoraConfig) -> Adapter {
    let host = |t: Tensor<B, 2>| {
        t.into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default()
    };
    let modules = factors(module)
        .into_iter()
        .filter_map(|(slot, (a, b))| {
            let (a, b) = (a?, b?);
            let [d_input, rank] = a.dims();
            let [_, d_output] = b.dims();
            Some((
                slot,
                AdapterWeights {
                    rank,
                    d_input,
                    d_output,
                    lora_a: host(a.transpose()),
                    lora_b: host(b.transpose()),
                },
            ))
        })
        .collect();
    Adapter {
        config: config.clone(),
        modules,
        fan_in_fan_out: false,
    }
}

/// Puts `adapter`'s factors into `module`'s slots. Strict: every adapted layer must have a
/// slot of the same shape and every slot must be covered.
pub fn apply<B: Backend, M: Module<B>>(module: M, adapter: &Adapter) -> Result<M> {
    let slots = factors(&module);
    for (slot, (a, b)) in &slots {
        let Some(weights) = adapter.modules.get(slot) else {
            return Err(Error::MissingModule {
                module: slot.clone(),
            });
        };
        let a_dims = a.as_ref().map(|a| a.dims().to_vec()).unwrap_or_default();
        let b_dims = b.as_ref().map(|b| b.dims().to_vec()).unwrap_or_default();
        let key = |factor: &str| format!("{KEY_PREFIX}{slot}.{factor}.weight");
        check_shape(
            &key("lora_A"),
            &[
                a_dims.get(1).copied().unwrap_or(0),
                a_dims.first().copied().unwrap_or(0),
            ],
            &[weights.rank, weights.d_input],
        )?;
        check_shape(
            &key("lora_B"),
            &[
                b_dims.get(1).copied().unwrap_or(0),
                b_dims.first().copied().unwrap_or(0),
            ],
            &[weights.d_output, weights.rank],
        )?;
    }
    if let Some(module) = adapter.modules.keys().find(|m| !slots.contains_key(*m)) {
        return Err(Error::UnknownModule {
            key: format!("{KEY_PREFIX}{module}.lora_A.weight"),
            module: module.clone(),
        });
    }
    Ok(set_factors(module, |slot, is_a, current| {
        let weights = adapter.modules.get(slot)?;
        let device = current.device();
        let (values, rows, cols) = if is_a {
            (&weights.lora_a, weights.rank, weights.d_input)
        } else {
            (&weights.lora_b, weights.d_output, weights.rank)
        };
        let stored =
            Tensor::<B, 2>::from_data(TensorData::new(values.clone(), [rows, cols]), &device);
        Some(stored.transpose())
    }))
}

fn check_shape(key: &str, expected: &[usize], actual: &[usize]) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::Shape {
            key: key.into(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        })
    }
}

impl Adapter {
    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if
    /// needed), each to a temporary file first and then renamed, so a failure leaves no
    /// half-written file behind.
    pub fn save_peft(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        let mut tensors = Vec::new();
        for (module, weights) in &self.modules {
            tensors.push((
                format!("{KEY_PREFIX}{module}.lora_A.weight"),
                vec![weights.rank, weights.d_input],
                &weights.lora_a,
            ));
            tensors.push((
                format!("{KEY_PREFIX}{module}.lora_B.weight"),
                vec![weights.d_output, weights.rank],
                &weights.lora_b,
            ));
        }
        let tensors: Vec<(String, Vec<usize>, &[f32])> = tensors
            .into_iter()
            .map(|(key, shape, values)| (key, shape, values.as_slice()))
            .collect();
        let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        temper_store::write_f32_safetensors(&dir.join(WEIGHTS_FILE), &tensors, Some(metadata))?;
        let config = self.peft_config(base_model_name_or_path);
        let text = serde_json::to_string_pretty(&config).expect("a JSON value serialises");
        Ok(temper_store::write_atomic(
            &dir.join(CONFIG_FILE),
            text.as_bytes(),
        )?)
    }

    /// `adapter_config.json` as PEFT writes it for a LoRA adapter.
    fn peft_config(&self, base_model_name_or_path: &str) -> Value {
        let c = &self.config;
        let target_modules = match &c.target_modules {
            TargetModules::Names(names) => json!(names),
            TargetModules::Pattern(pattern) => json!(pattern),
        };
        json!({
            "alpha_pattern": {},
            "base_model_name_or_path": base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": self.fan_in_fan_out,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": c.rank,
            "rank_pattern": {},
            "revision": null,
            "target_modules": target_modules,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": c.use_rslora,
        })
    }

    /// Reads an adapter directory written by PEFT (or by [`Adapter::save_peft`]).
    pub fn load_peft(dir: &Path) -> Result<Adapter> {
        let config_path = dir.join(CONFIG_FILE);
        let text =
            std::fs::read_to_string(&config_path).map_err(|source| io(&config_path, source))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::File {
            path: config_path.clone(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let (config, fan_in_fan_out) = lora_config_from_peft(&json, &config_path)?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&weights_path).map_err(|source| io(&weights_path, source))?;
        let file_error = |reason: String| Error::File {
            path: weights_path.clone(),
            reason,
        };
        let tensors = temper_store::parse_safetensors(&bytes)
            .map_err(|e| file_error(format!("not a safetensors file: {e}")))?;
        let mut a_factors = BTreeMap::new();
        let mut b_factors = BTreeMap::new();
        for (key, view) in tensors.tensors() {
            let (module, factor) = key
                .strip_prefix(KEY_PREFIX)
                .and_then(|rest| {
                    rest.strip_suffix(".lora_A.weight")
                        .map(|m| (m, 'A'))
                        .or_else(|| rest.strip_suffix(".lora_B.weight").map(|m| (m, 'B')))
                })
                .ok_or_else(|| {
                    file_error(format!(
                        "unexpected tensor {key}: a LoRA adapter holds only \
                         base_model.model.<module>.lora_A.weight / lora_B.weight"
                    ))
                })?;
            let shape = view.shape().to_vec();
            if shape.len() != 2 {
                return Err(file_error(format!(
                    "{key}: expected a matrix, found shape {shape:?}"
                )));
            }
            let values = temper_store::decode_f32(view.dtype(), view.data()).ok_or_else(|| {
                file_error(format!(
                    "{key}: dtype {:?} is not supported (F32, F16, BF16 are)",
                    view.dtype()
                ))
            })?;
            let target = if factor == 'A' {
                &mut a_factors
            } else {
                &mut b_factors
            };
            target.insert(module.to_owned(), (shape, values));
        }
        let mut modules = BTreeMap::new();
        for (module, (a_shape, lora_a)) in a_factors {
            let Some((b_shape, lora_b)) = b_factors.remove(&module) else {
                return Err(file_error(format!(
                    "{KEY_PREFIX}{module}.lora_B.weight is missing"
                )));
            };
            let (rank, d_input, d_output) = (a_shape[0], a_shape[1], b_shape[0]);
            if b_shape[1] != rank {
                return Err(Error::Shape {
                    key: format!("{KEY_PREFIX}{module}.lora_B.weight"),
                    expected: vec![d_output, rank],
                    actual: b_shape,
                });
            }
            modules.insert(
                module,
                AdapterWeights {
                    rank,
                    d_input,
                    d_output,
                    lora_a,
                    lora_b,
                },
            );
        }
        if let Some(module) = b_factors.keys().next() {
            return Err(file_error(format!(
                "{KEY_PREFIX}{module}.lora_A.weight is missing"
            )));
        }
        if let Some((module, weights)) = modules.iter().find(|(_, w)| w.rank != config.rank) {
            return Err(file_error(format!(
                "{module} has rank {} but adapter_config.json says r = {}",
                weights.rank, config.rank
            )));
        }
        Ok(Adapter {
            config,
            modules,
            fan_in_fan_out,
        })
    }
}

/// The LoRA settings of a PEFT `adapter_config.json`; refuses what Temper does not
/// implement (DoRA, per-layer ranks, trained biases, extra trained modules).
fn lora_config_from_peft(json: &Value, path: &Path) -> Result<(LoraConfig, bool)> {
    let error = |key: &str, reason: String| Error::File {
        path: path.to_owned(),
        reason: format!("{key}: {reason}"),
    };
    let peft_type = json.get("peft_type").and_then(Value::as_str).unwrap_or("");
    if peft_type != "LORA" {
        return Err(error(
            "peft_type",
            format!("expected \"LORA\", found {peft_type:?}"),
        ));
    }
    let number = |key: &str| {
        json.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| error(key, "expected a number".into()))
    };
    let flag = |key: &str| json.get(key).and_then(Value::as_bool).unwrap_or(false);
    if flag("use_dora") {
        return Err(error("use_dora", "DoRA adapters are not supported".into()));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if json
            .get(key)
            .and_then(Value::as_object)
            .is_some_and(|o| !o.is_empty())
        {
            return Err(error(
                key,
                "per-layer ranks and alphas are not supported".into(),
            ));
        }
    }
    if json
        .get("bias")
        .and_then(Value::as_str)
        .is_some_and(|b| b != "none")
    {
        return Err(error("bias", "only \"none\" is supported".into()));
    }
    if json
        .get("modules_to_save")
        .is_some_and(|m| !m.is_null() && m != &json!([]))
    {
        return Err(error(
            "modules_to_save",
            "extra trained modules are not supported".into(),
        ));
    }
    let target_modules = match json.get("target_modules") {
        Some(Value::String(pattern)) => TargetModules::Pattern(pattern.clone()),
        Some(Value::Array(names)) => TargetModules::Names(
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => {
            return Err(error(
                "target_modules",
                "expected a list of names or a string".into(),
            ));
        }
    };
    let rank = number("r")?;
    if rank < 1.0 || rank.fract() != 0.0 {
        return Err(error(
            "r",
            format!("expected a positive integer, found {rank}"),
        ));
    }
    let config = LoraConfig {
        rank: rank as usize,
        alpha: number("lora_alpha")?,
        dropout: json
            .get("lora_dropout")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        use_rslora: flag("use_rslora"),
        target_modules,
    };
    Ok((config, flag("fan_in_fan_out")))
}

fn io(path: &Path, error: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        error,
    }
}
