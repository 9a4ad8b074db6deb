//! Symbolic dimensions: building, comparing and printing them.
//!
//! A dimension is a luminal `Expression`: a number from a model definition,
//! or a symbol (`'b'` batch, `'s'` new tokens, `'p'` past tokens) that is only
//! known per run. Two dimensions are equal when they agree under several
//! assignments of their symbols, so `p + s` equals `s + p`.

use luminal::prelude::symbolic::{Expression, Term};
use luminal::prelude::ShapeTracker;
use rustc_hash::FxHashMap;

pub type Dim = Expression;

/// A dimension from a number.
pub fn d(n: usize) -> Dim {
    Expression::from(n)
}

/// A symbolic dimension.
pub fn sym(c: char) -> Dim {
    Expression::from(c)
}

/// Sum of dimensions, leaving out zeros so expressions stay small (luminal
/// caps an expression at 20 terms).
pub fn add(a: Dim, b: Dim) -> Dim {
    if a.to_usize() == Some(0) {
        b
    } else if b.to_usize() == Some(0) {
        a
    } else {
        (a + b).minimize()
    }
}

pub fn sub(a: Dim, b: Dim) -> Dim {
    if b.to_usize() == Some(0) {
        a
    } else {
        (a - b).minimize()
    }
}

pub fn mul(a: Dim, b: Dim) -> Dim {
    match (a.to_usize(), b.to_usize()) {
        (Some(1), _) => b,
        (_, Some(1)) => a,
        _ => (a * b).minimize(),
    }
}

pub fn product(dims: &[Dim]) -> Dim {
    dims.iter().fold(d(1), |acc, x| mul(acc, *x))
}

fn symbols(e: &Dim, out: &mut Vec<char>) {
    for t in e.terms.into_iter() {
        if let Term::Var(c) = t {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
}

/// Do two dimensions agree for every value of their symbols? Checked on a few
/// assignments, which is exact for the sums and products shapes are made of.
pub fn dims_eq(a: &Dim, b: &Dim) -> bool {
    if let (Some(x), Some(y)) = (a.to_usize(), b.to_usize()) {
        return x == y;
    }
    let mut vars = vec![];
    symbols(a, &mut vars);
    symbols(b, &mut vars);
    (0..4).all(|trial| {
        let map: FxHashMap<char, usize> = vars.iter().enumerate().map(|(i, &c)| (c, 3 + 7 * i + 13 * trial + trial * trial)).collect();
        a.exec(&map) == b.exec(&map)
    })
}

pub fn shapes_eq(a: &[Dim], b: &[Dim]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| dims_eq(x, y))
}

/// `[512, s, p + s]`
pub fn fmt_dims(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(fmt_dim).collect();
    format!("[{}]", parts.join(", "))
}

pub fn fmt_dim(e: &Dim) -> String {
    match e.to_usize() {
        Some(n) => n.to_string(),
        None => format!("{e:?}"),
    }
}

/// Is the `i32::MAX` marker luminal uses for "no upper slice bound".
pub fn is_unbounded(e: &Dim) -> bool {
    e.to_usize() == Some(i32::MAX as usize)
}

/// Logical shape of a tracker (luminal's `ShapeTracker::shape` is wrong for
/// slices with both bounds set, so we compute it here).
pub fn logical_dims(st: &ShapeTracker) -> Vec<Dim> {
    st.indexes
        .iter()
        .map(|&p| {
            let (s0, s1) = st.slices[p];
            let (p0, p1) = st.padding[p];
            if is_unbounded(&s1) {
                sub(add(add(st.dims[p], p0), p1), s0)
            } else {
                // slices are validated against the dim when they are taken
                sub(s1, s0)
            }
        })
        .collect()
}

/// Is logical dim `l` of the tracker broadcast (fake), read with stride 0?
pub fn is_broadcast(st: &ShapeTracker, l: usize) -> bool {
    st.fake[st.indexes[l]]
}

/// The tracker without its broadcast (fake) dims: the buffer as it is stored.
pub fn without_broadcast(st: &ShapeTracker) -> ShapeTracker {
    let mut s = *st;
    for l in (0..s.len()).rev() {
        if is_broadcast(&s, l) {
            s.remove_dim(l);
        }
    }
    s
}

/// No permute, broadcast, slice or pad: the tracker reads its buffer as is.
pub fn is_plain(st: &ShapeTracker) -> bool {
    st.is_contiguous() && !st.is_sliced() && !st.is_padded()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolic_equality() {
        assert!(dims_eq(&add(sym('p'), sym('s')), &add(sym('s'), sym('p'))));
        assert!(!dims_eq(&add(sym('p'), sym('s')), &sym('s')));
        assert!(dims_eq(&mul(d(4), sym('s')), &mul(sym('s'), d(4))));
        assert!(dims_eq(&d(3), &d(3)));
        assert_eq!(fmt_dims(&[d(2), sym('s')]), "[2, s]");
    }
}
