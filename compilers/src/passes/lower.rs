//! Lowering: every luminal primop left in the graph becomes one of our
//! per-primop kernels. After this pass each node is an input or a kernel.

use luminal::op;
use luminal::prelude::{Compiler, Graph, ToIdsMut};

use crate::kernel::{kernel_of, KernelOp};
use crate::primop::Primop;

#[derive(Debug, Default)]
pub struct LowerToKernels;

/// Our kernel for a luminal primop, or None for inputs and nodes that already
/// are kernels.
pub fn kernel_for(o: &dyn op::Operator) -> Option<KernelOp> {
    match Primop::of(o) {
        Some(p) => p.kernel(),
        None if kernel_of(o).is_some() => None,
        None => panic!("no CPU kernel for luminal op {o:?}"),
    }
}

impl Compiler for LowerToKernels {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, _: T) {
        let nodes: Vec<_> = graph.graph.node_indices().collect();
        for n in nodes {
            let w = graph.graph.node_weight_mut(n).unwrap();
            if let Some(k) = kernel_for(w.as_ref()) {
                *w = Box::new(k);
            }
        }
    }
}
