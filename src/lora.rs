//! LoRA adapters in the PEFT layout (`adapter_config.json` +
//! `adapter_model.safetensors` with tensors
//! `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight`
//! [out, r]), and folding them into the base weights: `W += (alpha/r) B A`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::params::param_specs;
use crate::model::weights::{Tensor, Tensors};
use crate::model::{ModelDef, Weights};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub peft_type: Option<String>,
}

/// PEFT's tensor names for a module (`model.layers.0.self_attn.q_proj`).
pub fn peft_names(module: &str) -> (String, String) {
    (format!("base_model.model.{module}.lora_A.weight"), format!("base_model.model.{module}.lora_B.weight"))
}

/// LoRA settings.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// scale = alpha / rank; alpha = rank gives MiniMind's unscaled `W x + B A x`
    pub alpha: Option<f64>,
    /// module names to adapt (`q_proj`, `o_proj`, ...); default: every
    /// square linear layer, as MiniMind does
    #[serde(default)]
    pub targets: Vec<String>,
}

fn default_rank() -> usize {
    8
}

impl Default for LoraConfig {
    fn default() -> LoraConfig {
        LoraConfig { rank: default_rank(), alpha: None, targets: vec![] }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        (self.alpha.unwrap_or(self.rank as f64) / self.rank as f64) as f32
    }

    /// The modules (`model.layers.0.self_attn.q_proj`) adapted in `def`, with (out, in).
    pub fn modules(&self, def: &ModelDef) -> Vec<(String, usize, usize)> {
        param_specs(def)
            .into_iter()
            .filter(|s| s.shape.len() == 2 && s.name.ends_with(".weight") && s.name.starts_with("model.layers."))
            .filter(|s| {
                let module = s.name.trim_end_matches(".weight");
                let last = module.rsplit('.').next().unwrap_or("");
                if self.targets.is_empty() {
                    s.shape[0] == s.shape[1]
                } else {
                    self.targets.iter().any(|t| t == last || module.ends_with(t.as_str()))
                }
            })
            .map(|s| (s.name.trim_end_matches(".weight").to_string(), s.shape[0], s.shape[1]))
            .collect()
    }
}

/// One adapted module's low-rank pair: `W += (alpha / r) * B A`.
pub struct AdapterModule {
    /// the adapted linear layer, as `model.layers.0.self_attn.q_proj`
    pub module: String,
    /// [r, in]
    pub a: Tensor,
    /// [out, r]
    pub b: Tensor,
}

/// Read an adapter directory: its config and its modules.
pub fn load_adapter(dir: &Path) -> Result<(AdapterConfig, Vec<AdapterModule>)> {
    let cfg_path = dir.join("adapter_config.json");
    let cfg: AdapterConfig =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?)
            .with_context(|| format!("{} is not a LoRA adapter config", cfg_path.display()))?;
    let path = dir.join("adapter_model.safetensors");
    let t = Tensors::load(&path)?;
    if !(cfg.r > 0 && cfg.lora_alpha.is_finite()) {
        bail!("{}: `r` must be at least 1 and `lora_alpha` finite", cfg_path.display());
    }
    for (name, (_, data)) in &t.0 {
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            bail!("{}: tensor `{name}` holds {} at element {i}", path.display(), data[i]);
        }
    }
    let mut out = vec![];
    for name in t.0.keys().filter(|n| n.ends_with(".lora_A.weight")) {
        let module = name.trim_start_matches("base_model.model.").trim_end_matches(".lora_A.weight").to_string();
        let (an, bn) = peft_names(&module);
        let a = t.get(&an).cloned().with_context(|| format!("adapter has no `{an}`"))?;
        let b = t.get(&bn).cloned().with_context(|| format!("adapter has `{an}` but no `{bn}`"))?;
        out.push(AdapterModule { module, a, b });
    }
    if out.is_empty() {
        bail!("{}: no lora_A/lora_B tensors", dir.display());
    }
    Ok((cfg, out))
}

/// Fold an adapter into the weights.
pub fn merge_adapter(def: &ModelDef, mut w: Weights, dir: &Path) -> Result<Weights> {
    let (cfg, mods) = load_adapter(dir)?;
    let scale = (cfg.lora_alpha / cfg.r as f64) as f32;
    for AdapterModule { module, a: (ash, a), b: (bsh, b) } in mods {
        let wname = format!("{module}.weight");
        let (wsh, wv) =
            w.0 .0.get_mut(&wname).with_context(|| format!("adapter module `{module}` is not a parameter of `{}`", def.name))?;
        let (out, inp) = (wsh[0], wsh[1]);
        let r = ash[0];
        if ash != vec![r, inp] || bsh != vec![out, r] {
            bail!("adapter `{module}`: A {ash:?} and B {bsh:?} do not fit the weight {wsh:?}");
        }
        for o in 0..out {
            for k in 0..r {
                let bo = b[o * r + k] * scale;
                if bo != 0.0 {
                    let row = &mut wv[o * inp..(o + 1) * inp];
                    row.iter_mut().zip(&a[k * inp..(k + 1) * inp]).for_each(|(x, &ai)| *x += bo * ai);
                }
            }
        }
    }
    Ok(w)
}

/// Write adapters in the PEFT layout.
pub fn save_adapter(dir: &Path, cfg: &LoraConfig, adapters: &Tensors) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut modules: Vec<String> =
        adapters.0.keys().filter_map(|n| n.strip_suffix(".lora_A.weight")).filter_map(|m| m.rsplit('.').next().map(String::from)).collect();
    modules.sort();
    modules.dedup();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": cfg.rank,
        "lora_alpha": cfg.alpha.unwrap_or(cfg.rank as f64),
        "target_modules": modules,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "base_model_name_or_path": null,
    });
    crate::io::write_atomic(&dir.join("adapter_config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    adapters.save(&dir.join("adapter_model.safetensors"))
}
