//! The Hugging Face names of a model's weights, built once down the tree
//! (`model.layers.3.self_attn.q_proj.weight`), as small structs that mirror
//! the modules. [`super::params`] lists the parameters from them and the
//! builder reads the weights through them, so no name is spelled twice.

use super::def::{LayerFfn, ModelDef};

/// A module's path: `model.layers.3`, then `.self_attn`, ...
#[derive(Clone, Debug)]
struct Prefix(String);

impl Prefix {
    fn pp(&self, part: impl std::fmt::Display) -> Prefix {
        if self.0.is_empty() {
            Prefix(part.to_string())
        } else {
            Prefix(format!("{}.{part}", self.0))
        }
    }
    fn weight(&self, module: impl std::fmt::Display) -> String {
        format!("{}.weight", self.pp(module).0)
    }
}

/// `down(silu(gate(x)) * up(x))`: `[f, h]`, `[f, h]` and `[h, f]`.
#[derive(Clone, Debug)]
pub struct Swiglu {
    pub gate_proj: String,
    pub up_proj: String,
    pub down_proj: String,
}

impl Swiglu {
    fn new(p: &Prefix) -> Swiglu {
        Swiglu { gate_proj: p.weight("gate_proj"), up_proj: p.weight("up_proj"), down_proj: p.weight("down_proj") }
    }
}

#[derive(Clone, Debug)]
pub struct SelfAttention {
    pub q_proj: String,
    pub k_proj: String,
    pub v_proj: String,
    pub o_proj: String,
    /// per-head RMSNorm of q and k, where the model has them (`qk_norm`)
    pub q_norm: Option<String>,
    pub k_norm: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Mlp {
    Swiglu(Swiglu),
    Moe {
        /// the router `[E, h]`
        gate: String,
        experts: Vec<Swiglu>,
        shared_experts: Vec<Swiglu>,
    },
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub input_layernorm: String,
    pub self_attn: SelfAttention,
    pub post_attention_layernorm: String,
    pub mlp: Mlp,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub embed_tokens: String,
    pub layers: Vec<Layer>,
    pub norm: String,
    /// the output projection; the embedding's tensor when it is tied
    pub lm_head: String,
}

impl Model {
    pub fn new(def: &ModelDef) -> Model {
        let model = Prefix("model".into());
        let layers = def
            .layers
            .iter()
            .enumerate()
            .map(|(l, ffn)| {
                let p = model.pp("layers").pp(l);
                let a = p.pp("self_attn");
                let self_attn = SelfAttention {
                    q_proj: a.weight("q_proj"),
                    k_proj: a.weight("k_proj"),
                    v_proj: a.weight("v_proj"),
                    o_proj: a.weight("o_proj"),
                    q_norm: def.qk_norm.then(|| a.weight("q_norm")),
                    k_norm: def.qk_norm.then(|| a.weight("k_norm")),
                };
                let m = p.pp("mlp");
                let mlp = match ffn {
                    LayerFfn::Swiglu { .. } => Mlp::Swiglu(Swiglu::new(&m)),
                    LayerFfn::Moe(moe) => Mlp::Moe {
                        gate: m.weight("gate"),
                        experts: (0..moe.n_routed_experts).map(|e| Swiglu::new(&m.pp("experts").pp(e))).collect(),
                        shared_experts: (0..moe.n_shared_experts).map(|s| Swiglu::new(&m.pp("shared_experts").pp(s))).collect(),
                    },
                };
                Layer {
                    input_layernorm: p.weight("input_layernorm"),
                    self_attn,
                    post_attention_layernorm: p.weight("post_attention_layernorm"),
                    mlp,
                }
            })
            .collect();
        let embed_tokens = model.weight("embed_tokens");
        let lm_head = if def.tie_word_embeddings { embed_tokens.clone() } else { Prefix(String::new()).weight("lm_head") };
        Model { embed_tokens, layers, norm: model.weight("norm"), lm_head }
    }
}
