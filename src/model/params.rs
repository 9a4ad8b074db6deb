//! The parameters a definition implies: Hugging Face names, shapes, which
//! component each belongs to and how it is initialised. The one list that
//! the builder, weight I/O, `init` and `info` all read.

use super::def::{LayerFfn, ModelDef};
use super::names::{Mlp, Model};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    Embedding,
    Attention,
    Ffn,
    Norm,
    LmHead,
}

impl Component {
    pub const ALL: [Component; 5] = [Component::Embedding, Component::Attention, Component::Ffn, Component::Norm, Component::LmHead];
    pub fn key(self) -> &'static str {
        match self {
            Component::Embedding => "embedding",
            Component::Attention => "attention",
            Component::Ffn => "ffn",
            Component::Norm => "norm",
            Component::LmHead => "lm_head",
        }
    }
}

/// How a parameter is drawn at initialisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamInit {
    /// a `Linear` weight with this fan-in
    Linear { fan_in: usize },
    /// an (untied) embedding table
    Embedding,
    /// RMSNorm weights: ones
    Ones,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub component: Component,
    pub init: ParamInit,
    /// For routed experts: (layer, expert); only top-k of them run per token.
    pub routed_expert: Option<(usize, usize)>,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

fn p(name: String, shape: Vec<usize>, component: Component, init: ParamInit) -> ParamSpec {
    ParamSpec { name, shape, component, init, routed_expert: None }
}

fn swiglu(names: &super::names::Swiglu, h: usize, f: usize) -> Vec<ParamSpec> {
    vec![
        p(names.gate_proj.clone(), vec![f, h], Component::Ffn, ParamInit::Linear { fan_in: h }),
        p(names.up_proj.clone(), vec![f, h], Component::Ffn, ParamInit::Linear { fan_in: h }),
        p(names.down_proj.clone(), vec![h, f], Component::Ffn, ParamInit::Linear { fan_in: f }),
    ]
}

/// Every parameter of the model, in a stable order.
pub fn param_specs(def: &ModelDef) -> Vec<ParamSpec> {
    let (h, v, hd) = (def.hidden_size, def.vocab_size, def.head_dim);
    let names = Model::new(def);
    // A tied embedding is the lm_head Linear's tensor (MiniMind), so it is
    // initialised as that Linear.
    let emb_init = if def.tie_word_embeddings { ParamInit::Linear { fan_in: h } } else { ParamInit::Embedding };
    let mut out = vec![p(names.embed_tokens.clone(), vec![v, h], Component::Embedding, emb_init)];
    for (l, (layer, ffn)) in names.layers.iter().zip(&def.layers).enumerate() {
        let lin = |n: &String, o: usize, i: usize| p(n.clone(), vec![o, i], Component::Attention, ParamInit::Linear { fan_in: i });
        let a = &layer.self_attn;
        out.push(norm_spec(&layer.input_layernorm, h));
        out.push(lin(&a.q_proj, def.q_dim(), h));
        out.push(lin(&a.k_proj, def.kv_dim(), h));
        out.push(lin(&a.v_proj, def.kv_dim(), h));
        out.push(lin(&a.o_proj, h, def.q_dim()));
        for n in a.q_norm.iter().chain(&a.k_norm) {
            out.push(norm_spec(n, hd));
        }
        out.push(norm_spec(&layer.post_attention_layernorm, h));
        match (&layer.mlp, ffn) {
            (Mlp::Swiglu(names), LayerFfn::Swiglu { intermediate_size }) => out.extend(swiglu(names, h, *intermediate_size)),
            (Mlp::Moe { gate, experts, shared_experts }, LayerFfn::Moe(m)) => {
                out.push(p(gate.clone(), vec![m.n_routed_experts, h], Component::Ffn, ParamInit::Linear { fan_in: h }));
                for (e, names) in experts.iter().enumerate() {
                    for mut s in swiglu(names, h, m.expert_size) {
                        s.routed_expert = Some((l, e));
                        out.push(s);
                    }
                }
                for names in shared_experts {
                    out.extend(swiglu(names, h, m.expert_size));
                }
            }
            _ => unreachable!("Model::new follows the definition's layers"),
        }
    }
    out.push(norm_spec(&names.norm, h));
    if !def.tie_word_embeddings {
        out.push(p(names.lm_head.clone(), vec![v, h], Component::LmHead, ParamInit::Linear { fan_in: h }));
    }
    out
}

fn norm_spec(name: &str, size: usize) -> ParamSpec {
    p(name.into(), vec![size], Component::Norm, ParamInit::Ones)
}

/// Parameter counts: total, per component, and per token for MoE models.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamCount {
    pub total: usize,
    pub by_component: Vec<(Component, usize)>,
    /// Parameters used per token (routed experts counted top-k of n).
    pub active: usize,
}

pub fn count_params(def: &ModelDef) -> ParamCount {
    let specs = param_specs(def);
    let total = specs.iter().map(ParamSpec::numel).sum();
    let by_component = Component::ALL.iter().map(|&c| (c, specs.iter().filter(|s| s.component == c).map(ParamSpec::numel).sum())).collect();
    let inactive: usize = def
        .layers
        .iter()
        .enumerate()
        .map(|(l, ffn)| match ffn {
            LayerFfn::Moe(m) => {
                let per_expert: usize = specs.iter().filter(|s| s.routed_expert == Some((l, 0))).map(ParamSpec::numel).sum();
                (m.n_routed_experts - m.num_experts_per_tok) * per_expert
            }
            _ => 0,
        })
        .sum();
    ParamCount { total, by_component, active: total - inactive }
}

/// `26.88M`, `1.2K`, `218.1M`
pub fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}
