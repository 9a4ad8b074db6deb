//! `lumind info`: parameter counts, or the transformers config.json.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use crate::model::def::LayerFfn;
use crate::model::hf_config::hf_config;
use crate::model::params::{count_params, human};
use crate::model::ModelDef;

#[derive(clap::Args)]
pub struct Args {
    /// Model definition (models/*.toml)
    #[arg(long)]
    model: PathBuf,
    /// Print the resolved definition as a transformers config.json with a
    /// `parameters` object
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let def = ModelDef::load(&a.model)?;
    let count = count_params(&def);
    if a.json {
        let mut c = hf_config(&def);
        let mut p = serde_json::Map::new();
        p.insert("total".into(), json!(count.total));
        for (comp, n) in &count.by_component {
            p.insert(comp.key().into(), json!(n));
        }
        if def.is_moe() {
            p.insert("active".into(), json!(count.active));
        }
        c.as_object_mut().unwrap().insert("parameters".into(), p.into());
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    println!("{} ({})", def.name, def.architecture());
    if !def.description.is_empty() {
        println!("  {}", def.description);
    }
    let moe_layers = def.layers.iter().filter(|l| matches!(l, LayerFfn::Moe(_))).count();
    println!(
        "  {} layers, hidden {}, heads {}/{} (head_dim {}), ffn {}{}, vocab {}, {} embeddings{}",
        def.num_hidden_layers,
        def.hidden_size,
        def.num_attention_heads,
        def.num_key_value_heads,
        def.head_dim,
        def.intermediate_size,
        match &def.moe {
            Some(m) => format!(
                ", MoE in {moe_layers} layers: {} routed (top-{}) + {} shared experts of {}",
                m.n_routed_experts, m.num_experts_per_tok, m.n_shared_experts, m.expert_size
            ),
            None => String::new(),
        },
        def.vocab_size,
        if def.tie_word_embeddings { "tied" } else { "untied" },
        if def.qk_norm { ", q/k norm" } else { "" },
    );
    println!("  parameters {:>10}  ({})", human(count.total), count.total);
    for (comp, n) in &count.by_component {
        println!("    {:<10} {:>9}  {:5.1}%", comp.key(), human(*n), 100.0 * *n as f64 / count.total as f64);
    }
    if def.is_moe() {
        println!("  active per token {} ({})", human(count.active), count.active);
    }
    Ok(())
}
