//! Embedding lookup: rows of a table picked by ids (ids arrive as f32, as
//! every luminal tensor is f32; exact for vocabularies below 2^24).

use super::walk::for_each_index;
use crate::cuda::source::{elementwise, push_view, unless_empty, Call, CudaKernel, VIEW_WORDS};
use crate::kernel::{Arg, Cost, GradRule, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct Gather;

impl Kernel for Gather {
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
    fn name(&self) -> String {
        "Gather".into()
    }
    /// the table's gradient: [`ScatterAdd`]
    fn grad_rule(&self) -> GradRule {
        GradRule::Gather
    }
    /// inputs: table [V, D], ids [...]; output [..., D]
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        let mut s = inputs[1].dims().to_vec();
        s.push(inputs[0].shape[1]);
        vec![s]
    }
    /// (a packed table is a tied LM head's: its rows come out as their values)
    fn reads_packed(&self, input: usize) -> bool {
        input == 0
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], _: &DimValues) {
        let (table, ids) = (&inputs[0], &inputs[1]);
        let (vocab, d) = (table.view.shape[0], table.view.shape[1]);
        let (rs, cs) = (table.view.strides[0], table.view.strides[1]);
        let out = &mut *outputs[0];
        for_each_index(ids.view.dims(), |i, idx| {
            let id = ids.view.index(idx).map_or(0.0, |j| ids.data[j]);
            let row = id as usize;
            assert!(id >= 0.0 && row < vocab && id == row as f32, "Gather: id {id} is not a row of a table with {vocab} rows");
            let dst = &mut out[i * d..][..d];
            let base = table.view.offset + row as isize * rs;
            if let Some(p) = table.packed {
                for (c, o) in dst.iter_mut().enumerate() {
                    *o = p.value((base + c as isize * cs) as usize);
                }
            } else if cs == 1 {
                dst.copy_from_slice(&table.data[base as usize..][..d]);
            } else {
                for (c, o) in dst.iter_mut().enumerate() {
                    *o = table.data[(base + c as isize * cs) as usize];
                }
            }
        });
    }
    fn cost(&self, _: &[View], outputs: &[Vec<usize>]) -> Cost {
        Cost { flops: 0.0, bytes: 8.0 * outputs[0].iter().product::<usize>() as f64 }
    }
}

/// The backward of `Gather`: add rows of `grad` into a zeroed [V, D] table at
/// the rows named by ids (ids used twice accumulate).
#[derive(Clone, Debug, PartialEq)]
pub struct ScatterAdd {
    pub vocab: luminal::prelude::symbolic::Expression,
}

impl Kernel for ScatterAdd {
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
    fn name(&self) -> String {
        "ScatterAdd".into()
    }
    /// inputs: grad [..., D], ids [...]; output [V, D]
    fn output_shapes(&self, inputs: &[View], dims: &DimValues) -> Vec<Vec<usize>> {
        let g = inputs[0].dims();
        vec![vec![crate::view::eval(&self.vocab, dims, &mut vec![]), g[g.len() - 1]]]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], _: &DimValues) {
        let (grad, ids) = (&inputs[0], &inputs[1]);
        let out = &mut *outputs[0];
        out.fill(0.0);
        let d = *grad.view.dims().last().unwrap();
        let vocab = out.len() / d.max(1);
        let mut full = vec![0usize; grad.view.rank];
        for_each_index(ids.view.dims(), |_, idx| {
            let id = ids.view.index(idx).map_or(0.0, |j| ids.data[j]);
            let row = id as usize;
            assert!(id >= 0.0 && row < vocab, "ScatterAdd: id {id} outside {vocab} rows");
            full[..idx.len()].copy_from_slice(idx);
            for c in 0..d {
                full[idx.len()] = c;
                if let Some(p) = grad.view.index(&full) {
                    out[row * d + c] += grad.data[p];
                }
            }
        });
    }
}

impl CudaKernel for Gather {
    fn prefix(&self) -> &'static str {
        "gather"
    }
    fn arity(&self) -> (usize, usize) {
        (1, 2)
    }
    fn body(&self) -> String {
        "  const i64 d = meta[1]; const V* t = VIEW(meta, 2); const V* ids = VIEW(meta, 2 + VW);
  GRID_STRIDE(e, meta[0] * d) {
    i64 i = e / d, c = e % d;
    float id = ld(in1, ids, i);
    i64 r = (i64)id;
    out0[e] = (id < 0.0f || r >= t->shape[0]) ? NAN : in0[t->off + r * t->st[0] + c * t->st[1]];
  }
"
        .replace("VW", &VIEW_WORDS.to_string())
    }
    fn meta(&self, views: &[View], out_shapes: &[Vec<usize>], _: &DimValues) -> Result<Call, String> {
        let d = views[0].shape[1];
        let mut m = vec![views[1].numel() as i64, d as i64];
        push_view(&mut m, &views[0]);
        push_view(&mut m, &views[1]);
        Ok(unless_empty(m, elementwise(views[1].numel() * d), out_shapes))
    }
}

impl CudaKernel for ScatterAdd {
    fn prefix(&self) -> &'static str {
        "scatter_add"
    }
    fn arity(&self) -> (usize, usize) {
        (1, 2)
    }
    fn body(&self) -> String {
        "  const i64 d = meta[1], vocab = meta[2]; const V* g = VIEW(meta, 3); const V* ids = VIEW(meta, 3 + VW);
  GRID_STRIDE(e, meta[0] * d) {
    i64 i = e / d, c = e % d;
    i64 r = (i64)ld(in1, ids, i);
    if (r >= 0 && r < vocab) atomicAdd(&out0[r * d + c], ld(in0, g, e));
  }
"
        .replace("VW", &VIEW_WORDS.to_string())
    }
    fn meta(&self, views: &[View], out_shapes: &[Vec<usize>], _: &DimValues) -> Result<Call, String> {
        let d = *out_shapes[0].last().unwrap();
        let mut m = vec![views[1].numel() as i64, d as i64, out_shapes[0][0] as i64];
        push_view(&mut m, &views[0]);
        push_view(&mut m, &views[1]);
        Ok(unless_empty(m, elementwise(views[1].numel() * d), out_shapes))
    }
    fn zeroes_output(&self) -> bool {
        true
    }
}
