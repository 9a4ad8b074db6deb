//! What the two kernels that apply the rotary embedding share
//! ([`super::rope::Rope`] and [`super::causal_attention`]): the tables of one
//! call, and reading a head's rows through any strides, rotated as they are
//! read.

use crate::kernel::Arg;

/// The rotary tables of one call, `[s, D]` each, contiguous.
pub(super) struct Tables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    d: usize,
}

impl Tables {
    pub fn new(cos: &Arg, sin: &Arg, s: usize, d: usize) -> Tables {
        let table = |x: &Arg, name: &str| {
            assert!(x.view.rank == 2 && !x.view.padded && x.view.dims() == [s, d], "rotary embedding: {name} must be [s, D] = [{s}, {d}]");
            let mut t = vec![0f32; s * d];
            let [rs, cs] = [x.view.strides[0], x.view.strides[1]];
            for (i, row) in t.chunks_exact_mut(d).enumerate() {
                let at = x.view.offset + i as isize * rs;
                if cs == 1 {
                    row.copy_from_slice(&x.data[at as usize..][..d]);
                } else {
                    row.iter_mut().enumerate().for_each(|(c, v)| *v = x.data[(at + c as isize * cs) as usize]);
                }
            }
            t
        };
        Tables { cos: table(cos, "cos"), sin: table(sin, "sin"), d }
    }
    fn at(&self, i: usize) -> (&[f32], &[f32]) {
        (&self.cos[i * self.d..][..self.d], &self.sin[i * self.d..][..self.d])
    }
    /// `dst = x cos + rotate_half(x) sin` at position `i`. (Each half in
    /// its own loop over zipped slices, so both vectorise.)
    pub fn rotate(&self, dst: &mut [f32], x: &[f32], i: usize) {
        let ((cos, sin), h) = (self.at(i), self.d / 2);
        let ((d1, d2), (x1, x2)) = (dst.split_at_mut(h), x.split_at(h));
        let ((c1, c2), (s1, s2)) = (cos.split_at(h), sin.split_at(h));
        for ((((o, &a), &b), &c), &s) in d1.iter_mut().zip(x1).zip(x2).zip(c1).zip(s1) {
            *o = a * c - b * s;
        }
        for ((((o, &a), &b), &c), &s) in d2.iter_mut().zip(x1).zip(x2).zip(c2).zip(s2) {
            *o = b * c + a * s;
        }
    }
    /// The transpose: `dst = g cos + rotate_half^T(g sin)`.
    pub fn unrotate(&self, dst: &mut [f32], g: &[f32], i: usize) {
        let ((cos, sin), h) = (self.at(i), self.d / 2);
        let ((d1, d2), (g1, g2)) = (dst.split_at_mut(h), g.split_at(h));
        let ((c1, c2), (s1, s2)) = (cos.split_at(h), sin.split_at(h));
        for ((((o, &a), &b), &c), &s) in d1.iter_mut().zip(g1).zip(g2).zip(c1).zip(s2) {
            *o = a * c + b * s;
        }
        for ((((o, &a), &b), &c), &s) in d2.iter_mut().zip(g1).zip(g2).zip(c2).zip(s1) {
            *o = b * c - a * s;
        }
    }
}

/// A `[b, heads, s, D]` input: where head `hh` of batch `bb` starts, and
/// its row and column strides.
pub(super) fn head(x: &Arg, bb: usize, hh: usize) -> (*const f32, isize, isize) {
    let st = &x.view.strides;
    let off = x.view.offset + bb as isize * st[0] + hh as isize * st[1];
    (unsafe { x.data.as_ptr().offset(off) }, st[2], st[3])
}

/// Rows `i0..i0 + rows` of the `groups` heads from `first` on (of batch
/// `bb`), packed as `[groups * rows, D]`, rotated when `rope` is given.
pub(super) fn pack(
    x: &Arg,
    (bb, first): (usize, usize),
    groups: usize,
    (i0, rows): (usize, usize),
    rope: Option<&Tables>,
    buf: &mut [f32],
) {
    let d = x.view.shape[3];
    let mut tmp = vec![0f32; d];
    for g in 0..groups {
        let (p, rs, cs) = head(x, bb, first + g);
        for r in 0..rows {
            let row = &mut buf[(g * rows + r) * d..][..d];
            // SAFETY: the executor checked the view against its buffer
            let src = unsafe { p.offset((i0 + r) as isize * rs) };
            let read = if rope.is_some() { &mut tmp[..] } else { &mut row[..] };
            if cs == 1 {
                read.copy_from_slice(unsafe { std::slice::from_raw_parts(src, d) });
            } else {
                read.iter_mut().enumerate().for_each(|(c, v)| *v = unsafe { *src.offset(c as isize * cs) });
            }
            if let Some(rope) = rope {
                rope.rotate(row, &tmp, i0 + r);
            }
        }
    }
}
