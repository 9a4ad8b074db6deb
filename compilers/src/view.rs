//! A luminal `ShapeTracker` resolved against concrete dimension values.
//!
//! Luminal keeps views symbolic (permute, expand, slice, pad over `Expression`
//! dims) and its stock kernels re-interpret `index_expression()` per element.
//! We resolve a tracker once per set of dimension values into plain numbers
//! (logical shape, element strides, a base offset and the valid range per
//! dimension) and let kernels walk memory with strides.

use luminal::prelude::symbolic::Expression;
use luminal::prelude::ShapeTracker;
use rustc_hash::FxHashMap;

/// Luminal trackers hold at most 6 dims.
pub const MAX_RANK: usize = 6;

/// Values of the symbolic dimensions for one run (`'s'` -> 17, ...).
pub type DimValues = FxHashMap<char, usize>;

/// Evaluate a dimension expression; a missing variable is a bug in the caller
/// (every run must set every symbolic dim its graph uses).
pub fn eval(e: &Expression, dims: &DimValues, stack: &mut Vec<i32>) -> usize {
    stack.clear();
    match e.exec_stack(dims, stack) {
        Some(v) => v,
        None => panic!("dimension {e:?} uses a symbol with no value (set: {:?})", dims.keys().collect::<Vec<_>>()),
    }
}

/// How a kernel reads one input: logical index `j` maps to physical element
/// `offset + sum(j[d] * strides[d])`, and reads 0 unless `lo[d] <= j[d] < hi[d]`
/// for every dim (padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub rank: usize,
    pub shape: [usize; MAX_RANK],
    pub strides: [isize; MAX_RANK],
    pub lo: [usize; MAX_RANK],
    pub hi: [usize; MAX_RANK],
    pub offset: isize,
    /// Any dim with a valid range smaller than its size.
    pub padded: bool,
    /// Number of elements the source buffer must hold.
    pub phys_len: usize,
}

impl View {
    /// A plain row-major view of `shape`.
    pub fn contiguous(shape: &[usize]) -> View {
        let mut v = View {
            rank: shape.len(),
            shape: [1; MAX_RANK],
            strides: [0; MAX_RANK],
            lo: [0; MAX_RANK],
            hi: [1; MAX_RANK],
            offset: 0,
            padded: false,
            phys_len: shape.iter().product(),
        };
        let mut acc = 1isize;
        for d in (0..shape.len()).rev() {
            v.shape[d] = shape[d];
            v.hi[d] = shape[d];
            v.strides[d] = acc;
            acc *= shape[d] as isize;
        }
        v
    }

    /// Resolve a tracker with the given dimension values.
    pub fn resolve(st: &ShapeTracker, dims: &DimValues, stack: &mut Vec<i32>) -> View {
        let n = st.len();
        assert!(n <= MAX_RANK, "view of rank {n} exceeds {MAX_RANK}");
        let mut phys = [0usize; MAX_RANK];
        for i in 0..n {
            phys[i] = eval(&st.dims[i], dims, stack);
        }
        // Row-major strides over the physical (non-fake) dims, in storage order.
        let mut pstride = [0isize; MAX_RANK];
        let mut acc = 1isize;
        for i in (0..n).rev() {
            pstride[i] = acc;
            if !st.fake[i] {
                acc *= phys[i] as isize;
            }
        }
        let mut v = View {
            rank: n,
            shape: [1; MAX_RANK],
            strides: [0; MAX_RANK],
            lo: [0; MAX_RANK],
            hi: [1; MAX_RANK],
            offset: 0,
            padded: false,
            phys_len: acc as usize,
        };
        for l in 0..n {
            let p = st.indexes[l];
            let pad0 = eval(&st.padding[p].0, dims, stack);
            let pad1 = eval(&st.padding[p].1, dims, stack);
            let s0 = eval(&st.slices[p].0, dims, stack);
            let s1 = eval(&st.slices[p].1, dims, stack);
            let full = phys[p] + pad0 + pad1;
            let size = full.min(s1).saturating_sub(s0);
            v.shape[l] = size;
            // padded coordinate c = j + s0 is valid for pad0 <= c < phys + pad0
            // (a broadcast dim too: padding one makes its edges read 0)
            v.lo[l] = pad0.saturating_sub(s0).min(size);
            v.hi[l] = (phys[p] + pad0).saturating_sub(s0).min(size).max(v.lo[l]);
            if st.fake[p] {
                v.strides[l] = 0;
            } else {
                // physical index c - pad0
                v.strides[l] = pstride[p];
                v.offset += (s0 as isize - pad0 as isize) * pstride[p];
            }
            if v.lo[l] != 0 || v.hi[l] != size {
                v.padded = true;
            }
        }
        v
    }

    pub fn dims(&self) -> &[usize] {
        &self.shape[..self.rank]
    }

    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }

    /// Plain row-major over exactly its source buffer: kernels can use the
    /// buffer as is.
    pub fn is_plain(&self) -> bool {
        self.contiguous_run() == Some(0) && self.numel() == self.phys_len
    }

    /// Where the view reads one unbroken row-major run of its buffer (a
    /// plain view, or a slice of a flat one), the run's first index.
    pub fn contiguous_run(&self) -> Option<usize> {
        if self.padded || self.offset < 0 {
            return None;
        }
        let mut acc = 1isize;
        for d in (0..self.rank).rev() {
            if self.shape[d] != 1 && self.strides[d] != acc {
                return None;
            }
            acc *= self.shape[d] as isize;
        }
        Some(self.offset as usize)
    }

    /// Physical index of a logical multi-index, or None where it reads padding.
    #[inline]
    pub fn index(&self, idx: &[usize]) -> Option<usize> {
        let mut off = self.offset;
        for d in 0..self.rank {
            if idx[d] < self.lo[d] || idx[d] >= self.hi[d] {
                return None;
            }
            off += idx[d] as isize * self.strides[d];
        }
        Some(off as usize)
    }

    /// Range of physical indices touched (for bounds checks), or None when the
    /// view reads nothing but padding.
    pub fn touched(&self) -> Option<(isize, isize)> {
        let (mut min, mut max) = (self.offset, self.offset);
        for d in 0..self.rank {
            if self.hi[d] <= self.lo[d] {
                return None;
            }
            let a = self.lo[d] as isize * self.strides[d];
            let b = (self.hi[d] - 1) as isize * self.strides[d];
            min += a.min(b);
            max += a.max(b);
        }
        Some((min, max))
    }

    /// Why reading this view from a buffer of `len` elements would go out
    /// of bounds, if it would; kernels rely on the executor checking this.
    pub fn out_of_bounds(&self, len: usize) -> Option<String> {
        let (lo, hi) = self.touched()?;
        (lo < 0 || hi as usize >= len).then(|| {
            format!(
                "view {:?} (strides {:?}, offset {}) reads [{lo}, {hi}] of a buffer of {len}",
                self.dims(),
                &self.strides[..self.rank],
                self.offset
            )
        })
    }

    /// Drop dimension `axis` (used by kernels that iterate it themselves).
    pub fn without(&self, axis: usize) -> View {
        let mut v = *self;
        for d in axis..self.rank - 1 {
            v.shape[d] = self.shape[d + 1];
            v.strides[d] = self.strides[d + 1];
            v.lo[d] = self.lo[d + 1];
            v.hi[d] = self.hi[d + 1];
        }
        v.rank -= 1;
        v.shape[v.rank] = 1;
        v.hi[v.rank] = 1;
        v.lo[v.rank] = 0;
        v.strides[v.rank] = 0;
        v
    }
}

/// Row-major strides of a contiguous shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(dims: &[usize]) -> ShapeTracker {
        ShapeTracker::new(&dims.iter().map(|&d| Expression::from(d)).collect::<Vec<_>>())
    }

    #[test]
    fn permute_expand_slice_pad() {
        let d = DimValues::default();
        let mut stack = vec![];
        // [2,3] permuted -> [3,2]
        let mut t = st(&[2, 3]);
        t.permute(&[1, 0]);
        let v = View::resolve(&t, &d, &mut stack);
        assert_eq!(v.dims(), &[3, 2]);
        assert_eq!(v.index(&[2, 1]), Some(5));
        // expand a fake dim in front
        let mut t = st(&[3]);
        t.expand(0, 4.into());
        let v = View::resolve(&t, &d, &mut stack);
        assert_eq!(v.dims(), &[4, 3]);
        assert_eq!(v.index(&[3, 2]), Some(2));
        assert_eq!(v.phys_len, 3);
        // slice [2..5) of 8
        let mut t = st(&[8]);
        t.slices[0] = (2.into(), 5.into());
        let v = View::resolve(&t, &d, &mut stack);
        assert_eq!(v.dims(), &[3]);
        assert_eq!(v.index(&[0]), Some(2));
        // pad 2 on the left of 3
        let mut t = st(&[3]);
        t.padding[0] = (2.into(), 1.into());
        let v = View::resolve(&t, &d, &mut stack);
        assert_eq!(v.dims(), &[6]);
        assert_eq!(v.index(&[1]), None);
        assert_eq!(v.index(&[2]), Some(0));
        assert_eq!(v.index(&[5]), None);
        assert!(v.padded);
    }

    #[test]
    fn symbolic_dims() {
        let mut d = DimValues::default();
        d.insert('s', 5);
        d.insert('p', 2);
        let mut t = ShapeTracker::new(&[Expression::from(10), Expression::from(4)]);
        t.slices[0] = (Expression::from('p'), Expression::from('p') + Expression::from('s'));
        let v = View::resolve(&t, &d, &mut vec![]);
        assert_eq!(v.dims(), &[5, 4]);
        assert_eq!(v.index(&[0, 1]), Some(9));
    }
}
