//! Row-wise iteration over a logical shape read through several strided views.
//!
//! Kernels write a contiguous output and read their inputs through views. A
//! `Walk` drops size-1 dims, merges dims that are adjacent in memory for every
//! view, and hands out rows: the innermost dim with one stride per view. Rows
//! are split across threads when there is enough work.

use rayon::prelude::*;

use crate::view::{View, MAX_RANK};

/// Below this many output elements a kernel runs on one thread.
pub const PAR_THRESHOLD: usize = 1 << 15;

#[derive(Clone, Copy, Debug)]
pub struct Walk<const N: usize> {
    rank: usize,
    shape: [usize; MAX_RANK],
    strides: [[isize; MAX_RANK]; N],
    base: [isize; N],
}

impl<const N: usize> Walk<N> {
    /// `shape` is the logical shape every view is read with (their own dims
    /// must match it); offsets start at each view's base offset.
    pub fn new(shape: &[usize], views: [&View; N]) -> Walk<N> {
        let mut w = Walk { rank: 0, shape: [1; MAX_RANK], strides: [[0; MAX_RANK]; N], base: [0; N] };
        for (v, view) in views.iter().enumerate() {
            w.base[v] = view.offset;
        }
        for (d, &size) in shape.iter().enumerate() {
            if size == 1 {
                continue;
            }
            let r = w.rank;
            let mergeable = r > 0 && (0..N).all(|v| w.strides[v][r - 1] == views[v].strides[d] * size as isize);
            if mergeable {
                w.shape[r - 1] *= size;
                for v in 0..N {
                    w.strides[v][r - 1] = views[v].strides[d];
                }
            } else {
                w.shape[r] = size;
                for v in 0..N {
                    w.strides[v][r] = views[v].strides[d];
                }
                w.rank += 1;
            }
        }
        w
    }

    pub fn row_len(&self) -> usize {
        if self.rank == 0 {
            1
        } else {
            self.shape[self.rank - 1]
        }
    }

    pub fn rows(&self) -> usize {
        self.shape[..self.rank.saturating_sub(1)].iter().product()
    }

    /// Stride of each view along a row.
    pub fn inner(&self) -> [isize; N] {
        let mut s = [0; N];
        if self.rank > 0 {
            for v in 0..N {
                s[v] = self.strides[v][self.rank - 1];
            }
        }
        s
    }

    /// Offset of each view at the start of row `row`.
    pub fn row_start(&self, mut row: usize) -> [isize; N] {
        let mut off = self.base;
        for d in (0..self.rank.saturating_sub(1)).rev() {
            let i = row % self.shape[d];
            row /= self.shape[d];
            for v in 0..N {
                off[v] += i as isize * self.strides[v][d];
            }
        }
        off
    }

    /// Run `f(out_row, row_starts)` for every row of a contiguous output,
    /// in parallel when the output is large.
    pub fn for_rows(&self, out: &mut [f32], f: impl Fn(&mut [f32], [isize; N]) + Sync) {
        for_row_blocks(out, self.row_len(), |first, block| {
            for (r, chunk) in block.chunks_mut(self.row_len()).enumerate() {
                f(chunk, self.row_start(first + r));
            }
        });
    }
}

/// Split a contiguous output of rows of length `len` into blocks of whole
/// rows and run `f(first_row, block)` on each: one block when the output is
/// small, else blocks of about `PAR_THRESHOLD` elements across the threads.
pub fn for_row_blocks(out: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if len == 0 || out.is_empty() {
        return;
    }
    if out.len() < PAR_THRESHOLD {
        f(0, out);
    } else {
        let rows_per_task = (PAR_THRESHOLD / len).max(1);
        out.par_chunks_mut(len * rows_per_task).enumerate().for_each(|(t, block)| f(t * rows_per_task, block));
    }
}

/// The row-major index of element `flat` of `shape`, written into `idx`.
#[inline]
pub fn unravel(mut flat: usize, shape: &[usize], idx: &mut [usize]) {
    for d in (0..shape.len()).rev() {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
}

/// Read element `i` of a row that starts at `start` with stride `stride`.
#[inline(always)]
pub fn at(data: &[f32], start: isize, stride: isize, i: usize) -> f32 {
    data[(start + i as isize * stride) as usize]
}

/// Iterate every logical index of `shape` in row-major order (slow path for
/// padded views).
pub fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let n: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for flat in 0..n {
        f(flat, &idx);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}
