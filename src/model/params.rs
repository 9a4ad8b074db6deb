//! The parameters a definition implies: Hugging Face names, shapes, which
//! component each belongs to and how it is initialised. The one list that
//! the builder, weight I/O, `init` and `info` all read.

use super::def::{LayerFfn, ModelDef};

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

fn swiglu(prefix: &str, h: usize, f: usize) -> Vec<ParamSpec> {
    vec![
        p(format!("{prefix}.gate_proj.weight"), vec![f, h], Component::Ffn, ParamInit::Linear { fan_in: h }),
        p(format!("{prefix}.up_proj.weight"), vec![f, h], Component::Ffn, ParamInit::Linear { fan_in: h }),
        p(format!("{prefix}.down_proj.weight"), vec![h, f], Component::Ffn, ParamInit::Linear { fan_in: f }),
    ]
}

/// Every parameter of the model, in a stable order.
pub fn param_specs(def: &ModelDef) -> Vec<ParamSpec> {
    let (h, v, hd) = (def.hidden_size, def.vocab_size, def.head_dim);
    // A tied embedding is the lm_head Linear's tensor (MiniMind), so it is
    // initialised as that Linear.
    let emb_init = if def.tie_word_embeddings { ParamInit::Linear { fan_in: h } } else { ParamInit::Embedding };
    let mut out = vec![p("model.embed_tokens.weight".into(), vec![v, h], Component::Embedding, emb_init)];
    for (l, ffn) in def.layers.iter().enumerate() {
        let pre = format!("model.layers.{l}");
        let lin = |n: &str, o: usize, i: usize| {
            p(format!("{pre}.self_attn.{n}.weight"), vec![o, i], Component::Attention, ParamInit::Linear { fan_in: i })
        };
        out.push(p(format!("{pre}.input_layernorm.weight"), vec![h], Component::Norm, ParamInit::Ones));
        out.push(lin("q_proj", def.q_dim(), h));
        out.push(lin("k_proj", def.kv_dim(), h));
        out.push(lin("v_proj", def.kv_dim(), h));
        out.push(lin("o_proj", h, def.q_dim()));
        if def.qk_norm {
            out.push(p(format!("{pre}.self_attn.q_norm.weight"), vec![hd], Component::Norm, ParamInit::Ones));
            out.push(p(format!("{pre}.self_attn.k_norm.weight"), vec![hd], Component::Norm, ParamInit::Ones));
        }
        out.push(p(format!("{pre}.post_attention_layernorm.weight"), vec![h], Component::Norm, ParamInit::Ones));
        match ffn {
            LayerFfn::Swiglu { intermediate_size } => out.extend(swiglu(&format!("{pre}.mlp"), h, *intermediate_size)),
            LayerFfn::Moe(m) => {
                out.push(p(format!("{pre}.mlp.gate.weight"), vec![m.n_routed_experts, h], Component::Ffn, ParamInit::Linear { fan_in: h }));
                for e in 0..m.n_routed_experts {
                    for mut s in swiglu(&format!("{pre}.mlp.experts.{e}"), h, m.expert_size) {
                        s.routed_expert = Some((l, e));
                        out.push(s);
                    }
                }
                for s in 0..m.n_shared_experts {
                    out.extend(swiglu(&format!("{pre}.mlp.shared_experts.{s}"), h, m.expert_size));
                }
            }
        }
    }
    out.push(p("model.norm.weight".into(), vec![h], Component::Norm, ParamInit::Ones));
    if !def.tie_word_embeddings {
        out.push(p("lm_head.weight".into(), vec![v, h], Component::LmHead, ParamInit::Linear { fan_in: h }));
    }
    out
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
