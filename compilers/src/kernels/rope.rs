//! The rotary embedding as one kernel: `x cos + rotate_half(x) sin` over
//! `[b, heads, s, D]`, one pass per row, `rotate_half(x) = [-x2, x1]`.
//!
//! The builder's primops for it (two slices, a negation, a concat, two
//! products and a sum) become three kernels whose rows are `D` values long
//! (32 in minimind), where the per-row cost of a row program outweighs its
//! arithmetic: ~0.3 ms per tensor at 256 tokens, 8% of a prefill. The
//! `RopeFusion` pass makes them this kernel on the CPU under full fusion;
//! causal attention without a cache rotates q and k as it reads them
//! ([`super::causal_attention`]), with these same tables.
//!
//! inputs: `x [b, heads, s, D]` (any strides, no padding), then `cos` and
//! `sin`: `[s, D]` shared by the batch, or `[b, s, D]`, one table per
//! batch row (generation, where each sequence has its own positions).
//! Output: `[b, heads, s, D]`, contiguous.

use rayon::prelude::*;

use super::rotary::{pack, Tables};
use crate::kernel::{Arg, Cost, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct Rope;

impl Kernel for Rope {
    fn name(&self) -> String {
        "Rope".into()
    }
    fn fused_from(&self) -> Vec<String> {
        vec!["Slice x2, Mul (-1), Concat (rotate_half)".into(), "Mul (cos)".into(), "Mul (sin)".into(), "Add".into()]
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        vec![inputs[0].dims().to_vec()]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], _: &DimValues) {
        let x = &inputs[0];
        assert!(x.view.rank == 4 && !x.view.padded, "rotary embedding: x must be an unpadded [b, heads, s, D] view");
        let [b, h, s, d] = [x.view.shape[0], x.view.shape[1], x.view.shape[2], x.view.shape[3]];
        let per_row = inputs[1].view.rank == 3;
        fn batch_row<'a>(t: &Arg<'a>, bb: usize) -> Arg<'a> {
            let mut view = t.view.without(0);
            view.offset += bb as isize * t.view.strides[0];
            Arg::f32(t.data, view)
        }
        let tables: Vec<Tables> = if per_row {
            (0..b).map(|bb| Tables::new(&batch_row(&inputs[1], bb), &batch_row(&inputs[2], bb), s, d)).collect()
        } else {
            vec![Tables::new(&inputs[1], &inputs[2], s, d)]
        };
        // one (batch, head) at a time: its s rows of the output, rotated as
        // causal attention packs its rows
        let head = |(t, out): (usize, &mut [f32])| {
            let table = &tables[if per_row { t / h } else { 0 }];
            pack(x, (t / h, t % h), 1, (0, s), Some(table), out)
        };
        let out = &mut *outputs[0];
        if out.is_empty() {
            return;
        }
        // (one thread below ~1k tokens: waking the pool cost more than it saved)
        if out.len() >= 1 << 18 {
            out.par_chunks_mut(s * d).enumerate().for_each(head);
        } else {
            out.chunks_mut(s * d).enumerate().for_each(head);
        }
    }
    fn cost(&self, inputs: &[View], _: &[Vec<usize>]) -> Cost {
        let n = inputs[0].numel();
        Cost { flops: 3.0 * n as f64, bytes: 8.0 * n as f64 }
    }
}
