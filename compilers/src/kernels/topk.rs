//! Top-k selection mask over the last axis (MoE routing): 1.0 where an entry
//! is among the k largest of its row, else 0.0. Ties go to the lower index.
//! Not differentiable: gradients flow through the probabilities it masks.

use super::row_program::load_row;
use super::walk::unravel;
use crate::kernel::{Arg, GradRule, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct TopKMask {
    pub k: usize,
}

impl Kernel for TopKMask {
    fn name(&self) -> String {
        format!("TopKMask({})", self.k)
    }
    /// a selection mask: no gradient flows through it
    fn grad_rule(&self) -> GradRule {
        GradRule::Zero
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        vec![inputs[0].dims().to_vec()]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], _: &DimValues) {
        let x = &inputs[0];
        let dims = x.view.dims();
        let e = *dims.last().unwrap();
        let out = &mut *outputs[0];
        let outer = &dims[..dims.len() - 1];
        let mut idx = vec![0usize; outer.len()];
        let mut row = vec![0f32; e];
        for (r, o) in out.chunks_mut(e.max(1)).enumerate() {
            unravel(r, outer, &mut idx);
            load_row(x, &idx, &mut row);
            o.fill(0.0);
            for _ in 0..self.k.min(e) {
                let mut best = usize::MAX;
                for j in 0..e {
                    if o[j] == 0.0 && (best == usize::MAX || row[j] > row[best]) {
                        best = j;
                    }
                }
                o[best] = 1.0;
            }
        }
    }
}
