//! Unary primops (Log2, Exp2, Sin, Sqrt, Recip). [`UnaryOp`] holds how each
//! computes: on the CPU (alone and inside a row program) and as CUDA C.
//! `primop.rs` maps luminal's ops onto it; autograd's table holds its
//! gradient.
//!
//! Luminal's semantics: a unary op maps its input buffer element by element
//! and the input's view passes through to its consumers (the output tensor
//! carries the same `ShapeTracker`). So the kernel ignores the view and maps
//! the whole physical buffer; `UnarySequentialElimination` relies on this.

use crate::cuda::source::{elementwise, out_len, unless_empty, Call, CudaKernel};
use crate::kernel::{Arg, Cost, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Log2,
    Exp2,
    Sin,
    Sqrt,
    Recip,
}

impl UnaryOp {
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Log2 => x.log2(),
            UnaryOp::Exp2 => x.exp2(),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Recip => 1.0 / x,
        }
    }

    /// `dst = op(x)` over a row, as row programs compute it: `exp2` through
    /// the vectorising [`super::fastmath::exp2`], the others as [`Self::apply`].
    #[inline(always)]
    pub fn apply_row(self, x: &[f32], dst: &mut [f32]) {
        match self {
            UnaryOp::Exp2 => dst.iter_mut().zip(x).for_each(|(o, &v)| *o = super::fastmath::exp2(v)),
            UnaryOp::Recip => dst.iter_mut().zip(x).for_each(|(o, &v)| *o = 1.0 / v),
            UnaryOp::Sqrt => dst.iter_mut().zip(x).for_each(|(o, &v)| *o = v.sqrt()),
            _ => dst.iter_mut().zip(x).for_each(|(o, &v)| *o = self.apply(v)),
        }
    }

    /// CUDA C for the op applied to the expression `x`.
    pub fn cuda(self, x: &str) -> String {
        match self {
            UnaryOp::Log2 => format!("log2f({x})"),
            UnaryOp::Exp2 => format!("exp2f({x})"),
            UnaryOp::Sin => format!("sinf({x})"),
            UnaryOp::Sqrt => format!("sqrtf({x})"),
            UnaryOp::Recip => format!("(1.0f / {x})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Unary(pub UnaryOp);

impl Kernel for Unary {
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
    fn name(&self) -> String {
        format!("{:?}", self.0)
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        vec![vec![inputs[0].phys_len]]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], _: &DimValues) {
        let (x, out) = (inputs[0].data, &mut *outputs[0]);
        assert_eq!(x.len(), out.len(), "{:?}: buffer of {} for a view of {}", self.0, x.len(), out.len());
        let op = self.0;
        if out.len() < super::walk::PAR_THRESHOLD {
            out.iter_mut().zip(x).for_each(|(o, &v)| *o = op.apply(v));
        } else {
            use rayon::prelude::*;
            out.par_chunks_mut(8192).zip(x.par_chunks(8192)).for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &v)| *o = op.apply(v)));
        }
    }
    fn cost(&self, inputs: &[View], _: &[Vec<usize>]) -> Cost {
        let n = inputs[0].phys_len as f64;
        Cost { flops: n, bytes: 8.0 * n }
    }
}

impl CudaKernel for Unary {
    fn prefix(&self) -> &'static str {
        "unary"
    }
    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }
    fn body(&self) -> String {
        format!("  GRID_STRIDE(i, meta[0]) out0[i] = {};\n", self.0.cuda("in0[i]"))
    }
    fn meta(&self, _: &[View], out_shapes: &[Vec<usize>], _: &DimValues) -> Result<Call, String> {
        let n = out_len(out_shapes, 0);
        Ok(unless_empty(vec![n as i64], elementwise(n), out_shapes))
    }
}
