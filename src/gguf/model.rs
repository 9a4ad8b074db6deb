//! A dense Llama- or Qwen3-style model as a GGUF file, as llama.cpp reads
//! it (`llama` or `qwen3` architecture), and back.
//!
//! Two things differ from a transformers checkpoint besides the names:
//! - llama.cpp's `llama` architecture rotates adjacent pairs of a head's
//!   dimensions where transformers rotates its two halves, so the rows of
//!   each head of `q_proj` and `k_proj` are interleaved on the way out
//!   (pair `i` = rows `i` and `i + head_dim / 2`) and put back on the way in,
//!   as llama.cpp's converter does. `qwen3` rotates halves, like transformers.
//! - A tied LM head has no tensor of its own: llama.cpp falls back to the
//!   embedding when `output.weight` is absent.

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::file::{Gguf, Tensor, Value};
use super::tensor_type::TensorType;
use crate::export::definition_from_config;
use crate::model::def::{LayerFfn, ModelDef};
use crate::model::names;
use crate::model::rope::RopeScaling;
use crate::model::weights::Tensors;
use crate::model::Weights;
use crate::tokenizer::Tokenizer;

/// The element type of an exported file's matrices (`--outtype`); vectors
/// (the norms) stay F32, as llama.cpp's converter keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::EnumString, strum::Display, strum::VariantNames)]
#[strum(serialize_all = "snake_case")]
pub enum OutType {
    F32,
    F16,
    Bf16,
    #[strum(serialize = "q8_0")]
    Q8_0,
}

impl OutType {
    fn tensor_type(self) -> TensorType {
        match self {
            OutType::F32 => TensorType::F32,
            OutType::F16 => TensorType::F16,
            OutType::Bf16 => TensorType::Bf16,
            OutType::Q8_0 => TensorType::Q8_0,
        }
    }
    /// `general.file_type`: llama.cpp's `LLAMA_FTYPE_*`
    fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Q8_0 => 7,
            OutType::Bf16 => 32,
        }
    }
}

/// How a tensor's rows move between transformers' layout and GGUF's.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rows {
    AsTheyAre,
    /// interleave the halves of each of this many heads (llama's q and k)
    PairHalves {
        heads: usize,
    },
}

/// Every parameter of `def`: (GGUF name, transformers name, row order).
fn tensor_names(def: &ModelDef) -> Result<Vec<(String, String, Rows)>> {
    if def.is_moe() {
        bail!("`{}` has mixture-of-experts layers; GGUF export and import cover dense models", def.name);
    }
    let m = names::Model::new(def);
    let pair = |heads| if def.qk_norm { Rows::AsTheyAre } else { Rows::PairHalves { heads } };
    let mut out = vec![("token_embd.weight".to_string(), m.embed_tokens.clone(), Rows::AsTheyAre)];
    for (l, layer) in m.layers.iter().enumerate() {
        let a = &layer.self_attn;
        let names::Mlp::Swiglu(f) = &layer.mlp else { unreachable!("dense") };
        let mut add = |gguf: &str, hf: &str, rows| out.push((format!("blk.{l}.{gguf}.weight"), hf.to_string(), rows));
        add("attn_norm", &layer.input_layernorm, Rows::AsTheyAre);
        add("attn_q", &a.q_proj, pair(def.num_attention_heads));
        add("attn_k", &a.k_proj, pair(def.num_key_value_heads));
        add("attn_v", &a.v_proj, Rows::AsTheyAre);
        add("attn_output", &a.o_proj, Rows::AsTheyAre);
        if let (Some(q), Some(k)) = (&a.q_norm, &a.k_norm) {
            add("attn_q_norm", q, Rows::AsTheyAre);
            add("attn_k_norm", k, Rows::AsTheyAre);
        }
        add("ffn_norm", &layer.post_attention_layernorm, Rows::AsTheyAre);
        add("ffn_gate", &f.gate_proj, Rows::AsTheyAre);
        add("ffn_up", &f.up_proj, Rows::AsTheyAre);
        add("ffn_down", &f.down_proj, Rows::AsTheyAre);
    }
    out.push(("output_norm.weight".into(), m.norm.clone(), Rows::AsTheyAre));
    if !def.tie_word_embeddings {
        out.push(("output.weight".into(), m.lm_head.clone(), Rows::AsTheyAre));
    }
    Ok(out)
}

/// Row `r` of a head of `hd` rows goes to this row in GGUF's order.
fn paired_row(r: usize, hd: usize) -> usize {
    let half = hd / 2;
    if r < half {
        2 * r
    } else {
        2 * (r - half) + 1
    }
}

/// `data`'s rows (of `cols` values) reordered: to GGUF's order, or back.
fn reorder(data: &[f32], cols: usize, rows: Rows, to_gguf: bool) -> Vec<f32> {
    let Rows::PairHalves { heads } = rows else { return data.to_vec() };
    let hd = data.len() / cols / heads;
    let mut out = vec![0.0; data.len()];
    for r in 0..data.len() / cols {
        let (head, within) = (r / hd, r % hd);
        let g = head * hd + paired_row(within, hd);
        let (from, to) = if to_gguf { (r, g) } else { (g, r) };
        out[to * cols..(to + 1) * cols].copy_from_slice(&data[from * cols..(from + 1) * cols]);
    }
    out
}

fn arch(def: &ModelDef) -> &'static str {
    if def.qk_norm {
        "qwen3"
    } else {
        "llama"
    }
}

/// The GGUF file of a dense model, its tokenizer and chat template.
pub fn to_gguf(def: &ModelDef, weights: &Weights, tok: &Tokenizer, out: OutType) -> Result<Gguf> {
    let names = tensor_names(def)?;
    if tok.vocab_size() != def.vocab_size {
        bail!("the tokenizer has {} tokens but `{}` has vocab_size {}", tok.vocab_size(), def.name, def.vocab_size);
    }
    let a = arch(def);
    let key = |k: &str| format!("{a}.{k}");
    let u32_of = |v: usize| Value::U32(v as u32);
    let widths: Vec<usize> = def
        .layers
        .iter()
        .map(|l| match l {
            LayerFfn::Swiglu { intermediate_size } => *intermediate_size,
            LayerFfn::Moe(_) => unreachable!("dense"),
        })
        .collect();
    let ffn =
        if widths.iter().all(|w| *w == widths[0]) { u32_of(widths[0]) } else { Value::Array(widths.iter().map(|w| u32_of(*w)).collect()) };
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::Str(a.into())),
        ("general.name".into(), Value::Str(def.name.clone())),
        ("general.file_type".into(), Value::U32(out.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (key("vocab_size"), u32_of(def.vocab_size)),
        (key("context_length"), u32_of(def.max_position_embeddings)),
        (key("embedding_length"), u32_of(def.hidden_size)),
        (key("block_count"), u32_of(def.num_hidden_layers)),
        (key("feed_forward_length"), ffn),
        (key("attention.head_count"), u32_of(def.num_attention_heads)),
        (key("attention.head_count_kv"), u32_of(def.num_key_value_heads)),
        (key("attention.key_length"), u32_of(def.head_dim)),
        (key("attention.value_length"), u32_of(def.head_dim)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(def.rms_norm_eps as f32)),
        (key("rope.dimension_count"), u32_of(def.head_dim)),
        (key("rope.freq_base"), Value::F32(def.rope_theta as f32)),
    ];
    match def.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            md.push((key("rope.scaling.type"), Value::Str("linear".into())));
            md.push((key("rope.scaling.factor"), Value::F32(factor as f32)));
        }
        RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor } => {
            md.push((key("rope.scaling.type"), Value::Str("yarn".into())));
            md.push((key("rope.scaling.factor"), Value::F32(factor as f32)));
            md.push((key("rope.scaling.original_context_length"), u32_of(original_max_position_embeddings)));
            md.push((key("rope.scaling.yarn_beta_fast"), Value::F32(beta_fast as f32)));
            md.push((key("rope.scaling.yarn_beta_slow"), Value::F32(beta_slow as f32)));
            md.push((key("rope.scaling.yarn_attn_factor"), Value::F32(attention_factor as f32)));
        }
    }
    md.extend(super::vocab::metadata(tok)?);
    let mut tensors = vec![];
    for (gguf, hf, rows) in names {
        let (shape, data) = weights.0.get(&hf).with_context(|| format!("the weights have no `{hf}`"))?;
        let matrix = shape.len() == 2;
        // a matrix whose rows do not fill Q8_0's blocks stays f32
        let ty = match out.tensor_type() {
            _ if !matrix => TensorType::F32,
            TensorType::Q8_0 if shape[1] % 32 != 0 => TensorType::F32,
            ty => ty,
        };
        let data = reorder(data, *shape.last().unwrap_or(&1), rows, true);
        tensors.push(Tensor { name: gguf, shape: shape.clone(), ty, data: ty.encode(&data).with_context(|| format!("tensor `{hf}`"))? });
    }
    Ok(Gguf { metadata: md, tensors })
}

/// A model read from a GGUF file: its definition (TOML text and parsed),
/// its weights in f32, and its tokenizer files (`tokenizer.json`,
/// `tokenizer_config.json`) or why there are none.
pub struct Imported {
    pub toml: String,
    pub def: ModelDef,
    pub weights: Weights,
    pub tokenizer: Result<(String, String)>,
}

/// Read a GGUF file of a dense `llama` or `qwen3` model. What lumind's
/// definitions cannot express (biases, partial rotary, other RoPE
/// scalings, other tensors) is an error that names it.
pub fn from_gguf(g: &Gguf, name: &str) -> Result<Imported> {
    let (toml, def) = definition(g, name)?;
    let weights = tensors_of(&def, g)?;
    Ok(Imported { toml, def, weights, tokenizer: super::vocab::tokenizer_files(g) })
}

/// The definition (TOML text, and parsed) that a file's metadata gives.
fn definition(g: &Gguf, name: &str) -> Result<(String, ModelDef)> {
    let a = g.get("general.architecture").and_then(Value::as_str).context("there is no `general.architecture`")?;
    if a != "llama" && a != "qwen3" {
        bail!("its architecture is `{a}`; lumind imports `llama` and `qwen3` (dense) models");
    }
    let get = |k: &str| g.get(&format!("{a}.{k}"));
    let int = |k: &str| -> Result<Option<usize>> {
        match get(k) {
            None => Ok(None),
            Some(v) => Ok(Some(v.as_u64().with_context(|| format!("`{a}.{k}` must be a whole number, got {v:?}"))? as usize)),
        }
    };
    let need = |k: &str| int(k)?.with_context(|| format!("there is no `{a}.{k}`"));
    let real = |k: &str| -> Result<Option<f64>> {
        match get(k) {
            None => Ok(None),
            Some(v) => Ok(Some(v.as_f64().with_context(|| format!("`{a}.{k}` must be a number, got {v:?}"))?)),
        }
    };
    if get("expert_count").and_then(Value::as_u64).is_some_and(|n| n > 0) {
        bail!("it has mixture-of-experts layers (`{a}.expert_count`); lumind imports dense GGUF models");
    }
    let (hidden, heads) = (need("embedding_length")?, need("attention.head_count")?);
    let head_dim = match int("attention.key_length")? {
        Some(k) => k,
        None if heads > 0 => hidden / heads,
        None => bail!("`{a}.attention.head_count` is 0"),
    };
    if int("attention.value_length")?.is_some_and(|v| v != head_dim) {
        bail!("its values are {} wide and its keys {head_dim}; lumind's attention has one head width", need("attention.value_length")?);
    }
    if int("rope.dimension_count")?.is_some_and(|d| d != head_dim) {
        bail!("RoPE turns {} of each head's {head_dim} dimensions; lumind rotates whole heads", need("rope.dimension_count")?);
    }
    let embd = g.tensor("token_embd.weight").context("there is no tensor `token_embd.weight`")?;
    let vocab = match int("vocab_size")? {
        Some(v) => v,
        None => *embd.shape.first().context("`token_embd.weight` has no dimensions")?,
    };
    let layers = need("block_count")?;
    let widths: Vec<usize> = match get("feed_forward_length") {
        Some(Value::Array(w)) => w
            .iter()
            .map(|v| v.as_u64().map(|v| v as usize))
            .collect::<Option<_>>()
            .context("`feed_forward_length` must list whole numbers")?,
        _ => vec![need("feed_forward_length")?; layers],
    };
    if widths.len() != layers || widths.is_empty() {
        bail!("`{a}.feed_forward_length` lists {} widths for {layers} layers", widths.len());
    }
    let rope_scaling = match get("rope.scaling.type").map(|v| v.as_str().context("`rope.scaling.type` must be a string")).transpose()? {
        None | Some("none") => json!(null),
        Some(kind @ ("linear" | "yarn")) => {
            let mut r = json!({"rope_type": kind, "factor": real("rope.scaling.factor")?.context("there is no `rope.scaling.factor`")?});
            for (k, hf) in [
                ("rope.scaling.original_context_length", "original_max_position_embeddings"),
                ("rope.scaling.yarn_beta_fast", "beta_fast"),
                ("rope.scaling.yarn_beta_slow", "beta_slow"),
                ("rope.scaling.yarn_attn_factor", "attention_factor"),
            ] {
                if let Some(v) = real(k)? {
                    r[hf] = if hf.starts_with("original") { json!(v as u64) } else { json!(v) };
                }
            }
            r
        }
        Some(other) => bail!("its RoPE scaling is `{other}`; lumind runs `linear` and `yarn` (and none)"),
    };
    let config = json!({
        "architectures": [if a == "qwen3" { "Qwen3ForCausalLM" } else { "LlamaForCausalLM" }],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int("attention.head_count_kv")?.unwrap_or(heads),
        "head_dim": head_dim,
        "intermediate_size": widths[0],
        "rms_norm_eps": real("attention.layer_norm_rms_epsilon")?.context(format!("there is no `{a}.attention.layer_norm_rms_epsilon`"))?,
        "rope_theta": real("rope.freq_base")?.unwrap_or(10000.0),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": need("context_length")?,
        "tie_word_embeddings": g.tensor("output.weight").is_none(),
    });
    let mut toml = definition_from_config(&config, name, g.tensor("output.weight").is_some())?;
    // layers whose FFN width differs from the first's
    let mut others: Vec<(usize, Vec<usize>)> = vec![];
    for (l, w) in widths.iter().enumerate().filter(|(_, w)| **w != widths[0]) {
        match others.iter_mut().find(|(ow, _)| ow == w) {
            Some((_, ls)) => ls.push(l),
            None => others.push((*w, vec![l])),
        }
    }
    for (w, ls) in others {
        toml.push_str(&format!("\n[[layer]]\nlayers = {ls:?}\nintermediate_size = {w}\n"));
    }
    let def = ModelDef::parse(&toml).context("the definition made from its metadata")?;
    Ok((toml, def))
}

/// The weights of `def` in a GGUF file; the file must describe the same
/// model (the fields that change how its tensors read must agree).
pub fn weights_for(def: &ModelDef, g: &Gguf) -> Result<Weights> {
    let (_, file) = definition(g, &def.name)?;
    let fields = [
        ("hidden_size", file.hidden_size == def.hidden_size),
        ("num_hidden_layers", file.num_hidden_layers == def.num_hidden_layers),
        ("num_attention_heads", file.num_attention_heads == def.num_attention_heads),
        ("num_key_value_heads", file.num_key_value_heads == def.num_key_value_heads),
        ("head_dim", file.head_dim == def.head_dim),
        ("qk_norm", file.qk_norm == def.qk_norm),
        ("tie_word_embeddings", file.tie_word_embeddings == def.tie_word_embeddings),
        ("layers", file.layers == def.layers),
        ("rope_theta", (file.rope_theta - def.rope_theta).abs() <= 1e-6 * def.rope_theta),
        ("rope_scaling", same_scaling(&file.rope_scaling, &def.rope_scaling)),
    ];
    if let Some((field, _)) = fields.iter().find(|(_, same)| !same) {
        bail!("the file's model differs from `{}` in `{field}` (`lumind import --from` writes the file's own definition)", def.name);
    }
    tensors_of(def, g)
}

/// Whether two RoPE scalings agree to the f32 that GGUF keeps.
fn same_scaling(a: &RopeScaling, b: &RopeScaling) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-6 * y.abs().max(1.0);
    match (a, b) {
        (RopeScaling::None, RopeScaling::None) => true,
        (RopeScaling::Linear { factor: x }, RopeScaling::Linear { factor: y }) => close(*x, *y),
        (
            RopeScaling::Yarn { factor: f, original_max_position_embeddings: o, beta_fast: bf, beta_slow: bs, attention_factor: af },
            RopeScaling::Yarn { factor: g, original_max_position_embeddings: p, beta_fast: cf, beta_slow: cs, attention_factor: ag },
        ) => o == p && close(*f, *g) && close(*bf, *cf) && close(*bs, *cs) && close(*af, *ag),
        _ => false,
    }
}

/// `def`'s parameters read from the file's tensors, in f32 and in
/// transformers' row order.
fn tensors_of(def: &ModelDef, g: &Gguf) -> Result<Weights> {
    let mut t = Tensors::default();
    let names = tensor_names(def)?;
    for (gguf, hf, rows) in &names {
        let x = g.tensor(gguf).with_context(|| format!("there is no tensor `{gguf}` (`{hf}`)"))?;
        let data = x.ty.decode(&x.data).with_context(|| format!("tensor `{gguf}`"))?;
        let data = reorder(&data, *x.shape.last().unwrap_or(&1), *rows, false);
        t.insert(hf.clone(), x.shape.clone(), data);
    }
    if let Some(extra) = g.tensors.iter().find(|x| !names.iter().any(|(n, _, _)| *n == x.name)) {
        let what = match extra.name.as_str() {
            n if n.ends_with(".bias") => "a bias, which lumind's layers do not have",
            "rope_freqs.weight" => "per-frequency RoPE factors (Llama 3's scaling), which lumind does not run",
            _ => "not part of a dense Llama or Qwen3 model as lumind builds it",
        };
        bail!("tensor `{}` is {what}", extra.name);
    }
    Weights::check(def, t).context("its tensors")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_rows_pair_the_halves_of_each_head_and_come_back() {
        // two heads of four rows, one column: transformers' rows 0..8
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let g = reorder(&x, 1, Rows::PairHalves { heads: 2 }, true);
        // GGUF row 2i is transformers' row i, row 2i+1 is row i + hd/2
        assert_eq!(g, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(reorder(&g, 1, Rows::PairHalves { heads: 2 }, false), x);
    }
}
