//! Attention as one kernel: `scores = q k^T`, a row program (scale, mask,
//! softmax: whatever the fused row group between the two products computes),
//! then `out = p v`. Query rows go through in blocks that share their keys
//! and values: a block's scores (`rows x t`) live in a small buffer, so the
//! full `s x t` matrix is never materialised, however long the sequence.
//! The same shape with an elementwise program is a gated MLP; over many
//! rows it splits its hidden columns between the threads instead.
//!
//! inputs: `q` and `k` read as the first product's operands (`[O.., t, K]`,
//! `q` broadcast over `t`, `k` over the query dims of `O`), `v` as the second
//! product's right operand (`[O.., hd, t]`), then the row program's other
//! inputs. Output `[O.., hd]`.

use gemm::Parallelism;
use rayon::prelude::*;

use super::bf16_gemm;
use super::gemv::{gemv_as, GemvForm, Rows, MAX_ROWS};
use super::matmul::{product, Rhs};
use super::packed::Packed;
use super::q8::{self, gemv_q8, Q8Rows};
use super::row_program::{RowOp, RowProgram, Scratch};
use super::Ptr;
use crate::cuda::source::CudaKernel;
use crate::kernel::{Arg, Cost, Kernel};
use crate::search;
use crate::view::{DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct ProductChain {
    /// the row program applied to each scores row
    pub program: RowProgram,
    /// which program input is the scores row
    pub scores_input: usize,
    /// Under `--fusion search`, the kernel's node: a call of a few rows
    /// (decoding) then searches for its GEMVs' form ([`crate::search`]).
    pub search: Option<usize>,
    /// Products of many rows in bf16, as [`super::matmul::MatMul::bf16`].
    pub bf16: bool,
}

/// Query rows per block.
const BLOCK: usize = 64;

/// Whether a call with packed weights runs every product as GEMVs: at
/// most [`MAX_ROWS`] query rows per block of them (so never the column
/// split over many rows), each operand's rows contiguous, and every Q8_0
/// operand's rows, wherever a task starts, on block boundaries.
fn packed_gemvs_fit(inputs: &[Arg]) -> bool {
    let (q, k, v) = (&inputs[0].view, &inputs[1].view, &inputs[2].view);
    let r = q.rank;
    let query_rows = (0..r - 2).filter(|&d| k.strides[d] == 0 && v.strides[d] == 0).map(|d| q.shape[d]).max().unwrap_or(1);
    let contiguous = [q, k, v].iter().all(|w| w.strides[r - 1] == 1 && !w.padded);
    query_rows <= MAX_ROWS && contiguous && q8_on_blocks(&inputs[1]) && q8_on_blocks(&inputs[2])
}

/// Whether an operand is not Q8_0, or its rows, wherever a task starts,
/// lie on block boundaries (contiguous along the last dim).
fn q8_on_blocks(a: &Arg) -> bool {
    let (w, r) = (&a.view, a.view.rank);
    !matches!(a.packed, Some(Packed::Q8_0(_)))
        || (w.offset % q8::BLOCK as isize == 0
            && w.strides[r - 1] == 1
            && w.shape[r - 1].is_multiple_of(q8::BLOCK)
            && (0..r - 1).all(|d| w.strides[d] % q8::BLOCK as isize == 0))
}

impl Kernel for ProductChain {
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
    fn name(&self) -> String {
        // the same shape also matches a gated MLP: x Wg -> silu * up -> Wd
        let name = if self.program.has_softmax() { "Attention" } else { "GatedMLP" };
        if self.bf16 {
            format!("{name} bf16")
        } else {
            name.into()
        }
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
        f.extend(self.program.fused_from());
        f.push("MatMul (p v)".into());
        f
    }
    fn reads_packed(&self, input: usize) -> bool {
        // (a guard shortens the rows of `v` a GEMV reads to a row's live
        // keys, which need not end on a block boundary)
        (input == 1 || input == 2) && self.program.guard.is_none()
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], dims: &DimValues) {
        if inputs[1].packed.is_some() || inputs[2].packed.is_some() {
            // packed weights: a few rows (decoding) read them as they are in
            // GEMVs; more rows multiply in bf16 or f32 (below)
            if !packed_gemvs_fit(inputs) {
                // a prompt: its products in bf16 where the CPU multiplies
                // bf16 (Q8_0 values rounded to it), else in f32: one
                // operand at a time, run again with its values
                let i = if inputs[1].packed.is_some() { 1 } else { 2 };
                let packed = inputs[i].packed.unwrap();
                if !bf16_gemm::available() {
                    return packed.with_values(|values| {
                        let mut args = inputs.to_vec();
                        args[i] = Arg::f32(values, inputs[i].view);
                        self.run(&args, outputs, dims)
                    });
                }
                // (Q8_0 rows on block boundaries dequantize as they are packed)
                let q8 = (1..3).find(|&i| !q8_on_blocks(&inputs[i]));
                if let Some(i) = q8 {
                    return inputs[i].packed.unwrap().with_bf16(|h| {
                        let mut args = inputs.to_vec();
                        args[i] = Arg { packed: Some(Packed::Bf16(h)), ..inputs[i] };
                        self.run(&args, outputs, dims)
                    });
                }
            }
        }
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        assert!(!q.view.padded && !k.view.padded && !v.view.padded, "Attention: padded operands");
        let rank = q.view.rank;
        let outer = q.view.dims()[..rank - 2].to_vec();
        let (t, kd, hd) = (q.view.shape[rank - 2], q.view.shape[rank - 1], v.view.shape[rank - 2]);
        // program inputs: the scores slot is filled per row
        let mut rest = inputs[3..].iter();
        let prog: Vec<Arg> = (0..self.program.input_row.len())
            .map(|i| if i == self.scores_input { Arg::f32(&[], q.view) } else { *rest.next().unwrap() })
            .collect();
        let out = Ptr(outputs[0].as_mut_ptr());
        let out_strides = crate::view::contiguous_strides(&[outer.clone(), vec![hd]].concat());
        // Block over the largest query dim (one that keys and values do not
        // vary along): the sequence when prefilling, the query heads of one
        // kv head when decoding. Every other outer index is its own task.
        let bd = (0..outer.len()).filter(|&d| k.view.strides[d] == 0 && v.view.strides[d] == 0).max_by_key(|&d| outer[d]);
        let n_blk = bd.map_or(1, |d| outer[d]);
        let others: usize = outer.iter().product::<usize>() / n_blk;
        // enough blocks to keep every thread busy, as large as that allows
        let threads = rayon::current_num_threads();
        if let Some(d) = bd.filter(|_| others == 1 && threads > 1 && n_blk >= 64 && t >= 64 * threads) {
            if self.elementwise() && prog.iter().all(|a| !a.view.padded) {
                return self.run_split_columns(q, k, v, &prog, out, (d, n_blk, out_strides[d] as isize), (t, kd, hd), dims);
            }
        }
        let blk =
            if others >= threads { BLOCK } else { n_blk.div_ceil(threads.div_ceil(others)).next_multiple_of(16).max(16) }.min(n_blk).max(1);
        let per_other = n_blk.div_ceil(blk);
        let tasks = others * per_other;
        let row_stride = |view: &View| bd.map_or(0, |d| view.strides[d]);
        let out_rs = bd.map_or(0, |d| out_strides[d] as isize);
        let task = |bufs: &mut (Vec<f32>, Vec<f32>, Scratch), task: usize, par: Parallelism, form: Option<GemvForm>| {
            let (scores, probs, s) = bufs;
            let (mut o, b) = (task / per_other, task % per_other);
            let mut idx = vec![0usize; outer.len()];
            for d in (0..outer.len()).rev().filter(|&d| Some(d) != bd) {
                idx[d] = o % outer[d];
                o /= outer[d];
            }
            let rows = (n_blk - b * blk).min(blk);
            if let Some(d) = bd {
                idx[d] = b * blk;
            }
            let at = |view: &View| view.offset + idx.iter().enumerate().map(|(d, &i)| i as isize * view.strides[d]).sum::<isize>();
            let (qo, ko, vo) = (at(&q.view), at(&k.view), at(&v.view));
            let oo: isize = idx.iter().enumerate().map(|(d, &i)| (i * out_strides[d]) as isize).sum();
            // keys each row needs (all t, unless a guard such as the causal
            // mask hides the later ones); the block computes up to the most
            let mut ridx = idx.clone();
            let mut live = vec![t; rows];
            let guarded = self.program.guard.is_some_and(|g| g.input != self.scores_input);
            if guarded {
                for (r, n) in live.iter_mut().enumerate() {
                    if let Some(d) = bd {
                        ridx[d] = idx[d] + r;
                    }
                    *n = self.program.live_len(&ridx, t, &prog, None, s);
                }
            }
            let tb = live.iter().copied().max().unwrap_or(t);
            // a few query rows against keys stored as rows of K (decoding):
            // dot products, the same for a row whatever else is in the block
            let form = form.unwrap_or(GemvForm::default_for(!matches!(par, Parallelism::None)));
            if rows <= MAX_ROWS && q.view.strides[rank - 1] == 1 && k.view.strides[rank - 1] == 1 {
                let qr = Rows { data: q.data, offset: qo, stride: row_stride(&q.view), len: kd };
                let (ks, scores) = (k.view.strides[rank - 2], Ptr(scores.as_mut_ptr()));
                // SAFETY: views were bounds-checked by the executor; `scores` holds rows x tb
                match k.packed {
                    Some(Packed::Q8_0(kq)) => unsafe {
                        gemv_q8(form, qr, rows, Q8Rows::new(kq, ko, ks, kd).expect("checked"), tb, scores, tb)
                    },
                    Some(Packed::Bf16(kh)) => unsafe {
                        gemv_as(form, qr, rows, Rows { data: kh, offset: ko, stride: ks, len: kd }, tb, scores, tb)
                    },
                    None => unsafe { gemv_as(form, qr, rows, Rows { data: k.data, offset: ko, stride: ks, len: kd }, tb, scores, tb) },
                }
            } else {
                // SAFETY: views were bounds-checked by the executor; each task
                // writes its own rows of the output.
                unsafe {
                    // scores[rows, tb] = q[rows, K] @ k^T[K, tb]
                    product(
                        (rows, tb, kd),
                        (scores.as_mut_ptr(), 1, tb as isize),
                        (q.data.as_ptr().offset(qo), q.view.strides[rank - 1], row_stride(&q.view)),
                        (Rhs::of(k, self.bf16), ko, k.view.strides[rank - 2], k.view.strides[rank - 1]),
                        par,
                    );
                }
            }
            for r in 0..rows {
                if let Some(d) = bd {
                    ridx[d] = idx[d] + r;
                }
                let given = Some((self.scores_input, &scores[r * tb..(r + 1) * tb]));
                let n = if guarded { live[r] } else { self.program.live_len(&ridx, tb, &prog, given, s) };
                self.program.eval_row(&ridx, n, &prog, given, s);
                let p = &mut probs[r * tb..(r + 1) * tb];
                p[..n].copy_from_slice(self.program.output_row(0, n, s));
                p[n..].fill(0.0);
            }
            if rows <= MAX_ROWS && v.view.strides[rank - 1] == 1 {
                // out[r, h] = dot(p[r], v[h]) with v's rows contiguous along t
                let pr = Rows { data: &probs[..rows * tb], offset: 0, stride: tb as isize, len: tb };
                let (vs, o) = (v.view.strides[rank - 2], Ptr(unsafe { out.get().offset(oo) }));
                // SAFETY: this task's output rows
                match v.packed {
                    Some(Packed::Q8_0(vq)) => unsafe {
                        gemv_q8(form, pr, rows, Q8Rows::new(vq, vo, vs, tb).expect("checked"), hd, o, out_rs as usize)
                    },
                    Some(Packed::Bf16(vh)) => unsafe {
                        gemv_as(form, pr, rows, Rows { data: vh, offset: vo, stride: vs, len: tb }, hd, o, out_rs as usize)
                    },
                    None => unsafe {
                        gemv_as(form, pr, rows, Rows { data: v.data, offset: vo, stride: vs, len: tb }, hd, o, out_rs as usize)
                    },
                }
                return;
            }
            unsafe {
                // out[rows, hd] = p[rows, tb] @ v[tb, hd]
                product(
                    (rows, hd, tb),
                    (out.get().offset(oo), 1, out_rs),
                    (probs.as_ptr(), 1, tb as isize),
                    (Rhs::of(v, self.bf16), vo, v.view.strides[rank - 2], v.view.strides[rank - 1]),
                    par,
                );
            }
        };
        let init = || (vec![0f32; blk * t], vec![0f32; blk * t], self.program.scratch(t, dims));
        if tasks >= threads && threads > 1 {
            (0..tasks).into_par_iter().for_each_init(init, |bufs, i| task(bufs, i, Parallelism::None, None));
            return;
        }
        // fewer blocks than threads (one decoded token through a gated
        // MLP): split each product instead, a GEMV's weight rows or gemm's
        let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
        let mut bufs = init();
        let decoding = blk <= MAX_ROWS && q.view.strides[rank - 1] == 1 && k.view.strides[rank - 1] == 1 && v.view.strides[rank - 1] == 1;
        let Some(node) = self.search.filter(|_| decoding && threads > 1) else {
            return (0..tasks).for_each(|i| task(&mut bufs, i, par, None));
        };
        // both GEMVs of every task in one form, searched for as a whole
        let forms = GemvForm::all(threads, t.min(hd));
        let key = format!("{} {blk}x{t}x{kd} then x{hd} tasks {tasks} threads {threads}", self.name());
        search::run_searched(
            node,
            &key,
            || forms.iter().map(|f| f.name()).collect(),
            |i| (0..tasks).for_each(|j| task(&mut bufs, j, par, Some(forms[i]))),
        );
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

/// Rows per step of [`ProductChain::run_split_columns`]: its hidden block
/// (`rows x t`) stays in the last-level cache between the two products
/// (256 and 1024 rows measured alike at pp1024).
const SPLIT_ROWS: usize = 256;

impl ProductChain {
    /// Does the program work column by column (a gated MLP's `silu * up`:
    /// no reduction, no mask), so that any range of columns can be
    /// computed on its own?
    fn elementwise(&self) -> bool {
        self.program.guard.is_none() && !self.program.instrs.iter().any(|i| matches!(i.op, RowOp::Reduce(..) | RowOp::Softmax(..)))
    }

    /// Many rows through an elementwise program: split the columns between
    /// the threads rather than the rows. Each thread computes its columns
    /// of `p = program(q k^T)` for all the rows, then its columns of
    /// `out = p v`, so it packs only its part of each weight matrix; split by
    /// rows, every thread packed all of both (256 x 1408 x 512 with the
    /// weights split: ~195-210 GFLOP/s; by rows: ~176-195).
    #[allow(clippy::too_many_arguments)]
    fn run_split_columns(
        &self,
        q: &Arg,
        k: &Arg,
        v: &Arg,
        prog: &[Arg],
        out: Ptr,
        (bd, n_rows, out_rs): (usize, usize, isize),
        (t, kd, hd): (usize, usize, usize),
        dims: &DimValues,
    ) {
        let rank = q.view.rank;
        let parts = rayon::current_num_threads();
        let (t_chunk, h_chunk) = (t.div_ceil(parts).next_multiple_of(16), hd.div_ceil(parts).next_multiple_of(16));
        // not zeroed: the first product writes every value before it is read
        let mut p: Vec<f32> = Vec::with_capacity(n_rows.min(SPLIT_ROWS) * t);
        let p_ptr = Ptr(p.as_mut_ptr());
        for r0 in (0..n_rows).step_by(SPLIT_ROWS) {
            let rows = (n_rows - r0).min(SPLIT_ROWS);
            let at = |view: &View| view.offset + r0 as isize * view.strides[bd];
            (0..t.div_ceil(t_chunk)).into_par_iter().for_each(|j| {
                let (c0, cols) = (j * t_chunk, t_chunk.min(t - j * t_chunk));
                // SAFETY: views were bounds-checked by the executor; each part
                // writes its own columns of `p` (here the scores q k^T).
                unsafe {
                    product(
                        (rows, cols, kd),
                        (p_ptr.at(c0), 1, t as isize),
                        (q.data.as_ptr().offset(at(&q.view)), q.view.strides[rank - 1], q.view.strides[bd]),
                        (
                            Rhs::of(k, self.bf16),
                            at(&k.view) + c0 as isize * k.view.strides[rank - 2],
                            k.view.strides[rank - 2],
                            k.view.strides[rank - 1],
                        ),
                        Parallelism::None,
                    );
                }
                // the program's row inputs, starting at column c0
                let shifted: Vec<Arg> = prog
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let mut view = a.view;
                        if self.program.input_row[i] && i != self.scores_input {
                            let last = view.rank - 1;
                            view.offset += c0 as isize * view.strides[last];
                            (view.shape[last], view.hi[last]) = (cols, cols);
                        }
                        Arg::f32(a.data, view)
                    })
                    .collect();
                let mut s = self.program.scratch(cols, dims);
                // the row's outer index: the other outer dims are all 1
                let mut ridx = vec![0usize; rank - 2];
                for r in 0..rows {
                    ridx[bd] = r0 + r;
                    let row = p_ptr.at(r * t + c0);
                    // SAFETY: this part's columns of row r: the scores row,
                    // replaced by the program's output (copied as memory, as
                    // the output may be read straight from its input)
                    unsafe {
                        let scores = std::slice::from_raw_parts(row, cols);
                        self.program.eval_row(&ridx, cols, &shifted, Some((self.scores_input, scores)), &mut s);
                        std::ptr::copy(self.program.output_row(0, cols, &s).as_ptr(), row, cols);
                    }
                }
            });
            (0..hd.div_ceil(h_chunk)).into_par_iter().for_each(|j| {
                let (h0, cols) = (j * h_chunk, h_chunk.min(hd - j * h_chunk));
                // SAFETY: as above; each part writes its own output columns
                unsafe {
                    product(
                        (rows, cols, t),
                        (out.get().offset(r0 as isize * out_rs + h0 as isize), 1, out_rs),
                        (p_ptr.get(), 1, t as isize),
                        (
                            Rhs::of(v, self.bf16),
                            at(&v.view) + h0 as isize * v.view.strides[rank - 2],
                            v.view.strides[rank - 2],
                            v.view.strides[rank - 1],
                        ),
                        Parallelism::None,
                    );
                }
            });
        }
    }
}
