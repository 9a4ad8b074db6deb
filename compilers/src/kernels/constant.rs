//! Scalar constants: a float, or a dimension expression evaluated per run.

use luminal::prelude::symbolic::Expression;

use crate::kernel::{Arg, Kernel};
use crate::view::{eval, DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub enum Constant {
    Float(f32),
    Dim(Expression),
}

impl Kernel for Constant {
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
