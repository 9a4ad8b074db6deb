//! Attention fusion: `MatMul -> RowProgram -> MatMul`, where the first product
//! makes the rows the row program reads and the second contracts the
//! program's output over that same row axis, becomes one [`ProductChain`]
//! kernel (`q k^T`, mask and softmax, `p v`) that never writes the scores.
//! Runs after row fusion.

use luminal::prelude::{move_outgoing_edge, move_references, Compiler, Graph, NodeIndex, ShapeTracker, ToIdsMut};
use petgraph::Direction;

use crate::kernel::{kernel_of, KernelOp};
use crate::kernels::matmul::MatMul;
use crate::kernels::product_chain::ProductChain;
use crate::kernels::row_program::RowProgram;
use crate::shape::{is_broadcast, is_plain, logical_dims, shapes_eq};

#[derive(Debug)]
pub struct ProductChainFusion {
    /// also fuse `x Wg -> silu * up -> Wd` (the same shape without a
    /// softmax): a win on the CPU, where it keeps the hidden row in cache; on
    /// a GPU one block per token would stream the weights through one SM,
    /// so there cuBLAS takes those products
    pub gated_mlp: bool,
}

fn consumers(g: &Graph, n: NodeIndex) -> usize {
    g.graph.edges_directed(n, Direction::Outgoing).count()
}

/// A `MatMul` over the last axis of `[O.., n, K]` whose left operand is
/// broadcast over `n` and right operand real there (`q k^T` or `p v` shape).
fn is_row_product(g: &Graph, n: NodeIndex) -> Option<[(NodeIndex, u8, ShapeTracker); 2]> {
    let k = kernel_of(g.graph.node_weight(n)?.as_ref())?;
    let mm = k.get::<MatMul>()?;
    let ins = g.get_sources(n);
    let r = ins[0].2.len();
    if mm.axis != r - 1
        || r < 3
        || !is_broadcast(&ins[0].2, r - 2)
        || is_broadcast(&ins[1].2, r - 2)
        || is_broadcast(&ins[0].2, r - 1)
        || is_broadcast(&ins[1].2, r - 1)
    {
        return None;
    }
    Some([ins[0], ins[1]])
}

impl Compiler for ProductChainFusion {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        let candidates: Vec<NodeIndex> = graph.graph.node_indices().collect();
        for m2 in candidates {
            if !graph.graph.contains_node(m2) {
                continue;
            }
            let Some([p_edge, v_edge]) = is_row_product(graph, m2) else {
                continue;
            };
            // the probabilities: the single output of a row program, read only here
            let rf = p_edge.0;
            let Some(prog) = graph.graph.node_weight(rf).and_then(|w| kernel_of(w.as_ref())).and_then(|k| k.get::<RowProgram>()).cloned()
            else {
                continue;
            };
            if prog.outputs.len() != 1 || !prog.instrs[prog.outputs[0]].row || consumers(graph, rf) != 1 {
                continue;
            }
            let softmax = prog.has_softmax();
            if !softmax && !self.gated_mlp {
                continue;
            }
            // its scores input: a plain read of a q k^T product used only here
            let rf_ins = graph.get_sources(rf);
            let Some(scores_input) =
                rf_ins.iter().position(|(src, _, st)| is_plain(st) && consumers(graph, *src) == 1 && is_row_product(graph, *src).is_some())
            else {
                continue;
            };
            if !prog.input_row[scores_input] {
                continue;
            }
            let m1 = rf_ins[scores_input].0;
            let [q_edge, k_edge] = is_row_product(graph, m1).unwrap();
            // shapes line up: scores [O.., t] = p [O.., t]; both products of one rank
            let scores = logical_dims(&rf_ins[scores_input].2);
            let mut p_dims = logical_dims(&p_edge.2);
            let r = p_dims.len();
            p_dims.remove(r - 2);
            if q_edge.2.len() != r || !shapes_eq(&scores, &p_dims) || [m1, rf, m2].iter().any(|n| graph.no_delete.contains(n)) {
                continue;
            }
            let kernel = ProductChain { program: prog, scores_input, search: None, bf16: false };
            let mut new = graph.add_op(KernelOp::new(kernel));
            for (src, out, st) in [q_edge, k_edge, v_edge] {
                new = new.input(src, out, st);
            }
            for (i, (src, out, st)) in rf_ins.iter().enumerate() {
                if i != scores_input {
                    new = new.input(*src, *out, *st);
                }
            }
            let id = new.finish();
            move_outgoing_edge(m2, id, &mut graph.graph);
            move_references(&mut remap, &mut graph.no_delete, &mut graph.to_retrieve, m2, id);
            for n in [m2, rf, m1] {
                graph.graph.remove_node(n);
            }
        }
    }
}
