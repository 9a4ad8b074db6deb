//! `Contiguous`: materialise a view (permute, expand, slice, pad) into a
//! row-major buffer.

use super::row_program::load_row;
use super::walk::{for_row_blocks, unravel, Walk};
use crate::cuda::source::{elementwise, out_len, push_view, unless_empty, Call, CudaKernel};
use crate::kernel::{Arg, Cost, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct Contiguous;

impl Kernel for Contiguous {
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
    fn name(&self) -> String {
        "Contiguous".into()
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        vec![inputs[0].dims().to_vec()]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], _: &DimValues) {
        let x = &inputs[0];
        let out = &mut *outputs[0];
        if x.view.padded {
            copy_padded(x, out);
            return;
        }
        let walk = Walk::new(x.view.dims(), [&x.view]);
        let [s] = walk.inner();
        let data = x.data;
        walk.for_rows(out, |row, [start]| match s {
            1 => row.copy_from_slice(&data[start as usize..][..row.len()]),
            0 => row.fill(data[start as usize]),
            _ => row.iter_mut().enumerate().for_each(|(i, o)| *o = data[(start + i as isize * s) as usize]),
        });
    }
    fn cost(&self, inputs: &[View], _: &[Vec<usize>]) -> Cost {
        Cost { flops: 0.0, bytes: 8.0 * inputs[0].numel() as f64 }
    }
}

/// A padded view (a slice's gradient, a concatenation), one row of the last
/// dim at a time: the valid part copied, the rest zero.
fn copy_padded(x: &Arg, out: &mut [f32]) {
    let dims = x.view.dims();
    let Some((&r, outer)) = dims.split_last() else {
        out[0] = x.view.index(&[]).map_or(0.0, |j| x.data[j]);
        return;
    };
    for_row_blocks(out, r, |first, block| {
        let mut idx = vec![0; outer.len()];
        for (k, row) in block.chunks_mut(r).enumerate() {
            unravel(first + k, outer, &mut idx);
            load_row(x, &idx, row);
        }
    });
}

impl CudaKernel for Contiguous {
    fn prefix(&self) -> &'static str {
        "copy"
    }
    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }
    fn body(&self) -> String {
        "  GRID_STRIDE(i, meta[0]) out0[i] = ld(in0, VIEW(meta, 1), i);\n".into()
    }
    fn meta(&self, views: &[View], out_shapes: &[Vec<usize>], _: &DimValues) -> Result<Call, String> {
        let n = out_len(out_shapes, 0);
        let mut m = vec![n as i64];
        push_view(&mut m, &views[0]);
        Ok(unless_empty(m, elementwise(n), out_shapes))
    }
}
