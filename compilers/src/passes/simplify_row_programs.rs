//! Row programs: rewrites inside each [`RowProgram`] program that make its
//! interpreter run fewer passes over a row (CPU only).
//!
//! The interpreter runs one loop over the row per row instruction, so a
//! softmax as the builder writes it (`max`, `* -1` broadcast back along the
//! row, `+`, `* log2 e`, `exp2`, `sum`, `recip`, `*`) costs seven passes and
//! dominated the prefill attention kernel (about 60% of its time at 256
//! tokens). The rewrites:
//! - a value computed from scalars only (such as `max * -1`, which the
//!   graph broadcasts back along the row) becomes a scalar, unless a
//!   reduction or an output needs it as a row;
//! - that softmax chain becomes one [`RowOp::Softmax`], which does the same
//!   arithmetic (so the same result, bit for bit) in three passes;
//! - SiLU (`x * recip(exp2((x * -1) * log2 e) + 1)`, six passes) becomes
//!   one [`RowOp::Silu`] of one pass, again with the same arithmetic.
//!
//! Instructions left unused are then dropped. Runs after `MaskedRows`,
//! whose proof reads the primitive instructions.

use luminal::prelude::{Compiler, Graph, ToIdsMut};

use crate::kernel::{kernel_of, KernelOp};
use crate::kernels::binary::BinaryOp;
use crate::kernels::reduce::ReduceOp;
use crate::kernels::row_program::{Instr, RowOp, RowProgram};
use crate::kernels::unary::UnaryOp;

#[derive(Debug, Default)]
pub struct SimplifyRowPrograms;

impl Compiler for SimplifyRowPrograms {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, _: T) {
        rewrite_row_programs(graph, |prog| Some(simplify(prog)).filter(|better| better != prog));
    }
}

/// Replace each row-program kernel by what `f` makes of it, where it makes
/// something (the walk `MaskedRows` and `SimplifyRowPrograms` share).
pub(super) fn rewrite_row_programs(graph: &mut Graph, f: impl Fn(&RowProgram) -> Option<RowProgram>) {
    let nodes: Vec<_> = graph.graph.node_indices().collect();
    for n in nodes {
        let Some(prog) = graph.graph.node_weight(n).and_then(|w| kernel_of(w.as_ref())).and_then(|k| k.get::<RowProgram>()) else {
            continue;
        };
        if let Some(new) = f(prog) {
            *graph.graph.node_weight_mut(n).unwrap() = Box::new(KernelOp::new(new));
        }
    }
}

/// The program with the rewrites applied and unused instructions dropped.
pub fn simplify(p: &RowProgram) -> RowProgram {
    let mut p = p.clone();
    demote_scalars(&mut p);
    fuse_softmax(&mut p);
    fuse_silu(&mut p);
    drop_unused(&mut p);
    p
}

/// The instructions each instruction reads.
fn operands(op: &RowOp) -> Vec<usize> {
    match *op {
        RowOp::Unary(_, a) | RowOp::Reduce(_, a) | RowOp::Softmax(a, _) | RowOp::Silu(a, ..) => vec![a],
        RowOp::Binary(_, a, b) => vec![a, b],
        RowOp::Input(_) | RowOp::Const(_) | RowOp::Dim(_) => vec![],
    }
}

/// Row instructions whose operands are all scalars become scalars, unless
/// an output, a reduction, a softmax or a silu reads them as rows.
fn demote_scalars(p: &mut RowProgram) {
    let mut needs_row: Vec<bool> = vec![false; p.instrs.len()];
    for &o in &p.outputs {
        needs_row[o] = true;
    }
    for ins in &p.instrs {
        if let RowOp::Reduce(_, a) | RowOp::Softmax(a, _) | RowOp::Silu(a, ..) = ins.op {
            needs_row[a] = true;
        }
    }
    for k in 0..p.instrs.len() {
        let computed = matches!(p.instrs[k].op, RowOp::Unary(..) | RowOp::Binary(..));
        if p.instrs[k].row && computed && !needs_row[k] && operands(&p.instrs[k].op).iter().all(|&a| !p.instrs[a].row) {
            p.instrs[k].row = false;
        }
    }
}

/// How many instructions (and outputs) read each instruction.
fn uses(p: &RowProgram) -> Vec<usize> {
    let mut uses = vec![0usize; p.instrs.len()];
    for ins in &p.instrs {
        for a in operands(&ins.op) {
            uses[a] += 1;
        }
    }
    for &o in &p.outputs {
        uses[o] += 1;
    }
    uses
}

fn konst(p: &RowProgram, k: usize) -> Option<f32> {
    match p.instrs[k].op {
        RowOp::Const(c) => Some(c),
        _ => None,
    }
}

/// The operands of a commutative `a op b` as (the one that passes `test`,
/// the other), when one does.
fn split(a: usize, b: usize, test: impl Fn(usize) -> bool) -> Option<(usize, usize)> {
    if test(a) {
        Some((a, b))
    } else if test(b) {
        Some((b, a))
    } else {
        None
    }
}

/// `exp2((x + max(x) * -1) * c) * recip(sum(...))` -> `Softmax(x, c)`, when
/// the chain's values are read nowhere else.
fn fuse_softmax(p: &mut RowProgram) {
    let n = p.instrs.len();
    let uses = uses(p);
    let op = |k: usize| p.instrs[k].op.clone();
    let konst = |k: usize| konst(p, k);
    let mut found = vec![];
    for out in 0..n {
        let RowOp::Binary(BinaryOp::Mul, a, b) = op(out) else { continue };
        // out = e * r, r = recip(s), s = sum(e), e = exp2(z)
        let Some((r, e)) = split(a, b, |k| matches!(op(k), RowOp::Unary(UnaryOp::Recip, _))) else { continue };
        let RowOp::Unary(UnaryOp::Recip, s) = op(r) else { continue };
        if op(s) != RowOp::Reduce(ReduceOp::Sum, e) {
            continue;
        }
        let RowOp::Unary(UnaryOp::Exp2, z) = op(e) else { continue };
        // z = d * c, d = x + neg, neg = m * -1, m = max(x)
        let RowOp::Binary(BinaryOp::Mul, z1, z2) = op(z) else { continue };
        let Some((c, d)) = split(z1, z2, |k| konst(k).is_some()) else { continue };
        let RowOp::Binary(BinaryOp::Add, d1, d2) = op(d) else { continue };
        let is_neg_max = |k: usize| match op(k) {
            RowOp::Binary(BinaryOp::Mul, m1, m2) => {
                split(m1, m2, |j| konst(j) == Some(-1.0)).is_some_and(|(_, m)| matches!(op(m), RowOp::Reduce(ReduceOp::Max, _)))
            }
            _ => false,
        };
        let Some((neg, x)) = split(d1, d2, is_neg_max) else { continue };
        let RowOp::Binary(BinaryOp::Mul, m1, m2) = op(neg) else { continue };
        let m = if konst(m1) == Some(-1.0) { m2 } else { m1 };
        if op(m) != RowOp::Reduce(ReduceOp::Max, x) || !p.instrs[x].row || !p.instrs[out].row {
            continue;
        }
        // e feeds the sum and the product; the rest one instruction each
        if uses[e] != 2 || [z, d, neg, m, s, r].iter().any(|&k| uses[k] != 1) {
            continue;
        }
        found.push((out, x, konst(c).unwrap()));
    }
    for (out, x, c) in found {
        p.instrs[out].op = RowOp::Softmax(x, c);
    }
}

/// `x * recip(exp2((x * a) * b) + 1)` -> `Silu(x, a, b)`, when the chain's
/// values are read nowhere else.
fn fuse_silu(p: &mut RowProgram) {
    let uses = uses(p);
    let op = |k: usize| p.instrs[k].op.clone();
    let is_const = |k: usize| konst(p, k).is_some();
    let mut found = vec![];
    for out in 0..p.instrs.len() {
        // out = x * r, r = recip(d), d = e + 1, e = exp2(z), z = y * b, y = x * a
        let RowOp::Binary(BinaryOp::Mul, o1, o2) = op(out) else { continue };
        let Some((r, x)) = split(o1, o2, |k| matches!(op(k), RowOp::Unary(UnaryOp::Recip, _))) else { continue };
        let RowOp::Unary(UnaryOp::Recip, d) = op(r) else { continue };
        let RowOp::Binary(BinaryOp::Add, d1, d2) = op(d) else { continue };
        let Some((_, e)) = split(d1, d2, |k| konst(p, k) == Some(1.0)) else { continue };
        let RowOp::Unary(UnaryOp::Exp2, z) = op(e) else { continue };
        let RowOp::Binary(BinaryOp::Mul, z1, z2) = op(z) else { continue };
        let Some((b, y)) = split(z1, z2, is_const) else { continue };
        let RowOp::Binary(BinaryOp::Mul, y1, y2) = op(y) else { continue };
        let Some((a, yx)) = split(y1, y2, is_const) else { continue };
        if yx != x || !p.instrs[x].row || !p.instrs[out].row || [r, d, e, z, y].iter().any(|&k| uses[k] != 1 || !p.instrs[k].row) {
            continue;
        }
        found.push((out, x, konst(p, a).unwrap(), konst(p, b).unwrap()));
    }
    for (out, x, a, b) in found {
        p.instrs[out].op = RowOp::Silu(x, a, b);
    }
}

/// Drop instructions no output depends on (renumbering the rest).
fn drop_unused(p: &mut RowProgram) {
    let n = p.instrs.len();
    let mut live = vec![false; n];
    for &o in &p.outputs {
        live[o] = true;
    }
    for k in (0..n).rev() {
        if live[k] {
            for a in operands(&p.instrs[k].op) {
                live[a] = true;
            }
        }
    }
    let mut new_index = vec![usize::MAX; n];
    let mut kept: Vec<Instr> = vec![];
    for k in 0..n {
        if live[k] {
            new_index[k] = kept.len();
            kept.push(p.instrs[k].clone());
        }
    }
    for ins in &mut kept {
        ins.op = match ins.op.clone() {
            RowOp::Unary(u, a) => RowOp::Unary(u, new_index[a]),
            RowOp::Binary(b, x, y) => RowOp::Binary(b, new_index[x], new_index[y]),
            RowOp::Reduce(r, a) => RowOp::Reduce(r, new_index[a]),
            RowOp::Softmax(a, c) => RowOp::Softmax(new_index[a], c),
            RowOp::Silu(x, a, b) => RowOp::Silu(new_index[x], a, b),
            op => op,
        };
    }
    for o in &mut p.outputs {
        *o = new_index[*o];
    }
    p.instrs = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::row_program::tests::{arg, masked_softmax, program, silu_times_up};
    use crate::kernels::row_program::Scratch;

    #[test]
    fn the_builders_softmax_becomes_one_instruction() {
        let p = simplify(&masked_softmax());
        // input, scale, product, mask, sum, softmax
        let ops: Vec<RowOp> = p.instrs.iter().map(|i| i.op.clone()).collect();
        assert_eq!(ops.len(), 6, "{ops:?}");
        assert_eq!(ops[5], RowOp::Softmax(4, std::f32::consts::LOG2_E));
        assert_eq!(p.outputs, vec![5]);
    }

    #[test]
    fn the_builders_silu_becomes_one_instruction() {
        let p = simplify(&silu_times_up());
        let ops: Vec<RowOp> = p.instrs.iter().map(|i| i.op.clone()).collect();
        // input, silu, up, product
        assert_eq!(ops.len(), 4, "{ops:?}");
        assert_eq!(ops[1], RowOp::Silu(0, -1.0, std::f32::consts::LOG2_E));
        assert_eq!(ops[3], RowOp::Binary(BinaryOp::Mul, 1, 2));
        // the sigmoid is also an output: the chain stays
        let mut q = silu_times_up();
        q.outputs.push(8);
        assert!(!simplify(&q).instrs.iter().any(|i| matches!(i.op, RowOp::Silu(..))));
        // `x * recip(exp2(x * c) + 2)` is not a silu
        let mut q = silu_times_up();
        q.instrs[6].op = RowOp::Const(2.0);
        assert!(!simplify(&q).instrs.iter().any(|i| matches!(i.op, RowOp::Silu(..))));
    }

    #[test]
    fn a_softmax_whose_pieces_are_read_elsewhere_stays() {
        // the exponentials are also an output
        let mut p = masked_softmax();
        p.outputs.push(11);
        let s = simplify(&p);
        assert!(!s.instrs.iter().any(|i| matches!(i.op, RowOp::Softmax(..))));
        assert_eq!(s.instrs.len(), p.instrs.len());
        // the broadcast `max * -1` became a scalar all the same
        assert!(!s.instrs[7].row);
    }

    #[test]
    fn simplified_programs_compute_the_same_rows() {
        use BinaryOp::*;
        use RowOp::*;
        // a softmax, a scalar chain read by a row op (rms-norm-like), a silu
        let norm = program(
            &[
                (Input(0), true),
                (Binary(Mul, 0, 0), true),
                (Reduce(ReduceOp::Sum, 1), false),
                (Const(0.125), false),
                (Binary(Mul, 2, 3), true),
                (Unary(UnaryOp::Sqrt, 4), true),
                (Unary(UnaryOp::Recip, 5), true),
                (Binary(Mul, 0, 6), true),
            ],
            &[7],
        );
        for p in [masked_softmax(), norm, silu_times_up()] {
            let s = simplify(&p);
            assert_ne!(s, p, "the rewrite applies");
            let x: Vec<f32> = (0..8).map(|i| ((i * 37) % 11) as f32 * 0.7 - 3.0).collect();
            // (the mask doubles as silu's `up`)
            let mask: Vec<f32> = (0..8).map(|i| if i < 5 { 0.0 } else { -1e30 }).collect();
            let run = |p: &RowProgram| {
                let inputs = [crate::kernels::row_program::tests::arg(&x), crate::kernels::row_program::tests::arg(&mask)];
                let mut sc: Scratch = p.scratch(8, &Default::default());
                p.eval_row(&[], 8, &inputs, None, &mut sc);
                p.output_row(0, 8, &sc).to_vec()
            };
            assert_eq!(run(&s), run(&p), "bit for bit");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_copy_computes_what_the_portable_one_does() {
        if !crate::kernels::simd::avx2() {
            eprintln!("no AVX2 here: eval_row never takes that path");
            return;
        }
        let silu = silu_times_up();
        let softmax = simplify(&masked_softmax());
        let fused_silu = simplify(&silu);
        assert!(fused_silu.instrs.iter().any(|i| matches!(i.op, RowOp::Silu(..))), "{fused_silu:?}");
        // 37 columns: whole vectors of both widths and a tail
        let n = 37;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 101) as f32 * 0.13 - 6.0).collect();
        let y: Vec<f32> = (0..n).map(|i| if i % 5 == 4 { -1e30 } else { ((i * 31) % 17) as f32 * 0.2 - 1.5 }).collect();
        let inputs = [arg(&x), arg(&y)];
        for p in [silu, masked_softmax(), softmax, fused_silu] {
            let out = |avx2: bool| {
                let mut s = p.scratch(n, &Default::default());
                if avx2 {
                    unsafe { p.eval_row_avx2(&[], n, &inputs, None, &mut s) }
                } else {
                    p.eval_row_body(&[], n, &inputs, None, &mut s)
                }
                p.output_row(0, n, &s).to_vec()
            };
            let (a, b) = (out(true), out(false));
            assert!(a.iter().zip(&b).all(|(u, v)| u.to_bits() == v.to_bits()), "{a:?}\n{b:?}");
        }
    }
}
