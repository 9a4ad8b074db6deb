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

fn get<'a>(c: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| c.get(*k).filter(|v| !v.is_null()))
}

/// A definition (TOML text) from a transformers or MiniMind `config.json`.
pub fn definition_from_config(c: &Value, name: &str, has_lm_head: bool) -> Result<String> {
    let num = |keys: &[&str]| get(c, keys).and_then(|v| v.as_f64());
    let req = |keys: &[&str]| num(keys).with_context(|| format!("config.json has no `{}`", keys[0]));
    let mut t = String::new();
    let mut line = |k: &str, v: String| t.push_str(&format!("{k} = {v}\n"));
    line("name", format!("{name:?}"));
    line("vocab_size", (req(&["vocab_size"])? as usize).to_string());
    let hidden = req(&["hidden_size", "dim"])? as usize;
    line("hidden_size", hidden.to_string());
    line("num_hidden_layers", (req(&["num_hidden_layers", "n_layers"])? as usize).to_string());
    let heads = req(&["num_attention_heads", "n_heads"])? as usize;
    line("num_attention_heads", heads.to_string());
    line("num_key_value_heads", (num(&["num_key_value_heads", "n_kv_heads"]).unwrap_or(heads as f64) as usize).to_string());
    let archs: Vec<String> = get(c, &["architectures"]).and_then(|a| serde_json::from_value(a.clone()).ok()).unwrap_or_default();
    let qk_norm = archs.iter().any(|a| a.contains("Qwen3")) || get(c, &["model_type"]).and_then(|v| v.as_str()) == Some("qwen3");
    if let Some(hd) = num(&["head_dim"]) {
        if qk_norm || hd as usize * heads != hidden {
            line("head_dim", (hd as usize).to_string());
        }
    }
    match num(&["intermediate_size"]) {
        Some(f) => line("intermediate_size", (f as usize).to_string()),
        None => line("intermediate_rule", "\"minimind2\"".into()),
    }
    line("rms_norm_eps", format!("{:e}", num(&["rms_norm_eps", "norm_eps"]).unwrap_or(1e-5)));
    let theta = num(&["rope_theta"]).or_else(|| get(c, &["rope_parameters"]).and_then(|p| p.get("rope_theta")).and_then(|v| v.as_f64()));
    line("rope_theta", format!("{:?}", theta.unwrap_or(1e6)));
    line("max_position_embeddings", (num(&["max_position_embeddings", "max_seq_len"]).unwrap_or(32768.0) as usize).to_string());
    // transformers defaults to untied; MiniMind ties. Without an lm_head tensor it must be tied.
    let tie = get(c, &["tie_word_embeddings"]).and_then(|v| v.as_bool()).unwrap_or(!has_lm_head);
    line("tie_word_embeddings", (tie || !has_lm_head).to_string());
    line("qk_norm", qk_norm.to_string());
    let moe = get(c, &["use_moe"]).and_then(|v| v.as_bool()).unwrap_or(false);
    if moe {
        let layers: Option<Vec<usize>> = get(c, &["moe_layers"]).and_then(|v| serde_json::from_value(v.clone()).ok());
        if layers.is_none() {
            line("ffn", "\"moe\"".into());
        }
        t.push_str("\n[moe]\n");
        let n = |k: &str, d: f64| num(&[k]).unwrap_or(d);
        t.push_str(&format!("n_routed_experts = {}\n", n("n_routed_experts", 4.0) as usize));
        t.push_str(&format!("n_shared_experts = {}\n", n("n_shared_experts", 1.0) as usize));
        t.push_str(&format!("num_experts_per_tok = {}\n", n("num_experts_per_tok", 2.0) as usize));
        t.push_str(&format!("norm_topk_prob = {}\n", get(c, &["norm_topk_prob"]).and_then(|v| v.as_bool()).unwrap_or(true)));
        t.push_str(&format!("aux_loss_alpha = {:?}\n", n("aux_loss_alpha", 0.01)));
        t.push_str(&format!("seq_aux = {}\n", get(c, &["seq_aux"]).and_then(|v| v.as_bool()).unwrap_or(true)));
        if let Some(m) = num(&["moe_intermediate_size"]) {
            t.push_str(&format!("moe_intermediate_size = {}\n", m as usize));
        }
        if let Some(layers) = layers {
            t.push_str(&format!("\n[[layer]]\nlayers = {layers:?}\nffn = \"moe\"\n"));
        }
    }
    if let Some(r) = get(c, &["rope_scaling"]).filter(|r| r.is_object()) {
        let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(|v| v.as_str()).unwrap_or("none");
        if kind == "linear" || kind == "yarn" {
            t.push_str(&format!(
                "\n[rope_scaling]\ntype = {kind:?}\nfactor = {:?}\n",
                r.get("factor").and_then(|v| v.as_f64()).unwrap_or(1.0)
            ));
            for k in ["original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor"] {
                if kind == "yarn" {
                    if let Some(v) = r.get(k).and_then(|v| v.as_f64()) {
                        if k == "original_max_position_embeddings" {
                            t.push_str(&format!("{k} = {}\n", v as usize));
                        } else {
                            t.push_str(&format!("{k} = {v:?}\n"));
                        }
                    }
                }
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
    let toml = definition_from_config(&c, name, t.get("lm_head.weight").is_some())?;
    let def = ModelDef::parse(&toml).with_context(|| format!("the definition made from {}", cfg_path.display()))?;
    let w = Weights::check(&def, t).with_context(|| format!("{}", st.display()))?;
    Ok((toml, def, w))
}
