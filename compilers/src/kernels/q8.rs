//! Q8_0 weights: blocks of 32 consecutive values, each stored as one f16
//! scale `d` and 32 signed bytes `q` (value = d * q), 34 bytes a block,
//! bit for bit GGUF's `Q8_0`. Quantizing follows ggml's reference:
//! `d = max|x| / 127`, `q = round(x / d)`, so every `q` is in -127..=127.
//!
//! A GEMV against Q8_0 weight rows ([`gemv_q8`]) quantizes each activation
//! row the same way per block (with an f32 scale, rounding half to even),
//! multiplies bytes with bytes exactly in integers and scales each block's
//! sums: llama.cpp's `q8_0 x q8_0` dot product. Like [`super::gemv`],
//! every form of it (SIMD level, thread split) gives the same values bit for
//! bit: lane `i` of a dot product's eight partial sums adds, per block,
//! `s * (the exact sum of the products of elements 4i..4i+3)` with
//! `s = d_w * d_x`, a multiply and an add (not fused), and the lanes are
//! added pairwise at the end. (A bit-exact AVX-512 VNNI form, two weight
//! rows to a register, measured slower on Zen 4: see docs/performance.md.)

use half::f16;
use rayon::prelude::*;

use super::gemv::{GemvForm, Isa, Rows};
use super::Ptr;

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes per block: the f16 scale, then the 32 values.
pub const BLOCK_BYTES: usize = 34;

/// Bytes that `len` values (a multiple of [`BLOCK`]) take as Q8_0.
pub fn bytes_for(len: usize) -> usize {
    len / BLOCK * BLOCK_BYTES
}

/// A block's scale.
pub(crate) fn scale(block: &[u8]) -> f32 {
    f16::from_le_bytes([block[0], block[1]]).to_f32()
}

/// Values that Q8_0 blocks of `bytes` bytes hold.
pub(crate) fn values_in(bytes: usize) -> usize {
    bytes / BLOCK_BYTES * BLOCK
}

/// One block's scale and values, ggml's way.
fn quantize_block(x: &[f32]) -> (f32, [i8; BLOCK]) {
    quantize_block_rounding(x, f32::round)
}

/// One block's scale and values, each `x / d` rounded by `round`.
fn quantize_block_rounding(x: &[f32], round: fn(f32) -> f32) -> (f32, [i8; BLOCK]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    (d, std::array::from_fn(|i| round(x[i] * id) as i8))
}

/// `x` (a multiple of [`BLOCK`] values) as Q8_0 blocks.
pub fn quantize(x: &[f32]) -> Vec<u8> {
    assert!(x.len().is_multiple_of(BLOCK), "Q8_0 holds whole blocks of {BLOCK} values, not {}", x.len());
    let mut out = Vec::with_capacity(bytes_for(x.len()));
    for b in x.chunks_exact(BLOCK) {
        let (d, q) = quantize_block(b);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(q.iter().map(|&v| v as u8));
    }
    out
}

/// The values of Q8_0 blocks.
pub fn dequantize(q: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; values_in(q.len())];
    dequantize_into(q, &mut out);
    out
}

/// Value `i` of Q8_0 blocks.
pub fn value(q: &[u8], i: usize) -> f32 {
    let b = &q[i / BLOCK * BLOCK_BYTES..][..BLOCK_BYTES];
    scale(b) * b[2 + i % BLOCK] as i8 as f32
}

/// [`dequantize`] into `out`, on every thread (a prompt's matrix products
/// wait for it).
pub(crate) fn dequantize_into(q: &[u8], out: &mut [f32]) {
    let per = 256;
    out.par_chunks_mut(BLOCK * per).zip(q.par_chunks(BLOCK_BYTES * per)).for_each(|(o, q)| {
        for (o, b) in o.chunks_exact_mut(BLOCK).zip(q.chunks_exact(BLOCK_BYTES)) {
            let d = scale(b);
            for (o, &v) in o.iter_mut().zip(&b[2..]) {
                *o = d * v as i8 as f32;
            }
        }
    });
}

/// [`dequantize_into`] rounding each value to bf16 (to nearest even).
pub(crate) fn dequantize_bf16_into(q: &[u8], out: &mut [half::bf16]) {
    let per = 256;
    out.par_chunks_mut(BLOCK * per).zip(q.par_chunks(BLOCK_BYTES * per)).for_each(|(o, q)| {
        for (o, b) in o.chunks_exact_mut(BLOCK).zip(q.chunks_exact(BLOCK_BYTES)) {
            let d = scale(b);
            for (o, &v) in o.iter_mut().zip(&b[2..]) {
                *o = half::bf16::from_f32(d * v as i8 as f32);
            }
        }
    });
}

/// Rows of Q8_0 weights: row `j` is the `blocks` blocks from block
/// `first + j * stride` of `data`.
#[derive(Clone, Copy)]
pub(crate) struct Q8Rows<'a> {
    pub data: &'a [u8],
    pub first: usize,
    pub stride: usize,
    pub blocks: usize,
}

impl<'a> Q8Rows<'a> {
    /// Rows of `len` values from element `offset`, `stride` elements
    /// apart, if they start and end on block boundaries.
    pub fn new(data: &'a [u8], offset: isize, stride: isize, len: usize) -> Option<Q8Rows<'a>> {
        let b = BLOCK as isize;
        (offset >= 0 && offset % b == 0 && stride >= 0 && stride % b == 0 && len.is_multiple_of(BLOCK) && len > 0).then(|| Q8Rows {
            data,
            first: (offset / b) as usize,
            stride: (stride / b) as usize,
            blocks: len / BLOCK,
        })
    }

    pub(crate) fn row(&self, j: usize) -> &'a [u8] {
        &self.data[(self.first + j * self.stride) * BLOCK_BYTES..][..self.blocks * BLOCK_BYTES]
    }
}

/// An activation block quantized as [`quantize_block`] does, but with
/// values rounded half to even (what the vector form rounds by, so that
/// every CPU quantizes an activation alike).
fn quantize_activation_block(x: &[f32]) -> (f32, [i8; BLOCK]) {
    quantize_block_rounding(x, f32::round_ties_even)
}

/// Activation rows quantized per block: a scale and 32 values a block.
struct QuantRows {
    scales: Vec<f32>,
    values: Vec<i8>,
    blocks: usize,
}

impl QuantRows {
    fn new(a: Rows, m: usize) -> QuantRows {
        let blocks = a.len / BLOCK;
        let (mut scales, mut values) = (Vec::with_capacity(m * blocks), Vec::with_capacity(m * a.len));
        #[cfg(target_arch = "x86_64")]
        let avx2 = super::simd::avx2();
        for r in 0..m {
            for x in a.row(r).chunks_exact(BLOCK) {
                // SAFETY: the CPU has AVX2
                #[cfg(target_arch = "x86_64")]
                let (d, q) = if avx2 { unsafe { x86::quantize_activation_block(x) } } else { quantize_activation_block(x) };
                #[cfg(not(target_arch = "x86_64"))]
                let (d, q) = quantize_activation_block(x);
                scales.push(d);
                values.extend_from_slice(&q);
            }
        }
        QuantRows { scales, values, blocks }
    }
    fn row(&self, r: usize) -> (&[f32], &[i8]) {
        (&self.scales[r * self.blocks..][..self.blocks], &self.values[r * self.blocks * BLOCK..][..self.blocks * BLOCK])
    }
}

/// The eight partial sums of a dot product added pairwise.
#[inline(always)]
fn finish(p: &[f32; 8]) -> f32 {
    (p[0] + p[4]) + (p[1] + p[5]) + (p[2] + p[6]) + (p[3] + p[7])
}

/// One dot product between a quantized activation row and a weight row,
/// the portable way (the arithmetic every form does).
fn dot((scales, values): (&[f32], &[i8]), w: &[u8]) -> f32 {
    let mut p = [0f32; 8];
    for (b, (&dx, x)) in scales.iter().zip(values.chunks_exact(BLOCK)).enumerate() {
        let wb = &w[b * BLOCK_BYTES..][..BLOCK_BYTES];
        let s = scale(wb) * dx;
        for (i, lane) in p.iter_mut().enumerate() {
            let sum: i32 = (0..4).map(|e| wb[2 + 4 * i + e] as i8 as i32 * x[4 * i + e] as i32).sum();
            *lane += s * sum as f32;
        }
    }
    finish(&p)
}

/// `out[r * out_row + j] = a[r] . w[j]` for `r < m`, `j < n`, with `a`
/// quantized per block, in the given form.
///
/// # Safety
/// As [`super::gemv::gemv_as`]: `out` holds every `r * out_row + j` and no
/// other thread writes them; `form.isa` is one this CPU runs.
pub(crate) unsafe fn gemv_q8(form: GemvForm, a: Rows, m: usize, w: Q8Rows, n: usize, out: Ptr, out_row: usize) {
    assert_eq!(a.len, w.blocks * BLOCK, "dot products of unequal lengths");
    let qa = QuantRows::new(a, m);
    // (the AVX2 form reads the f16 scales with F16C, which every AVX2 CPU
    // has; without it the portable form gives the same values)
    #[cfg(target_arch = "x86_64")]
    let avx2 = form.isa == Isa::Avx2 && std::arch::is_x86_feature_detected!("f16c");
    let part = |j0: usize, j1: usize| {
        let mut j = j0;
        #[cfg(target_arch = "x86_64")]
        while avx2 && j + 4 <= j1 {
            let ws = [w.row(j), w.row(j + 1), w.row(j + 2), w.row(j + 3)];
            // the rows two groups on, asked for now: the integer work per
            // byte is enough that loads issued only on use leave the memory
            // bus idle between them
            if j + 12 <= j1 {
                // SAFETY: prefetching has no effect on memory
                unsafe { x86::prefetch(&[w.row(j + 8), w.row(j + 9), w.row(j + 10), w.row(j + 11)]) };
            }
            for r in 0..m {
                // SAFETY: the CPU has AVX2 and F16C
                let v = unsafe { x86::dot4_avx2(qa.row(r), ws) };
                for (i, &v) in v.iter().enumerate() {
                    // SAFETY: per the contract; each part writes its own columns
                    unsafe { *out.at(r * out_row + j + i) = v };
                }
            }
            j += 4;
        }
        for j in j..j1 {
            let wr = w.row(j);
            for r in 0..m {
                // SAFETY: the CPU has AVX2 and F16C
                #[cfg(target_arch = "x86_64")]
                let v = if avx2 { unsafe { x86::dot_avx2(qa.row(r), wr) } } else { dot(qa.row(r), wr) };
                #[cfg(not(target_arch = "x86_64"))]
                let v = dot(qa.row(r), wr);
                // SAFETY: per the contract; each part writes its own columns
                unsafe { *out.at(r * out_row + j) = v };
            }
        }
    };
    if form.parts > 1 && n > 1 {
        let chunk = n.div_ceil(form.parts);
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| part(c * chunk, (c * chunk + chunk).min(n)));
    } else {
        part(0, n)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{finish, BLOCK, BLOCK_BYTES};

    /// [`super::dot`] with a block's 32 products in one register: bytes
    /// times bytes in pairs (`maddubs` on |w| and x with w's sign, which
    /// cannot saturate for values in -127..=127), pairs of pairs summed to
    /// eight lanes of four products each.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn dot_avx2((scales, values): (&[f32], &[i8]), w: &[u8]) -> f32 {
        assert!(values.len() == scales.len() * BLOCK && w.len() == scales.len() * BLOCK_BYTES);
        let mut acc = _mm256_setzero_ps();
        for (b, &dx) in scales.iter().enumerate() {
            let xq = _mm256_loadu_si256(values.as_ptr().add(b * BLOCK) as *const __m256i);
            acc = block(acc, w.as_ptr().add(b * BLOCK_BYTES), xq, dx);
        }
        total(acc)
    }

    /// `acc` plus one block's lanes: `d_w * dx` times the sums of four
    /// products of the weight block at `wb` with the activation bytes `xq`.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn block(acc: __m256, wb: *const u8, xq: __m256i, dx: f32) -> __m256 {
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([*wb, *wb.add(1)]) as i32)));
        let wq = _mm256_loadu_si256(wb.add(2) as *const __m256i);
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
        let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
        _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(d * dx), sums))
    }

    /// [`super::quantize_activation_block`], eight lanes at a time: the
    /// same scale (a maximum is exact) and the same values (a product and a
    /// rounding half to even are exact in any form).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_activation_block(x: &[f32]) -> (f32, [i8; BLOCK]) {
        assert_eq!(x.len(), BLOCK);
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for v in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *v));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let amax = lanes.iter().fold(0f32, |a, &b| a.max(b));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d == 0.0 { 0.0 } else { 1.0 / d });
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v[i], id)))
        });
        // (packing works within 128-bit halves: the permute restores the order)
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let mut out = [0i8; BLOCK];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, bytes);
        (d, out)
    }

    /// A dot product's lanes added as [`finish`] adds them.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn total(acc: __m256) -> f32 {
        let mut p = [0f32; 8];
        _mm256_storeu_ps(p.as_mut_ptr(), acc);
        finish(&p)
    }

    /// Ask for every cache line of `rows`.
    pub(super) unsafe fn prefetch(rows: &[&[u8]]) {
        for r in rows {
            for off in (0..r.len()).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(r.as_ptr().add(off) as *const i8);
            }
        }
    }

    /// [`dot_avx2`] of one activation row with four weight rows at once.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn dot4_avx2((scales, values): (&[f32], &[i8]), w: [&[u8]; 4]) -> [f32; 4] {
        assert!(values.len() == scales.len() * BLOCK && w.iter().all(|w| w.len() == scales.len() * BLOCK_BYTES));
        let mut acc = [_mm256_setzero_ps(); 4];
        for (b, &dx) in scales.iter().enumerate() {
            let xq = _mm256_loadu_si256(values.as_ptr().add(b * BLOCK) as *const __m256i);
            for i in 0..4 {
                acc[i] = block(acc[i], w[i].as_ptr().add(b * BLOCK_BYTES), xq, dx);
            }
        }
        std::array::from_fn(|i| total(acc[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = seed;
        (0..n)
            .map(|_| {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((rng >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn blocks_are_ggml_q8_0() {
        // one block of known values: max |x| = 2.54, so d = 0.02 and q = x / d
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.02 * if i == 0 { 7.9375 } else { 1.0 }).collect();
        let q = quantize(&x);
        assert_eq!(q.len(), 34);
        let d = f16::from_le_bytes([q[0], q[1]]).to_f32();
        assert_eq!(f16::from_f32(d), f16::from_f32(2.54 / 127.0));
        assert_eq!(q[2] as i8, -127, "the largest magnitude maps to -127");
        assert_eq!(q[3] as i8, -15);
        assert_eq!(q[18] as i8, 0);
        assert_eq!(q[33] as i8, 15);
        // an all-zero block has scale 0 and values 0
        assert!(quantize(&[0.0; 32]).iter().all(|&b| b == 0));
        // dequantized values are within half a step of the originals, plus
        // what rounding the scale to f16 moves the largest value (127 steps
        // times f16's relative precision, 2^-11)
        let x = values(4096, 3);
        let back = dequantize(&quantize(&x));
        for (b, (v, w)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
            let step = v.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            for (a, c) in v.iter().zip(w) {
                assert!((a - c).abs() <= step * (0.5 + 127.0 / 2048.0) * 1.001, "block {b}: {a} came back as {c}");
            }
        }
    }

    #[test]
    fn every_q8_form_gives_the_same_dot_products() {
        let isas = Isa::available();
        eprintln!("Q8_0 GEMV forms checked on this CPU: {}", isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", "));
        for (m, n, k) in [(1, 3, 32), (3, 70, 96), (8, 9, 512), (13, 40, 1408)] {
            let a = values(m * k, 1);
            let w = values(n * (k + 64), 2);
            let wq = quantize(&w);
            let ar = Rows { data: &a, offset: 0, stride: k as isize, len: k };
            let wr = Q8Rows::new(&wq, 32, (k + 64) as isize, k).unwrap();
            // against the exact product of the dequantized weights with the f32 activations
            let wd = dequantize(&wq);
            let mut first: Option<Vec<f32>> = None;
            for &isa in &isas {
                for parts in [1, 2, 7] {
                    let mut out = vec![f32::NAN; m * n];
                    unsafe { gemv_q8(GemvForm { isa, parts }, ar, m, wr, n, Ptr(out.as_mut_ptr()), n) };
                    for r in 0..m {
                        for j in 0..n {
                            let want: f64 = (0..k).map(|i| a[r * k + i] as f64 * wd[32 + j * (k + 64) + i] as f64).sum();
                            // activations quantized to 8 bits: an error per product of at most
                            // half a step of |a| (|a| < 0.5, step 0.5/127) times |w| < 0.5
                            let tol = k as f64 * 0.5 * (0.5 / 127.0) * 0.5;
                            let got = out[r * n + j] as f64;
                            assert!((got - want).abs() < tol, "m {m} n {n} k {k} ({r},{j}): {got} against {want}");
                        }
                    }
                    match &first {
                        None => first = Some(out),
                        Some(f) => assert!(f.iter().zip(&out).all(|(x, y)| x.to_bits() == y.to_bits()), "{isa:?} {parts} parts differ"),
                    }
                }
            }
        }
    }

    #[test]
    fn activations_quantize_alike_on_every_path() {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::simd::avx2() {
            eprintln!("activation quantizer checked: AVX2 against portable");
            let mut x = values(32 * 64, 9);
            // random blocks, one with an outlier, and an all-zero one
            x[0] = -60.0;
            x[32..64].fill(0.0);
            for b in x.chunks_exact(32) {
                let (d, q) = quantize_activation_block(b);
                // SAFETY: the CPU has AVX2
                let (dv, qv) = unsafe { x86::quantize_activation_block(b) };
                assert_eq!((d.to_bits(), q), (dv.to_bits(), qv), "{b:?}");
            }
            return;
        }
        eprintln!("activation quantizer: no AVX2 here, portable only");
    }

    #[test]
    fn rows_must_sit_on_block_boundaries() {
        let q = vec![0u8; 34 * 8];
        assert!(Q8Rows::new(&q, 0, 64, 64).is_some());
        assert!(Q8Rows::new(&q, 16, 64, 64).is_none());
        assert!(Q8Rows::new(&q, 0, 48, 32).is_none());
        assert!(Q8Rows::new(&q, 0, 64, 40).is_none());
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test -p lumind-compilers --release q8_gemv_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn q8_gemv_speed() {
        let (n, k) = (6400, 512);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        // copies enough to stream from memory, not the L3
        let copies = 16;
        let wq: Vec<u8> = quantize(&w).repeat(copies);
        let a: Vec<f32> = (0..k).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
        let mut out = vec![0f32; n];
        for isa in Isa::available() {
            for parts in [1, 2, 8] {
                let ar = Rows { data: &a, offset: 0, stride: k as isize, len: k };
                let mut best = f64::MAX;
                for c in 0..200 {
                    let wr = Q8Rows::new(&wq, ((c % copies) * n * k) as isize, k as isize, k).unwrap();
                    let t = std::time::Instant::now();
                    unsafe { gemv_q8(GemvForm { isa, parts }, ar, 1, wr, n, Ptr(out.as_mut_ptr()), n) };
                    best = best.min(t.elapsed().as_secs_f64());
                }
                eprintln!("{isa:?} {parts} parts: {:.1} us, {:.1} GMAC/s", best * 1e6, (n * k) as f64 / best / 1e9);
            }
        }
    }
}
