//! The one table of luminal's primops. [`Primop::of`] is where the compiler
//! asks which luminal operator a node is (only `inspect` also reads an
//! input's name off luminal's `Function`); lowering, the passes, LoRA
//! injection and autograd match on the answer. Each primop maps onto the operation enums of our
//! kernels (`BinaryOp`, `UnaryOp`, `ReduceOp`), which the per-primop
//! kernels, the row programs and the CUDA generator all share, so adding an
//! op means a variant there and a line here.

use luminal::op;
use luminal::prelude::{Graph, NodeIndex};

use crate::kernel::KernelOp;
use crate::kernels::binary::{Binary, BinaryOp};
use crate::kernels::constant::Constant;
use crate::kernels::contiguous::Contiguous;
use crate::kernels::reduce::{Reduce, ReduceOp};
use crate::kernels::unary::{Unary, UnaryOp};

#[derive(Clone, Debug, PartialEq)]
pub enum Primop {
    /// a graph input (luminal's `Function`)
    Input,
    Constant(Constant),
    Binary(BinaryOp),
    Unary(UnaryOp),
    /// a reduction over one axis
    Reduce(ReduceOp, usize),
    /// materialise a view
    Contiguous,
}

impl Primop {
    /// Which primop a node is; `None` for our kernels and anything else.
    pub fn of(o: &dyn op::Operator) -> Option<Primop> {
        let a = o.as_any();
        let binary = |op| Some(Primop::Binary(op));
        let unary = |op| Some(Primop::Unary(op));
        if a.is::<op::Function>() {
            Some(Primop::Input)
        } else if let Some(c) = a.downcast_ref::<op::Constant>() {
            Some(Primop::Constant(match &c.0 {
                op::ConstantValue::Float(v) => Constant::Float(*v),
                op::ConstantValue::Expression(e) => Constant::Dim(e.clone().into()),
            }))
        } else if a.is::<op::Add>() {
            binary(BinaryOp::Add)
        } else if a.is::<op::Mul>() {
            binary(BinaryOp::Mul)
        } else if a.is::<op::Mod>() {
            binary(BinaryOp::Mod)
        } else if a.is::<op::LessThan>() {
            binary(BinaryOp::LessThan)
        } else if a.is::<op::Log2>() {
            unary(UnaryOp::Log2)
        } else if a.is::<op::Exp2>() {
            unary(UnaryOp::Exp2)
        } else if a.is::<op::Sin>() {
            unary(UnaryOp::Sin)
        } else if a.is::<op::Sqrt>() {
            unary(UnaryOp::Sqrt)
        } else if a.is::<op::Recip>() {
            unary(UnaryOp::Recip)
        } else if let Some(r) = a.downcast_ref::<op::SumReduce>() {
            Some(Primop::Reduce(ReduceOp::Sum, r.0))
        } else if let Some(r) = a.downcast_ref::<op::MaxReduce>() {
            Some(Primop::Reduce(ReduceOp::Max, r.0))
        } else if a.is::<op::Contiguous>() {
            Some(Primop::Contiguous)
        } else {
            None
        }
    }

    /// Which primop node `n` of `g` is.
    pub fn at(g: &Graph, n: NodeIndex) -> Option<Primop> {
        Primop::of(g.graph.node_weight(n)?.as_ref())
    }

    /// The CPU kernel that runs this primop on its own; `None` for inputs.
    pub fn kernel(self) -> Option<KernelOp> {
        Some(match self {
            Primop::Input => return None,
            Primop::Constant(c) => KernelOp::new(c),
            Primop::Binary(op) => KernelOp::new(Binary(op)),
            Primop::Unary(op) => KernelOp::new(Unary(op)),
            Primop::Reduce(op, axis) => KernelOp::new(Reduce { op, axis }),
            Primop::Contiguous => KernelOp::new(Contiguous),
        })
    }
}
