//! Top-k selection mask over the last axis (MoE routing): 1.0 where an entry
//! is among the k largest of its row, else 0.0. Ties go to the lower index.
//! Not differentiable: gradients flow through the probabilities it masks.

use crate::kernel::{Arg, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct TopKMask {
    pub k: usize,
}

impl Kernel for TopKMask {
    fn name(&self) -> String {
        format!("TopKMask({})", self.k)
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        vec![inputs[0].dims().to_vec()]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], _: &DimValues) {
        let x = &inputs[0];
        let dims = x.view.dims();
        let e = *dims.last().unwrap();
        let out = &mut *outputs[0];
        let rows = out.len() / e.max(1);
        let mut idx = vec![0usize; dims.len()];
        let mut row = vec![0f32; e];
        for r in 0..rows {
            let mut rest = r;
            for d in (0..dims.len() - 1).rev() {
                idx[d] = rest % dims[d];
                rest /= dims[d];
            }
            for (j, v) in row.iter_mut().enumerate() {
                idx[dims.len() - 1] = j;
                *v = x.view.index(&idx).map_or(0.0, |p| x.data[p]);
            }
            let o = &mut out[r * e..][..e];
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
