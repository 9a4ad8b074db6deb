//! Mixed precision: every matrix product of the graph (the projections and
//! the LM head, forward and backward, and the gated MLP's) multiplies in
//! bf16, its operands rounded to nearest even and its sums in f32, where the
//! CPU has AVX512-BF16 ([`crate::kernels::bf16_gemm`]); elsewhere they stay
//! f32. The rest stays f32: the weights, the gradients and AdamW's state,
//! norms, softmax, the loss, and attention's fused kernel.

use luminal::prelude::{Compiler, Graph, ToIdsMut};

use crate::kernel::{kernel_of, KernelOp};
use crate::kernels::matmul::MatMul;
use crate::kernels::product_chain::ProductChain;

#[derive(Debug, Default)]
pub struct Bf16Products;

impl Compiler for Bf16Products {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, _: T) {
        let nodes: Vec<_> = graph.graph.node_indices().collect();
        for n in nodes {
            let w = graph.graph.node_weight_mut(n).unwrap();
            let Some(k) = kernel_of(w.as_ref()) else { continue };
            let in_bf16 = if let Some(m) = k.get::<MatMul>() {
                KernelOp::new(MatMul { bf16: true, ..m.clone() })
            } else if let Some(c) = k.get::<ProductChain>() {
                KernelOp::new(ProductChain { bf16: true, ..c.clone() })
            } else {
                continue;
            };
            *w = Box::new(in_bf16);
        }
    }
}
