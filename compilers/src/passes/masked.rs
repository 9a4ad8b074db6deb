//! Masked rows: lets causal attention skip the keys a query cannot see.
//!
//! A row program (softmax over masked scores) gets a [`Guard`] when one of
//! its inputs is an additive mask that makes the program's work void on
//! the columns it masks: every row output is 0 there and no reduction
//! changes. The proof is an abstract run of the program over a masked
//! column, where each row value is known to be "masked" (at or below
//! `MASKED_AT`), exactly 0, or anything:
//! - the guard input is masked;
//! - masked + anything moderate stays masked, masked * c stays masked for a
//!   constant c >= 1, exp2(masked) is 0, 0 * anything is 0;
//! - a sum reduction may only read a row that is 0 there, a max only a row
//!   that is masked there;
//! - every row output must be 0 there.
//!
//! The rule assumes the other values are finite and far from the mask
//! value (|x| < 1e29), as scores are: an inf or NaN score on a masked
//! column is not propagated.
//!
//! The fused attention of prefill then skips the masked keys in both of its
//! products (1,024 tokens: attention 230 -> 137 ms). A training step's
//! softmax rows skip them too, but those are bound by memory traffic, so it
//! gains little there; skipping the probabilities' zero runs in the
//! backward products (tried) cost more in blocked gemm calls than it saved.

use luminal::prelude::{Compiler, Graph, ToIdsMut};

use crate::kernels::binary::BinaryOp;
use crate::kernels::reduce::ReduceOp;
use crate::kernels::row_program::{Guard, RowOp, RowProgram, MASKED_AT};
use crate::kernels::unary::UnaryOp;

#[derive(Debug, Default)]
pub struct MaskedRows;

/// What a row value is on a masked column.
#[derive(Clone, Copy, Debug, PartialEq)]
enum There {
    Masked,
    Zero,
    Any,
}

/// Does masking by input `input` make the program's work void on the
/// masked columns (see the module comment)?
pub fn guard_holds(p: &RowProgram, input: usize) -> bool {
    let konst = |j: usize| match p.instrs[j].op {
        RowOp::Const(c) => Some(c),
        _ => None,
    };
    let mut v = vec![There::Any; p.instrs.len()];
    for (k, ins) in p.instrs.iter().enumerate() {
        if !ins.row {
            // scalars are unchanged when the reductions feeding them are
            match ins.op {
                RowOp::Reduce(ReduceOp::Sum, a) if v[a] != There::Zero => return false,
                RowOp::Reduce(ReduceOp::Max, a) if v[a] != There::Masked => return false,
                _ => continue,
            }
        }
        v[k] = match ins.op {
            RowOp::Input(i) if i == input => There::Masked,
            RowOp::Const(0.0) => There::Zero,
            RowOp::Const(c) if c <= MASKED_AT => There::Masked,
            RowOp::Unary(UnaryOp::Exp2, a) if v[a] == There::Masked => There::Zero,
            RowOp::Unary(UnaryOp::Sqrt | UnaryOp::Sin, a) if v[a] == There::Zero => There::Zero,
            RowOp::Binary(BinaryOp::Add, a, b) => match (v[a], v[b]) {
                (There::Masked, _) | (_, There::Masked) => There::Masked,
                (There::Zero, There::Zero) => There::Zero,
                _ => There::Any,
            },
            RowOp::Binary(BinaryOp::Mul, a, b) => match (v[a], v[b]) {
                (There::Zero, _) | (_, There::Zero) => There::Zero,
                (There::Masked, _) if konst(b).is_some_and(|c| c >= 1.0) => There::Masked,
                (_, There::Masked) if konst(a).is_some_and(|c| c >= 1.0) => There::Masked,
                _ => There::Any,
            },
            _ => There::Any,
        };
    }
    p.outputs.iter().all(|&o| !p.instrs[o].row || v[o] == There::Zero)
}

impl Compiler for MaskedRows {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, _: T) {
        super::simplify_row_programs::rewrite_row_programs(graph, |prog| {
            let guard = (0..prog.input_row.len()).filter(|&i| prog.input_row[i]).find(|&i| guard_holds(prog, i));
            guard.map(|input| RowProgram { guard: Some(Guard { input }), ..prog.clone() })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::row_program::tests::masked_softmax;

    /// the builder's softmax with its sum reading instruction `sum_of`
    fn softmax(sum_of: usize) -> RowProgram {
        let mut p = masked_softmax();
        p.instrs[12].op = RowOp::Reduce(ReduceOp::Sum, sum_of);
        p.outputs = vec![11, 13, 14];
        p
    }

    #[test]
    fn a_masked_softmax_may_skip_masked_columns() {
        assert!(guard_holds(&softmax(11), 1), "the mask guards softmax");
        assert!(!guard_holds(&softmax(11), 0), "the scores are no mask");
        // a sum over the masked (not zeroed) row would change
        assert!(!guard_holds(&softmax(8), 1));
        // a row output that is not 0 on masked columns must be written
        let mut p = softmax(11);
        p.outputs.push(8);
        assert!(!guard_holds(&p, 1));
    }
}
