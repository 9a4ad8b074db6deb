//! Compiler passes and the pipelines that chain them.
//!
//! Every pass is a `luminal::Compiler` rewriting the one graph. A pipeline is
//! a list of named passes; [`compile`] runs them in order and can show the
//! graph after each one (that is what `lumind inspect` prints).

pub mod bf16_products;
pub mod causal_attention;
pub mod lower;
pub mod masked;
pub mod matmul;
pub mod product_chain;
pub mod rope;
pub mod row_fusion;
pub mod search_ways;
pub mod simplify_row_programs;

use luminal::prelude::*;

use crate::backend::Backend;
use crate::tensor::BuiltGraph;

/// How much the CPU compiler does to a graph before it runs.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    strum::EnumString,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
    strum::VariantNames,
    serde::Serialize,
    serde::Deserialize,
)]
#[strum(serialize_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// Matmuls recognised, every other primop its own kernel; no graph cleanup.
    None,
    /// Luminal's generic passes (CSE, arithmetic and unary-pair elimination,
    /// single reductions, unused nodes), then per-primop kernels.
    Generic,
    /// Everything lumind has: generic passes plus our fusion passes.
    #[default]
    Full,
    /// `full`'s graph, with each kernel's way to run (GEMV form, thread
    /// split, SIMD level) timed on its real calls on this machine instead
    /// of chosen by hand-written rules ([`crate::search`]). On a device, as
    /// `full`.
    Search,
}

impl Fusion {
    /// Every strategy, from least to most done.
    pub fn all() -> &'static [Fusion] {
        <Fusion as strum::VariantArray>::VARIANTS
    }
    pub fn name(self) -> &'static str {
        self.into()
    }
    /// Whether the strategy runs lumind's fusion passes (`full`, `search`).
    pub fn fuses(self) -> bool {
        matches!(self, Fusion::Full | Fusion::Search)
    }
}

/// The node ids a pass must keep pointing at the right nodes.
pub struct NodeIds(pub Vec<NodeIndex>);

impl ToIdsMut for NodeIds {
    fn to_ids_mut(&mut self) -> Vec<&mut NodeIndex> {
        self.0.iter_mut().collect()
    }
}

type PassFn = Box<dyn Fn(&mut Graph, &mut NodeIds)>;

pub struct Pass {
    pub name: &'static str,
    run: PassFn,
}

impl Pass {
    pub fn new<C: Compiler + 'static>(name: &'static str, c: C) -> Pass {
        Pass { name, run: Box::new(move |g, ids| c.compile(g, ids)) }
    }
}

/// The passes of a fusion strategy for the CPU, in order.
pub fn pipeline(fusion: Fusion) -> Vec<Pass> {
    pipeline_for(fusion, Backend::Cpu)
}

/// Whether a strategy fuses attention over a whole sequence
/// ([`causal_attention::CausalAttentionFusion`]) and the rotary embedding
/// ([`rope::RopeFusion`]): the CPU's full fusion only; the CUDA backend
/// leaves both to its generic kernels. The attention kernel has its own
/// backward rule, so a training graph is fused before autograd runs
/// ([`causal_attention::fuse_before_autograd`]); the pipeline's pass then
/// finds nothing left to fuse.
pub fn fuses_attention(fusion: Fusion, backend: Backend) -> bool {
    fusion.fuses() && backend == Backend::Cpu
}

/// The passes of a fusion strategy for a backend, in order.
pub fn pipeline_for(fusion: Fusion, backend: Backend) -> Vec<Pass> {
    let mut p = vec![];
    if fuses_attention(fusion, backend) {
        // first, as in a training graph, where it runs before autograd
        p.push(Pass::new("CausalAttentionFusion", causal_attention::CausalAttentionFusion));
    }
    if fusion != Fusion::None {
        p.push(Pass::new("RemoveSingleReductions", RemoveSingleReductions));
        p.push(Pass::new("ArithmeticElimination", ArithmeticElimination));
        p.push(Pass::new("UnarySequentialElimination", UnarySequentialElimination));
        p.push(Pass::new("CSE", CSE));
        p.push(Pass::new("RemoveUnusedNodes", RemoveUnusedNodes));
    }
    if fuses_attention(fusion, backend) {
        p.push(Pass::new("RopeFusion", rope::RopeFusion));
    }
    p.push(Pass::new("MatMul", matmul::MatMulPass));
    if fusion.fuses() {
        p.push(Pass::new("RowFusion", row_fusion::RowFusion));
        p.push(Pass::new("MaskedRows", masked::MaskedRows));
        if backend == Backend::Cpu {
            // (instructions the CUDA code generator has no use for)
            p.push(Pass::new("SimplifyRowPrograms", simplify_row_programs::SimplifyRowPrograms));
        }
        p.push(Pass::new("ProductChainFusion", product_chain::ProductChainFusion { gated_mlp: backend == Backend::Cpu }));
    }
    p.push(Pass::new("LowerToKernels", lower::LowerToKernels));
    if fusion == Fusion::Search && backend == Backend::Cpu {
        p.push(Pass::new("SearchWays", search_ways::SearchWays));
    }
    p
}

/// Run `passes` over a built graph, calling `observe(pass, graph)` after each.
pub fn compile(built: &mut BuiltGraph, passes: &[Pass], mut observe: impl FnMut(&str, &Graph)) {
    // inputs must survive even when a job leaves one unused
    for i in &built.inputs {
        built.graph.no_delete.insert(i.node);
    }
    let n_in = built.inputs.len();
    let mut ids = NodeIds(built.inputs.iter().map(|i| i.node).chain(built.outputs.iter().map(|o| o.node)).collect());
    for pass in passes {
        (pass.run)(&mut built.graph, &mut ids);
        observe(pass.name, &built.graph);
    }
    for (i, id) in ids.0.iter().enumerate() {
        if i < n_in {
            built.inputs[i].node = *id;
        } else {
            built.outputs[i - n_in].node = *id;
        }
    }
}
