//! Scalar constants: a float, or a dimension expression evaluated per run.

use luminal::prelude::symbolic::Expression;

use crate::cuda::source::{f32_word, Call, CudaKernel, Launch};
use crate::kernel::{Arg, Kernel};
use crate::view::{eval, DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub enum Constant {
    Float(f32),
    Dim(Expression),
}

impl Kernel for Constant {
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
    fn name(&self) -> String {
        match self {
            Constant::Float(v) => format!("Const({v})"),
            Constant::Dim(e) => format!("Const({e:?})"),
        }
    }
    fn output_shapes(&self, _: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        vec![vec![1]]
    }
    fn run(&self, _: &[Arg], outputs: &mut [&mut [f32]], dims: &DimValues) {
        outputs[0][0] = match self {
            Constant::Float(v) => *v,
            Constant::Dim(e) => eval(e, dims, &mut vec![]) as f32,
        };
    }
}

impl CudaKernel for Constant {
    fn prefix(&self) -> &'static str {
        "constant"
    }
    fn arity(&self) -> (usize, usize) {
        (1, 0)
    }
    fn body(&self) -> String {
        "  if (blockIdx.x == 0 && threadIdx.x == 0) out0[0] = f32_of(meta[0]);\n".into()
    }
    fn meta(&self, _: &[View], _: &[Vec<usize>], dims: &DimValues) -> Result<Call, String> {
        let v = match self {
            Constant::Float(v) => *v,
            Constant::Dim(e) => eval(e, dims, &mut vec![]) as f32,
        };
        Ok(Some((vec![f32_word(v)], Launch { grid: 1, block: 1, shared: 0 })))
    }
}
