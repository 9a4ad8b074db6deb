//! Top-k selection mask over the last axis (MoE routing): 1.0 where an entry
//! is among the k largest of its row, else 0.0. Ties go to the lower index.
//! Not differentiable: gradients flow through the probabilities it masks.

use super::row_program::load_row;
use super::walk::unravel;
use crate::cuda::source::{elementwise, push_view, unless_empty, Call, CudaKernel};
use crate::kernel::{Arg, GradRule, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct TopKMask {
    pub k: usize,
}

impl Kernel for TopKMask {
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
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

impl CudaKernel for TopKMask {
    fn prefix(&self) -> &'static str {
        "topk"
    }
    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }
    fn body(&self) -> String {
        format!(
            "  const i64 e = meta[1]; const V* v = VIEW(meta, 2);
  GRID_STRIDE(r, meta[0]) {{
    float* o = out0 + r * e;
    for (i64 j = 0; j < e; ++j) o[j] = 0.0f;
    for (int n = 0; n < {k} && n < e; ++n) {{
      i64 best = -1; float bv = 0.0f;
      for (i64 j = 0; j < e; ++j) {{
        float x = ld(in0, v, r * e + j);
        if (o[j] == 0.0f && (best < 0 || x > bv)) {{ best = j; bv = x; }}
      }}
      o[best] = 1.0f;
    }}
  }}
",
            k = self.k
        )
    }
    fn meta(&self, views: &[View], out_shapes: &[Vec<usize>], _: &DimValues) -> Result<Call, String> {
        let e = *views[0].dims().last().unwrap();
        let rows = views[0].numel() / e.max(1);
        let mut m = vec![rows as i64, e as i64];
        push_view(&mut m, &views[0]);
        Ok(unless_empty(m, elementwise(rows), out_shapes))
    }
}
