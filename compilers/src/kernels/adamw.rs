//! The AdamW update as one in-place kernel per parameter, with gradient
//! accumulation and global-norm clipping.
//!
//! inputs: param, m, v, acc (all updated in place), g (= acc + this step's
//! gradient), the global squared norm of every g, and [lr, step, apply].
//! With `apply` = 0 the gradient is only accumulated (`acc = g`); with 1,
//! `g` is clipped to `max_norm` over all parameters, the update is made as
//! `torch.optim.AdamW` does, and `acc` is cleared. A step whose global norm
//! is not finite changes nothing but `acc`.

use crate::kernel::{Arg, Cost, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// global gradient-norm clip (0: none)
    pub max_norm: f32,
}

impl Kernel for AdamW {
    fn name(&self) -> String {
        "AdamW".into()
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        (0..4).map(|i| inputs[i].dims().to_vec()).collect()
    }
    fn inplace(&self) -> Vec<(usize, usize)> {
        vec![(0, 0), (1, 1), (2, 2), (3, 3)]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], _: &DimValues) {
        let g = &inputs[4];
        assert!(g.view.is_plain(), "AdamW: gradient must be contiguous");
        let gsq = inputs[5].data[inputs[5].view.offset as usize];
        let scalar = |i: usize| inputs[i].data[inputs[i].view.offset as usize];
        let (lr, step, apply) = (scalar(6), scalar(7), scalar(8));
        let [p, m, v, acc] = outputs else { panic!("AdamW has four outputs") };
        let g = &g.data[..p.len()];
        if apply == 0.0 {
            acc.copy_from_slice(g);
            return;
        }
        let norm = gsq.sqrt();
        if !norm.is_finite() {
            // a NaN/inf gradient would poison the weights: skip the update
            // (the caller sees the norm and stops)
            acc.fill(0.0);
            return;
        }
        let clip = if self.max_norm > 0.0 { (self.max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
        let bc1 = 1.0 - self.beta1.powf(step);
        let bc2_sqrt = (1.0 - self.beta2.powf(step)).sqrt();
        let step_size = lr / bc1;
        let decay = 1.0 - lr * self.weight_decay;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let update = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            for i in 0..p.len() {
                let gi = g[i] * clip;
                p[i] *= decay;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                p[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
            }
        };
        if p.len() >= 1 << 16 && rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            let c = 1 << 14;
            p.par_chunks_mut(c)
                .zip(m.par_chunks_mut(c))
                .zip(v.par_chunks_mut(c))
                .zip(g.par_chunks(c))
                .for_each(|(((p, m), v), g)| update(p, m, v, g));
        } else {
            update(p, m, v, g);
        }
        acc.fill(0.0);
    }
    fn cost(&self, inputs: &[View], _: &[Vec<usize>]) -> Cost {
        let n = inputs[0].numel() as f64;
        Cost { flops: 12.0 * n, bytes: 4.0 * 9.0 * n }
    }
}
