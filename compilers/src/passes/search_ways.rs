//! The last pass of `--fusion search`: every kernel with several ways to
//! run (the matrix products, and the GEMVs of attention and the gated MLP
//! when decoding) is told to search for its way on its
//! calls ([`crate::search`]), under its node's index, which `inspect`
//! reports the choices by. The pass also loads this machine's search cache,
//! so a compile pays for reading it once and a run for nothing.

use luminal::prelude::{Compiler, Graph, ToIdsMut};

use crate::kernel::{kernel_of, KernelOp};
use crate::kernels::matmul::MatMul;
use crate::kernels::product_chain::ProductChain;

#[derive(Debug, Default)]
pub struct SearchWays;

impl Compiler for SearchWays {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, _: T) {
        drop(crate::search::global());
        let nodes: Vec<_> = graph.graph.node_indices().collect();
        for n in nodes {
            let w = graph.graph.node_weight_mut(n).unwrap();
            let Some(k) = kernel_of(w.as_ref()) else { continue };
            let searching = if let Some(m) = k.get::<MatMul>() {
                KernelOp::new(MatMul { search: Some(n.index()), ..m.clone() })
            } else if let Some(c) = k.get::<ProductChain>() {
                KernelOp::new(ProductChain { search: Some(n.index()), ..c.clone() })
            } else {
                continue;
            };
            *w = Box::new(searching);
        }
    }
}
