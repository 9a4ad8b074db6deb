//! The AdamW update as one in-place kernel per parameter, with gradient
//! accumulation and global-norm clipping.
//!
//! inputs: param, m, v, acc (all updated in place), g (= acc + this step's
//! gradient; contiguous, or a slice of the flat buffer of an `AllReduce`),
//! the global squared norm of every g, and [lr, step, apply].
//! With `apply` = 0 the gradient is only accumulated (`acc = g`); with 1,
//! `g` is clipped to `max_norm` over all parameters, the update is made as
//! `torch.optim.AdamW` does, and `acc` is cleared. A step whose global norm
//! is not finite changes nothing but `acc`.

use crate::cuda::source::{elementwise, push_view, unless_empty, Call, CudaKernel, VIEW_WORDS};
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
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
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
        let start = g.view.contiguous_run().expect("AdamW: the gradient must be contiguous");
        let gsq = inputs[5].data[inputs[5].view.offset as usize];
        let scalar = |i: usize| inputs[i].data[inputs[i].view.offset as usize];
        let (lr, step, apply) = (scalar(6), scalar(7), scalar(8));
        let [p, m, v, acc] = outputs else { panic!("AdamW has four outputs") };
        let g = &g.data[start..start + p.len()];
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

impl CudaKernel for AdamW {
    fn prefix(&self) -> &'static str {
        "adamw"
    }
    fn arity(&self) -> (usize, usize) {
        (4, 9)
    }
    /// outputs p, m, v, acc are inputs 0-3 updated in place; in4 the
    /// gradient (contiguous), in5 its squared norm, in6-in8 the scalars lr,
    /// step and apply
    fn body(&self) -> String {
        let f = |x: f32| format!("{:?}f", x);
        format!(
            "  const V* gs = VIEW(meta, 1);
  const float lr = in6[VIEW(meta, 1 + {vw})->off], step = in7[VIEW(meta, 1 + 2 * {vw})->off], apply = in8[VIEW(meta, 1 + 3 * {vw})->off];
  const float norm = sqrtf(in5[gs->off]);
  const float b1 = {b1}, b2 = {b2}, eps = {eps}, wd = {wd}, max_norm = {mn};
  const float clip = max_norm > 0.0f ? fminf(max_norm / (norm + 1e-6f), 1.0f) : 1.0f;
  const float bc1 = 1.0f - powf(b1, step), bc2_sqrt = sqrtf(1.0f - powf(b2, step));
  const float step_size = lr / bc1, decay = 1.0f - lr * wd;
  GRID_STRIDE(i, meta[0]) {{
    if (apply == 0.0f) {{ out3[i] = in4[i]; continue; }}
    if (isfinite(norm)) {{
      float g = in4[i] * clip;
      out0[i] *= decay;
      out1[i] = b1 * out1[i] + (1.0f - b1) * g;
      out2[i] = b2 * out2[i] + (1.0f - b2) * g * g;
      out0[i] -= step_size * out1[i] / (sqrtf(out2[i]) / bc2_sqrt + eps);
    }}
    out3[i] = 0.0f;
  }}
",
            vw = VIEW_WORDS,
            b1 = f(self.beta1),
            b2 = f(self.beta2),
            eps = f(self.eps),
            wd = f(self.weight_decay),
            mn = f(self.max_norm)
        )
    }
    fn meta(&self, views: &[View], out_shapes: &[Vec<usize>], _: &DimValues) -> Result<Call, String> {
        if !views[4].is_plain() {
            return Err("AdamW: the gradient must be contiguous".into());
        }
        let mut m = vec![views[0].numel() as i64];
        for v in &views[5..9] {
            push_view(&mut m, v);
        }
        Ok(unless_empty(m, elementwise(views[0].numel()), out_shapes))
    }
}
