//! `Contiguous`: materialise a view (permute, expand, slice, pad) into a
//! row-major buffer.

use super::walk::{for_each_index, Walk};
use crate::kernel::{Arg, Cost, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct Copy;

impl Kernel for Copy {
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
            for_each_index(x.view.dims(), |i, idx| out[i] = x.view.index(idx).map_or(0.0, |j| x.data[j]));
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
