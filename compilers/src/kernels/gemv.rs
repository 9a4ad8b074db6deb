//! A few rows times a matrix stored as rows of K (a weight `[N, K]` read as
//! its transpose): `out[r, j] = dot(a[r], b[j])`. Decoding is this, bound
//! by reading the weights, so each weight row is read once for all the
//! rows (the tokens of a decoding batch), while it is in cache.
//!
//! Every value is computed with exactly the arithmetic of [`dot`], however
//! many rows there are and however the work is split, so a sequence decoded
//! in a batch of others gets the same logits, bit for bit, as alone. The
//! AVX2 form, chosen at run time, does that arithmetic too, a lane per
//! partial sum. (There is no AVX-512 form yet: the one tried measured
//! slower, see `docs/performance.md`.)
//!
//! The weights are f32 or bf16 ([`Weight`]): a bf16 weight is widened to
//! the f32 it stands for (exactly: its bits, shifted) where it is read, so
//! decoding streams half the bytes and the arithmetic stays f32's.

use half::bf16;
use rayon::prelude::*;

use super::Ptr;

/// An element type weight rows may be stored in.
pub trait Weight: Copy + Send + Sync + 'static {
    /// The f32 value this element stands for.
    fn f32(self) -> f32;
    /// The bits of this element as a bf16 (an f32 rounds to nearest even).
    fn bf16_bits(self) -> u16;
    /// Eight consecutive elements from `p`, as f32 lanes.
    ///
    /// # Safety
    /// `p` points at eight readable elements; the CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Weight for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        bf16::from_f32(self).to_bits()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Weight for bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        self.to_bits()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8(p: *const bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // a bf16 is the top half of the f32 it stands for
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i))))
    }
}

/// Up to this many rows go through [`gemv_as`]; more are a matrix product
/// (prefill), where gemm's register blocking wins.
pub const MAX_ROWS: usize = 32;

/// Partial sums per dot product: lane `i` adds the products of elements
/// `8 c + i` (one AVX2 register).
const LANES: usize = 8;

/// The dot product every GEMV value is: eight partial sums over the
/// chunks of eight, added pairwise as [`finish`] does, then the tail in order.
pub fn dot<W: Weight>(a: &[f32], b: &[W]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot products of unequal lengths");
    let full = b.len() / LANES * LANES;
    let mut p = [0.0f32; LANES];
    for (x, y) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)) {
        for i in 0..LANES {
            p[i] += x[i] * y[i].f32();
        }
    }
    finish(&p, a, b, full)
}

/// A dot product's value from its partial sums over `x[..full]` and
/// `w[..full]`: added pairwise, then the tail in order.
#[inline(always)]
fn finish<W: Weight>(p: &[f32; LANES], x: &[f32], w: &[W], full: usize) -> f32 {
    let mut s = (p[0] + p[4]) + (p[1] + p[5]) + (p[2] + p[6]) + (p[3] + p[7]);
    for i in full..w.len() {
        s += x[i] * w[i].f32();
    }
    s
}

/// Rows of a matrix in a buffer: row `i` is `data[offset + i * stride..][..len]`.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a, T = f32> {
    pub data: &'a [T],
    pub offset: isize,
    pub stride: isize,
    pub len: usize,
}

impl<'a, T> Rows<'a, T> {
    pub(crate) fn row(&self, i: usize) -> &'a [T] {
        &self.data[(self.offset + i as isize * self.stride) as usize..][..self.len]
    }
}

/// The vector instructions a call uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    /// The widest form this CPU runs.
    pub(crate) fn detect() -> Isa {
        *Isa::available().last().unwrap()
    }

    /// Every form this CPU runs, narrowest first.
    pub(crate) fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        if super::simd::avx2() {
            v.push(Isa::Avx2);
        }
        v
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
        }
    }

    /// Rows of `a` per group: the group's rows stay in the L1 cache (32-48
    /// KiB) beside the weight row they meet (8 rows of 512 values, 4 of
    /// 1408), and its partial sums in registers.
    fn group(k: usize) -> usize {
        (6144 / k.max(1)).clamp(1, 8)
    }
}

/// Weight rows per block: a block (about 64 KiB) stays in cache while
/// every group of rows of `a` passes over it.
fn block_rows(k: usize) -> usize {
    (16384 / k.max(1)).clamp(4, 256)
}

/// How a GEMV call runs: its instructions, and into how many parts its
/// weight rows split across the threads (1: all on the calling thread).
/// Every form gives the same values, bit for bit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct GemvForm {
    pub isa: Isa,
    pub parts: usize,
}

impl GemvForm {
    /// The hand-written choice: the widest instructions, and four parts
    /// per thread when `parallel`.
    pub(crate) fn default_for(parallel: bool) -> GemvForm {
        GemvForm { isa: Isa::detect(), parts: if parallel { rayon::current_num_threads() * 4 } else { 1 } }
    }

    /// Every form `--fusion search` times for `n` weight rows on `threads`
    /// threads: each SIMD level this CPU runs, on one thread or split into
    /// 1, 2, 4 or 8 parts per thread.
    pub(crate) fn all(threads: usize, n: usize) -> Vec<GemvForm> {
        let mut parts = vec![1];
        if threads > 1 {
            parts.extend([1, 2, 4, 8].map(|x| x * threads).into_iter().filter(|&x| x <= n));
        }
        Isa::available().into_iter().flat_map(|isa| parts.iter().map(move |&parts| GemvForm { isa, parts })).collect()
    }

    pub(crate) fn name(&self) -> String {
        format!("gemv {} {} part{}", self.isa.name(), self.parts, if self.parts == 1 { "" } else { "s" })
    }
}

/// `out[r * out_row + j] = dot(a[r], b[j])` for `r < m`, `j < n`, in the
/// given form (its weight rows split across threads when `form.parts > 1`).
///
/// # Safety
/// `out` points at a buffer holding every `r * out_row + j`, which no other
/// thread writes during the call; `form.isa` is one of [`Isa::available`].
pub(crate) unsafe fn gemv_as<W: Weight>(form: GemvForm, a: Rows, m: usize, b: Rows<W>, n: usize, out: Ptr, out_row: usize) {
    assert_eq!(a.len, b.len, "dot products of unequal lengths");
    let part = |j0: usize, j1: usize| match form.isa {
        // SAFETY: the CPU has AVX2; each part writes its own columns
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::columns_avx2(a, m, b, (j0, j1), out, out_row) },
        Isa::Portable => columns(a, m, b, (j0, j1), out, out_row, dots),
    };
    if form.parts > 1 && n > 1 {
        let chunk = n.div_ceil(form.parts);
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| part(c * chunk, (c * chunk + chunk).min(n)));
    } else {
        part(0, n)
    }
}

/// Output columns `j0..j1` of every row: a block of weight rows at a time,
/// passed over by every group of rows of `a` ([`Isa::group`]); `group`
/// computes one group's dot products with one weight row.
#[inline(always)]
fn columns<W: Weight>(
    a: Rows,
    m: usize,
    b: Rows<W>,
    (j0, j1): (usize, usize),
    out: Ptr,
    out_row: usize,
    group: impl Fn(&[&[f32]], &[W], &mut [f32; 8]),
) {
    let (block, per) = (block_rows(b.len), Isa::group(b.len));
    for jb in (j0..j1).step_by(block) {
        let je = (jb + block).min(j1);
        for r0 in (0..m).step_by(per) {
            let g = (m - r0).min(per);
            let mut rows: [&[f32]; 8] = [&[]; 8];
            for (i, r) in rows[..g].iter_mut().enumerate() {
                *r = a.row(r0 + i);
            }
            let mut v = [0f32; 8];
            for j in jb..je {
                group(&rows[..g], b.row(j), &mut v);
                for (i, &x) in v[..g].iter().enumerate() {
                    // SAFETY: per `gemv`'s contract
                    unsafe { *out.at((r0 + i) * out_row + j) = x };
                }
            }
        }
    }
}

/// The dot products of up to 8 rows with `w` (the portable form).
fn dots<W: Weight>(xs: &[&[f32]], w: &[W], out: &mut [f32; 8]) {
    for (o, x) in out.iter_mut().zip(xs) {
        *o = dot(x, w);
    }
}

/// The AVX2 form of the same arithmetic: lane `i` of a row's register is
/// its partial sum `i`, and a multiply then an add (not a fused
/// multiply-add) is what the portable form does per lane.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{finish, Ptr, Rows, Weight, LANES};

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn columns_avx2<W: Weight>(a: Rows, m: usize, b: Rows<W>, js: (usize, usize), out: Ptr, out_row: usize) {
        // (each arm monomorphises the kernel for one group size)
        super::columns(a, m, b, js, out, out_row, |xs, w, v| match xs.len() {
            8 => unsafe { dots::<8, W>(xs, w, v) },
            7 => unsafe { dots::<7, W>(xs, w, v) },
            6 => unsafe { dots::<6, W>(xs, w, v) },
            5 => unsafe { dots::<5, W>(xs, w, v) },
            4 => unsafe { dots::<4, W>(xs, w, v) },
            3 => unsafe { dots::<3, W>(xs, w, v) },
            2 => unsafe { dots::<2, W>(xs, w, v) },
            _ => unsafe { dots::<1, W>(xs, w, v) },
        });
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dots<const R: usize, W: Weight>(xs: &[&[f32]], w: &[W], out: &mut [f32; 8]) {
        let k = w.len();
        assert!(xs.len() == R && xs.iter().all(|x| x.len() == k));
        let full = k / LANES * LANES;
        let px: [*const f32; R] = std::array::from_fn(|r| xs[r].as_ptr());
        let mut acc = [_mm256_setzero_ps(); R];
        let mut c = 0;
        while c < full {
            let y = W::load8(w.as_ptr().add(c));
            for r in 0..R {
                acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_loadu_ps(px[r].add(c)), y));
            }
            c += LANES;
        }
        for r in 0..R {
            let mut p = [0f32; LANES];
            _mm256_storeu_ps(p.as_mut_ptr(), acc[r]);
            out[r] = finish(&p, xs[r], w, full);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<W: Weight>(isa: Isa, a: Rows, m: usize, b: Rows<W>, n: usize, out: &mut [f32], out_row: usize) {
        let out = Ptr(out.as_mut_ptr());
        // SAFETY: the test's output holds every row; the form is the CPU's
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => x86::columns_avx2(a, m, b, (0, n), out, out_row),
                Isa::Portable => columns(a, m, b, (0, n), out, out_row, dots),
            }
        }
    }

    #[test]
    fn every_form_gives_every_row_the_dot_product_bit_for_bit() {
        let mut forms = vec![(Isa::Portable, "portable")];
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::simd::avx2() {
            forms.push((Isa::Avx2, "AVX2"));
        }
        eprintln!("GEMV forms checked on this CPU: {}", forms.iter().map(|f| f.1).collect::<Vec<_>>().join(", "));
        let mut rng = 12345u64;
        let mut next = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for (m, n, k) in [(1, 5, 3), (3, 70, 37), (8, 9, 64), (13, 300, 100), (32, 64, 512), (9, 40, 1408)] {
            let a: Vec<f32> = (0..m * k + 3).map(|_| next()).collect();
            let b: Vec<f32> = (0..n * (k + 2)).map(|_| next()).collect();
            let ar = Rows { data: &a, offset: 3, stride: k as isize, len: k };
            let br = Rows { data: &b, offset: 0, stride: k as isize + 2, len: k };
            for &(isa, _) in &forms {
                let mut out = vec![f32::NAN; m * (n + 1)];
                run(isa, ar, m, br, n, &mut out, n + 1);
                for r in 0..m {
                    for j in 0..n {
                        let want = dot(ar.row(r), br.row(j));
                        assert_eq!(out[r * (n + 1) + j].to_bits(), want.to_bits(), "m {m} n {n} k {k} at ({r}, {j})");
                    }
                    assert!(out[r * (n + 1) + n].is_nan(), "wrote past the row");
                }
            }
            // every form `search` may choose (threaded splits included) gives the same values
            for isa in Isa::available() {
                for parts in [1, 2, 3, 8, 64] {
                    let mut out = vec![f32::NAN; m * n];
                    unsafe { gemv_as(GemvForm { isa, parts }, ar, m, br, n, Ptr(out.as_mut_ptr()), n) };
                    let same = (0..m * n).all(|i| out[i].to_bits() == dot(ar.row(i / n), br.row(i % n)).to_bits());
                    assert!(same, "{isa:?} in {parts} parts, m {m} n {n} k {k}");
                }
            }
            // bf16 weights: every form gives what f32 gives on their values
            let bh: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
            let bw: Vec<f32> = bh.iter().map(|x| x.to_f32()).collect();
            let bhr = Rows { data: &bh[..], offset: br.offset, stride: br.stride, len: k };
            let bwr = Rows { data: &bw[..], ..br };
            for &(isa, _) in &forms {
                let mut out = vec![f32::NAN; m * n];
                run(isa, ar, m, bhr, n, &mut out, n);
                let same = (0..m * n).all(|i| out[i].to_bits() == dot(ar.row(i / n), bwr.row(i % n)).to_bits());
                assert!(same, "bf16 weights, {isa:?}, m {m} n {n} k {k}");
            }
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; m * n];
                unsafe { gemv_as(GemvForm { isa, parts: 3 }, ar, m, bhr, n, Ptr(out.as_mut_ptr()), n) };
                assert!((0..m * n).all(|i| out[i].to_bits() == dot(ar.row(i / n), bwr.row(i % n)).to_bits()), "bf16 {isa:?} 3 parts");
            }
            // and dot itself is the plain formula, up to rounding
            let plain: f32 = ar.row(0).iter().zip(br.row(0)).map(|(x, y)| x * y).sum();
            assert!((dot(ar.row(0), br.row(0)) - plain).abs() < 1e-4);
        }
    }

    /// `GN=1408 GK=512 cargo test -p lumind-compilers --release gemv_speed -- --ignored --nocapture`:
    /// the best of 400 calls per row count, weights streamed from memory.
    #[test]
    #[ignore]
    fn gemv_speed() {
        let env = |k: &str, d: usize| std::env::var(k).map_or(d, |v| v.parse().unwrap());
        let (n, k) = (env("GN", 1408), env("GK", 512));
        let copies = (120_000_000 / (n * k * 4)).max(2);
        let mut rng = 99u64;
        let mut next = move || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let w: Vec<f32> = (0..n * k * copies).map(|_| next()).collect();
        let a: Vec<f32> = (0..32 * k).map(|_| next()).collect();
        for m in [1usize, 2, 4, 8, 16] {
            let mut out = vec![0f32; m * n];
            for par in [false, true] {
                let mut best = f64::MAX;
                let mut total = 0.0;
                for r in 0..400 {
                    let ar = Rows { data: &a, offset: 0, stride: k as isize, len: k };
                    let br = Rows { data: &w, offset: ((r % copies) * n * k) as isize, stride: k as isize, len: k };
                    let t = std::time::Instant::now();
                    unsafe { gemv_as(GemvForm::default_for(par), ar, m, br, n, Ptr(out.as_mut_ptr()), n) };
                    best = best.min(t.elapsed().as_secs_f64());
                    total += t.elapsed().as_secs_f64();
                }
                eprintln!(
                    "m {m} par {par}: {:.1} us (mean {:.1}), {:.1} GFLOP/s",
                    best * 1e6,
                    total / 400.0 * 1e6,
                    (2 * m * n * k) as f64 / best / 1e9
                );
            }
        }
    }
}
