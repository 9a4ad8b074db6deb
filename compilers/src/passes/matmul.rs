//! Matmul recognition: a broadcast `Mul` whose only reader is a `SumReduce`
//! becomes one [`MatMul`] kernel, for every rank the models use (linear
//! layers, attention scores and values, batched or not).

use luminal::prelude::{move_outgoing_edge, move_references, Compiler, Graph, NodeIndex, ToIdsMut};
use petgraph::Direction;

use crate::kernel::KernelOp;
use crate::kernels::binary::BinaryOp;
use crate::kernels::matmul::{product_roles, MatMul};
use crate::kernels::reduce::ReduceOp;
use crate::primop::Primop;
use crate::shape::is_plain;

#[derive(Debug, Default)]
pub struct MatMulPass;

impl Compiler for MatMulPass {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        let reduces: Vec<(NodeIndex, usize)> = graph
            .graph
            .node_indices()
            .filter_map(|n| match Primop::at(graph, n) {
                Some(Primop::Reduce(ReduceOp::Sum, axis)) => Some((n, axis)),
                _ => None,
            })
            .collect();
        for (sum, axis) in reduces {
            let srcs = graph.get_sources(sum);
            let (mul, _, edge) = srcs[0];
            if Primop::at(graph, mul) != Some(Primop::Binary(BinaryOp::Mul))
                || graph.no_delete.contains(&mul)
                || graph.graph.edges_directed(mul, Direction::Outgoing).count() != 1
                || !is_plain(&edge)
            {
                continue;
            }
            let ins = graph.get_sources(mul);
            if ins.iter().any(|(_, _, st)| st.is_padded()) || product_roles(&ins[0].2, &ins[1].2, axis).is_none() {
                continue;
            }
            let new = graph
                .add_op(KernelOp::new(MatMul { axis, search: None, bf16: false }))
                .input(ins[0].0, ins[0].1, ins[0].2)
                .input(ins[1].0, ins[1].1, ins[1].2)
                .finish();
            move_outgoing_edge(sum, new, &mut graph.graph);
            move_references(&mut remap, &mut graph.no_delete, &mut graph.to_retrieve, sum, new);
            graph.graph.remove_node(sum);
            graph.graph.remove_node(mul);
        }
    }
}
