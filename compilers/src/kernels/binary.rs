//! Binary primops (Add, Mul, Mod, LessThan) over two strided views of the
//! same logical shape, writing a contiguous output. [`BinaryOp`] holds how
//! each computes on the CPU and as CUDA C.

use super::walk::{at, for_each_index, Walk};
use crate::cuda::source::{elementwise, out_len, push_view, unless_empty, Call, CudaKernel, VIEW_WORDS};
use crate::kernel::{Arg, Cost, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Mul,
    Mod,
    LessThan,
}

impl BinaryOp {
    #[inline(always)]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Mul => a * b,
            BinaryOp::Mod => a % b,
            BinaryOp::LessThan => (a < b) as u8 as f32,
        }
    }

    /// CUDA C for the op applied to the expressions `a` and `b`.
    pub fn cuda(self, a: &str, b: &str) -> String {
        match self {
            BinaryOp::Add => format!("({a} + {b})"),
            BinaryOp::Mul => format!("({a} * {b})"),
            BinaryOp::Mod => format!("fmodf({a}, {b})"),
            BinaryOp::LessThan => format!("({a} < {b} ? 1.0f : 0.0f)"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Binary(pub BinaryOp);

impl Kernel for Binary {
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
    fn name(&self) -> String {
        format!("{:?}", self.0)
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        assert_eq!(inputs[0].dims(), inputs[1].dims(), "{:?} of different shapes", self.0);
        vec![inputs[0].dims().to_vec()]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], _: &DimValues) {
        let (a, b) = (&inputs[0], &inputs[1]);
        let op = self.0;
        let out = &mut *outputs[0];
        if a.view.padded || b.view.padded {
            for_each_index(a.view.dims(), |i, idx| {
                let x = a.view.index(idx).map_or(0.0, |j| a.data[j]);
                let y = b.view.index(idx).map_or(0.0, |j| b.data[j]);
                out[i] = op.apply(x, y);
            });
            return;
        }
        let walk = Walk::new(a.view.dims(), [&a.view, &b.view]);
        let [sa, sb] = walk.inner();
        let (ad, bd) = (a.data, b.data);
        walk.for_rows(out, |row, [oa, ob]| match (sa, sb) {
            (1, 1) => {
                let (x, y) = (&ad[oa as usize..][..row.len()], &bd[ob as usize..][..row.len()]);
                for ((o, &x), &y) in row.iter_mut().zip(x).zip(y) {
                    *o = op.apply(x, y);
                }
            }
            (1, 0) => {
                let (x, y) = (&ad[oa as usize..][..row.len()], bd[ob as usize]);
                for (o, &x) in row.iter_mut().zip(x) {
                    *o = op.apply(x, y);
                }
            }
            (0, 1) => {
                let (x, y) = (ad[oa as usize], &bd[ob as usize..][..row.len()]);
                for (o, &y) in row.iter_mut().zip(y) {
                    *o = op.apply(x, y);
                }
            }
            _ => {
                for (i, o) in row.iter_mut().enumerate() {
                    *o = op.apply(at(ad, oa, sa, i), at(bd, ob, sb, i));
                }
            }
        });
    }
    fn cost(&self, inputs: &[View], _: &[Vec<usize>]) -> Cost {
        let n = inputs[0].numel() as f64;
        Cost { flops: n, bytes: 12.0 * n }
    }
}

impl CudaKernel for Binary {
    fn prefix(&self) -> &'static str {
        "binary"
    }
    fn arity(&self) -> (usize, usize) {
        (1, 2)
    }
    fn body(&self) -> String {
        let e = self.0.cuda("ld(in0, VIEW(meta, 1), i)", &format!("ld(in1, VIEW(meta, {}), i)", 1 + VIEW_WORDS));
        format!("  GRID_STRIDE(i, meta[0]) out0[i] = {e};\n")
    }
    fn meta(&self, views: &[View], out_shapes: &[Vec<usize>], _: &DimValues) -> Result<Call, String> {
        let n = out_len(out_shapes, 0);
        let mut m = vec![n as i64];
        push_view(&mut m, &views[0]);
        push_view(&mut m, &views[1]);
        Ok(unless_empty(m, elementwise(n), out_shapes))
    }
}
