//! Append new keys or values to a preallocated cache, in place.

use luminal::prelude::symbolic::Expression;

use super::walk::for_each_index;
use crate::kernel::{Arg, Cost, Kernel};
use crate::view::{eval, DimValues, View};

/// inputs: cache [..., C, ...] (updated in place), new [..., S, ...];
/// writes `new` at positions `[pos, pos + S)` of `axis`. The output is the cache.
#[derive(Clone, Debug, PartialEq)]
pub struct KvWrite {
    pub axis: usize,
    pub pos: Expression,
}

impl Kernel for KvWrite {
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
        let pos = eval(&self.pos, dims, &mut vec![]);
        let cap = cache_view.shape[self.axis];
        let len = new.view.shape[self.axis];
        assert!(pos + len <= cap, "KvWrite: positions {pos}..{} exceed the cache's {cap}", pos + len);
        let cache = &mut *outputs[0];
        let last = new.view.rank - 1;
        if new.view.padded || cache_view.padded || self.axis == last || cache_view.strides[last] != 1 {
            let mut at = vec![0usize; cache_view.rank];
            for_each_index(new.view.dims(), |_, idx| {
                at.copy_from_slice(idx);
                at[self.axis] += pos;
                let dst = cache_view.index(&at).expect("cache views are not padded");
                cache[dst] = new.view.index(idx).map_or(0.0, |j| new.data[j]);
            });
            return;
        }
        // copy whole rows of the last dim
        let dims = new.view.dims();
        let width = dims[last];
        let ns = new.view.strides[last];
        for_each_index(&dims[..last], |_, idx| {
            let mut src = new.view.offset;
            let mut dst = cache_view.offset + (pos as isize) * cache_view.strides[self.axis];
            for (d, &i) in idx.iter().enumerate() {
                src += i as isize * new.view.strides[d];
                dst += i as isize * cache_view.strides[d];
            }
            let out = &mut cache[dst as usize..][..width];
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
