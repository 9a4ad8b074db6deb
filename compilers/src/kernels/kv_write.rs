//! Write new keys or values into a preallocated cache, in place, each
//! batch row into its own cache row at its own positions: one graph serves
//! a single sequence and a batch of sequences at different lengths
//! (continuous batching).

use luminal::prelude::symbolic::Expression;

use super::walk::for_each_index;
use crate::cuda::source::{elementwise, push_view, unless_empty, Call, CudaKernel, VIEW_WORDS};
use crate::kernel::{Arg, Cost, Kernel};
use crate::view::{eval, DimValues, View};

/// inputs: cache `[R, ..., C, ...]` (updated in place), new `[b, ..., S, ...]`
/// and positions `[b, S]` (whole numbers as f32). Batch row `r` goes to
/// cache row `first_row + r`; its element `i` along `axis` to cache
/// position `positions[r, i]`. The output is the cache.
#[derive(Clone, Debug, PartialEq)]
pub struct KvWrite {
    pub axis: usize,
    /// the cache row of batch row 0
    pub first_row: Expression,
}

impl KvWrite {
    /// The cache row of batch row 0, checked against the cache's rows.
    pub fn first_row(&self, cache: &View, new: &View, dims: &DimValues) -> Result<usize, String> {
        let first = eval(&self.first_row, dims, &mut vec![]);
        if first + new.shape[0] > cache.shape[0] {
            return Err(format!("KvWrite: batch rows {first}..{} exceed the cache's {} rows", first + new.shape[0], cache.shape[0]));
        }
        Ok(first)
    }

    /// The cache position of each (batch row, new element), checked
    /// against the cache's rows and capacity.
    pub fn targets(&self, cache: &View, new: &View, positions: &Arg, dims: &DimValues) -> Result<(usize, Vec<usize>), String> {
        let first = self.first_row(cache, new, dims)?;
        let (b, s, cap) = (new.shape[0], new.shape[self.axis], cache.shape[self.axis]);
        if positions.view.dims() != [b, s] {
            return Err(format!("KvWrite: positions are {:?}, expected [{b}, {s}]", positions.view.dims()));
        }
        let mut pos = vec![usize::MAX; b * s];
        for_each_index(&[b, s], |k, idx| {
            let p = positions.view.index(idx).map_or(f32::NAN, |j| positions.data[j]);
            if p >= 0.0 && p < cap as f32 && p.fract() == 0.0 {
                pos[k] = p as usize;
            }
        });
        match pos.iter().position(|&p| p == usize::MAX) {
            Some(k) => Err(format!("KvWrite: the position of row {}, element {} is outside the cache's {cap}", k / s, k % s)),
            None => Ok((first, pos)),
        }
    }
}

impl Kernel for KvWrite {
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
    fn name(&self) -> String {
        "KvWrite".into()
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        vec![inputs[0].dims().to_vec()]
    }
    fn inplace(&self) -> Vec<(usize, usize)> {
        vec![(0, 0)]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], dims: &DimValues) {
        let (cache_view, new) = (inputs[0].view, &inputs[1]);
        // (sessions check positions before a run; a bad one here is a bug)
        let (first, pos) = self.targets(&cache_view, &new.view, &inputs[2], dims).unwrap_or_else(|e| panic!("{e}"));
        let s = new.view.shape[self.axis];
        let cache = &mut *outputs[0];
        let last = new.view.rank - 1;
        let target = |idx: &[usize], at: &mut [usize]| {
            at.copy_from_slice(idx);
            at[0] += first;
            at[self.axis] = pos[idx[0] * s + idx[self.axis]];
        };
        let mut at = vec![0usize; cache_view.rank];
        if new.view.padded || cache_view.padded || self.axis == last || self.axis == 0 || cache_view.strides[last] != 1 {
            for_each_index(new.view.dims(), |_, idx| {
                target(idx, &mut at);
                let dst = cache_view.index(&at).expect("cache views are not padded");
                cache[dst] = new.view.index(idx).map_or(0.0, |j| new.data[j]);
            });
            return;
        }
        // copy whole rows of the last dim
        let dims = new.view.dims();
        let width = dims[last];
        let ns = new.view.strides[last];
        let mut full = vec![0usize; last + 1];
        for_each_index(&dims[..last], |_, idx| {
            full[..last].copy_from_slice(idx);
            target(&full, &mut at);
            let src: isize = new.view.offset + idx.iter().enumerate().map(|(d, &i)| i as isize * new.view.strides[d]).sum::<isize>();
            let dst = cache_view.index(&at).expect("cache views are not padded");
            let out = &mut cache[dst..][..width];
            if ns == 1 {
                out.copy_from_slice(&new.data[src as usize..][..width]);
            } else {
                out.iter_mut().enumerate().for_each(|(j, o)| *o = new.data[(src + j as isize * ns) as usize]);
            }
        });
    }
    fn cost(&self, inputs: &[View], _: &[Vec<usize>]) -> Cost {
        Cost { flops: 0.0, bytes: 8.0 * inputs[1].numel() as f64 }
    }
}

impl CudaKernel for KvWrite {
    fn prefix(&self) -> &'static str {
        "kv_write"
    }
    fn arity(&self) -> (usize, usize) {
        (1, 3)
    }
    /// out0 is the cache (in0, updated in place); in1 the new rows; in2 the
    /// position of each (batch row, new element)
    fn body(&self) -> String {
        "  const i64 axis = meta[1], first = meta[2]; const V* c = VIEW(meta, 3); const V* nw = VIEW(meta, 3 + VW);
  const V* ps = VIEW(meta, 3 + 2 * VW);
  GRID_STRIDE(e, meta[0]) {
    i64 idx[MAXR];
    unravel(e, nw->shape, (int)nw->rank, idx);
    i64 pi[2] = {idx[0], idx[axis]};
    i64 pos = (i64)ldi(in2, ps, pi);
    i64 dst = c->off;
    for (int d = 0; d < (int)c->rank; ++d) dst += (d == axis ? pos : idx[d] + (d == 0 ? first : 0)) * c->st[d];
    out0[dst] = ld(in1, nw, e);
  }
"
        .replace("VW", &VIEW_WORDS.to_string())
    }
    fn meta(&self, views: &[View], out_shapes: &[Vec<usize>], dims: &DimValues) -> Result<Call, String> {
        // (positions stay on the device: sessions check them before a run)
        let first = self.first_row(&views[0], &views[1], dims)?;
        let mut m = vec![views[1].numel() as i64, self.axis as i64, first as i64];
        for v in &views[..3] {
            push_view(&mut m, v);
        }
        Ok(unless_empty(m, elementwise(views[1].numel()), out_shapes))
    }
}
