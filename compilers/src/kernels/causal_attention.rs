//! Causal attention for training, as two kernels that exist before autograd
//! runs (`passes::causal_attention` puts the first in place of the
//! primops), so a training step never holds the `s x s` scores or
//! probabilities: [`CausalAttention`] computes
//! `softmax(rope(q) rope(k)^T * scale + causal mask) v` one block of query
//! rows at a time, and [`CausalAttentionGrad`], its backward rule,
//! recomputes each block's probabilities and writes `dq`, `dk` and `dv`. A
//! block sees only the keys up to its last position, so every product skips
//! most of the masked half. The rotary embedding is applied as rows are
//! read (and its transpose to the gradients as they are written), so
//! neither it nor its backward touches memory on its own.
//!
//! Inputs `q [b, H, s, D]`, `k` and `v [b, KV, s, D]`, then the rotary
//! tables `cos` and `sin [s, D]`, read through any strides (no padding);
//! `rope(x) = x cos + rotate_half(x) sin` with `rotate_half(x) = [-x2, x1]`.
//! Grouped-query attention: query head `h` reads kv head `h / groups`,
//! `H = KV * groups`. The gradient kernel also reads `dO [b, H, s, D]` and
//! writes one buffer `[b, H + 2 KV, s, D]`: `dq` in the first `H` heads,
//! then `dk`, then `dv` (slices of it are the gradients of the un-rotated
//! q, k and v).

use gemm::Parallelism;
use rayon::prelude::*;

use super::fastmath::exp2;
use super::matmul::sgemm_into;
use super::rotary::{head, pack, Tables};
use super::Ptr;
use crate::kernel::{Arg, Cost, GradRule, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct CausalAttention {
    pub groups: usize,
    pub scale: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CausalAttentionGrad {
    pub groups: usize,
    pub scale: f32,
}

/// Query positions per block (times `groups` rows: the query heads of one
/// kv head go through together, against the same keys).
const BLOCK: usize = 64;

/// Sizes of one call: batch, query heads, kv heads, positions, head dim.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    kv: usize,
    s: usize,
    d: usize,
}

fn dims_of(groups: usize, q: &View, k: &View, v: &View) -> Dims {
    for (x, name) in [(q, "q"), (k, "k"), (v, "v")] {
        assert!(x.rank == 4 && !x.padded, "causal attention: {name} must be an unpadded [b, heads, s, D] view");
    }
    let [b, h, s, d] = [q.shape[0], q.shape[1], q.shape[2], q.shape[3]];
    let kv = h / groups;
    assert!(
        kv * groups == h && k.dims() == [b, kv, s, d] && v.dims() == [b, kv, s, d],
        "causal attention: q {:?}, k {:?}, v {:?}",
        q.dims(),
        k.dims(),
        v.dims()
    );
    Dims { b, h, kv, s, d }
}

/// `out[m, n] (+)= a[m, k] b[k, n]`, each a pointer with (column, row) strides.
fn product(
    mnk: (usize, usize, usize),
    out: (*mut f32, isize, isize),
    a: (*const f32, isize, isize),
    b: (*const f32, isize, isize),
    accumulate: bool,
) {
    // SAFETY: callers pass buffers the strides stay inside
    unsafe { sgemm_into(mnk, out, a, b, accumulate, Parallelism::None) }
}

/// Scores of a block `[R, tb]` (row `r` at position `i0 + r % rows`) into
/// probabilities: scaled, causally masked, softmax over the visible keys.
fn softmax_rows(scores: &mut [f32], tb: usize, i0: usize, rows: usize, scale: f32) {
    let a = scale * std::f32::consts::LOG2_E;
    for (r, row) in scores.chunks_exact_mut(tb).enumerate() {
        let n = i0 + r % rows + 1;
        let (live, masked) = row.split_at_mut(n);
        let m = super::reduce::max(live);
        // (two loops: a running sum in the first would keep it scalar)
        live.iter_mut().for_each(|x| *x = exp2(a * (*x - m)));
        let inv = 1.0 / super::reduce::sum(live);
        live.iter_mut().for_each(|x| *x *= inv);
        masked.fill(0.0);
    }
}

/// Split `0..s` into blocks: (start, rows, keys seen).
fn blocks(s: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..s.div_ceil(BLOCK)).map(move |i| {
        let i0 = i * BLOCK;
        let rows = BLOCK.min(s - i0);
        (i0, rows, i0 + rows)
    })
}

/// Products of a causal `[s, s]` attention per (batch, head) and D, in
/// multiply-adds: about half the full square.
fn causal_pairs(dm: Dims) -> f64 {
    (dm.b * dm.h) as f64 * (dm.s * (dm.s + 1) / 2) as f64 * dm.d as f64
}

impl Kernel for CausalAttention {
    fn name(&self) -> String {
        "CausalAttention".into()
    }
    /// its gradient: [`CausalAttentionGrad`]
    fn grad_rule(&self) -> GradRule {
        GradRule::CausalAttention { groups: self.groups, scale: self.scale }
    }
    fn fused_from(&self) -> Vec<String> {
        vec!["RoPE (q, k)".into(), "MatMul (q k^T)".into(), "causal softmax".into(), "MatMul (p v)".into()]
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        vec![inputs[0].dims().to_vec()]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], _: &DimValues) {
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        let dm = dims_of(self.groups, &q.view, &k.view, &v.view);
        let (g, d) = (self.groups, dm.d);
        let rope = Tables::new(&inputs[3], &inputs[4], dm.s, d);
        let out = Ptr(outputs[0].as_mut_ptr());
        // the keys, rotated once: [b, KV, s, D]
        let mut keys = vec![0f32; dm.b * dm.kv * dm.s * d];
        keys.par_chunks_mut(dm.s * d).enumerate().for_each(|(t, kb)| pack(k, (t / dm.kv, t % dm.kv), 1, (0, dm.s), Some(&rope), kb));
        let blks: Vec<(usize, usize, usize)> = blocks(dm.s).collect();
        let tasks = dm.b * dm.kv * blks.len();
        let init = || (vec![0f32; g * BLOCK * d], vec![0f32; g * BLOCK * dm.s], vec![0f32; g * BLOCK * d]);
        (0..tasks).into_par_iter().for_each_init(init, |(qb, scores, ob), t| {
            let (bb, kv, (i0, rows, tb)) = (t / (dm.kv * blks.len()), t / blks.len() % dm.kv, blks[t % blks.len()]);
            let kb = &keys[(bb * dm.kv + kv) * dm.s * d..];
            let (vp, vrs, vcs) = head(v, bb, kv);
            let r = g * rows;
            pack(q, (bb, kv * g), g, (i0, rows), Some(&rope), qb);
            // scores[r, tb] = q k^T, then probabilities in place
            product((r, tb, d), (scores.as_mut_ptr(), 1, tb as isize), (qb.as_ptr(), 1, d as isize), (kb.as_ptr(), d as isize, 1), false);
            softmax_rows(&mut scores[..r * tb], tb, i0, rows, self.scale);
            // o[r, D] = p v
            product((r, d, tb), (ob.as_mut_ptr(), 1, d as isize), (scores.as_ptr(), 1, tb as isize), (vp, vcs, vrs), false);
            for gg in 0..g {
                let hh = kv * g + gg;
                // SAFETY: this task's rows of the contiguous output
                let dst = unsafe { std::slice::from_raw_parts_mut(out.at(((bb * dm.h + hh) * dm.s + i0) * d), rows * d) };
                dst.copy_from_slice(&ob[gg * rows * d..][..rows * d]);
            }
        });
    }
    fn cost(&self, inputs: &[View], outputs: &[Vec<usize>]) -> Cost {
        let dm = dims_of(self.groups, &inputs[0], &inputs[1], &inputs[2]);
        let bytes = inputs.iter().map(|x| x.numel()).sum::<usize>() + outputs[0].iter().product::<usize>();
        Cost { flops: 4.0 * causal_pairs(dm), bytes: 4.0 * bytes as f64 }
    }
}

impl Kernel for CausalAttentionGrad {
    fn name(&self) -> String {
        "CausalAttentionGrad".into()
    }
    fn fused_from(&self) -> Vec<String> {
        vec![
            "RoPE (q, k, again)".into(),
            "MatMul (q k^T, again)".into(),
            "causal softmax".into(),
            "MatMul (dO v^T)".into(),
            "softmax backward".into(),
            "MatMul x3 (dq, dk, dv)".into(),
            "RoPE backward (dq, dk)".into(),
        ]
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        let (q, k) = (&inputs[0], &inputs[1]);
        vec![vec![q.shape[0], q.shape[1] + 2 * k.shape[1], q.shape[2], q.shape[3]]]
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], _: &DimValues) {
        let (q, k, v, dout) = (&inputs[0], &inputs[1], &inputs[2], &inputs[5]);
        let dm = dims_of(self.groups, &q.view, &k.view, &v.view);
        assert!(
            dout.view.rank == 4 && !dout.view.padded && dout.view.dims() == q.view.dims(),
            "causal attention gradient: dO {:?}",
            dout.view.dims()
        );
        let (g, d, s) = (self.groups, dm.d, dm.s);
        let rope = Tables::new(&inputs[3], &inputs[4], s, d);
        let heads = dm.h + 2 * dm.kv;
        let out = Ptr(outputs[0].as_mut_ptr());
        let buf = || vec![0f32; g * BLOCK * s.max(d)];
        let init = || (buf(), buf(), buf(), buf(), buf(), vec![0f32; s * d]);
        // one task per (batch, kv head): it owns its dk and dv rows and adds
        // every query block's share into them
        (0..dm.b * dm.kv).into_par_iter().for_each_init(init, |(qb, dob, p, dp, dqb, kb), t| {
            let (bb, kv) = (t / dm.kv, t % dm.kv);
            let at = |hh: usize, i: usize| ((bb * heads + hh) * s + i) * d;
            let (dk, dv) = (out.at(at(dm.h + kv, 0)), out.at(at(dm.h + dm.kv + kv, 0)));
            // SAFETY: this task's dk and dv heads of the output
            unsafe {
                std::slice::from_raw_parts_mut(dk, s * d).fill(0.0);
                std::slice::from_raw_parts_mut(dv, s * d).fill(0.0);
            }
            pack(k, (bb, kv), 1, (0, s), Some(&rope), kb);
            let (vp, vrs, vcs) = head(v, bb, kv);
            let mut tmp = vec![0f32; d];
            for (i0, rows, tb) in blocks(s) {
                let r = g * rows;
                pack(q, (bb, kv * g), g, (i0, rows), Some(&rope), qb);
                pack(dout, (bb, kv * g), g, (i0, rows), None, dob);
                let (dsd, dtb) = (d as isize, tb as isize);
                // p = softmax(q k^T) as in the forward; dp = dO v^T
                product((r, tb, d), (p.as_mut_ptr(), 1, dtb), (qb.as_ptr(), 1, dsd), (kb.as_ptr(), dsd, 1), false);
                softmax_rows(&mut p[..r * tb], tb, i0, rows, self.scale);
                product((r, tb, d), (dp.as_mut_ptr(), 1, dtb), (dob.as_ptr(), 1, dsd), (vp, vrs, vcs), false);
                // ds = p * (dp - sum(p * dp)) * scale, in place of dp
                for (pr, dr) in p[..r * tb].chunks_exact(tb).zip(dp.chunks_exact_mut(tb)) {
                    let c = super::gemv::dot(pr, dr);
                    dr.iter_mut().zip(pr).for_each(|(x, &pv)| *x = pv * (*x - c) * self.scale);
                }
                // dq[r, D] = ds k; dk[tb, D] += ds^T q; dv[tb, D] += p^T dO
                product((r, d, tb), (dqb.as_mut_ptr(), 1, dsd), (dp.as_ptr(), 1, dtb), (kb.as_ptr(), 1, dsd), false);
                product((tb, d, r), (dk, 1, dsd), (dp.as_ptr(), dtb, 1), (qb.as_ptr(), 1, dsd), true);
                product((tb, d, r), (dv, 1, dsd), (p.as_ptr(), dtb, 1), (dob.as_ptr(), 1, dsd), true);
                for gg in 0..g {
                    // SAFETY: this task's rows of its query heads' dq
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.at(at(kv * g + gg, i0)), rows * d) };
                    let src = dqb[gg * rows * d..].chunks_exact(d);
                    for (i, (row, grad)) in dst.chunks_exact_mut(d).zip(src).enumerate() {
                        rope.unrotate(row, grad, i0 + i);
                    }
                }
            }
            // SAFETY: as above
            let dk = unsafe { std::slice::from_raw_parts_mut(dk, s * d) };
            for (i, row) in dk.chunks_exact_mut(d).enumerate() {
                tmp.copy_from_slice(row);
                rope.unrotate(row, &tmp, i);
            }
        });
    }
    fn cost(&self, inputs: &[View], outputs: &[Vec<usize>]) -> Cost {
        let dm = dims_of(self.groups, &inputs[0], &inputs[1], &inputs[2]);
        let bytes = inputs.iter().map(|x| x.numel()).sum::<usize>() + outputs[0].iter().product::<usize>();
        Cost { flops: 10.0 * causal_pairs(dm), bytes: 4.0 * bytes as f64 }
    }
}
