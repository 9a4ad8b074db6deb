//! `[offset, offset + len)` as f32: positions for causal masks.

use luminal::prelude::symbolic::Expression;

use crate::kernel::{Arg, GradRule, Kernel};
use crate::view::{eval, DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct Iota {
    pub len: Expression,
    pub offset: Expression,
}

impl Kernel for Iota {
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
