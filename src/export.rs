//! Moving models to and from transformers directories.
//!
//! Export writes `config.json` (`LlamaForCausalLM`, or `Qwen3ForCausalLM`
//! for q/k-norm models), `model.safetensors`, `generation_config.json` and
//! the tokenizer files with the chat template. MoE models add
//! `modeling_lumind_moe.py` and an `auto_map`, so
//! `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` builds
//! them. Import reads such a directory back (ours, MiniMind's, or a plain
//! Llama/Qwen3 one) into a definition and weights.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::model::def::ModelDef;
use crate::model::hf_config::hf_config;
use crate::model::weights::Tensors;
use crate::model::Weights;
use crate::tokenizer::{Tokenizer, DEFAULT_TOKENIZER_CONFIG, DEFAULT_TOKENIZER_JSON};

/// The Python module that lets transformers build an exported MoE model.
pub const MOE_MODELING: &str = include_str!("export_moe_modeling.py");

pub fn export(def: &ModelDef, weights: &Weights, tokenizer: Option<&Path>, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut config = hf_config(def);
    if def.is_moe() {
        let arch = if def.qk_norm { "LumindQwen3MoeForCausalLM" } else { "LumindLlamaMoeForCausalLM" };
        config["architectures"] = json!([arch]);
        config["auto_map"] = json!({"AutoModelForCausalLM": format!("modeling_lumind_moe.{arch}")});
        crate::io::write_atomic(&out.join("modeling_lumind_moe.py"), MOE_MODELING.as_bytes())?;
    }
    let write_json = |name: &str, v: &Value| crate::io::write_atomic(&out.join(name), serde_json::to_string_pretty(v).unwrap().as_bytes());
    write_json("config.json", &config)?;
    write_json("generation_config.json", &json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}))?;
    weights.save(&out.join("model.safetensors"))?;
    match tokenizer {
        Some(dir) => {
            let dir = if dir.is_file() { dir.parent().unwrap_or(Path::new(".")) } else { dir };
            for f in ["tokenizer.json", "tokenizer_config.json"] {
                std::fs::copy(dir.join(f), out.join(f)).with_context(|| format!("copying {}", dir.join(f).display()))?;
            }
        }
        None => {
            crate::io::write_atomic(&out.join("tokenizer.json"), DEFAULT_TOKENIZER_JSON)?;
            crate::io::write_atomic(&out.join("tokenizer_config.json"), DEFAULT_TOKENIZER_CONFIG.as_bytes())?;
        }
    }
    Tokenizer::load(out).context("the exported tokenizer")?;
    Ok(())
}

/// `config.json`'s values, read strictly: a key that is present must have
/// the type its field needs (a size a whole number, a real a number, a
/// flag a boolean), so nothing is rounded or replaced by a default.
struct Config<'a>(&'a Value);

impl<'a> Config<'a> {
    /// The first of `keys` present (and not null), with its name.
    fn get(&self, keys: &[&'static str]) -> Option<(&'static str, &'a Value)> {
        keys.iter().find_map(|k| self.0.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
    }
    fn int(&self, keys: &[&'static str]) -> Result<Option<usize>> {
        let Some((k, v)) = self.get(keys) else { return Ok(None) };
        let n = v.as_u64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9e15).map(|f| f as u64));
        match n {
            Some(n) => Ok(Some(usize::try_from(n).with_context(|| format!("`{k}` is too large: {v}"))?)),
            None => bail!("`{k}` must be a whole number, got {v}"),
        }
    }
    fn required(&self, keys: &[&'static str]) -> Result<usize> {
        self.int(keys)?.with_context(|| format!("there is no `{}`", keys[0]))
    }
    fn real(&self, keys: &[&'static str]) -> Result<Option<f64>> {
        let Some((k, v)) = self.get(keys) else { return Ok(None) };
        match v.as_f64() {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => bail!("`{k}` must be a finite number, got {v}"),
        }
    }
    fn flag(&self, keys: &[&'static str]) -> Result<Option<bool>> {
        let Some((k, v)) = self.get(keys) else { return Ok(None) };
        v.as_bool().map(Some).with_context(|| format!("`{k}` must be true or false, got {v}"))
    }
    fn text(&self, keys: &[&'static str]) -> Result<Option<&'a str>> {
        let Some((k, v)) = self.get(keys) else { return Ok(None) };
        v.as_str().map(Some).with_context(|| format!("`{k}` must be a string, got {v}"))
    }
}

/// A TOML string literal (escaped as TOML wants, whatever the characters).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A definition (TOML text) from a transformers or MiniMind `config.json`.
/// A key whose value lumind cannot represent exactly is an error naming it.
pub fn definition_from_config(c: &Value, name: &str, has_lm_head: bool) -> Result<String> {
    let c = Config(c);
    let mut t = String::new();
    let mut line = |k: &str, v: String| t.push_str(&format!("{k} = {v}\n"));
    line("name", toml_string(name));
    line("vocab_size", c.required(&["vocab_size"])?.to_string());
    let hidden = c.required(&["hidden_size", "dim"])?;
    line("hidden_size", hidden.to_string());
    line("num_hidden_layers", c.required(&["num_hidden_layers", "n_layers"])?.to_string());
    let heads = c.required(&["num_attention_heads", "n_heads"])?;
    line("num_attention_heads", heads.to_string());
    line("num_key_value_heads", c.int(&["num_key_value_heads", "n_kv_heads"])?.unwrap_or(heads).to_string());
    let archs: Vec<String> = match c.get(&["architectures"]) {
        Some((k, a)) => serde_json::from_value(a.clone()).with_context(|| format!("`{k}` must be a list of strings, got {a}"))?,
        None => vec![],
    };
    let qk_norm = archs.iter().any(|a| a.contains("Qwen3")) || c.text(&["model_type"])? == Some("qwen3");
    if let Some(hd) = c.int(&["head_dim"])? {
        if qk_norm || hd * heads != hidden {
            line("head_dim", hd.to_string());
        }
    }
    match c.int(&["intermediate_size"])? {
        Some(f) => line("intermediate_size", f.to_string()),
        None => line("intermediate_rule", "\"minimind2\"".into()),
    }
    line("rms_norm_eps", format!("{:e}", c.real(&["rms_norm_eps", "norm_eps"])?.unwrap_or(1e-5)));
    let theta = match c.real(&["rope_theta"])? {
        Some(t) => Some(t),
        None => match c.get(&["rope_parameters"]) {
            Some((_, p)) => Config(p).real(&["rope_theta"]).context("`rope_parameters`")?,
            None => None,
        },
    };
    line("rope_theta", format!("{:?}", theta.unwrap_or(1e6)));
    line("max_position_embeddings", c.int(&["max_position_embeddings", "max_seq_len"])?.unwrap_or(32768).to_string());
    // transformers defaults to untied; MiniMind ties. Without an lm_head tensor it must be tied.
    let tie = c.flag(&["tie_word_embeddings"])?.unwrap_or(!has_lm_head);
    line("tie_word_embeddings", (tie || !has_lm_head).to_string());
    line("qk_norm", qk_norm.to_string());
    if c.flag(&["use_moe"])?.unwrap_or(false) {
        let layers: Option<Vec<usize>> = match c.get(&["moe_layers"]) {
            Some((k, v)) => {
                Some(serde_json::from_value(v.clone()).with_context(|| format!("`{k}` must be a list of layer numbers, got {v}"))?)
            }
            None => None,
        };
        if layers.is_none() {
            line("ffn", "\"moe\"".into());
        }
        t.push_str("\n[moe]\n");
        t.push_str(&format!("n_routed_experts = {}\n", c.int(&["n_routed_experts"])?.unwrap_or(4)));
        t.push_str(&format!("n_shared_experts = {}\n", c.int(&["n_shared_experts"])?.unwrap_or(1)));
        t.push_str(&format!("num_experts_per_tok = {}\n", c.int(&["num_experts_per_tok"])?.unwrap_or(2)));
        t.push_str(&format!("norm_topk_prob = {}\n", c.flag(&["norm_topk_prob"])?.unwrap_or(true)));
        t.push_str(&format!("aux_loss_alpha = {:?}\n", c.real(&["aux_loss_alpha"])?.unwrap_or(0.01)));
        t.push_str(&format!("seq_aux = {}\n", c.flag(&["seq_aux"])?.unwrap_or(true)));
        if let Some(m) = c.int(&["moe_intermediate_size"])? {
            t.push_str(&format!("moe_intermediate_size = {m}\n"));
        }
        if let Some(layers) = layers {
            t.push_str(&format!("\n[[layer]]\nlayers = {layers:?}\nffn = \"moe\"\n"));
        }
    }
    match c.get(&["rope_scaling"]) {
        None => {}
        Some((_, r)) if !r.is_object() => bail!("`rope_scaling` must be an object or null, got {r}"),
        Some((_, r)) => {
            let r = Config(r);
            let kind = r.text(&["rope_type", "type"]).context("`rope_scaling`")?.unwrap_or("default");
            match kind {
                "default" => {}
                "linear" | "yarn" => {
                    let factor = r.real(&["factor"]).context("`rope_scaling`")?.context("`rope_scaling` has no `factor`")?;
                    t.push_str(&format!("\n[rope_scaling]\ntype = {}\nfactor = {factor:?}\n", toml_string(kind)));
                    if kind == "yarn" {
                        if let Some(o) = r.int(&["original_max_position_embeddings"]).context("`rope_scaling`")? {
                            t.push_str(&format!("original_max_position_embeddings = {o}\n"));
                        }
                        for k in ["beta_fast", "beta_slow", "attention_factor"] {
                            if let Some(v) = r.real(&[k]).context("`rope_scaling`")? {
                                t.push_str(&format!("{k} = {v:?}\n"));
                            }
                        }
                    }
                }
                other => bail!("`rope_scaling` is of type `{other}`; lumind runs `linear` and `yarn` (and none)"),
            }
        }
    }
    Ok(t)
}

/// Read a transformers-style directory: (definition TOML text, definition, weights).
pub fn import(dir: &Path, name: &str) -> Result<(String, ModelDef, Weights)> {
    let cfg_path = dir.join("config.json");
    let c: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?)
            .with_context(|| format!("{} is not JSON", cfg_path.display()))?;
    let st = dir.join("model.safetensors");
    if !st.exists() {
        bail!(
            "{} has no model.safetensors (only safetensors weights can be imported; convert .bin files with transformers first)",
            dir.display()
        );
    }
    let mut t = Tensors::load(&st)?;
    // some checkpoints carry rotary tables; they are derived, not parameters
    t.0.retain(|k, _| !k.contains("rotary_emb"));
    let toml = definition_from_config(&c, name, t.get("lm_head.weight").is_some()).with_context(|| format!("{}", cfg_path.display()))?;
    let def = ModelDef::parse(&toml).with_context(|| format!("the definition made from {}", cfg_path.display()))?;
    let w = Weights::check(&def, t).with_context(|| format!("{}", st.display()))?;
    Ok((toml, def, w))
}
