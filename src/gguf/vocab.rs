//! A byte-level BPE tokenizer as GGUF metadata (`tokenizer.ggml.*`) and
//! back: llama.cpp's `gpt2` tokenizer model, whose `pre` names the split
//! pattern. MiniMind's tokenizer is byte-level BPE with GPT-2's pattern,
//! which llama.cpp calls `gpt-2`; a tokenizer.json is rebuilt only for that
//! pattern, the one its ByteLevel pre-tokenizer applies.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value as Json};

use super::file::{Gguf, Value};
use crate::chat_template::template_source;
use crate::tokenizer::Tokenizer;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// The split pattern the rebuilt tokenizer.json applies.
const PRE: &str = "gpt-2";

/// `tokenizer.ggml.*` and `tokenizer.chat_template` for `tok`.
pub fn metadata(tok: &Tokenizer) -> Result<Vec<(String, Value)>> {
    let spec: Json = serde_json::from_str(&tok.inner.to_string(false).map_err(|e| anyhow!("{e}"))?)?;
    let model = &spec["model"];
    if model["type"] != "BPE" || spec["pre_tokenizer"]["type"] != "ByteLevel" || spec["pre_tokenizer"]["use_regex"] == false {
        bail!("GGUF export writes byte-level BPE tokenizers with GPT-2's split pattern (MiniMind's); this tokenizer is not one");
    }
    let n = tok.vocab_size();
    let mut tokens = vec![None; n];
    for (text, id) in tok.inner.get_vocab(true) {
        let slot = tokens.get_mut(id as usize).with_context(|| format!("token id {id} is past the vocabulary's {n}"))?;
        *slot = Some(text);
    }
    let tokens: Vec<String> =
        tokens.into_iter().enumerate().map(|(i, t)| t.with_context(|| format!("no token has id {i}"))).collect::<Result<_>>()?;
    let added = tok.inner.get_added_tokens_decoder();
    let types = (0..n as u32).map(|i| match added.get(&i) {
        Some(t) if t.special => CONTROL,
        Some(_) => USER_DEFINED,
        None => NORMAL,
    });
    let merges = model["merges"].as_array().context("the tokenizer has no merges")?;
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 && p.iter().all(Json::is_string) => {
                Ok(format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()))
            }
            other => bail!("merge {other} is neither `a b` nor [a, b]"),
        })
        .map(|m| m.map(Value::Str))
        .collect::<Result<_>>()?;
    let add_bos = tok.config.get("add_bos_token").and_then(Json::as_bool).unwrap_or(false);
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::Str(PRE.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::Str).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.map(Value::I32).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(tok.bos)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(tok.eos)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(tok.pad)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::Str(template_source(tok).into())),
    ])
}

/// `tokenizer.json` and `tokenizer_config.json` rebuilt from a GGUF file's
/// tokenizer, checked by loading them.
pub fn tokenizer_files(g: &Gguf) -> Result<(String, String)> {
    let text = |key: &str| g.get(key).and_then(Value::as_str).with_context(|| format!("there is no `{key}` string"));
    let model = text("tokenizer.ggml.model")?;
    if model != "gpt2" {
        bail!("its tokenizer is llama.cpp's `{model}` model; lumind rebuilds `gpt2` (byte-level BPE) tokenizers only");
    }
    let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
    if pre != PRE {
        bail!("its tokenizer splits text by llama.cpp's `{pre}` pattern; lumind's tokenizer.json rebuilds GPT-2's (`{PRE}`) only");
    }
    let list = |key: &str| g.get(key).and_then(Value::as_array).with_context(|| format!("there is no `{key}` array"));
    let tokens: Vec<&str> = list("tokenizer.ggml.tokens")?
        .iter()
        .enumerate()
        .map(|(i, t)| t.as_str().with_context(|| format!("`tokenizer.ggml.tokens` entry {i} is not a string")))
        .collect::<Result<_>>()?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(t) if t.len() == tokens.len() => t.iter().map(|v| v.as_f64().map_or(NORMAL as i64, |x| x as i64)).collect(),
        Some(t) => bail!("`tokenizer.ggml.token_type` has {} entries for {} tokens", t.len(), tokens.len()),
        None => vec![NORMAL as i64; tokens.len()],
    };
    let merges: Vec<Json> = list("tokenizer.ggml.merges")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let m = m.as_str().with_context(|| format!("`tokenizer.ggml.merges` entry {i} is not a string"))?;
            let (a, b) = m.split_once(' ').with_context(|| format!("`tokenizer.ggml.merges` entry {i} (`{m}`) is not `a b`"))?;
            Ok(json!([a, b]))
        })
        .collect::<Result<_>>()?;
    let mut vocab = serde_json::Map::new();
    let mut added = vec![];
    for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert(t.to_string(), json!(i)).is_some() {
            bail!("token `{t}` appears twice in `tokenizer.ggml.tokens`");
        }
        if *ty == CONTROL as i64 || *ty == USER_DEFINED as i64 {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": *ty == CONTROL as i64}));
        }
    }
    let byte_level = |prefix: bool| json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": true, "use_regex": true});
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": byte_level(false), "post_processor": null, "decoder": byte_level(true),
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    let name = |key: &str| -> Result<Option<&str>> {
        match g.get(key) {
            None => Ok(None),
            Some(v) => {
                let id = v.as_u64().with_context(|| format!("`{key}` is not a token id"))?;
                tokens.get(id as usize).copied().map(Some).with_context(|| format!("`{key}` = {id} is past the {} tokens", tokens.len()))
            }
        }
    };
    let mut config = json!({
        "add_bos_token": g.get("tokenizer.ggml.add_bos_token") == Some(&Value::Bool(true)),
        "add_eos_token": false,
    });
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token"),
        ("tokenizer.ggml.eos_token_id", "eos_token"),
        ("tokenizer.ggml.padding_token_id", "pad_token"),
    ] {
        if let Some(n) = name(key)? {
            config[field] = json!(n);
        }
    }
    if let Some(t) = g.get("tokenizer.chat_template").and_then(Value::as_str) {
        config["chat_template"] = json!(t);
    }
    let (spec, config) = (serde_json::to_string(&spec)?, serde_json::to_string_pretty(&config)?);
    let inner = tokenizers::Tokenizer::from_bytes(spec.as_bytes()).map_err(|e| anyhow!("the rebuilt tokenizer.json does not load: {e}"))?;
    Tokenizer::from_parts(inner, serde_json::from_str(&config)?).context("the rebuilt tokenizer")?;
    Ok((spec, config))
}
