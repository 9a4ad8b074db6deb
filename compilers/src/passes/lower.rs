//! Lowering: every luminal primop left in the graph becomes one of our
//! per-primop kernels. After this pass each node is an input or a kernel.

use luminal::op;
use luminal::prelude::{Compiler, Graph, ToIdsMut};

use crate::kernel::{kernel_of, KernelOp};
use crate::kernels::{
    binary::{Binary, BinaryOp},
    constant::Constant,
    copy::Copy,
    reduce::{Reduce, ReduceOp},
    unary::{Unary, UnaryOp},
};

#[derive(Debug, Default)]
pub struct LowerToKernels;

/// Our kernel for a luminal primop, or None for inputs and nodes that already
/// are kernels.
pub fn kernel_for(o: &dyn op::Operator) -> Option<KernelOp> {
    let any = o.as_any();
    let k = if any.is::<op::Add>() {
        KernelOp::new(Binary(BinaryOp::Add))
    } else if any.is::<op::Mul>() {
        KernelOp::new(Binary(BinaryOp::Mul))
    } else if any.is::<op::Mod>() {
        KernelOp::new(Binary(BinaryOp::Mod))
    } else if any.is::<op::LessThan>() {
        KernelOp::new(Binary(BinaryOp::LessThan))
    } else if any.is::<op::Log2>() {
        KernelOp::new(Unary(UnaryOp::Log2))
    } else if any.is::<op::Exp2>() {
        KernelOp::new(Unary(UnaryOp::Exp2))
    } else if any.is::<op::Sin>() {
        KernelOp::new(Unary(UnaryOp::Sin))
    } else if any.is::<op::Sqrt>() {
        KernelOp::new(Unary(UnaryOp::Sqrt))
    } else if any.is::<op::Recip>() {
        KernelOp::new(Unary(UnaryOp::Recip))
    } else if let Some(r) = any.downcast_ref::<op::SumReduce>() {
        KernelOp::new(Reduce { op: ReduceOp::Sum, axis: r.0 })
    } else if let Some(r) = any.downcast_ref::<op::MaxReduce>() {
        KernelOp::new(Reduce { op: ReduceOp::Max, axis: r.0 })
    } else if any.is::<op::Contiguous>() {
        KernelOp::new(Copy)
    } else if let Some(c) = any.downcast_ref::<op::Constant>() {
        KernelOp::new(match &c.0 {
            op::ConstantValue::Float(v) => Constant::Float(*v),
            op::ConstantValue::Expression(e) => Constant::Dim(e.clone().into()),
        })
    } else if any.is::<op::Function>() || kernel_of(o).is_some() {
        return None;
    } else {
        panic!("no CPU kernel for luminal op {o:?}");
    };
    Some(k)
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
