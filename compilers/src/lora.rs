//! LoRA injection as a graph transform: every matrix product that reads a
//! given weight gets a low-rank branch added to its output,
//! `y = x W^T + scale * (x A^T) B^T`, and everything that read `y` reads the
//! sum instead. The base weight is untouched (train only `A` and `B` by
//! differentiating with respect to them alone).

use luminal::prelude::NodeIndex;
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::kernels::binary::BinaryOp;
use crate::kernels::reduce::ReduceOp;
use crate::primop::Primop;
use crate::shape::without_broadcast;
use crate::tensor::Tensor;

/// Inject `scale * B(A x)` into every product reading `weight` (`[out, in]`,
/// read transposed as by `Tensor::linear`); `a` is `[r, in]`, `b` `[out, r]`.
/// Returns how many products were changed.
pub fn inject(weight: &Tensor, a: &Tensor, b: &Tensor, scale: f32) -> usize {
    let cx = weight.builder();
    // products reading the weight: Mul(x, W view) read only by a SumReduce
    let sites: Vec<(NodeIndex, NodeIndex, NodeIndex, luminal::prelude::ShapeTracker)> = cx.with_graph(|g| {
        g.graph
            .edges_directed(weight.id, Direction::Outgoing)
            .filter_map(|e| {
                let mul = e.target();
                if Primop::at(g, mul)? != Primop::Binary(BinaryOp::Mul) {
                    return None;
                }
                let dests: Vec<NodeIndex> = g.graph.edges_directed(mul, Direction::Outgoing).map(|e| e.target()).collect();
                let [sum] = dests.as_slice() else { return None };
                if !matches!(Primop::at(g, *sum)?, Primop::Reduce(ReduceOp::Sum, _)) {
                    return None;
                }
                let (x, _, st) = g.get_sources(mul).into_iter().find(|(s, _, _)| *s != weight.id)?;
                Some((mul, *sum, x, st))
            })
            .collect()
    });
    for (_, sum, x, st) in &sites {
        let x = cx.view(*x, without_broadcast(st));
        let y = cx.buffer(*sum);
        let branch = x.linear(a).linear(b).scale(scale);
        let out = y.add(&branch);
        cx.redirect_consumers(*sum, out.id, out.id);
    }
    sites.len()
}
