//! Sum and max over one axis of a strided view, writing a contiguous output
//! with that axis removed.

use rayon::prelude::*;

use super::walk::{for_each_index, unravel, Walk};
use crate::cuda::source::{elementwise, out_len, push_view, unless_empty, Call, CudaKernel};
use crate::kernel::{Arg, Cost, Kernel};
use crate::view::{contiguous_strides, DimValues, View};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
}

impl ReduceOp {
    /// The value of a reduction over nothing.
    pub fn identity(self) -> f32 {
        match self {
            ReduceOp::Sum => 0.0,
            ReduceOp::Max => f32::NEG_INFINITY,
        }
    }
    #[inline(always)]
    pub fn combine(self, acc: f32, v: f32) -> f32 {
        match self {
            ReduceOp::Sum => acc + v,
            ReduceOp::Max => acc.max(v),
        }
    }
    /// The reduction of a contiguous run (vectorised).
    #[inline(always)]
    pub fn of(self, run: &[f32]) -> f32 {
        match self {
            ReduceOp::Sum => sum(run),
            ReduceOp::Max => max(run),
        }
    }
    /// `acc[i] = combine(acc[i], src[i])` for every i.
    pub fn accumulate(self, acc: &mut [f32], src: &[f32]) {
        match self {
            ReduceOp::Sum => acc.iter_mut().zip(src).for_each(|(a, &v)| *a += v),
            ReduceOp::Max => acc.iter_mut().zip(src).for_each(|(a, &v)| *a = a.max(v)),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Reduce {
    pub op: ReduceOp,
    pub axis: usize,
}

impl Kernel for Reduce {
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
    fn name(&self) -> String {
        format!("{:?}Reduce({})", self.op, self.axis)
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        let mut s = inputs[0].dims().to_vec();
        s.remove(self.axis);
        vec![s]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], _: &DimValues) {
        let x = &inputs[0];
        let out = &mut *outputs[0];
        let k = x.view.shape[self.axis];
        let ks = x.view.strides[self.axis];
        let init = self.op.identity();
        if x.view.padded {
            // Padding reads 0 for a sum and is skipped by a max (as in luminal).
            let rest = x.view.without(self.axis);
            let mut full = vec![0usize; x.view.rank];
            for_each_index(rest.dims(), |i, idx| {
                let mut acc = init;
                for j in 0..k {
                    full[..self.axis].copy_from_slice(&idx[..self.axis]);
                    full[self.axis] = j;
                    full[self.axis + 1..].copy_from_slice(&idx[self.axis..]);
                    if let Some(p) = x.view.index(&full) {
                        acc = self.op.combine(acc, x.data[p]);
                    }
                }
                out[i] = acc;
            });
            return;
        }
        // a kept dim lies contiguous: add up whole runs along it (RMSNorm's
        // weight gradient sums a [b, s, h] product over b and s, read as
        // [h, b, s]); element by element, each sum would stride through memory
        if ks != 1 {
            if let Some(lane) = (0..x.view.rank).find(|&d| d != self.axis && x.view.strides[d] == 1 && x.view.shape[d] > 1) {
                return self.reduce_runs(x, lane, out);
            }
        }
        let rest = x.view.without(self.axis);
        let walk = Walk::new(rest.dims(), [&rest]);
        let [rs] = walk.inner();
        let (data, op) = (x.data, self.op);
        walk.for_rows(out, |row, [start]| {
            if ks == 1 || rs != 1 {
                // each output element reduces a (contiguous, when ks == 1) run
                for (i, o) in row.iter_mut().enumerate() {
                    let base = start + i as isize * rs;
                    *o = if ks == 1 {
                        op.of(&data[base as usize..][..k])
                    } else {
                        (0..k).fold(init, |acc, j| op.combine(acc, data[(base + j as isize * ks) as usize]))
                    };
                }
            } else {
                // rows are contiguous in the input: accumulate row by row
                row.fill(init);
                for j in 0..k {
                    op.accumulate(row, &data[(start + j as isize * ks) as usize..][..row.len()]);
                }
            }
        });
    }
    fn cost(&self, inputs: &[View], _: &[Vec<usize>]) -> Cost {
        let n = inputs[0].numel() as f64;
        Cost { flops: n, bytes: 4.0 * n }
    }
}

impl Reduce {
    /// Reduce an unpadded view whose kept dim `lane` has stride 1: for each
    /// index of the other kept dims (in parallel), accumulate the runs along
    /// `lane` over the reduced axis, in the same order as element by element.
    fn reduce_runs(&self, x: &Arg, lane: usize, out: &mut [f32]) {
        let v = &x.view;
        let dims = v.dims();
        let (k, ks, len) = (dims[self.axis], v.strides[self.axis], dims[lane]);
        let kept: Vec<usize> = (0..v.rank).filter(|&d| d != self.axis).collect();
        let ostr = contiguous_strides(&kept.iter().map(|&d| dims[d]).collect::<Vec<_>>());
        let lane_out = ostr[kept.iter().position(|&d| d == lane).unwrap()];
        // the other kept dims: (size, input stride, output stride)
        let others: Vec<(usize, isize, usize)> =
            kept.iter().enumerate().filter(|&(_, &d)| d != lane).map(|(i, &d)| (dims[d], v.strides[d], ostr[i])).collect();
        let sizes: Vec<usize> = others.iter().map(|o| o.0).collect();
        let op = self.op;
        let runs: Vec<(usize, Vec<f32>)> = (0..sizes.iter().product())
            .into_par_iter()
            .map(|o| {
                let mut idx = vec![0; sizes.len()];
                unravel(o, &sizes, &mut idx);
                let base = v.offset + idx.iter().zip(&others).map(|(&i, o)| i as isize * o.1).sum::<isize>();
                let mut acc = vec![op.identity(); len];
                for j in 0..k {
                    op.accumulate(&mut acc, &x.data[(base + j as isize * ks) as usize..][..len]);
                }
                (idx.iter().zip(&others).map(|(&i, o)| i * o.2).sum(), acc)
            })
            .collect();
        for (start, acc) in runs {
            acc.iter().enumerate().for_each(|(l, &a)| out[start + l * lane_out] = a);
        }
    }
}

/// Sum with 8 independent accumulators so the loop vectorises.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    for &v in tail {
        s += v;
    }
    s
}

/// Largest element (NaN ignored, as `f32::max` does), with 8 independent
/// maxima: one running maximum is a chain of dependent instructions; eight
/// vectorise. The result is the same, since max is exact in any order.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &v in tail {
        m = m.max(v);
    }
    m
}

impl CudaKernel for Reduce {
    fn prefix(&self) -> &'static str {
        "reduce"
    }
    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }
    fn body(&self) -> String {
        let (init, step) = match self.op {
            ReduceOp::Sum => ("0.0f", "acc += x;"),
            ReduceOp::Max => ("-INFINITY", "acc = fmaxf(acc, x);"),
        };
        format!(
            "  const i64 axis = meta[1]; const V* v = VIEW(meta, 2);
  GRID_STRIDE(o, meta[0]) {{
    i64 idx[MAXR], rest = o;
    for (int d = (int)v->rank - 1; d >= 0; --d) {{ if (d == axis) continue; idx[d] = rest % v->shape[d]; rest /= v->shape[d]; }}
    float acc = {init};
    for (i64 j = 0; j < v->shape[axis]; ++j) {{ idx[axis] = j; float x = ldi(in0, v, idx); {step} }}
    out0[o] = acc;
  }}
"
        )
    }
    fn meta(&self, views: &[View], out_shapes: &[Vec<usize>], _: &DimValues) -> Result<Call, String> {
        let n = out_len(out_shapes, 0);
        let mut m = vec![n as i64, self.axis as i64];
        push_view(&mut m, &views[0]);
        Ok(unless_empty(m, elementwise(n), out_shapes))
    }
}
