//! Matrix products in bf16 with f32 accumulation, on AVX512-BF16
//! (`VDPBF16PS`: Zen 4, Cooper Lake, Sapphire Rapids and later):
//! `dst[i, j] = sum_k bf16(lhs[i, k]) * bf16(rhs[k, j])`. Each instruction
//! multiplies 16 pairs of bf16 products into f32 lanes, twice the f32 FMA's
//! work per instruction, and a bf16 weight is read as it is stored.
//!
//! Operands are packed per call: the left one as rows of bf16 pairs
//! (`[m, k/2]` 32-bit words, each broadcast to every lane), the right one
//! in panels of [`NR`] columns (`[k/2, NR]` words, one row of a panel two
//! registers), so that the micro-kernel ([`x86::tile`]) reads both
//! sequentially. A panel is packed by the task that multiplies it, against
//! every row of its share, so packing the right operand (the weights, in
//! a prompt) costs a read of it per task, spread across the threads.
//!
//! Where a CPU lacks AVX512-BF16, callers multiply the operands' values in
//! f32 instead ([`available`] says which runs): the results agree within
//! bf16's rounding of the left operand (the tests state the bound).

use rayon::prelude::*;

use super::gemv::Weight;
use super::q8::{self, Q8Rows};
use super::Shared;

/// Columns per panel: two 16-lane registers.
pub const NR: usize = 32;
/// Rows per micro-kernel call: with [`NR`], 16 accumulators of the 32 registers.
pub const MR: usize = 8;

/// Whether this CPU runs [`gemm_bf16`].
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A matrix operand: element `(i, kk)` (lhs) or `(kk, j)` (rhs) is at
/// `ptr + col * col_stride + row * row_stride`, as gemm takes them.
pub(crate) type Operand<T> = (*const T, isize, isize);

/// A right operand as [`gemm_bf16`] packs it into panels: strided values
/// (a [`Shared`] [`Operand`]) or Q8_0 weight rows (columns of the product), dequantized
/// as they are packed.
pub(crate) trait Panels: Copy + Send + Sync {
    /// Columns `j0..j0 + cols` of rows `0..k` as one panel: word
    /// `p * NR + c` holds the pair `(rhs[2p, j0 + c], rhs[2p + 1, j0 + c])`
    /// in bf16; columns past `cols` are zero.
    ///
    /// # Safety
    /// The operand reaches every element asked for; the CPU has AVX512-BF16.
    unsafe fn pack(self, panel: &mut [u32], j0: usize, cols: usize, k: usize);
}

/// Strided values, which the tasks of a product share (they only read them).
impl<B: Weight> Panels for Shared<Operand<B>> {
    unsafe fn pack(self, panel: &mut [u32], j0: usize, cols: usize, k: usize) {
        // SAFETY: per the contract
        unsafe { pack_panel(panel, (j0, cols, k), self.0) }
    }
}

impl Panels for Q8Rows<'_> {
    unsafe fn pack(self, panel: &mut [u32], j0: usize, cols: usize, k: usize) {
        assert_eq!(k, self.blocks * q8::BLOCK, "Q8_0 rows of another length");
        for c in 0..NR {
            if c >= cols {
                (0..k / 2).for_each(|p| panel[p * NR + c] = 0);
                continue;
            }
            for (b, block) in self.row(j0 + c).chunks_exact(q8::BLOCK_BYTES).enumerate() {
                let d = q8::scale(block);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX512-BF16 (the contract)
                unsafe {
                    x86::pack_q8_block(d, &block[2..], panel, b * q8::BLOCK / 2, c)
                };
                #[cfg(not(target_arch = "x86_64"))]
                for i in 0..q8::BLOCK / 2 {
                    let v = |e: usize| half::bf16::from_f32(d * block[2 + e] as i8 as f32).to_bits();
                    panel[(b * q8::BLOCK / 2 + i) * NR + c] = pair(v(2 * i), v(2 * i + 1));
                }
            }
        }
    }
}

/// `dst[m, n] (+)= lhs[m, k] rhs[k, n]`, operands rounded to bf16 (to
/// nearest even) and products summed in f32; `dst` is `(ptr, col stride,
/// row stride)`. Adds to `dst` when `accumulate`. Splits the work across
/// `threads` rayon threads (1: all on the calling thread).
///
/// # Safety
/// [`available`] is true; every element the strides reach is in bounds, and
/// no other thread writes the part of `dst` this product writes.
pub(crate) unsafe fn gemm_bf16(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    lhs: Operand<f32>,
    rhs: impl Panels,
    accumulate: bool,
    threads: usize,
) {
    debug_assert!(available());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: per the contract
                    unsafe { *dst.0.offset(i as isize * dst.2 + j as isize * dst.1) = 0.0 };
                }
            }
        }
        return;
    }
    let kp = k.div_ceil(2);
    // SAFETY: per the contract
    let a = unsafe { pack_lhs((m, k), lhs, threads) };
    // tasks: ranges of panels times ranges of rows, about four per thread
    let panels = n.div_ceil(NR);
    let want = if threads > 1 { threads * 4 } else { 1 };
    let row_parts = want.div_ceil(panels).clamp(1, m.div_ceil(MR));
    let rows_per = m.div_ceil(row_parts).next_multiple_of(MR);
    let row_parts = m.div_ceil(rows_per);
    let per_task = panels.div_ceil(want.div_ceil(row_parts));
    let tasks = panels.div_ceil(per_task) * row_parts;
    let dst = Shared(dst);
    let task = |t: usize| {
        let dst = dst.get();
        let (pc, rc) = (t / row_parts, t % row_parts);
        let (i0, i1) = (rc * rows_per, (rc * rows_per + rows_per).min(m));
        let mut panel = vec![0u32; kp * NR];
        for p in pc * per_task..((pc + 1) * per_task).min(panels) {
            let j0 = p * NR;
            let cols = NR.min(n - j0);
            // SAFETY: per the contract
            unsafe { rhs.pack(&mut panel, j0, cols, k) };
            for i in (i0..i1).step_by(MR) {
                let rows = MR.min(i1 - i);
                // SAFETY: the CPU has AVX512-BF16 (the contract); the tile
                // writes rows i.., columns j0.. of this task's share
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    let out = (dst.0.offset(i as isize * dst.2 + j0 as isize * dst.1), dst.1, dst.2);
                    x86::tile(rows, &a[i * kp..], kp, &panel, cols, out, accumulate)
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("no AVX512-BF16 off x86-64 ({rows} rows)")
            }
        }
    };
    if tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        task(0)
    }
}

/// Two bf16 values as the 32-bit word `VDPBF16PS` reads: `lo` in the low half.
#[inline(always)]
fn pair(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

/// `lhs` as `[m, k/2]` words of bf16 pairs (an odd `k` pads with a zero),
/// on `threads` threads.
///
/// # Safety
/// Every element the strides reach is in bounds.
unsafe fn pack_lhs((m, k): (usize, usize), lhs: Operand<f32>, threads: usize) -> Vec<u32> {
    let kp = k.div_ceil(2);
    let mut a = vec![0u32; m * kp];
    let lhs = Shared(lhs);
    // 16 rows at a time
    let pack = |(b, rows): (usize, &mut [u32])| {
        let (ptr, cs, rs) = lhs.get();
        let (i0, n) = (16 * b, rows.len() / kp);
        // SAFETY: per the contract
        let at = |i: usize, kk: usize| unsafe { *ptr.offset(i as isize * rs + kk as isize * cs) };
        let mut p0 = 0;
        #[cfg(target_arch = "x86_64")]
        if rs == 1 && n == 16 {
            // (a transposed operand: the 16 rows' values contiguous per k)
            // SAFETY: per the contract
            p0 = unsafe { x86::pack_columns(ptr.add(i0), cs, k, rows, kp) };
        }
        for (r, row) in rows.chunks_exact_mut(kp).enumerate() {
            let i = i0 + r;
            let mut p1 = p0;
            #[cfg(target_arch = "x86_64")]
            if cs == 1 {
                // SAFETY: the row's k values are contiguous
                p1 = unsafe { x86::pack_row(ptr.offset(i as isize * rs), k, row) };
            }
            for (p, w) in row.iter_mut().enumerate().skip(p1) {
                let hi = if 2 * p + 1 < k { at(i, 2 * p + 1).bf16_bits() } else { 0 };
                *w = pair(at(i, 2 * p).bf16_bits(), hi);
            }
        }
    };
    if threads > 1 {
        a.par_chunks_mut(16 * kp).enumerate().for_each(pack);
    } else {
        a.chunks_mut(16 * kp).enumerate().for_each(pack);
    }
    a
}

/// [`Panels::pack`] of strided values.
///
/// # Safety
/// Every element the strides reach is in bounds.
unsafe fn pack_panel<B: Weight>(panel: &mut [u32], (j0, cols, k): (usize, usize, usize), (ptr, cs, rs): Operand<B>) {
    let kp = k.div_ceil(2);
    #[cfg(target_arch = "x86_64")]
    if cs == 1 && cols == NR && std::any::TypeId::of::<B>() == std::any::TypeId::of::<f32>() {
        // (rows of `rhs` contiguous along n, as the backward pass's are)
        // SAFETY: B is f32; per the contract
        unsafe { x86::pack_panel_rows(ptr.add(j0) as *const f32, rs, k, panel) };
        return;
    }
    for c in 0..NR {
        if c >= cols {
            for p in 0..kp {
                panel[p * NR + c] = 0;
            }
            continue;
        }
        // SAFETY: per the contract
        let col = unsafe { ptr.offset((j0 + c) as isize * cs) };
        let at = |kk: usize| unsafe { (*col.offset(kk as isize * rs)).bf16_bits() };
        // a column contiguous along k (weights stored as rows of k): bf16
        // pairs are the words as stored; f32 ones convert 16 pairs at a time
        let mut p0 = 0;
        if rs == 1 && std::any::TypeId::of::<B>() == std::any::TypeId::of::<half::bf16>() {
            let words = col as *const u32;
            for p in 0..k / 2 {
                // SAFETY: elements 2p and 2p + 1 of the column, little-endian
                panel[p * NR + c] = unsafe { words.add(p).read_unaligned() };
            }
            p0 = k / 2;
        }
        #[cfg(target_arch = "x86_64")]
        if rs == 1 && std::any::TypeId::of::<B>() == std::any::TypeId::of::<f32>() {
            // SAFETY: B is f32; the CPU has AVX512-BF16 (the contract)
            p0 = unsafe { x86::pack_column(col as *const f32, k, panel, c) };
        }
        for p in p0..k / 2 {
            panel[p * NR + c] = pair(at(2 * p), at(2 * p + 1));
        }
        if k % 2 == 1 {
            panel[(kp - 1) * NR + c] = pair(at(k - 1), 0);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// The first words of a packed lhs row from `k` contiguous f32 values,
    /// 16 pairs at a time; returns how many words it wrote.
    ///
    /// # Safety
    /// `x` points at `k` readable values; the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_row(x: *const f32, k: usize, row: &mut [u32]) -> usize {
        let mut p = 0;
        while 2 * p + 32 <= k {
            let (lo, hi) = (_mm512_loadu_ps(x.add(2 * p)), _mm512_loadu_ps(x.add(2 * p + 16)));
            // (the second operand fills the low half)
            let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(row.as_mut_ptr().add(p) as *mut __m512i, h);
            p += 16;
        }
        p
    }

    /// Words `(x0[c], x1[c])` for 16 columns `c` of two rows of f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pairs16(x0: *const f32, x1: *const f32) -> __m512i {
        // x0's values in the low half, x1's in the high, then interleaved
        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x1), _mm512_loadu_ps(x0)));
        const INTERLEAVE: [i16; 32] = {
            let mut v = [0i16; 32];
            let mut c = 0;
            while c < 16 {
                v[2 * c] = c as i16;
                v[2 * c + 1] = 16 + c as i16;
                c += 1;
            }
            v
        };
        _mm512_permutexvar_epi16(_mm512_loadu_si512(INTERLEAVE.as_ptr() as *const __m512i), both)
    }

    /// A panel of [`NR`] columns from f32 rows of `rhs` `rs` apart (`x`:
    /// row 0's first column), pairs of rows at a time.
    ///
    /// # Safety
    /// `x` reaches `k` rows of [`NR`] values; the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_panel_rows(x: *const f32, rs: isize, k: usize, panel: &mut [u32]) {
        assert!(panel.len() >= k.div_ceil(2) * NR);
        let out = panel.as_mut_ptr() as *mut __m512i;
        for p in 0..k / 2 {
            let (x0, x1) = (x.offset(2 * p as isize * rs), x.offset((2 * p + 1) as isize * rs));
            _mm512_storeu_si512(out.add(2 * p), pairs16(x0, x1));
            _mm512_storeu_si512(out.add(2 * p + 1), pairs16(x0.add(16), x1.add(16)));
        }
        if k % 2 == 1 {
            let (x0, p) = (x.offset((k - 1) as isize * rs), k / 2);
            for c in 0..NR {
                panel[p * NR + c] = half::bf16::from_f32(*x0.add(c)).to_bits() as u32;
            }
        }
    }

    /// The first words of column `c` of a panel from `k` contiguous f32
    /// values, 16 pairs at a time; returns how many words it wrote.
    ///
    /// # Safety
    /// `x` points at `k` readable values; the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_column(x: *const f32, k: usize, panel: &mut [u32], c: usize) -> usize {
        let mut w = [0u32; 16];
        let mut p = 0;
        while 2 * p + 32 <= k {
            pack_row(x.add(2 * p), 32, &mut w);
            scatter(&w, panel, p * NR + c, NR);
            p += 16;
        }
        p
    }

    /// `words` into `out` from `first` on, `stride` apart: 16 words of one
    /// panel column, or word `p` of 16 packed rows.
    #[inline]
    fn scatter(words: &[u32; 16], out: &mut [u32], first: usize, stride: usize) {
        for (i, &w) in words.iter().enumerate() {
            out[first + i * stride] = w;
        }
    }

    /// Block `d * q` of a Q8_0 weight row as 16 words of column `c` of a
    /// panel, from word `p0` on.
    ///
    /// # Safety
    /// `q` holds 32 values; the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_q8_block(d: f32, q: &[u8], panel: &mut [u32], p0: usize, c: usize) {
        assert!(q.len() >= 32);
        let wide = |h: usize| {
            let bytes = _mm_loadu_si128(q.as_ptr().add(16 * h) as *const __m128i);
            _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)))
        };
        let mut w = [0u32; 16];
        let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(wide(1), wide(0)));
        _mm512_storeu_si512(w.as_mut_ptr() as *mut __m512i, h);
        scatter(&w, panel, p0 * NR + c, NR);
    }

    /// The first words of 16 packed lhs rows (`kp` words apart in `rows`)
    /// whose values are contiguous down each k (`x`: row 0's first value,
    /// `cs` apart along k); returns how many words of each row it wrote.
    ///
    /// # Safety
    /// `x` reaches 16 values at each of `k` steps of `cs`; the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_columns(x: *const f32, cs: isize, k: usize, rows: &mut [u32], kp: usize) -> usize {
        assert!(rows.len() >= 16 * kp);
        let mut w = [0u32; 16];
        for p in 0..k / 2 {
            let v = pairs16(x.offset(2 * p as isize * cs), x.offset((2 * p + 1) as isize * cs));
            _mm512_storeu_si512(w.as_mut_ptr() as *mut __m512i, v);
            scatter(&w, rows, p, kp);
        }
        k / 2
    }

    /// Rows `0..rows` (at most [`MR`]) of the product of packed lhs rows
    /// `a` (`kp` words apart) with a packed panel, into the first `cols`
    /// columns of `out` (`(ptr, col stride, row stride)`), added to them
    /// when `accumulate`.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; `a` holds `rows` rows and `panel` `kp * NR`
    /// words; `out` reaches every element it writes.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn tile(
        rows: usize,
        a: &[u32],
        kp: usize,
        panel: &[u32],
        cols: usize,
        out: (*mut f32, isize, isize),
        accumulate: bool,
    ) {
        assert!(rows <= MR && a.len() >= (rows - 1) * kp + kp && panel.len() >= kp * NR);
        // (each arm monomorphises the kernel for one row count)
        match rows {
            8 => tile_r::<8>(a, kp, panel, cols, out, accumulate),
            7 => tile_r::<7>(a, kp, panel, cols, out, accumulate),
            6 => tile_r::<6>(a, kp, panel, cols, out, accumulate),
            5 => tile_r::<5>(a, kp, panel, cols, out, accumulate),
            4 => tile_r::<4>(a, kp, panel, cols, out, accumulate),
            3 => tile_r::<3>(a, kp, panel, cols, out, accumulate),
            2 => tile_r::<2>(a, kp, panel, cols, out, accumulate),
            _ => tile_r::<1>(a, kp, panel, cols, out, accumulate),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile_r<const R: usize>(a: &[u32], kp: usize, panel: &[u32], cols: usize, out: (*mut f32, isize, isize), accumulate: bool) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (pa, pb) = (a.as_ptr(), panel.as_ptr());
        for p in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(p * NR) as *const __m512i));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(p * NR + 16) as *const __m512i));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*pa.add(r * kp + p) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
            }
        }
        let (ptr, cs, rs) = out;
        for (r, acc) in acc.iter().enumerate() {
            let row = ptr.offset(r as isize * rs);
            if cs == 1 {
                for (h, &v) in acc.iter().enumerate() {
                    let c = cols.saturating_sub(16 * h).min(16);
                    let mask: __mmask16 = ((1u32 << c) - 1) as u16;
                    let at = row.add(16 * h);
                    let v = if accumulate { _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, at)) } else { v };
                    _mm512_mask_storeu_ps(at, mask, v);
                }
            } else {
                let mut vals = [0f32; NR];
                _mm512_storeu_ps(vals.as_mut_ptr(), acc[0]);
                _mm512_storeu_ps(vals.as_mut_ptr().add(16), acc[1]);
                for (c, &v) in vals[..cols].iter().enumerate() {
                    let at = row.offset(c as isize * cs);
                    *at = if accumulate { *at + v } else { v };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    fn rand(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    fn round(x: f32) -> f64 {
        bf16::from_f32(x).to_f64()
    }

    /// Every shape's edges (rows past a multiple of [`MR`], columns past a
    /// panel, an odd k, strided operands and output, accumulation) against
    /// the product of the rounded operands in f64. The bound: f32 sums of
    /// exact bf16 products, within `k * 2^-24` of the sum of |products|.
    #[test]
    fn products_match_the_rounded_operands_product() {
        if !available() {
            eprintln!("bf16 GEMM: AVX512-BF16 absent on this CPU, nothing to check (callers multiply in f32)");
            return;
        }
        eprintln!("bf16 GEMM: AVX512-BF16 path checked");
        let mut seed = 7u64;
        for (m, n, k, transposed, accumulate, threads) in [
            (1, 1, 1, false, false, 1),
            (3, 5, 7, false, false, 1),
            (8, 32, 64, false, false, 1),
            (13, 70, 129, false, true, 2),
            (64, 100, 512, true, false, 2),
            (9, 33, 1408, true, true, 4),
            (40, 64, 37, true, false, 2),
            (256, 96, 48, false, false, 3),
        ] {
            let lhs: Vec<f32> = (0..m * k).map(|_| rand(&mut seed)).collect();
            let rhs_f: Vec<f32> = (0..k * n).map(|_| rand(&mut seed)).collect();
            let rhs_h: Vec<bf16> = rhs_f.iter().map(|&x| bf16::from_f32(x)).collect();
            // lhs [m, k] row-major or its transpose; rhs [n, k] rows (weights) or [k, n]
            let (la, lb) = if transposed { (m as isize, 1) } else { (1, k as isize) };
            let (rc, rr) = if transposed { (1, n as isize) } else { (k as isize, 1) };
            let lhs_at = |i: usize, kk: usize| lhs[(i as isize * lb + kk as isize * la) as usize];
            let rhs_at = |kk: usize, j: usize| rhs_f[(kk as isize * rr + j as isize * rc) as usize];
            let init: Vec<f32> = (0..m * (n + 3)).map(|_| rand(&mut seed)).collect();
            for bf16_rhs in [false, true] {
                let mut out = init.clone();
                let dst = (out.as_mut_ptr(), 1, (n + 3) as isize);
                unsafe {
                    if bf16_rhs {
                        gemm_bf16((m, n, k), dst, (lhs.as_ptr(), la, lb), Shared((rhs_h.as_ptr(), rc, rr)), accumulate, threads)
                    } else {
                        gemm_bf16((m, n, k), dst, (lhs.as_ptr(), la, lb), Shared((rhs_f.as_ptr(), rc, rr)), accumulate, threads)
                    }
                }
                for i in 0..m {
                    for j in 0..n {
                        let (mut want, mut size) = (if accumulate { init[i * (n + 3) + j] as f64 } else { 0.0 }, 0.0);
                        for kk in 0..k {
                            let p = round(lhs_at(i, kk)) * round(rhs_at(kk, j));
                            want += p;
                            size += p.abs();
                        }
                        let got = out[i * (n + 3) + j] as f64;
                        let tol = (k as f64 + 2.0) * size * 2f64.powi(-24) + 1e-6;
                        assert!((got - want).abs() <= tol, "{m}x{n}x{k} ({i}, {j}): {got} against {want} (tolerance {tol})");
                    }
                    for j in n..n + 3 {
                        assert_eq!(out[i * (n + 3) + j], init[i * (n + 3) + j], "wrote past the columns");
                    }
                }
            }
        }
    }

    /// Q8_0 weight rows packed as they dequantize give, bit for bit, the
    /// product of their values rounded to bf16 (what [`crate::kernels::packed::Packed::with_bf16`] makes).
    #[test]
    fn q8_rows_multiply_as_their_bf16_values() {
        if !available() {
            return eprintln!("bf16 GEMM: AVX512-BF16 absent on this CPU, nothing to check");
        }
        let mut seed = 11u64;
        for (m, n, k) in [(3, 5, 32), (17, 70, 96), (64, 33, 512)] {
            let lhs: Vec<f32> = (0..m * k).map(|_| rand(&mut seed)).collect();
            let w: Vec<f32> = (0..n * (k + 64)).map(|_| rand(&mut seed)).collect();
            let q = q8::quantize(&w);
            let mut h = vec![bf16::ZERO; w.len()];
            q8::dequantize_bf16_into(&q, &mut h);
            let (mut a, mut b) = (vec![0f32; m * n], vec![1f32; m * n]);
            let rows = Q8Rows::new(&q, 32, (k + 64) as isize, k).unwrap();
            unsafe {
                gemm_bf16((m, n, k), (a.as_mut_ptr(), 1, n as isize), (lhs.as_ptr(), 1, k as isize), rows, false, 2);
                let strided = Shared((h.as_ptr().add(32), (k + 64) as isize, 1));
                gemm_bf16((m, n, k), (b.as_mut_ptr(), 1, n as isize), (lhs.as_ptr(), 1, k as isize), strided, false, 2);
            }
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}x{n}x{k}");
        }
    }

    /// `cargo test -p lumind-compilers --release bf16_gemm_speed -- --ignored --nocapture`:
    /// GFLOP/s of a prompt's projection shapes, bf16 against gemm's f32.
    #[test]
    #[ignore]
    fn bf16_gemm_speed() {
        if !available() {
            return eprintln!("no AVX512-BF16 on this CPU");
        }
        let threads = rayon::current_num_threads();
        let mut seed = 3u64;
        for (m, n, k) in [(256, 512, 512), (256, 1408, 512), (256, 512, 1408), (256, 6400, 512), (64, 1408, 512), (1024, 512, 1408)] {
            let a: Vec<f32> = (0..m * k).map(|_| rand(&mut seed)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rand(&mut seed)).collect();
            let wh: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
            let mut out = vec![0f32; m * n];
            let time = |f: &mut dyn FnMut()| {
                let mut best = f64::MAX;
                for _ in 0..20 {
                    let t = std::time::Instant::now();
                    f();
                    best = best.min(t.elapsed().as_secs_f64());
                }
                2.0 * (m * n * k) as f64 / best / 1e9
            };
            let dst = (out.as_mut_ptr(), 1, n as isize);
            let bf = time(&mut || unsafe {
                gemm_bf16((m, n, k), dst, (a.as_ptr(), 1, k as isize), Shared((wh.as_ptr(), k as isize, 1)), false, threads)
            });
            let f32 = time(&mut || unsafe {
                // (gemm itself: the f32 products every kernel calls)
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst.0,
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                )
            });
            // the backward pass's layouts: lhs stored transposed, rhs as [k, n]
            let bt = time(&mut || unsafe {
                gemm_bf16((m, n, k), dst, (a.as_ptr(), m as isize, 1), Shared((w.as_ptr(), 1, n as isize)), false, threads)
            });
            eprintln!("{m}x{n}x{k}: bf16 {bf:.1} GFLOP/s (transposed operands {bt:.1}), gemm f32 {f32:.1} GFLOP/s, ratio {:.2}", bf / f32);
        }
    }
}
