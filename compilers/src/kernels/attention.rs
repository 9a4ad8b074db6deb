//! Attention as one kernel: `scores = q k^T`, a row program (scale, mask,
//! softmax: whatever the fused row group between the two products computes),
//! then `out = p v`. Query rows go through in blocks that share their keys
//! and values: a block's scores (`rows x t`) live in a small buffer, so the
//! full `s x t` matrix is never materialised, however long the sequence.
//!
//! inputs: `q` and `k` read as the first product's operands (`[O.., t, K]`,
//! `q` broadcast over `t`, `k` over the query dims of `O`), `v` as the second
//! product's right operand (`[O.., hd, t]`), then the row program's other
//! inputs. Output `[O.., hd]`.

use gemm::Parallelism;
use rayon::prelude::*;

use super::rowfused::RowFused;
use crate::kernel::{Arg, Cost, Kernel};
use crate::view::{DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    /// the row program applied to each scores row
    pub program: RowFused,
    /// which program input is the scores row
    pub scores_input: usize,
}

/// Query rows per block.
const BLOCK: usize = 64;

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    /// (a method, so closures capture the whole `Send` wrapper)
    fn get(&self) -> *mut f32 {
        self.0
    }
}

impl Kernel for Attention {
    fn name(&self) -> String {
        "Attention".into()
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        let (q, v) = (&inputs[0], &inputs[2]);
        let r = q.rank;
        let mut s = q.dims()[..r - 2].to_vec();
        s.push(v.shape[r - 2]);
        vec![s]
    }
    fn fused_from(&self) -> Vec<String> {
        let mut f = vec!["MatMul (q k^T)".to_string()];
        f.extend(self.program.from.iter().cloned());
        f.push("MatMul (p v)".into());
        f
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], dims: &DimValues) {
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        assert!(!q.view.padded && !k.view.padded && !v.view.padded, "Attention: padded operands");
        let rank = q.view.rank;
        let outer = q.view.dims()[..rank - 2].to_vec();
        let (t, kd, hd) = (q.view.shape[rank - 2], q.view.shape[rank - 1], v.view.shape[rank - 2]);
        // program inputs: the scores slot is filled per row
        let mut prog: Vec<Arg> = Vec::with_capacity(inputs.len() - 2);
        let mut rest = inputs[3..].iter();
        for i in 0..self.program.input_row.len() {
            prog.push(if i == self.scores_input { Arg { data: &[], view: q.view } } else { *rest.next().unwrap() });
        }
        let out = Ptr(outputs[0].as_mut_ptr());
        // block over the innermost outer dim when it is a query dim (keys shared)
        let last = outer.len().saturating_sub(1);
        let blocked = !outer.is_empty() && k.view.strides[last] == 0 && v.view.strides[last] == 0;
        let (n_blk, blk) = if blocked { (outer[last], BLOCK) } else { (1, 1) };
        let other: usize = if blocked { outer[..last].iter().product() } else { outer.iter().product() };
        let per_other = n_blk.div_ceil(blk);
        let tasks = other * per_other;
        let out_strides = crate::view::contiguous_strides(&[outer.clone(), vec![hd]].concat());
        let task = |task: usize| {
            let (o, b) = (task / per_other, task % per_other);
            let mut idx = vec![0usize; outer.len()];
            let mut rest = o;
            let lead = if blocked { last } else { outer.len() };
            for d in (0..lead).rev() {
                idx[d] = rest % outer[d];
                rest /= outer[d];
            }
            let rows = if blocked { (n_blk - b * blk).min(blk) } else { 1 };
            if blocked {
                idx[last] = b * blk;
            }
            let at =
                |view: &View| -> isize { view.offset + idx.iter().enumerate().map(|(d, &i)| i as isize * view.strides[d]).sum::<isize>() };
            let (qo, ko, vo) = (at(&q.view), at(&k.view), at(&v.view));
            let oo: isize = idx.iter().enumerate().map(|(d, &i)| (i * out_strides[d]) as isize).sum();
            let row_stride = |view: &View| if blocked { view.strides[last] } else { 0 };
            let mut scores = vec![0f32; rows * t];
            let mut probs = vec![0f32; rows * t];
            // SAFETY: views were bounds-checked by the executor; each task
            // writes its own rows of the output.
            {
                unsafe {
                    // scores[rows, t] = q[rows, K] @ k^T[K, t]
                    gemm::gemm(
                        rows,
                        t,
                        kd,
                        scores.as_mut_ptr(),
                        1,
                        t as isize,
                        false,
                        q.data.as_ptr().offset(qo),
                        q.view.strides[rank - 1],
                        row_stride(&q.view),
                        k.data.as_ptr().offset(ko),
                        k.view.strides[rank - 2],
                        k.view.strides[rank - 1],
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
            let mut s = self.program.scratch(t, dims);
            let mut ridx = idx.clone();
            for r in 0..rows {
                if blocked {
                    ridx[last] = idx[last] + r;
                }
                self.program.eval_row(&ridx, t, &prog, Some((self.scores_input, &scores[r * t..(r + 1) * t])), &mut s);
                probs[r * t..(r + 1) * t].copy_from_slice(self.program.output_row(0, t, &s));
            }
            if rows == 1 && v.view.strides[rank - 2] == 1 {
                // out[hd] = sum_j p[j] v[j, :]
                let o = unsafe { std::slice::from_raw_parts_mut(out.get().offset(oo), hd) };
                o.fill(0.0);
                let vs = v.view.strides[rank - 1];
                for (j, &pj) in probs.iter().enumerate() {
                    let vr = &v.data[(vo + j as isize * vs) as usize..][..hd];
                    o.iter_mut().zip(vr).for_each(|(a, &b)| *a += pj * b);
                }
                return;
            }
            unsafe {
                // out[rows, hd] = p[rows, t] @ v[t, hd]
                gemm::gemm(
                    rows,
                    hd,
                    t,
                    out.get().offset(oo),
                    1,
                    hd as isize,
                    false,
                    probs.as_ptr(),
                    1,
                    t as isize,
                    v.data.as_ptr().offset(vo),
                    v.view.strides[rank - 2],
                    v.view.strides[rank - 1],
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        };
        if tasks > 1 && rayon::current_num_threads() > 1 {
            let per_thread = tasks.div_ceil(rayon::current_num_threads());
            (0..tasks).into_par_iter().with_min_len(per_thread.min(8)).for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    }
    fn cost(&self, inputs: &[View], outputs: &[Vec<usize>]) -> Cost {
        let (q, v) = (&inputs[0], &inputs[2]);
        let flops = 2.0 * q.numel() as f64 + 2.0 * v.numel() as f64 * (q.numel() / v.numel().max(1)).max(1) as f64;
        let bytes: usize =
            inputs.iter().map(|x| (0..x.rank).filter(|&d| x.strides[d] != 0).map(|d| x.shape[d]).product::<usize>()).sum::<usize>()
                + outputs[0].iter().product::<usize>();
        Cost { flops, bytes: 4.0 * bytes as f64 }
    }
}
