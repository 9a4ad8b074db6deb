//! What a model needs in memory, estimated before anything is allocated,
//! and what this machine has: a model, cache or training step that cannot
//! fit is refused with an error that says so, instead of aborting in an
//! allocation.

use anyhow::{bail, Result};

use super::def::{LayerFfn, ModelDef};
use super::params::count_params;

const F32: u64 = 4;

/// Bytes of the model's weights in f32.
pub fn weight_bytes(def: &ModelDef) -> u64 {
    count_params(def).total as u64 * F32
}

/// Bytes of a KV cache of `slots` sequences of `positions` tokens.
pub fn kv_cache_bytes(def: &ModelDef, slots: usize, positions: usize) -> u64 {
    2 * def.num_hidden_layers as u64 * slots as u64 * positions as u64 * def.kv_dim() as u64 * F32
}

/// Widest FFN of any layer (all experts of an MoE layer run on every token).
fn ffn_width(def: &ModelDef) -> u64 {
    def.layers
        .iter()
        .map(|l| match l {
            LayerFfn::Swiglu { intermediate_size } => *intermediate_size as u64,
            LayerFfn::Moe(m) => (m.n_routed_experts + m.n_shared_experts) as u64 * m.expert_size as u64,
        })
        .max()
        .unwrap_or(0)
}

/// Working memory of one forward pass over `rows` x `seq` tokens (what one
/// layer's activations, its attention scores and the logits take, a few
/// times over), without the weights.
pub fn forward_bytes(def: &ModelDef, rows: usize, seq: usize) -> u64 {
    let tokens = rows as u64 * seq as u64;
    let per_token = 16 * def.hidden_size as u64 + 4 * ffn_width(def) + 3 * def.vocab_size as u64;
    let scores = 2 * def.num_attention_heads as u64 * tokens * seq as u64;
    (tokens * per_token + scores) * F32
}

/// Memory of one training step over `rows` x `seq` tokens: the weights with
/// their gradients and AdamW moments, and every layer's activations kept
/// for the backward pass.
pub fn step_bytes(def: &ModelDef, rows: usize, seq: usize) -> u64 {
    let tokens = rows as u64 * seq as u64;
    let layers = def.num_hidden_layers as u64;
    let per_token = layers * (16 * def.hidden_size as u64 + 4 * ffn_width(def)) + 3 * def.vocab_size as u64;
    4 * weight_bytes(def) + tokens * per_token * F32
}

/// Physical memory of this machine (or of its cgroup, when that is less).
pub fn physical_memory() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)?;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |c| c.min(total)))
}

/// Refuse `what` if it needs more than this machine's memory.
pub fn check_fits(what: &str, bytes: u64) -> Result<()> {
    if let Some(have) = physical_memory() {
        if bytes > have {
            bail!("{what} would take about {:.1} GB of memory, more than this machine's {:.1} GB", bytes as f64 / 1e9, have as f64 / 1e9);
        }
    }
    Ok(())
}
