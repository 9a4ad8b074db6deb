//! The names of the model graphs' inputs and outputs, and the symbols of
//! their runtime dims. The builders that declare them and the sessions that
//! feed and read them both use these, so no name is spelled twice. (The
//! parameters go by their Hugging Face names, from `model::params`; the
//! optimizer's inputs are `lumind_compilers::optim::inputs`.)

/// Runtime dims, bound per run through a `DimValues`.
pub mod dim {
    /// sequences in the batch
    pub const BATCH: char = 'b';
    /// new tokens per sequence
    pub const SEQ: char = 's';
    /// with a KV cache: the longest past of the batch's sequences
    pub const PAST: char = 'p';
    /// with a KV cache: the first cache row the batch uses
    pub const FIRST_ROW: char = 'o';
    /// DPO: chosen/rejected pairs in the batch (`BATCH / 2`)
    pub const PAIRS: char = 'n';
}

/// Inputs fed per run.
pub mod input {
    /// token ids `[b, s]`
    pub const TOKENS: &str = "tokens";
    /// training: the next token of each position, -100 where unscored `[b, s]`
    pub const TARGETS: &str = "targets";
    /// with a KV cache: each new token's position `[b, s]`
    pub const POSITIONS: &str = "positions";
    /// DPO: +1 at each pair's chosen row, -1 at its rejected row `[n, b]`
    pub const PAIRS: &str = "pairs";
    /// training: what the loss is multiplied by before the backward pass `[]`
    pub const LOSS_SCALE: &str = "loss_scale";
}

/// Buffers set once when a session starts.
pub mod buffer {
    /// rotary tables `[max_positions, head_dim]`
    pub const ROPE_COS: &str = "rope.cos";
    pub const ROPE_SIN: &str = "rope.sin";

    /// The KV cache of one layer: `which` is `k` or `v`.
    pub fn kv_cache(layer: usize, which: &str) -> String {
        format!("kv.{layer}.{which}")
    }
}

/// Outputs read after a run.
pub mod output {
    /// next-token logits `[b, s, vocab]` (or the last position's only)
    pub const LOGITS: &str = "logits";
    /// training: the loss the gradients are of (the stage's loss plus the MoE auxiliary loss)
    pub const LOSS: &str = "loss";
    /// training: the stage's own loss (cross-entropy, or DPO's)
    pub const CE: &str = "ce";
    /// training: the MoE auxiliary loss (0 for dense models)
    pub const AUX: &str = "aux";
    /// DPO: each pair's `(pi_c - pi_r) - (ref_c - ref_r)` `[n]`
    pub const DPO_LOGITS: &str = "dpo_logits";
    /// training with AdamW: the global gradient norm before clipping
    pub const GRAD_NORM: &str = "grad_norm";

    /// Training without an optimizer: the gradient of one trained tensor.
    pub fn grad(name: &str) -> String {
        format!("grad.{name}")
    }
}
