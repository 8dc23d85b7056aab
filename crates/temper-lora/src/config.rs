//! The `[lora]` section of a run configuration, with PEFT's names and meanings.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which linear layers get an adapter.
///
/// As in PEFT: a list matches a module whose path is the name or ends in `.name`
/// (`"q_proj"` matches `model.layers.3.self_attn.q_proj`); a single string other than
/// `"all-linear"` is a regular expression that must match the whole module path;
/// `"all-linear"` is every linear layer except the output layer (`lm_head`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    Names(Vec<String>),
    Pattern(String),
}

impl Default for TargetModules {
    fn default() -> Self {
        TargetModules::Names(vec!["q_proj".into(), "v_proj".into()])
    }
}

impl std::fmt::Display for TargetModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetModules::Names(names) => write!(f, "{names:?}"),
            TargetModules::Pattern(pattern) => write!(f, "{pattern:?}"),
        }
    }
}

/// LoRA hyperparameters (PEFT's `LoraConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank `r` of the update.
    pub rank: usize,
    /// `lora_alpha`: the update is scaled by `alpha / rank` (`alpha / sqrt(rank)` with rsLoRA).
    pub alpha: f64,
    /// `lora_dropout`: dropout on the update's input while training.
    pub dropout: f64,
    /// rsLoRA scaling, `alpha / sqrt(rank)`.
    pub use_rslora: bool,
    /// Which linear layers get an adapter.
    pub target_modules: TargetModules,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            use_rslora: false,
            target_modules: TargetModules::default(),
        }
    }
}

impl LoraConfig {
    /// The factor the update `x A B` is multiplied by.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Checks the values and compiles the target selection.
    pub fn targets(&self) -> Result<Targets> {
        if self.rank == 0 {
            return Err(config_error("lora.rank", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(config_error("lora.dropout", "must be in [0, 1)"));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(config_error("lora.alpha", "must be a positive number"));
        }
        Ok(match &self.target_modules {
            TargetModules::Pattern(p) if p == "all-linear" => Targets::AllLinear,
            TargetModules::Pattern(pattern) => {
                Targets::Regex(Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                    Error::Targets {
                        reason: format!("{pattern:?} is not a valid regular expression: {e}"),
                    }
                })?)
            }
            TargetModules::Names(names) if names.is_empty() => {
                return Err(Error::Targets {
                    reason: "is empty; name modules (\"q_proj\"), give a regex, or \"all-linear\""
                        .into(),
                });
            }
            TargetModules::Names(names) => Targets::Names(names.clone()),
        })
    }
}

fn config_error(key: &str, reason: &str) -> Error {
    Error::Config {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A compiled [`TargetModules`].
#[derive(Debug, Clone)]
pub enum Targets {
    Names(Vec<String>),
    Regex(Regex),
    AllLinear,
}

/// The output layer's name, which `all-linear` leaves alone (as PEFT does).
pub const OUTPUT_LAYER: &str = "lm_head";

impl Targets {
    /// Whether the linear layer at `module_path` gets an adapter.
    pub fn matches(&self, module_path: &str) -> bool {
        match self {
            Targets::Names(names) => names.iter().any(|name| {
                module_path == name
                    || module_path
                        .strip_suffix(name.as_str())
                        .is_some_and(|prefix| prefix.ends_with('.'))
            }),
            Targets::Regex(regex) => regex.is_match(module_path),
            Targets::AllLinear => {
                module_path != OUTPUT_LAYER && !module_path.ends_with(&format!(".{OUTPUT_LAYER}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(targets: TargetModules, path: &str) -> bool {
        LoraConfig {
            target_modules: targets,
            ..LoraConfig::default()
        }
        .targets()
        .unwrap()
        .matches(path)
    }

    #[test]
    fn names_match_the_last_components_of_a_path() {
        let names = || TargetModules::Names(vec!["q_proj".into(), "attn.c_proj".into()]);
        assert!(matches(names(), "model.layers.0.self_attn.q_proj"));
        assert!(matches(names(), "q_proj"));
        assert!(!matches(names(), "model.layers.0.self_attn.qq_proj"));
        assert!(matches(names(), "transformer.h.1.attn.c_proj"));
        assert!(!matches(names(), "transformer.h.1.mlp.c_proj"));
    }

    #[test]
    fn a_pattern_must_match_the_whole_path() {
        let pattern = || TargetModules::Pattern(r".*\.(q|v)_proj".into());
        assert!(matches(pattern(), "model.layers.0.self_attn.v_proj"));
        assert!(!matches(pattern(), "model.layers.0.self_attn.v_proj2"));
    }

    #[test]
    fn all_linear_leaves_the_output_layer_alone() {
        let all = || TargetModules::Pattern("all-linear".into());
        assert!(matches(all(), "model.layers.0.mlp.down_proj"));
        assert!(!matches(all(), "lm_head"));
    }

    #[test]
    fn rslora_scales_by_the_square_root_of_the_rank() {
        let config = LoraConfig {
            rank: 16,
            alpha: 8.0,
            ..LoraConfig::default()
        };
        assert_eq!(config.scaling(), 0.5);
        let rs = LoraConfig {
            use_rslora: true,
            ..config
        };
        assert_eq!(rs.scaling(), 2.0);
    }

    #[test]
    fn bad_values_name_their_key() {
        let config = LoraConfig {
            rank: 0,
            ..LoraConfig::default()
        };
        assert_eq!(
            config.targets().unwrap_err().to_string(),
            "lora.rank: must be at least 1"
        );
        let config = LoraConfig {
            target_modules: TargetModules::Pattern("(".into()),
            ..LoraConfig::default()
        };
        assert!(
            config
                .targets()
                .unwrap_err()
                .to_string()
                .starts_with("target_modules: \"(\"")
        );
    }

    #[test]
    fn toml_accepts_a_list_or_a_string() {
        let config: LoraConfig =
            serde_json::from_str(r#"{"target_modules": "all-linear"}"#).unwrap();
        assert_eq!(
            config.target_modules,
            TargetModules::Pattern("all-linear".into())
        );
        assert_eq!(config.rank, 8);
    }
}
