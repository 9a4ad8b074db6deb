//! One kernel for a fused group of elementwise ops and reductions over the
//! last axis: RMSNorm, softmax (with its mask), SiLU * up, RoPE, residual
//! chains, cross-entropy pieces.
//!
//! The group's tensors are rows: `[outer..., R]` ("row" values) or one value
//! per row, `[outer...]` ("scalar" values, e.g. a row's sum). The kernel runs
//! a small program per row: each instruction makes a row in scratch memory
//! (which stays in cache) or a scalar, reading inputs through strided views.
//! Only the group's outputs touch main memory.

use luminal::prelude::symbolic::Expression;
use rayon::prelude::*;

use super::binary::BinaryOp;
use super::reduce::ReduceOp;
use super::unary::UnaryOp;
use super::walk::unravel;
use crate::cuda::source::CudaKernel;
use crate::kernel::{Arg, Cost, Kernel};
use crate::view::{eval, DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub enum RowOp {
    /// kernel input `i`
    Input(usize),
    Const(f32),
    /// a dimension expression's value (e.g. a token count)
    Dim(Expression),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    /// reduce a row instruction to a scalar
    Reduce(ReduceOp, usize),
    /// `exp2((x - max x) * c) / sum(...)` over a row: a softmax when `c` is
    /// log2 e (one routine for the builder's seven-instruction chain; set by
    /// `passes::simplify_row_programs`, CPU only)
    Softmax(usize, f32),
    /// `x * recip(exp2((x * a) * b) + 1)` over a row: SiLU when `a * b` is
    /// -log2 e (one routine for the builder's six-instruction chain; set by
    /// `passes::simplify_row_programs`, CPU only)
    Silu(usize, f32, f32),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Instr {
    pub op: RowOp,
    /// a row (length R) or one value per row
    pub row: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RowProgram {
    pub instrs: Vec<Instr>,
    /// for each kernel input: read as rows (`[outer.., R]`) or scalars (`[outer..]`)
    pub input_row: Vec<bool>,
    /// instruction written to each output
    pub outputs: Vec<usize>,
    pub outer: Vec<Expression>,
    pub row_len: Expression,
    /// the primops this kernel replaces, for inspection
    pub from: Vec<String>,
    /// columns the program may skip (set by `passes::masked`)
    pub guard: Option<Guard>,
}

/// An input that masks columns (an additive mask: values at or below
/// [`MASKED_AT`]) where the program's work is void: there every row output
/// is 0 and no reduction changes its value (the `MaskedRows` pass proves
/// this from the instructions). Each row is then evaluated only up to its
/// last unmasked column and zero-filled after it, and fused attention
/// skips the future keys in both of its products.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guard {
    pub input: usize,
}

/// Values at or below this are masked scores: exp2 of them, or of them plus
/// any real score, is exactly 0 (the builder's mask is -1e30).
pub const MASKED_AT: f32 = -1e29;

/// A pointer that may cross threads: each thread writes whole, disjoint rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32, usize);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl RowProgram {
    /// Does the program normalise its rows with a softmax (attention)?
    pub fn has_softmax(&self) -> bool {
        self.instrs.iter().any(|i| matches!(i.op, RowOp::Reduce(ReduceOp::Max, _) | RowOp::Softmax(..)))
    }

    fn dims(&self, dims: &DimValues) -> (Vec<usize>, usize) {
        let mut st = vec![];
        (self.outer.iter().map(|e| eval(e, dims, &mut st)).collect(), eval(&self.row_len, dims, &mut st))
    }
}

/// Where an input row starts, for one row index: offset and the valid range
/// along the row (None when the whole row is padding).
#[inline(always)]
fn leaf_row(v: &View, outer_idx: &[usize], row: bool) -> Option<(isize, usize, usize)> {
    let mut off = v.offset;
    for (d, &i) in outer_idx.iter().enumerate() {
        if v.padded && (i < v.lo[d] || i >= v.hi[d]) {
            return None;
        }
        off += i as isize * v.strides[d];
    }
    if row {
        let last = outer_idx.len();
        Some((off, v.lo[last], v.hi[last]))
    } else {
        Some((off, 0, 1))
    }
}

/// Per-thread working memory of a row program (not shared between threads).
pub struct Scratch {
    rows: Vec<f32>,
    scalars: Vec<f32>,
    /// where each row instruction's current row is: its scratch row, or
    /// straight in an input buffer when that row is contiguous (no copy)
    at: Vec<*const f32>,
    /// row length the scratch rows are laid out for
    stride: usize,
    /// the guard input's row when it has to be gathered
    guard: Vec<f32>,
}

impl Kernel for RowProgram {
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        Some(self)
    }
    fn name(&self) -> String {
        "RowProgram".into()
    }
    fn output_shapes(&self, _: &[View], dims: &DimValues) -> Vec<Vec<usize>> {
        let (outer, r) = self.dims(dims);
        self.outputs
            .iter()
            .map(|&k| {
                let mut s = outer.clone();
                if self.instrs[k].row {
                    s.push(r);
                }
                s
            })
            .collect()
    }
    fn fused_from(&self) -> Vec<String> {
        let mut f = self.from.clone();
        if let Some(g) = self.guard {
            f.push(format!("(masked columns skipped: input {} is the mask)", g.input));
        }
        if self.instrs.iter().any(|i| matches!(i.op, RowOp::Softmax(..))) {
            f.push("(softmax as one routine)".into());
        }
        if self.instrs.iter().any(|i| matches!(i.op, RowOp::Silu(..))) {
            f.push("(silu as one routine)".into());
        }
        f
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], dims: &DimValues) {
        let (outer, r) = self.dims(dims);
        let rows: usize = outer.iter().product();
        let outs: Vec<OutPtr> = outputs.iter_mut().map(|o| OutPtr(o.as_mut_ptr(), o.len())).collect();
        let n = self.instrs.len();
        let work = rows * r * n.max(1);
        let chunk = if work < (1 << 16) { rows.max(1) } else { (rows / (4 * rayon::current_num_threads())).max(1) };
        let run_rows = |start: usize, end: usize| {
            let mut s = self.scratch(r, dims);
            let mut idx = vec![0usize; outer.len()];
            for row in start..end {
                unravel(row, &outer, &mut idx);
                let n = self.live_len(&idx, r, inputs, None, &mut s);
                self.eval_row(&idx, n, inputs, None, &mut s);
                self.write_row(row, r, n, &outs, &s);
            }
        };
        if chunk >= rows {
            run_rows(0, rows);
        } else {
            (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| run_rows(c * chunk, ((c + 1) * chunk).min(rows)));
        }
    }
    fn cost(&self, inputs: &[View], outputs: &[Vec<usize>]) -> Cost {
        let read: usize = inputs.iter().map(|v| v.numel()).sum();
        let written: usize = outputs.iter().map(|o| o.iter().product::<usize>()).sum();
        let per_row_len = outputs.iter().map(|o| o.iter().product::<usize>()).max().unwrap_or(0);
        Cost { flops: (self.instrs.len() * per_row_len) as f64, bytes: 4.0 * (read + written) as f64 }
    }
}

impl RowProgram {
    /// Working memory for rows of length `r`, constants filled in.
    pub fn scratch(&self, r: usize, dims: &DimValues) -> Scratch {
        let scalars = self
            .instrs
            .iter()
            .map(|i| match &i.op {
                RowOp::Const(v) => *v,
                RowOp::Dim(e) => eval(e, dims, &mut vec![]) as f32,
                _ => 0.0,
            })
            .collect();
        let rows = vec![0.0; self.instrs.len() * r];
        let at = (0..self.instrs.len()).map(|k| rows[k * r..].as_ptr()).collect();
        let guard = vec![0.0; if self.guard.is_some() { r } else { 0 }];
        Scratch { rows, scalars, at, stride: r, guard }
    }

    /// The row of output `o` after `eval_row` over `n` columns.
    pub fn output_row<'a>(&self, o: usize, n: usize, s: &'a Scratch) -> &'a [f32] {
        // SAFETY: `at` points at n valid values (a scratch row or an input row)
        unsafe { std::slice::from_raw_parts(s.at[self.outputs[o]], n) }
    }

    /// How many leading columns of the row at `idx` (of `r`) the program
    /// must evaluate: up to the guard input's last unmasked column; all of
    /// them without a guard, or when every column is masked.
    pub fn live_len(&self, idx: &[usize], r: usize, inputs: &[Arg], given: Option<(usize, &[f32])>, s: &mut Scratch) -> usize {
        let Some(g) = self.guard else { return r };
        let row: &[f32] = match given {
            Some((i, row)) if i == g.input => row,
            _ => match direct_row(&inputs[g.input], idx, r) {
                // SAFETY: a whole contiguous row of the input buffer
                Some(p) => unsafe { std::slice::from_raw_parts(p, r) },
                None => {
                    load_row(&inputs[g.input], idx, &mut s.guard[..r]);
                    &s.guard[..r]
                }
            },
        };
        // from the end, a block of 16 at a time (branch-free, vectorised)
        let mut n = r;
        while n >= 16 && row[n - 16..n].iter().fold(true, |all, &v| all & (v <= MASKED_AT)) {
            n -= 16;
        }
        match row[..n].iter().rposition(|&v| !(v <= MASKED_AT)) {
            Some(last) => last + 1,
            None => r,
        }
    }

    /// Run the program on the first `n` columns of the row at outer index
    /// `idx` (`n` is the row length, or less per `live_len`). `given`
    /// supplies the row of one input directly (fused attention computes its
    /// scores row).
    pub fn eval_row(&self, idx: &[usize], n: usize, inputs: &[Arg], given: Option<(usize, &[f32])>, s: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        if super::simd::avx2() {
            // SAFETY: the CPU has AVX2 and FMA
            return unsafe { self.eval_row_avx2(idx, n, inputs, given, s) };
        }
        self.eval_row_body(idx, n, inputs, given, s)
    }

    /// [`Self::eval_row`] compiled for AVX2: the same operations in the
    /// same order (so the same results), eight lanes at a time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn eval_row_avx2(&self, idx: &[usize], n: usize, inputs: &[Arg], given: Option<(usize, &[f32])>, s: &mut Scratch) {
        self.eval_row_body(idx, n, inputs, given, s)
    }

    #[inline(always)]
    pub(crate) fn eval_row_body(&self, idx: &[usize], n: usize, inputs: &[Arg], given: Option<(usize, &[f32])>, s: &mut Scratch) {
        let (r, stride) = (n, s.stride);
        // SAFETY (the raw rows below): `s.at[j]` points at r values that stay
        // valid for this call: a scratch row (distinct from the one being
        // written) or a row of an input buffer.
        let row_of = |at: &[*const f32], j: usize| unsafe { std::slice::from_raw_parts(at[j], r) };
        for (k, ins) in self.instrs.iter().enumerate() {
            if ins.row {
                if let RowOp::Input(i) = &ins.op {
                    let direct = match given {
                        Some((g, row)) if g == *i => Some(row.as_ptr()),
                        _ => direct_row(&inputs[*i], idx, r),
                    };
                    if let Some(p) = direct {
                        s.at[k] = p;
                        continue;
                    }
                }
                let dst_ptr = s.rows[k * stride..].as_mut_ptr();
                s.at[k] = dst_ptr;
                // SAFETY: scratch row k, written only here
                let dst = unsafe { std::slice::from_raw_parts_mut(dst_ptr, r) };
                let src = |j: usize| -> Operand {
                    if self.instrs[j].row {
                        Operand::Row(row_of(&s.at, j))
                    } else {
                        Operand::Scalar(s.scalars[j])
                    }
                };
                match &ins.op {
                    RowOp::Input(i) => load_row(&inputs[*i], idx, dst),
                    RowOp::Const(_) | RowOp::Dim(_) => dst.fill(s.scalars[k]),
                    RowOp::Unary(op, a) => match src(*a) {
                        Operand::Row(x) => op.apply_row(x, dst),
                        Operand::Scalar(x) => dst.fill(op.apply(x)),
                    },
                    RowOp::Binary(op, a, b) => binary_row(*op, src(*a), src(*b), dst),
                    RowOp::Softmax(a, c) => softmax_row(row_of(&s.at, *a), *c, dst),
                    RowOp::Silu(x, a, b) => silu_row(row_of(&s.at, *x), *a, *b, dst),
                    RowOp::Reduce(..) => unreachable!("a reduction is a scalar"),
                }
            } else {
                let v = match &ins.op {
                    RowOp::Input(i) => {
                        let a = &inputs[*i];
                        leaf_row(&a.view, idx, false).map_or(0.0, |(off, _, _)| a.data[off as usize])
                    }
                    RowOp::Const(_) | RowOp::Dim(_) => s.scalars[k],
                    RowOp::Unary(op, a) => op.apply(s.scalars[*a]),
                    RowOp::Binary(op, a, b) => op.apply(s.scalars[*a], s.scalars[*b]),
                    RowOp::Reduce(op, a) => op.of(row_of(&s.at, *a)),
                    RowOp::Softmax(..) | RowOp::Silu(..) => unreachable!("a softmax or silu is a row"),
                };
                s.scalars[k] = v;
            }
        }
    }

    /// Write this row's outputs: `n` evaluated columns, zeros after them.
    fn write_row(&self, row: usize, r: usize, n: usize, outs: &[OutPtr], s: &Scratch) {
        for (o, &k) in self.outputs.iter().enumerate() {
            let OutPtr(p, len) = outs[o];
            // SAFETY: output `o` holds rows x (R or 1) values; this row's slot
            // is written by this call only.
            unsafe {
                if self.instrs[k].row {
                    debug_assert!((row + 1) * r <= len);
                    std::ptr::copy_nonoverlapping(s.at[k], p.add(row * r), n);
                    std::ptr::write_bytes(p.add(row * r + n), 0, r - n);
                } else {
                    debug_assert!(row < len);
                    *p.add(row) = s.scalars[k];
                }
            }
        }
    }
}

enum Operand<'a> {
    Row(&'a [f32]),
    Scalar(f32),
}

/// The first `n` values of an input's row as they lie in its buffer, when
/// they are contiguous and not padding.
#[inline(always)]
fn direct_row(a: &Arg, idx: &[usize], n: usize) -> Option<*const f32> {
    let v = &a.view;
    if v.strides[v.rank - 1] != 1 && n > 1 {
        return None;
    }
    let (off, lo, hi) = leaf_row(v, idx, true)?;
    (lo == 0 && hi >= n).then(|| a.data[off as usize..][..n].as_ptr())
}

/// Read the first `dst.len()` values of an input's row at outer index `idx`
/// into `dst`, zero where padded.
#[inline(always)]
pub(crate) fn load_row(a: &Arg, idx: &[usize], dst: &mut [f32]) {
    let v = &a.view;
    let last = v.rank - 1;
    let stride = v.strides[last];
    match leaf_row(v, idx, true) {
        None => dst.fill(0.0),
        Some((off, lo, hi)) => {
            let (lo, hi) = (lo.min(dst.len()), hi.min(dst.len()));
            if lo > 0 || hi < dst.len() {
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
            }
            let part = &mut dst[lo..hi];
            let start = off + lo as isize * stride;
            match stride {
                1 => part.copy_from_slice(&a.data[start as usize..][..part.len()]),
                0 => part.fill(a.data[start as usize]),
                _ => part.iter_mut().enumerate().for_each(|(j, o)| *o = a.data[(start + j as isize * stride) as usize]),
            }
        }
    }
}

/// The builder's softmax chain in three passes, with its arithmetic:
/// `max`, then `exp2((x + -max) * c)`, their `sum`, times `1 / sum`.
#[inline(always)]
fn softmax_row(x: &[f32], c: f32, dst: &mut [f32]) {
    let neg = -super::reduce::max(x);
    dst.iter_mut().zip(x).for_each(|(o, &v)| *o = super::fastmath::exp2((v + neg) * c));
    let inv = 1.0 / super::reduce::sum(dst);
    dst.iter_mut().for_each(|o| *o *= inv);
}

/// The builder's SiLU chain in one pass, with its arithmetic:
/// `x * recip(exp2((x * a) * b) + 1)`.
#[inline(always)]
fn silu_row(x: &[f32], a: f32, b: f32, dst: &mut [f32]) {
    dst.iter_mut().zip(x).for_each(|(o, &v)| *o = v * (1.0 / (super::fastmath::exp2((v * a) * b) + 1.0)));
}

#[inline(always)]
fn binary_row(op: BinaryOp, a: Operand, b: Operand, dst: &mut [f32]) {
    macro_rules! go {
        ($f:expr) => {
            match (a, b) {
                (Operand::Row(x), Operand::Row(y)) => dst.iter_mut().zip(x).zip(y).for_each(|((o, &x), &y)| *o = $f(x, y)),
                (Operand::Row(x), Operand::Scalar(y)) => dst.iter_mut().zip(x).for_each(|(o, &x)| *o = $f(x, y)),
                (Operand::Scalar(x), Operand::Row(y)) => dst.iter_mut().zip(y).for_each(|(o, &y)| *o = $f(x, y)),
                (Operand::Scalar(x), Operand::Scalar(y)) => dst.fill($f(x, y)),
            }
        };
    }
    match op {
        BinaryOp::Add => go!(|x: f32, y: f32| x + y),
        BinaryOp::Mul => go!(|x: f32, y: f32| x * y),
        _ => go!(|x: f32, y: f32| op.apply(x, y)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A program over one row of 8 with two row inputs.
    pub fn program(instrs: &[(RowOp, bool)], outputs: &[usize]) -> RowProgram {
        RowProgram {
            instrs: instrs.iter().map(|(op, row)| Instr { op: op.clone(), row: *row }).collect(),
            input_row: vec![true, true],
            outputs: outputs.to_vec(),
            outer: vec![],
            row_len: 8.into(),
            from: vec![],
            guard: None,
        }
    }

    /// softmax(scores * 0.25 + mask) as the builder's graph fuses it (the
    /// exponentials are instruction 11)
    pub fn masked_softmax() -> RowProgram {
        use BinaryOp::*;
        use RowOp::*;
        program(
            &[
                (Input(0), true),
                (Const(0.25), false),
                (Binary(Mul, 0, 1), true),
                (Input(1), true),
                (Binary(Add, 2, 3), true),
                (Reduce(ReduceOp::Max, 4), false),
                (Const(-1.0), false),
                (Binary(Mul, 5, 6), true),
                (Binary(Add, 4, 7), true),
                (Const(std::f32::consts::LOG2_E), false),
                (Binary(Mul, 8, 9), true),
                (Unary(UnaryOp::Exp2, 10), true),
                (Reduce(ReduceOp::Sum, 11), false),
                (Unary(UnaryOp::Recip, 12), false),
                (Binary(Mul, 11, 13), true),
            ],
            &[14],
        )
    }

    /// `silu(x) * up` as the builder's graph fuses it (the gated MLP's
    /// program: `x * -1`, `* log2 e`, `exp2`, `+ 1`, `recip`, `x *`)
    pub fn silu_times_up() -> RowProgram {
        use BinaryOp::*;
        use RowOp::*;
        program(
            &[
                (Input(0), true),
                (Const(-1.0), false),
                (Binary(Mul, 0, 1), true),
                (Const(std::f32::consts::LOG2_E), false),
                (Binary(Mul, 2, 3), true),
                (Unary(UnaryOp::Exp2, 4), true),
                (Const(1.0), false),
                (Binary(Add, 5, 6), true),
                (Unary(UnaryOp::Recip, 7), true),
                (Binary(Mul, 0, 8), true),
                (Input(1), true),
                (Binary(Mul, 9, 10), true),
            ],
            &[11],
        )
    }

    /// A contiguous row as a kernel argument.
    pub fn arg(x: &[f32]) -> Arg<'_> {
        Arg::f32(x, View::contiguous(&[x.len()]))
    }
}
