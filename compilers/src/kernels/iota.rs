//! `[offset, offset + len)` as f32: positions for causal masks.

use luminal::prelude::symbolic::Expression;

use crate::cuda::source::{elementwise, out_len, unless_empty, Call, CudaKernel};
use crate::kernel::{Arg, GradRule, Kernel};
use crate::view::{eval, DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct Iota {
    pub len: Expression,
    pub offset: Expression,
}

impl Kernel for Iota {
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
    fn name(&self) -> String {
        format!("Iota({:?}+{:?})", self.len, self.offset)
    }
    fn grad_rule(&self) -> GradRule {
        GradRule::Zero
    }
    fn output_shapes(&self, _: &[View], dims: &DimValues) -> Vec<Vec<usize>> {
        vec![vec![eval(&self.len, dims, &mut vec![])]]
    }
    fn run(&self, _: &[Arg], outputs: &mut [&mut [f32]], dims: &DimValues) {
        let off = eval(&self.offset, dims, &mut vec![]);
        for (i, o) in outputs[0].iter_mut().enumerate() {
            *o = (off + i) as f32;
        }
    }
}

impl CudaKernel for Iota {
    fn prefix(&self) -> &'static str {
        "iota"
    }
    fn arity(&self) -> (usize, usize) {
        (1, 0)
    }
    fn body(&self) -> String {
        "  GRID_STRIDE(i, meta[0]) out0[i] = (float)(meta[1] + i);\n".into()
    }
    fn meta(&self, _: &[View], out_shapes: &[Vec<usize>], dims: &DimValues) -> Result<Call, String> {
        let n = out_len(out_shapes, 0);
        let m = vec![n as i64, eval(&self.offset, dims, &mut vec![]) as i64];
        Ok(unless_empty(m, elementwise(n), out_shapes))
    }
}
