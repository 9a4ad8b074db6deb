//! `ModelDef` -> forward graph on luminal primops.
//!
//! Pre-norm blocks (`x + Attn(RMSNorm(x))`, `h + FFN(RMSNorm(h))`), rotary
//! embeddings (rotate-half, f32 tables), grouped-query attention with a causal
//! mask, SwiGLU or MoE FFNs, a final norm and the LM head (tied or not). The
//! graph has symbolic batch `b` and new tokens `s`; one compiled graph serves
//! every length.
//!
//! With a KV cache, the cache holds `slots` sequences, and batch row `r`
//! is the sequence in cache row `o + r`. Each new token comes with its
//! position (input `positions [b, s]`), which picks its rotary table row,
//! where its keys and values are written, and which keys it sees: the
//! `p + s` first of its row. So one run can decode several sequences of
//! different lengths at once, each exactly as it would run alone.

use std::collections::HashMap;

use lumind_compilers::kernels::kv_write::KvWrite;
use lumind_compilers::shape::{add, d, sub, sym, Dim};
use lumind_compilers::tensor::dim_constant;
use lumind_compilers::{GraphBuilder, InputKind, Tensor};

use super::def::{LayerFfn, ModelDef, MoeDef};
use super::names::{Mlp, Model, SelfAttention, Swiglu};
use super::params::param_specs;
use super::precision::Precision;
use crate::graph_io::{buffer, dim, input};

/// Scores of masked (future) keys: far below any real score, so softmax
/// gives them exactly 0, yet finite so `0 * mask` stays 0.
const MASKED: f32 = -1e30;

#[derive(Clone, Copy, Debug)]
pub struct ForwardOptions {
    /// Positions the graph may see: rows of the RoPE tables and, with a KV
    /// cache, its capacity.
    pub max_positions: usize,
    /// Keep keys and values in a preallocated cache (state `kv.{layer}.k|v`)
    /// and attend over the past tokens too.
    pub kv_cache: bool,
    /// Sequences the KV cache holds (its first dimension).
    pub slots: usize,
    /// Compute logits for the last position only (generation).
    pub last_only: bool,
    /// Also compute the MoE auxiliary (load-balancing) loss (training).
    pub aux_loss: bool,
    /// How the session stores the weights of matrix products.
    pub precision: Precision,
}

impl ForwardOptions {
    /// Whole sequences, no cache: scoring and training.
    pub fn full(max_positions: usize) -> ForwardOptions {
        ForwardOptions { max_positions, kv_cache: false, slots: 1, last_only: false, aux_loss: false, precision: Precision::Fp32 }
    }
    /// Incremental decoding with a KV cache of `max_positions`.
    pub fn generation(max_positions: usize) -> ForwardOptions {
        ForwardOptions::batched(max_positions, 1)
    }
    /// Incremental decoding of up to `slots` sequences at once.
    pub fn batched(max_positions: usize, slots: usize) -> ForwardOptions {
        ForwardOptions { max_positions, kv_cache: true, slots, last_only: true, aux_loss: false, precision: Precision::Fp32 }
    }
    /// The same, with weights stored in `precision`.
    pub fn with_precision(self, precision: Precision) -> ForwardOptions {
        ForwardOptions { precision, ..self }
    }
}

/// What a forward pass produces.
pub struct ForwardOut {
    /// `[b, s, vocab]` (`[b, 1, vocab]` with `last_only`)
    pub logits: Tensor,
    /// The MoE auxiliary loss summed over layers (rank 0), if asked for and
    /// the model has MoE layers with a non-zero `aux_loss_alpha`.
    pub aux_loss: Option<Tensor>,
}

/// Inputs of a forward graph: token ids and every parameter by HF name.
pub struct ModelInputs {
    pub tokens: Tensor,
    pub params: HashMap<String, Tensor>,
}

/// Declare the graph inputs a model needs (token ids `[b, s]`, parameters;
/// with a KV cache, the forward adds `positions [b, s]`).
pub fn declare_inputs(b: &GraphBuilder, def: &ModelDef) -> ModelInputs {
    let tokens = b.input(input::TOKENS, &[sym(dim::BATCH), sym(dim::SEQ)], InputKind::Data);
    let params = param_specs(def)
        .into_iter()
        .map(|s| {
            let dims: Vec<Dim> = s.shape.iter().map(|&x| d(x)).collect();
            let t = b.input(&s.name, &dims, InputKind::Param);
            (s.name, t)
        })
        .collect();
    ModelInputs { tokens, params }
}

struct Forward<'a> {
    def: &'a ModelDef,
    b: &'a GraphBuilder,
    params: &'a HashMap<String, Tensor>,
    opts: &'a ForwardOptions,
    /// with a KV cache: each new token's position `[b, s]`
    positions: Option<Tensor>,
    /// keys a query may see: `s` without a cache, `p + s` with one
    total: Dim,
    /// rotary tables: `[s, hd]`, or `[b, s, hd]` per token with a cache
    cos: Tensor,
    sin: Tensor,
    /// additive causal mask: `[s, t]`, or `[b, s, t]` with a cache
    mask: Tensor,
}

/// Build the forward pass.
pub fn forward(b: &GraphBuilder, def: &ModelDef, inputs: &ModelInputs, opts: &ForwardOptions) -> ForwardOut {
    let (bsz, s) = (sym(dim::BATCH), sym(dim::SEQ));
    let hd = def.head_dim;
    // (a second forward in the same graph, as DPO's reference, shares the tables)
    let table = |name: &str| b.find_input(name).unwrap_or_else(|| b.input(name, &[d(opts.max_positions), d(hd)], InputKind::Buffer));
    let (cos, sin) = (table(buffer::ROPE_COS), table(buffer::ROPE_SIN));
    let (positions, total, cos, sin, mask) = if opts.kv_cache {
        // the keys of row r are its first p + s cache positions (p: the
        // longest past of the batch); query i of row r sees key j when
        // j <= positions[r, i]
        let total = add(sym(dim::PAST), s);
        let positions = b.input(input::POSITIONS, &[bsz, s], InputKind::Data);
        let q_pos = positions.expand(2, total);
        let k_pos = b.iota(total, d(0)).expand(0, s).expand(0, bsz);
        let mask = q_pos.lt(&k_pos).scale(MASKED);
        (Some(positions.clone()), total, positions.gather(&cos), positions.gather(&sin), mask)
    } else {
        // key j is hidden from query i when j > i
        let q_pos = b.iota(s, d(0)).expand(1, s);
        let k_pos = b.iota(s, d(0)).expand(0, s);
        let mask = q_pos.lt(&k_pos).scale(MASKED);
        (None, s, cos.slice(0, d(0), s), sin.slice(0, d(0), s), mask)
    };
    let f = Forward { def, b, params: &inputs.params, opts, positions, total, cos, sin, mask };
    let names = Model::new(def);

    let mut x = inputs.tokens.gather(f.w(&names.embed_tokens));
    let mut aux: Option<Tensor> = None;
    for (l, layer) in names.layers.iter().enumerate() {
        let _scope = b.scope(format!("model.layers.{l}"));
        let h = f.rmsnorm(&x, &layer.input_layernorm);
        x = x + f.attention(l, &layer.self_attn, &h);
        let h = f.rmsnorm(&x, &layer.post_attention_layernorm);
        let ffn = match (&layer.mlp, &def.layers[l]) {
            (Mlp::Swiglu(mlp), _) => f.swiglu(&h, mlp),
            (Mlp::Moe { gate, experts, shared_experts }, LayerFfn::Moe(m)) => {
                let (y, probs, mask) = f.moe(&h, (gate, experts, shared_experts), m);
                if opts.aux_loss && m.aux_loss_alpha > 0.0 {
                    let a = moe_aux_loss(&probs, &mask, m);
                    aux = Some(match aux {
                        Some(prev) => prev + a,
                        None => a,
                    });
                }
                y
            }
            (Mlp::Moe { .. }, _) => unreachable!("Model::new follows the definition's layers"),
        };
        x = x + ffn;
    }
    if opts.last_only {
        x = x.slice(1, sub(s, d(1)), s);
    }
    let x = f.rmsnorm(&x, &names.norm);
    let _scope = b.scope("lm_head");
    ForwardOut { logits: x.linear(f.w(&names.lm_head)), aux_loss: aux }
}

/// MiniMind's load-balancing loss for one MoE layer, from the router's
/// probabilities `[b, s, E]` and the top-k selection mask (not differentiated).
/// `seq_aux`: per sequence, `alpha * mean_b sum_e (count_e * E / (s k)) * mean_t p_e`;
/// otherwise over the whole batch, `alpha * sum_e mean(p_e) * E * count_e / (b s k)`.
fn moe_aux_loss(probs: &Tensor, mask: &Tensor, m: &MoeDef) -> Tensor {
    let (e, k) = (m.n_routed_experts as f32, m.num_experts_per_tok as f32);
    let b = probs.builder();
    let s = dim_constant(&b, sym(dim::SEQ));
    if m.seq_aux {
        let counts = mask.sum(1); // [b, E]
        let ce = counts.div(&s.expand_to(&counts.dims())).scale(e / k);
        let pm = probs.mean(1); // [b, E]
        ce.mul(&pm).sum(1).mean(0).scale(m.aux_loss_alpha as f32)
    } else {
        let fi = mask.mean(0).mean(0).scale(e / k); // E * (fraction of the b*s*k choices)
        let pi = probs.mean(0).mean(0);
        pi.mul(&fi).sum(0).scale(m.aux_loss_alpha as f32)
    }
}

impl Forward<'_> {
    fn w(&self, name: &str) -> &Tensor {
        self.params.get(name).unwrap_or_else(|| panic!("parameter {name} was not declared"))
    }

    /// `w * x / sqrt(mean(x^2) + eps)` over the last axis.
    fn rmsnorm(&self, x: &Tensor, weight: &str) -> Tensor {
        let dims = x.dims();
        let last = dims.len() - 1;
        let inv = x.square().mean(last).add_scalar(self.def.rms_norm_eps as f32).sqrt().recip();
        x.mul(&inv.expand(last, dims[last])).mul(&self.w(weight).expand_to(&dims))
    }

    /// Rotary embedding on `[b, heads, s, head_dim]`: `x cos + rotate_half(x) sin`.
    fn rope(&self, x: &Tensor) -> Tensor {
        let dims = x.dims();
        let half = d(self.def.head_dim / 2);
        let full = d(self.def.head_dim);
        let rotated = x.slice(3, half, full).scale(-1.0).concat(&x.slice(3, d(0), half), 3);
        // a per-token table [b, s, hd] is shared by the heads
        let table = |t: &Tensor| if t.rank() == 3 { t.expand(1, dims[1]) } else { t.expand_to(&dims) };
        x.mul(&table(&self.cos)) + rotated.mul(&table(&self.sin))
    }

    fn attention(&self, l: usize, names: &SelfAttention, h: &Tensor) -> Tensor {
        let def = self.def;
        let _scope = self.b.scope("self_attn");
        let (bsz, s) = (sym(dim::BATCH), sym(dim::SEQ));
        let (nh, nkv, hd) = (def.num_attention_heads, def.num_key_value_heads, def.head_dim);
        let groups = nh / nkv;
        let proj = |w: &str, heads: usize| h.linear(self.w(w)).reshape(&[bsz, s, d(heads), d(hd)]);
        let (mut q, mut k, v) = (proj(&names.q_proj, nh), proj(&names.k_proj, nkv), proj(&names.v_proj, nkv));
        if let (Some(qn), Some(kn)) = (&names.q_norm, &names.k_norm) {
            q = self.rmsnorm(&q, qn);
            k = self.rmsnorm(&k, kn);
        }
        // [b, heads, s, hd]
        let (q, k, v) = (q.permute(&[0, 2, 1, 3]), k.permute(&[0, 2, 1, 3]), v.permute(&[0, 2, 1, 3]));
        let scale = 1.0 / (hd as f32).sqrt();
        let (q, k) = (self.rope(&q), self.rope(&k));
        let (k, v) = match &self.positions {
            Some(positions) => {
                let (slots, first) = (d(self.opts.slots), sym(dim::FIRST_ROW));
                let cache = |name: &str, new: &Tensor| {
                    let c = self.b.input(&buffer::kv_cache(l, name), &[slots, d(nkv), d(self.opts.max_positions), d(hd)], InputKind::State);
                    let written = self.b.kernel(KvWrite { axis: 2, first_row: first }, &[&c, new, positions], &c.dims());
                    written.slice(0, first, add(first, bsz)).slice(2, d(0), self.total)
                };
                (cache("k", &k), cache("v", &v))
            }
            None => (k, v),
        };
        // grouped-query attention: query head h = kv * groups + g reads kv head `kv`
        let q = q.reshape(&[bsz, d(nkv), d(groups), s, d(hd)]);
        let k = k.expand(2, d(groups));
        let v = v.expand(2, d(groups));
        let scores = q.matmul(&k.transpose(3, 4)).scale(scale);
        let mask =
            if self.positions.is_some() { self.mask.expand(1, d(nkv)).expand(2, d(groups)) } else { self.mask.expand_to(&scores.dims()) };
        let scores = scores.clone() + mask;
        let probs = scores.softmax(4);
        let out = probs.matmul(&v); // [b, kv, g, s, hd]
        let out = out.reshape(&[bsz, d(nh), s, d(hd)]).permute(&[0, 2, 1, 3]).reshape(&[bsz, s, d(nh * hd)]);
        out.linear(self.w(&names.o_proj))
    }

    /// `down(silu(gate(x)) * up(x))`
    fn swiglu(&self, x: &Tensor, names: &Swiglu) -> Tensor {
        let gate = x.linear(self.w(&names.gate_proj));
        let up = x.linear(self.w(&names.up_proj));
        (gate.silu() * up).linear(self.w(&names.down_proj))
    }

    /// Softmax router, top-k experts weighted by their (optionally
    /// renormalised) probabilities, plus shared experts. Every expert runs on
    /// every token here and unselected ones are weighted 0. Returns the
    /// output, the router probabilities and the top-k mask.
    fn moe(&self, x: &Tensor, (gate, experts, shared_experts): (&str, &[Swiglu], &[Swiglu]), m: &MoeDef) -> (Tensor, Tensor, Tensor) {
        let _scope = self.b.scope("mlp");
        let dims = x.dims(); // [b, s, h]
        let probs = x.linear(self.w(gate)).softmax(2); // [b, s, E]
        let mask = probs.topk_mask(m.num_experts_per_tok);
        let mut weights = probs.mul(&mask);
        if m.norm_topk_prob {
            let denom = weights.sum(2).add_scalar(1e-20).expand(2, d(m.n_routed_experts));
            weights = weights.div(&denom);
        }
        let mut out: Option<Tensor> = None;
        for (e, expert) in experts.iter().enumerate() {
            let w = weights.slice(2, d(e), d(e + 1)).reshape(&[dims[0], dims[1]]).expand(2, dims[2]);
            let y = self.swiglu(x, expert) * w;
            out = Some(match out {
                Some(o) => o + y,
                None => y,
            });
        }
        let mut out = out.expect("at least one routed expert");
        for shared in shared_experts {
            out = out + self.swiglu(x, shared);
        }
        (out, probs, mask)
    }
}
