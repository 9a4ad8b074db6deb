//! `AllReduce`: the collective node of a data-parallel training graph. It
//! gathers every parameter's gradient into one flat buffer and, on a run
//! that applies the optimizer step, sums that buffer over the ranks of its
//! communicator with one call (one bucket: a handful of large messages beat
//! a hundred small ones). The optimizer then reads its slices.
//!
//! inputs: the gradients (any views), then the `apply` scalar; output: the
//! flat buffer, gradients in input order.

use super::contiguous::Contiguous;
use crate::collective::Comm;
use crate::kernel::{Arg, Cost, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct AllReduce {
    pub comm: Comm,
}

impl Kernel for AllReduce {
    fn name(&self) -> String {
        format!("AllReduce({} ranks)", self.comm.size())
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        vec![vec![inputs[..inputs.len() - 1].iter().map(|v| v.numel()).sum()]]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], dims: &DimValues) {
        let (grads, apply) = inputs.split_at(inputs.len() - 1);
        let out = &mut *outputs[0];
        let mut at = 0;
        for g in grads {
            let n = g.view.numel();
            Contiguous.run(std::slice::from_ref(g), &mut [&mut out[at..at + n]], dims);
            at += n;
        }
        // (between the steps of one accumulation each rank keeps its own
        // sum; only the step that updates the weights needs the total)
        if apply[0].data[apply[0].view.offset as usize] != 0.0 {
            self.comm.sum_f32(out);
        }
    }
    fn cost(&self, inputs: &[View], _: &[Vec<usize>]) -> Cost {
        let n: usize = inputs.iter().map(|v| v.numel()).sum();
        Cost { flops: 0.0, bytes: 8.0 * n as f64 }
    }
}
