//! What the device target ([`super::target`]) needs from a device: memory, one module of
//! generated kernels, launches, and cuBLAS's strided-batched SGEMM. The CUDA
//! driver ([`super::driver`]) and the CPU emulator ([`super::emulator`])
//! implement it, so the executor and every generated kernel are tested on
//! machines without a GPU.

use super::source::Launch;

/// A device buffer of f32, by handle.
pub type BufId = usize;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeviceError(pub String);

impl From<String> for DeviceError {
    fn from(s: String) -> Self {
        DeviceError(s)
    }
}

pub type DeviceResult<T> = Result<T, DeviceError>;

pub trait Device: Send {
    /// e.g. `NVIDIA H200 (sm_90)` or `CPU emulation`
    fn name(&self) -> String;
    /// Compile and load the module holding every kernel of a graph.
    fn load(&mut self, source: &str) -> DeviceResult<()>;
    /// A zero-filled buffer of `len` values.
    fn alloc(&mut self, len: usize) -> DeviceResult<BufId>;
    fn free(&mut self, b: BufId);
    fn upload(&mut self, b: BufId, data: &[f32]) -> DeviceResult<()>;
    fn download(&self, b: BufId, len: usize) -> DeviceResult<Vec<f32>>;
    fn zero(&mut self, b: BufId, len: usize) -> DeviceResult<()>;
    /// The words every launch of the next run reads its `meta` from.
    fn set_meta(&mut self, words: &[i64]) -> DeviceResult<()>;
    /// Run `entry(meta + meta_at, bufs...)`.
    fn launch(&mut self, entry: &str, launch: Launch, meta_at: usize, bufs: &[BufId]) -> DeviceResult<()>;
    /// `cublasSgemmStridedBatched` with alpha 1, beta 0, offsets in
    /// elements, for the product `c = x y` (see [`Sgemm::operands`]).
    fn sgemm(&mut self, call: &Sgemm, x: BufId, y: BufId, c: BufId) -> DeviceResult<()>;
    /// Wait for everything queued.
    fn sync(&mut self) -> DeviceResult<()>;
}

/// One column-major strided-batched SGEMM as cuBLAS defines it:
/// `C = op(A) op(B)`, `C` m x n with leading dimension `ldc`, `op(A)` m x k
/// (A stored k x m when `trans_a`), `op(B)` k x n (B stored n x k when
/// `trans_b`); batch `i` offsets every operand by `i` times its stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sgemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_off: usize,
    pub lda: usize,
    pub stride_a: usize,
    pub b_off: usize,
    pub ldb: usize,
    pub stride_b: usize,
    pub c_off: usize,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    /// A is the product's Y and B its X (cuBLAS computes `C^T = Y^T X^T`)
    pub swap: bool,
}

impl Sgemm {
    /// (A, B) given the product's (X, Y).
    pub fn operands<T>(&self, x: T, y: T) -> (T, T) {
        if self.swap {
            (y, x)
        } else {
            (x, y)
        }
    }
}

/// A row-major product `C[i, j] = sum_p X[i, p] Y[p, j]` over strided
/// operands: (offset, stride of i or j, stride of p) for X and Y, and C's
/// (offset, row stride, column stride).
#[derive(Clone, Copy, Debug)]
pub struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub x: (isize, isize, isize),
    pub y: (isize, isize, isize),
    pub c: (isize, isize, isize),
}

/// A logical `rows x cols` matrix whose element (r, c) sits at
/// `r * sr + c * sc`, as an SGEMM operand: stored column-major as is
/// (`false`) or as its transpose (`true`), and its leading dimension. A
/// size-1 dimension's stride does not matter.
fn operand(rows: usize, cols: usize, sr: isize, sc: isize) -> Option<(bool, usize)> {
    if let Some(ld) = column_major(rows, cols, sr, sc) {
        return Some((false, ld));
    }
    column_major(cols, rows, sc, sr).map(|ld| (true, ld))
}

/// The leading dimension if the matrix is column-major as it lies.
fn column_major(rows: usize, cols: usize, sr: isize, sc: isize) -> Option<usize> {
    if sr != 1 && rows != 1 {
        return None;
    }
    let ld = if cols == 1 { rows.max(1) } else { usize::try_from(sc).ok()? };
    (ld >= rows.max(1)).then_some(ld)
}

impl Product {
    /// The SGEMM computing this product for `batch` batches whose operands
    /// step by `strides` (X, Y, C), if cuBLAS can take the layout (else the
    /// executor runs the generic kernel).
    pub fn sgemm(&self, batch: usize, strides: (isize, isize, isize)) -> Option<Sgemm> {
        if column_major(self.m, self.n, self.c.1, self.c.2).is_some() {
            return self.as_is(batch, strides, false);
        }
        // C^T (n x m) = Y^T (n x k) X^T (k x m): the same, transposed
        let t = Product { m: self.n, n: self.m, k: self.k, x: self.y, y: self.x, c: (self.c.0, self.c.2, self.c.1) };
        t.as_is(batch, (strides.1, strides.0, strides.2), true)
    }

    /// C (m x n, column-major as it lies) = X (m x k) Y (k x n).
    fn as_is(&self, batch: usize, strides: (isize, isize, isize), swap: bool) -> Option<Sgemm> {
        let Product { m, n, k, x, y, c } = *self;
        let nonneg = |v: isize| usize::try_from(v).ok();
        let ldc = column_major(m, n, c.1, c.2)?;
        let (trans_a, lda) = operand(m, k, x.1, x.2)?;
        let (trans_b, ldb) = operand(k, n, y.2, y.1)?;
        Some(Sgemm {
            trans_a,
            trans_b,
            m,
            n,
            k,
            a_off: nonneg(x.0)?,
            lda,
            stride_a: nonneg(strides.0)?,
            b_off: nonneg(y.0)?,
            ldb,
            stride_b: nonneg(strides.1)?,
            c_off: nonneg(c.0)?,
            ldc,
            stride_c: nonneg(strides.2)?,
            batch,
            swap,
        })
    }
}

/// What cuBLAS computes for `s`, on host slices (the emulator's SGEMM, and
/// the reference the mapping is tested against).
pub fn sgemm_reference(s: &Sgemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    for bi in 0..s.batch {
        let (ao, bo, co) = (s.a_off + bi * s.stride_a, s.b_off + bi * s.stride_b, s.c_off + bi * s.stride_c);
        for j in 0..s.n {
            for i in 0..s.m {
                let mut acc = 0f32;
                for p in 0..s.k {
                    let av = if s.trans_a { a[ao + p + i * s.lda] } else { a[ao + i + p * s.lda] };
                    let bv = if s.trans_b { b[bo + j + p * s.ldb] } else { b[bo + p + j * s.ldb] };
                    acc += av * bv;
                }
                c[co + i + j * s.ldc] = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout of X, Y and C that a matmul over views produces maps to
    /// an SGEMM computing the same product.
    #[test]
    fn products_map_to_sgemm() {
        let (m, n, k) = (3usize, 4usize, 5usize);
        let xs: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let ys: Vec<f32> = (0..64).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut checked = 0;
        for (x_rm, y_rm, c_rm) in (0..8).map(|b| (b & 1 == 1, b & 2 == 2, b & 4 == 4)) {
            for (mm, nn, kk) in [(m, n, k), (1, n, k), (m, 1, k), (m, n, 1), (1, 1, k)] {
                let x = if x_rm { (2, kk as isize, 1) } else { (2, 1, mm as isize) };
                let y = if y_rm { (1, 1, nn as isize) } else { (1, kk as isize, 1) };
                let c = if c_rm { (0, nn as isize, 1) } else { (0, 1, mm as isize) };
                let p = Product { m: mm, n: nn, k: kk, x, y, c };
                let s = p.sgemm(1, (0, 0, 0)).unwrap_or_else(|| panic!("no SGEMM for {p:?}"));
                let mut got = vec![0f32; mm * nn];
                let (a, b) = s.operands(&xs, &ys);
                sgemm_reference(&s, a, b, &mut got);
                for i in 0..mm {
                    for j in 0..nn {
                        let want: f32 = (0..kk)
                            .map(|q| {
                                xs[(x.0 + i as isize * x.1 + q as isize * x.2) as usize]
                                    * ys[(y.0 + j as isize * y.1 + q as isize * y.2) as usize]
                            })
                            .sum();
                        let at = (c.0 + i as isize * c.1 + j as isize * c.2) as usize;
                        assert!((got[at] - want).abs() < 1e-5, "{p:?} -> {s:?}: C[{i},{j}] {} vs {want}", got[at]);
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 40);
        // a broadcast operand (stride 0 over rows) is not an SGEMM
        let p = Product { m: 3, n: 4, k: 5, x: (0, 0, 1), y: (0, 5, 1), c: (0, 4, 1) };
        assert!(p.sgemm(1, (0, 0, 0)).is_none());
    }
}
