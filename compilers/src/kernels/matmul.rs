//! Batched matrix multiply of any rank, the lowering of luminal's
//! broadcast-`Mul` + `SumReduce` pattern.
//!
//! Inputs are the two operands of the `Mul`, already broadcast to a common
//! logical shape `D`; the output is `sum over axis of A * B`, contiguous, `D`
//! without `axis`. The kernel reads the strides: a dim where only `B` is
//! broadcast (stride 0) is a row dim of the product, a dim where only `A` is
//! broadcast is a column dim, the rest are batch dims. The largest row and
//! column dims go to one `gemm` call each; the others are looped over.

use gemm::Parallelism;
use luminal::prelude::ShapeTracker;
use rayon::prelude::*;

use half::bf16;

use super::bf16_gemm::{self, gemm_bf16};
use super::contiguous::Contiguous;
use super::gemv::{gemv_as, GemvForm, Rows, MAX_ROWS};
use super::packed::Packed;
use super::q8::{self, gemv_q8, Q8Rows};
use super::{Ptr, Shared};
use crate::kernel::{Arg, Cost, Kernel};
use crate::search;
use crate::shape::is_broadcast;
use crate::view::{contiguous_strides, DimValues, View};

#[derive(Clone, Debug, PartialEq)]
pub struct MatMul {
    /// The reduced (inner-product) axis of the broadcast shape.
    pub axis: usize,
    /// Under `--fusion search`, the kernel's node: each call's way is then
    /// searched for ([`crate::search`]) instead of `full`'s hand-written rules.
    pub search: Option<usize>,
    /// Multiply in bf16 (operands rounded, sums in f32) where the CPU has
    /// AVX512-BF16: mixed-precision training ([`crate::passes::bf16_products`]).
    pub bf16: bool,
}

/// What each logical dim of `sum(a * b, axis)` is to a matrix product.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Role {
    Batch,
    /// broadcast in `b` only: a row of the product
    M,
    /// broadcast in `a` only: a column
    N,
    /// the reduced axis
    K,
    /// broadcast in both
    Both,
}

/// The one definition of a matrix product, shared by the `MatMul` pass and
/// autograd: `sum(a * b, axis)` over operand views `a` and `b` is one when
/// the reduced axis is real in both and some dim is broadcast in exactly one
/// operand (rather than a dot product per row). Returns each dim's role.
pub(crate) fn product_roles(a: &ShapeTracker, b: &ShapeTracker, axis: usize) -> Option<Vec<Role>> {
    if is_broadcast(a, axis) || is_broadcast(b, axis) {
        return None;
    }
    let roles: Vec<Role> = (0..a.len())
        .map(|l| match (l == axis, is_broadcast(a, l), is_broadcast(b, l)) {
            (true, _, _) => Role::K,
            (_, false, false) => Role::Batch,
            (_, false, true) => Role::M,
            (_, true, false) => Role::N,
            (_, true, true) => Role::Both,
        })
        .collect();
    roles.iter().any(|r| matches!(r, Role::M | Role::N)).then_some(roles)
}

/// How one call maps onto gemm: `out[i, j] = sum_k a[i, k] b[k, j]` with
/// sizes, strides and the loops around it.
#[derive(Debug)]
pub(crate) struct GemmPlan {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// (a, b) strides along the row dim, column dim and inner axis
    pub row: (isize, isize),
    pub col: (isize, isize),
    pub inner: (isize, isize),
    pub out_row: isize,
    pub out_col: isize,
    /// loop dims: (size, a stride, b stride, out stride)
    pub loops: Vec<(usize, isize, isize, isize)>,
}

impl MatMul {
    pub(crate) fn plan(&self, a: &View, b: &View) -> GemmPlan {
        let dims = a.dims();
        let mut out_shape = dims.to_vec();
        out_shape.remove(self.axis);
        let ostr = contiguous_strides(&out_shape);
        let out_stride = |d: usize| ostr[if d < self.axis { d } else { d - 1 }] as isize;
        let (mut row, mut col): (Option<usize>, Option<usize>) = (None, None);
        for d in 0..dims.len() {
            if d == self.axis || dims[d] == 1 {
                continue;
            }
            let (sa, sb) = (a.strides[d], b.strides[d]);
            if sb == 0 && sa != 0 && row.is_none_or(|r| dims[d] >= dims[r]) {
                row = Some(d);
            } else if sa == 0 && sb != 0 && col.is_none_or(|c| dims[d] >= dims[c]) {
                col = Some(d);
            }
        }
        let mut loops: Vec<(usize, isize, isize, isize)> = (0..dims.len())
            .filter(|&d| d != self.axis && Some(d) != row && Some(d) != col && dims[d] != 1)
            .map(|d| (dims[d], a.strides[d], b.strides[d], out_stride(d)))
            .collect();
        let pick = |d: Option<usize>| d.map_or((1, (0, 0), 1), |d| (dims[d], (a.strides[d], b.strides[d]), out_stride(d)));
        let (mut m, row_s, out_row) = pick(row);
        let (mut n, col_s, out_col) = pick(col);
        // a loop dim that continues the row (or column) dim in both the
        // operand and the output joins it: `[b, s, k] x [k, n]` is one
        // product of b*s rows, not b products of s rows
        while let Some(i) = loops.iter().position(|&(size, sa, sb, so)| {
            size > 1 && row.is_some() && sb == 0 && sa == row_s.0 * m as isize && so == out_row * m as isize
        }) {
            m *= loops.remove(i).0;
        }
        while let Some(i) = loops.iter().position(|&(size, sa, sb, so)| {
            size > 1 && col.is_some() && sa == 0 && sb == col_s.1 * n as isize && so == out_col * n as isize
        }) {
            n *= loops.remove(i).0;
        }
        GemmPlan {
            m,
            n,
            k: dims[self.axis],
            row: row_s,
            col: col_s,
            inner: (a.strides[self.axis], b.strides[self.axis]),
            out_row,
            out_col,
            loops,
        }
    }
}

impl Kernel for MatMul {
    fn name(&self) -> String {
        if self.bf16 { "MatMul bf16" } else { "MatMul" }.into()
    }
    fn fused_from(&self) -> Vec<String> {
        vec!["Mul".into(), format!("SumReduce({})", self.axis)]
    }
    fn output_shapes(&self, inputs: &[View], _: &DimValues) -> Vec<Vec<usize>> {
        assert_eq!(inputs[0].dims(), inputs[1].dims(), "MatMul operands of different shapes");
        let mut s = inputs[0].dims().to_vec();
        s.remove(self.axis);
        vec![s]
    }
    fn reads_packed(&self, input: usize) -> bool {
        input == 1
    }
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], dims: &DimValues) {
        if let Some(w) = inputs[1].packed {
            // packed weights: a GEMV reads them as they are (Q8_0 on rows of
            // whole blocks); any other call (a prompt) multiplies their
            // values in f32
            let p = self.plan(&inputs[0].view, &inputs[1].view);
            if p.is_gemv() && !inputs[0].view.padded && self.run_packed(&p, inputs[0], (w, inputs[1].view.offset), outputs[0]) {
                return;
            }
            // a prompt: in bf16 where the CPU multiplies bf16 (Q8_0 values
            // rounded to it), else in f32
            if bf16_gemm::available() && !p.is_gemv() && !inputs[0].view.padded && !inputs[1].view.padded && p.k > 0 {
                let a = (inputs[0].data, inputs[0].view);
                // Q8_0 rows on block boundaries dequantize as they are packed
                let on_blocks = |q| {
                    p.inner.1 == 1
                        && Q8Rows::new(q, inputs[1].view.offset, p.col.1, p.k).is_some()
                        && p.loops.iter().all(|l| l.2 % q8::BLOCK as isize == 0)
                };
                if let Packed::Q8_0(q) = w {
                    if on_blocks(q) {
                        return self.run_plan(&p, a, (Rhs::Q8(q), inputs[1].view), outputs[0]);
                    }
                }
                return w.with_bf16(|h| self.run_plan(&p, a, (Rhs::Bf16(h), inputs[1].view), outputs[0]));
            }
            return w.with_values(|values| self.run(&[inputs[0], Arg::f32(values, inputs[1].view)], outputs, dims));
        }
        // Padded operands are rare (never in our models): materialise them.
        let dense: Vec<(Vec<f32>, View)> = inputs
            .iter()
            .map(|x| {
                if x.view.padded {
                    let mut buf = vec![0.0; x.view.numel()];
                    Contiguous.run(&[*x], &mut [&mut buf], dims);
                    let v = View::contiguous(x.view.dims());
                    (buf, v)
                } else {
                    (vec![], x.view)
                }
            })
            .collect();
        let data = |i: usize| {
            if inputs[i].view.padded {
                dense[i].0.as_slice()
            } else {
                inputs[i].data
            }
        };
        let (a, b) = ((data(0), dense[0].1), (data(1), dense[1].1));
        let out = &mut *outputs[0];
        let p = self.plan(&a.1, &b.1);
        if p.k == 0 {
            out.fill(0.0);
            return;
        }
        let rhs = if self.bf16 && bf16_gemm::available() { Rhs::F32InBf16(b.0) } else { Rhs::F32(b.0) };
        self.run_plan(&p, a, (rhs, b.1), out)
    }
    fn cost(&self, inputs: &[View], outputs: &[Vec<usize>]) -> Cost {
        let (a, b) = (&inputs[0], &inputs[1]);
        let flops = 2.0 * a.numel() as f64;
        // distinct elements read: the non-broadcast part of each operand
        let distinct = |v: &View| (0..v.rank).filter(|&d| v.strides[d] != 0).map(|d| v.shape[d]).product::<usize>();
        let out: usize = outputs[0].iter().product();
        Cost { flops, bytes: 4.0 * (distinct(a) + distinct(b) + out) as f64 }
    }
}

impl MatMul {
    /// Plan `p`'s product in the hand-written way or the one searched for.
    fn run_plan(&self, p: &GemmPlan, a: (&[f32], View), b: (Rhs, View), out: &mut [f32]) {
        let threads = rayon::current_num_threads();
        let Some(node) = self.search else {
            return run_way(Way::hand_written(p, threads), p, a, b, out);
        };
        let ways = Way::candidates(p, threads);
        let key = match b.0 {
            Rhs::F32(_) => p.key(threads),
            Rhs::Bf16(_) | Rhs::F32InBf16(_) | Rhs::Q8(_) => format!("{} bf16", p.key(threads)),
        };
        search::run_searched(node, &key, || ways.iter().map(|w| w.name()).collect(), |i| run_way(ways[i], p, a, b, out));
    }

    /// A GEMV call against packed weight rows from element `offset`, in the
    /// hand-written form or the one searched for; false (and nothing done)
    /// where Q8_0 rows do not start on block boundaries.
    fn run_packed(&self, p: &GemmPlan, a: Arg, (w, offset): (Packed, isize), out: &mut [f32]) -> bool {
        let rows = Rows { data: a.data, offset: a.view.offset, stride: p.row.0, len: p.k };
        let (out, out_row) = (Ptr(out.as_mut_ptr()), p.out_row() as usize);
        // SAFETY (both): views were bounds-checked by the executor; `out` is
        // the contiguous [m, n] output; every form is one this CPU runs
        let go: Box<dyn Fn(GemvForm)> = match w {
            Packed::Q8_0(q) => {
                let Some(w) = Q8Rows::new(q, offset, p.col.1, p.k) else { return false };
                Box::new(move |form| unsafe { gemv_q8(form, rows, p.m, w, p.n, out, out_row) })
            }
            Packed::Bf16(v) => {
                let w = Rows { data: v, offset, stride: p.col.1, len: p.k };
                Box::new(move |form| unsafe { gemv_as(form, rows, p.m, w, p.n, out, out_row) })
            }
        };
        let threads = rayon::current_num_threads();
        let Some(node) = self.search else {
            go(GemvForm::default_for(threads > 1 && p.n * p.k >= 1 << 16));
            return true;
        };
        let forms = GemvForm::all(threads, p.n);
        let key = format!("{} {}", p.key(threads), w.dtype().name());
        search::run_searched(node, &key, || forms.iter().map(|f| f.name()).collect(), |i| go(forms[i]));
        true
    }
}

/// One way to run a product. The ways of a call compute the same values,
/// within rounding (gemm's blocking may differ with the columns it is
/// given); the GEMV forms, the only ways of a call of a few rows, agree
/// bit for bit, so a sequence decoded with others still gets its values
/// alone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Way {
    /// a few rows against rows of weights ([`gemv_as`](super::gemv::gemv_as))
    Gemv(GemvForm),
    /// a whole product per thread
    PerProduct,
    /// each thread its own columns of every product
    Columns,
    /// each product in turn, gemm splitting it across this many threads
    Gemm(usize),
}

impl Way {
    pub(crate) fn name(&self) -> String {
        match self {
            Way::Gemv(f) => f.name(),
            Way::PerProduct => "a product per thread".into(),
            Way::Columns => "columns per thread".into(),
            Way::Gemm(1) => "gemm on one thread".into(),
            Way::Gemm(t) => format!("gemm on {t} threads"),
        }
    }

    /// `full`'s choice, by rules measured on one machine.
    fn hand_written(p: &GemmPlan, threads: usize) -> Way {
        if p.is_gemv() {
            return Way::Gemv(GemvForm::default_for(threads > 1 && p.n * p.k >= 1 << 16));
        }
        let flops = 2 * p.m * p.n * p.k;
        let batches = p.batches();
        // many products (attention heads), or small ones: one per thread;
        // a few big ones: each split across the threads by gemm
        if threads > 1 && (batches >= 2 * threads || (batches > 1 && flops < (1 << 22))) {
            Way::PerProduct
        } else if threads > 1 && flops >= (1 << 20) && p.n <= 256 && p.n >= 32 * threads {
            // a narrow product (a k or v projection): gemm splits it poorly
            // (256 x 256 x 512: ~130 against ~195 GFLOP/s)
            Way::Columns
        } else if flops >= (1 << 20) && threads > 1 {
            Way::Gemm(threads)
        } else {
            Way::Gemm(1)
        }
    }

    /// Every way `search` times for a call.
    fn candidates(p: &GemmPlan, threads: usize) -> Vec<Way> {
        if p.is_gemv() {
            return GemvForm::all(threads, p.n).into_iter().map(Way::Gemv).collect();
        }
        let mut v = vec![Way::Gemm(1)];
        if threads > 1 {
            v.push(Way::Gemm(threads));
            if p.batches() > 1 {
                v.push(Way::PerProduct);
            }
            if p.n >= 32 * threads {
                v.push(Way::Columns);
            }
        }
        v
    }
}

impl GemmPlan {
    fn batches(&self) -> usize {
        self.loops.iter().map(|l| l.0).product()
    }

    /// (one row has no row strides: the plan leaves them at 0 and 1)
    fn out_row(&self) -> isize {
        if self.m == 1 {
            self.n as isize
        } else {
            self.out_row
        }
    }

    /// A token or a decoding batch against weights stored as rows of k.
    fn is_gemv(&self) -> bool {
        self.batches() == 1 && self.m <= MAX_ROWS && self.inner == (1, 1) && self.out_col == 1 && self.out_row() >= self.n as isize
    }

    /// The call's shape, as `search` keys its choices.
    fn key(&self, threads: usize) -> String {
        let unit = |s: isize| if s == 1 { "1" } else { "s" };
        format!(
            "MatMul {}x{}x{} batches {} inner ({},{}) out_col {} threads {threads}",
            self.m,
            self.n,
            self.k,
            self.batches(),
            unit(self.inner.0),
            unit(self.inner.1),
            unit(self.out_col)
        )
    }
}

/// Run a product `way`: `out` is the contiguous output of plan `p` over
/// the operands `a` and `b` (data and view).
fn run_way(way: Way, p: &GemmPlan, a: (&[f32], View), b: (Rhs, View), out: &mut [f32]) {
    if let Way::Gemv(form) = way {
        let rows = Rows { data: a.0, offset: a.1.offset, stride: p.row.0, len: p.k };
        let (out, out_row) = (Ptr(out.as_mut_ptr()), p.out_row() as usize);
        let (offset, stride) = (b.1.offset, p.col.1);
        // SAFETY: views were bounds-checked by the executor; `out` is the
        // contiguous [m, n] output; the form is one this CPU runs
        match b.0 {
            Rhs::F32(data) | Rhs::F32InBf16(data) => unsafe {
                gemv_as(form, rows, p.m, Rows { data, offset, stride, len: p.k }, p.n, out, out_row)
            },
            Rhs::Bf16(data) => unsafe { gemv_as(form, rows, p.m, Rows { data, offset, stride, len: p.k }, p.n, out, out_row) },
            Rhs::Q8(q) => unsafe {
                let w = Q8Rows::new(q, offset, stride, p.k).expect("Q8_0 operands are checked to sit on block boundaries");
                gemv_q8(form, rows, p.m, w, p.n, out, out_row)
            },
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let batches = p.batches();
    let (a_ptr, o_ptr) = (Shared(a.0.as_ptr()), Shared(out.as_mut_ptr()));
    let (a_off, b_off) = (a.1.offset, b.1.offset);
    // columns [c0, c0 + cols) of product `batch`
    let call_cols = |batch: usize, (c0, cols): (usize, usize), par: Parallelism| {
        let (mut ao, mut bo, mut oo) = (a_off, b_off, 0isize);
        let mut rest = batch;
        for &(size, sa, sb, so) in p.loops.iter().rev() {
            let i = (rest % size) as isize;
            rest /= size;
            ao += i * sa;
            bo += i * sb;
            oo += i * so;
        }
        // SAFETY: views were bounds-checked by the executor; every batch
        // writes a disjoint block of the contiguous output.
        unsafe {
            let c0 = c0 as isize;
            product(
                (p.m, cols, p.k),
                (o_ptr.get().offset(oo + c0 * p.out_col), p.out_col, p.out_row),
                (a_ptr.get().offset(ao), p.inner.0, p.row.0),
                (b.0, bo + c0 * p.col.1, p.col.1, p.inner.1),
                par,
            );
        }
    };
    let call = |batch: usize, par: Parallelism| call_cols(batch, (0, p.n), par);
    match way {
        Way::PerProduct => (0..batches).into_par_iter().for_each(|i| call(i, Parallelism::None)),
        Way::Columns => {
            let chunk = p.n.div_ceil(threads).next_multiple_of(16);
            let parts = p.n.div_ceil(chunk);
            (0..batches * parts).into_par_iter().for_each(|i| {
                let c0 = i % parts * chunk;
                call_cols(i / parts, (c0, chunk.min(p.n - c0)), Parallelism::None)
            });
        }
        Way::Gemm(t) => {
            let par = if t > 1 { Parallelism::Rayon(t) } else { Parallelism::None };
            (0..batches).for_each(|i| call(i, par));
        }
        Way::Gemv(_) => unreachable!("handled above"),
    }
}

/// A product's right operand as a kernel holds it, and how it multiplies:
/// f32 values in f32, or bf16 values (packed weights), or f32 values
/// rounded to bf16 (mixed precision), in bf16 ([`gemm_bf16`]). A GEMV
/// (a few rows) multiplies every kind in f32.
#[derive(Clone, Copy)]
pub(crate) enum Rhs<'a> {
    F32(&'a [f32]),
    /// only where [`bf16_gemm::available`]
    Bf16(&'a [bf16]),
    /// only where [`bf16_gemm::available`]
    F32InBf16(&'a [f32]),
    /// Q8_0 blocks, each row of k (a column of the product) on block
    /// boundaries ([`Q8Rows::new`]), dequantized to bf16 as they are packed;
    /// only where [`bf16_gemm::available`]
    Q8(&'a [u8]),
}

impl<'a> Rhs<'a> {
    /// An input's elements: its f32 data (multiplied in bf16 when `bf16` and
    /// the CPU can), or its packed values (a Q8_0 input's rows on block
    /// boundaries, which callers check: [`Q8Rows::new`]; else they round it
    /// to bf16 first, [`Packed::with_bf16`]).
    pub(crate) fn of(arg: &Arg<'a>, bf16: bool) -> Rhs<'a> {
        match arg.packed {
            None if bf16 && bf16_gemm::available() => Rhs::F32InBf16(arg.data),
            None => Rhs::F32(arg.data),
            Some(Packed::Bf16(h)) => Rhs::Bf16(h),
            Some(Packed::Q8_0(q)) => Rhs::Q8(q),
        }
    }
}

/// [`sgemm`] with the right operand `(data, offset, col stride, row
/// stride)` in f32, or in bf16 through [`gemm_bf16`] (which then rounds the
/// left operand to bf16 too).
///
/// # Safety
/// As for [`sgemm`]; a bf16 operand only where [`bf16_gemm::available`].
pub(crate) unsafe fn product(
    mnk: (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    (rhs, offset, cs, rs): (Rhs, isize, isize, isize),
    par: Parallelism,
) {
    let threads = match par {
        Parallelism::None => 1,
        Parallelism::Rayon(0) => rayon::current_num_threads(),
        Parallelism::Rayon(t) => t,
    };
    // SAFETY: per the contract
    unsafe {
        match rhs {
            Rhs::F32(b) => sgemm(mnk, dst, lhs, (b.as_ptr().offset(offset), cs, rs), par),
            Rhs::Bf16(b) => gemm_bf16(mnk, dst, lhs, Shared((b.as_ptr().offset(offset), cs, rs)), false, threads),
            Rhs::F32InBf16(b) => gemm_bf16(mnk, dst, lhs, Shared((b.as_ptr().offset(offset), cs, rs)), false, threads),
            Rhs::Q8(q) => {
                let rows = Q8Rows::new(q, offset, cs, mnk.2).filter(|_| rs == 1);
                gemm_bf16(mnk, dst, lhs, rows.expect("Q8_0 operands are checked to sit on block boundaries"), false, threads)
            }
        }
    }
}

/// `dst[m, n] = lhs[m, k] rhs[k, n]` through gemm, overwriting `dst`. Each
/// matrix is a pointer with its column and row strides; `par` says how gemm
/// may split the work.
///
/// # Safety
/// Every element the strides reach is in bounds, and no other thread writes
/// the part of `dst` this product writes.
pub(crate) unsafe fn sgemm(
    mnk: (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    par: Parallelism,
) {
    sgemm_into(mnk, dst, lhs, rhs, false, par)
}

/// [`sgemm`] that adds the product to `dst` when `accumulate`.
///
/// # Safety
/// As for [`sgemm`].
pub(crate) unsafe fn sgemm_into(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    accumulate: bool,
    par: Parallelism,
) {
    let keep = if accumulate { 1.0 } else { 0.0 };
    gemm::gemm(m, n, k, dst.0, dst.1, dst.2, accumulate, lhs.0, lhs.1, lhs.2, rhs.0, rhs.1, rhs.2, keep, 1.0, false, false, false, par)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a [b, s, k]` times `w [k, n]`, as the builder broadcasts them to
    /// `[b, s, n, k]`.
    fn operands(b: usize, s: usize, k: usize, n: usize) -> (View, View) {
        let dims = [b, s, n, k];
        let mut a = View::contiguous(&dims);
        a.strides[..4].copy_from_slice(&[(s * k) as isize, k as isize, 0, 1]);
        let mut w = View::contiguous(&dims);
        w.strides[..4].copy_from_slice(&[0, 0, 1, n as isize]);
        (a, w)
    }

    /// `sum_k a[d.., k] b[d.., k]` over the broadcast views, plainly.
    fn naive(a: (&[f32], View), b: (&[f32], View), dims: &[usize]) -> Vec<f32> {
        let (outer, k) = (dims[..3].iter().product::<usize>(), dims[3]);
        (0..outer)
            .map(|o| {
                let idx = [o / (dims[1] * dims[2]), o / dims[2] % dims[1], o % dims[2]];
                let at = |v: &View, kk: usize| {
                    (v.offset + (0..3).map(|d| idx[d] as isize * v.strides[d]).sum::<isize>() + kk as isize * v.strides[3]) as usize
                };
                (0..k).map(|kk| a.0[at(&a.1, kk)] as f64 * b.0[at(&b.1, kk)] as f64).sum::<f64>() as f32
            })
            .collect()
    }

    #[test]
    fn every_way_search_may_choose_computes_the_product() {
        let mut rng = 7u64;
        let mut next = move || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        // (batch, rows, k, columns): a token, a decoding batch, a prompt, a narrow projection
        let mut cases: Vec<(View, View, [usize; 4])> = [(1, 1, 64, 300), (1, 5, 96, 70), (2, 100, 64, 96), (1, 160, 128, 64)]
            .map(|(bt, s, k, n)| {
                let (a, w) = operands(bt, s, k, n);
                (a, w, [bt, s, n, k])
            })
            .to_vec();
        // attention-like: 4 heads, each [12, 16] x [16, 20]^T (a loop dim per head)
        let (h, s, t, k) = (4usize, 12usize, 20usize, 16usize);
        let dims = [h, s, t, k];
        let mut a = View::contiguous(&dims);
        a.strides[..4].copy_from_slice(&[(s * k) as isize, k as isize, 0, 1]);
        let mut b = View::contiguous(&dims);
        b.strides[..4].copy_from_slice(&[(t * k) as isize, 0, k as isize, 1]);
        cases.push((a, b, dims));
        for (av, bv, dims) in cases {
            let len = |v: &View| (0..4).map(|d| (dims[d] - 1) * v.strides[d] as usize).sum::<usize>() + 1;
            let ad: Vec<f32> = (0..len(&av)).map(|_| next()).collect();
            let bd: Vec<f32> = (0..len(&bv)).map(|_| next()).collect();
            let want = naive((&ad, av), (&bd, bv), &dims);
            let p = MatMul { axis: 3, search: None, bf16: false }.plan(&av, &bv);
            pool.install(|| {
                for way in Way::candidates(&p, 2) {
                    seen.insert(way.name());
                    let mut out = vec![f32::NAN; want.len()];
                    run_way(way, &p, (&ad, av), (Rhs::F32(&bd), bv), &mut out);
                    let worst = out.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                    // (sums of up to 128 products of values below 0.5, against f64)
                    assert!(worst < 1e-4, "{dims:?} {}: off by {worst}", way.name());
                    if bf16_gemm::available() {
                        // bf16 weights: the product of both operands rounded to bf16
                        let round = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
                        let (ah, bh) = (round(&ad), round(&bd));
                        let widen = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
                        let want = naive((&widen(&ah), av), (&widen(&bh), bv), &dims);
                        run_way(way, &p, (&ad, av), (Rhs::Bf16(&bh), bv), &mut out);
                        let worst = out.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                        assert!(worst < 1e-4, "{dims:?} {} on bf16: off by {worst}", way.name());
                        seen.insert(format!("{} on bf16", way.name()));
                    }
                }
            });
        }
        eprintln!("ways checked: {}", seen.into_iter().collect::<Vec<_>>().join(", "));
    }

    #[test]
    fn batch_rows_join_the_row_dim() {
        let (a, w) = operands(4, 256, 512, 1408);
        let p = MatMul { axis: 3, search: None, bf16: false }.plan(&a, &w);
        assert_eq!((p.m, p.n, p.k), (1024, 1408, 512));
        assert!(p.loops.is_empty(), "{:?}", p.loops);
        // a sliced batch (rows not adjacent to the next batch) stays a loop
        let (mut a, w) = operands(4, 256, 512, 1408);
        a.strides[0] = 2 * 256 * 512;
        let p = MatMul { axis: 3, search: None, bf16: false }.plan(&a, &w);
        assert_eq!((p.m, p.loops.len()), (256, 1));
    }
}
