//! Row programs as CUDA C: the [`CudaKernel`] forms of [`RowProgram`] (one
//! block per row) and of [`ProductChain`] (fused attention: one block per
//! query row, its scores in shared memory), which share the translation of
//! a program's instructions into statements ([`RowCode`]).

use std::fmt::Write;

use super::source::{per_row, push_dims, push_view, Call, CudaKernel, Launch, BLOCK, VIEW_WORDS};
use crate::kernels::product_chain::ProductChain;
use crate::kernels::reduce::ReduceOp;
use crate::kernels::row_program::{RowOp, RowProgram};
use crate::view::{eval, DimValues, View, MAX_RANK};

/// The largest key count fused attention keeps in shared memory (scores
/// and probabilities of one row: 2 x 4 bytes each, under 48 KiB).
pub const MAX_ATTENTION_KEYS: usize = 5_888;

/// The row program's statements: `float s{k}` for scalars (uniform across
/// the block) and reductions, and per element `j` of the row `float r{k}`,
/// recomputed from the inputs in each loop that needs it (rows stay in
/// registers, never in memory). `row_input(i)` reads input `i` at `j`.
struct RowCode<'a> {
    p: &'a RowProgram,
    row_input: &'a dyn Fn(usize) -> String,
    scalar_input: &'a dyn Fn(usize) -> String,
    /// where the program's constants start in `meta`
    consts: String,
}

impl RowCode<'_> {
    fn operand(&self, k: usize) -> String {
        if self.p.instrs[k].row {
            format!("r{k}")
        } else {
            format!("s{k}")
        }
    }

    /// `float r{k} = ...;` for every row instruction `targets` need, in order.
    fn rows_for(&self, targets: &[usize], out: &mut String) {
        let mut need = vec![false; self.p.instrs.len()];
        for &t in targets {
            need[t] = true;
        }
        for k in (0..self.p.instrs.len()).rev() {
            if !need[k] || !self.p.instrs[k].row {
                continue;
            }
            match &self.p.instrs[k].op {
                RowOp::Unary(_, a) => need[*a] = true,
                RowOp::Binary(_, a, b) => {
                    need[*a] = true;
                    need[*b] = true;
                }
                _ => {}
            }
        }
        for (k, ins) in self.p.instrs.iter().enumerate() {
            if !need[k] || !ins.row {
                continue;
            }
            let e = match &ins.op {
                RowOp::Input(i) => (self.row_input)(*i),
                RowOp::Const(_) | RowOp::Dim(_) => format!("f32_of({}[{k}])", self.consts),
                RowOp::Unary(op, a) => op.cuda(&self.operand(*a)),
                RowOp::Binary(op, a, b) => op.cuda(&self.operand(*a), &self.operand(*b)),
                RowOp::Reduce(..) => unreachable!("a reduction is a scalar"),
                RowOp::Softmax(..) | RowOp::Silu(..) => unreachable!("SimplifyRowPrograms runs in the CPU pipeline only"),
            };
            let _ = writeln!(out, "      float r{k} = {e};");
        }
    }

    /// Scalars and reductions, in program order.
    fn scalars(&self, out: &mut String) {
        for (k, ins) in self.p.instrs.iter().enumerate() {
            if ins.row {
                continue;
            }
            let e = match &ins.op {
                RowOp::Input(i) => (self.scalar_input)(*i),
                RowOp::Const(_) | RowOp::Dim(_) => format!("f32_of({}[{k}])", self.consts),
                RowOp::Unary(op, a) => op.cuda(&self.operand(*a)),
                RowOp::Binary(op, a, b) => op.cuda(&self.operand(*a), &self.operand(*b)),
                RowOp::Softmax(..) | RowOp::Silu(..) => unreachable!("a softmax or silu is a row"),
                RowOp::Reduce(op, a) => {
                    let (init, step, is_max) = match op {
                        ReduceOp::Sum => ("0.0f", format!("acc += r{a};"), "false"),
                        ReduceOp::Max => ("-INFINITY", format!("acc = fmaxf(acc, r{a});"), "true"),
                    };
                    let _ = writeln!(
                        out,
                        "    float s{k};\n    {{\n    float acc = {init};\n    for (i64 j = threadIdx.x; j < R; j += blockDim.x) {{"
                    );
                    self.rows_for(&[*a], out);
                    let _ = writeln!(out, "      {step}\n    }}\n    s{k} = block_reduce(acc, {is_max}, red);\n    }}");
                    continue;
                }
            };
            let _ = writeln!(out, "    float s{k} = {e};");
        }
    }
}

/// meta: rows, R, outer rank, outer dims (MAXR), one constant per
/// instruction, then one view per input.
fn row_program_body(p: &RowProgram) -> String {
    let n = p.instrs.len();
    let views = 3 + MAX_RANK + n;
    let mut out = format!(
        "  __shared__ float red[{BLOCK}];
  const i64 rows = meta[0], R = meta[1]; const int orank = (int)meta[2];
  const i64* outer = meta + 3; const i64* cst = meta + {c};
  for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {{
    i64 idx[MAXR];
    unravel(row, outer, orank, idx);
",
        c = 3 + MAX_RANK
    );
    for i in 0..p.input_row.len() {
        let _ = writeln!(
            out,
            "    const V* v{i} = VIEW(meta, {}); i64 b{i}; bool ok{i}; row_base(v{i}, idx, orank, &b{i}, &ok{i});",
            views + i * VIEW_WORDS
        );
    }
    let row_input = |i: usize| format!("row_at(in{i}, v{i}, b{i}, ok{i}, orank, j)");
    let scalar_input = |i: usize| format!("(ok{i} ? in{i}[b{i}] : 0.0f)");
    let code = RowCode { p, row_input: &row_input, scalar_input: &scalar_input, consts: "cst".into() };
    code.scalars(&mut out);
    let rows: Vec<usize> = p.outputs.iter().copied().filter(|&k| p.instrs[k].row).collect();
    if !rows.is_empty() {
        out.push_str("    for (i64 j = threadIdx.x; j < R; j += blockDim.x) {\n");
        code.rows_for(&rows, &mut out);
        for (o, &k) in p.outputs.iter().enumerate() {
            if p.instrs[k].row {
                let _ = writeln!(out, "      out{o}[row * R + j] = r{k};");
            }
        }
        out.push_str("    }\n");
    }
    for (o, &k) in p.outputs.iter().enumerate() {
        if !p.instrs[k].row {
            let _ = writeln!(out, "    if (threadIdx.x == 0) out{o}[row] = s{k};");
        }
    }
    out.push_str("  }\n");
    out
}

/// One block per output row: scores `q . k` for every key into shared
/// memory, the row program over them (mask, softmax), then `p . v` per
/// output element. meta: rows, t, kd, hd, outer rank, outer dims (MAXR),
/// views of q, k, v, the program's constants, then views of the program's
/// other inputs (in program order).
fn product_chain_body(a: &ProductChain) -> String {
    let p = &a.program;
    let n = p.instrs.len();
    let vq = 5 + MAX_RANK;
    let consts = vq + 3 * VIEW_WORDS;
    let views = consts + n;
    let mut out = format!(
        "  __shared__ float red[{BLOCK}];
  float* scores = lumind_smem;
  const i64 rows = meta[0], R = meta[1], kd = meta[2], hd = meta[3]; const int orank = (int)meta[4];
  const i64* outer = meta + 5; const i64* cst = meta + {consts};
  const V* q = VIEW(meta, {vq}); const V* k = VIEW(meta, {vk}); const V* v = VIEW(meta, {vv});
  float* probs = scores + R;
  for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {{
    i64 idx[MAXR];
    unravel(row, outer, orank, idx);
    i64 qo = q->off, ko = k->off, vo = v->off;
    for (int d = 0; d < orank; ++d) {{ qo += idx[d] * q->st[d]; ko += idx[d] * k->st[d]; vo += idx[d] * v->st[d]; }}
    for (i64 j = threadIdx.x; j < R; j += blockDim.x) {{
      float acc = 0.0f;
      for (i64 c = 0; c < kd; ++c) acc += in0[qo + j * q->st[orank] + c * q->st[orank + 1]] * in1[ko + j * k->st[orank] + c * k->st[orank + 1]];
      scores[j] = acc;
    }}
    __syncthreads();
",
        vk = vq + VIEW_WORDS,
        vv = vq + 2 * VIEW_WORDS,
    );
    // program input i reads the scores, or kernel input 3 + (its rank among the others)
    let kernel_input = |i: usize| 3 + i - (i > a.scores_input) as usize;
    for i in (0..p.input_row.len()).filter(|&i| i != a.scores_input) {
        let _ = writeln!(
            out,
            "    const V* v{i} = VIEW(meta, {}); i64 b{i}; bool ok{i}; row_base(v{i}, idx, orank, &b{i}, &ok{i});",
            views + (kernel_input(i) - 3) * VIEW_WORDS
        );
    }
    let si = a.scores_input;
    let row_input = move |i: usize| {
        if i == si {
            "scores[j]".to_string()
        } else {
            format!("row_at(in{}, v{i}, b{i}, ok{i}, orank, j)", kernel_input(i))
        }
    };
    let scalar_input = move |i: usize| format!("(ok{i} ? in{}[b{i}] : 0.0f)", kernel_input(i));
    let code = RowCode { p, row_input: &row_input, scalar_input: &scalar_input, consts: "cst".into() };
    code.scalars(&mut out);
    let o = p.outputs[0];
    out.push_str("    for (i64 j = threadIdx.x; j < R; j += blockDim.x) {\n");
    code.rows_for(&[o], &mut out);
    let _ = writeln!(out, "      probs[j] = r{o};\n    }}\n    __syncthreads();");
    out.push_str(
        "    for (i64 h = threadIdx.x; h < hd; h += blockDim.x) {
      float acc = 0.0f;
      for (i64 j = 0; j < R; ++j) acc += probs[j] * in2[vo + h * v->st[orank] + j * v->st[orank + 1]];
      out0[row * hd + h] = acc;
    }
    __syncthreads();
  }
",
    );
    out
}

fn program_consts(p: &RowProgram, dims: &DimValues, meta: &mut Vec<i64>) {
    for ins in &p.instrs {
        meta.push(match &ins.op {
            RowOp::Const(v) => super::source::f32_word(*v),
            RowOp::Dim(e) => super::source::f32_word(eval(e, dims, &mut vec![]) as f32),
            _ => 0,
        });
    }
}

impl CudaKernel for RowProgram {
    fn prefix(&self) -> &'static str {
        "rowfused"
    }
    fn arity(&self) -> (usize, usize) {
        (self.outputs.len(), self.input_row.len())
    }
    fn body(&self) -> String {
        row_program_body(self)
    }
    fn meta(&self, views: &[View], _: &[Vec<usize>], dims: &DimValues) -> Result<Call, String> {
        let mut st = vec![];
        let outer: Vec<usize> = self.outer.iter().map(|e| eval(e, dims, &mut st)).collect();
        let (rows, r) = (outer.iter().product::<usize>(), eval(&self.row_len, dims, &mut st));
        let mut m = vec![rows as i64, r as i64, outer.len() as i64];
        push_dims(&mut m, &outer);
        program_consts(self, dims, &mut m);
        for v in views {
            push_view(&mut m, v);
        }
        Ok((rows != 0).then_some((m, per_row(rows, r))))
    }
}

impl CudaKernel for ProductChain {
    fn prefix(&self) -> &'static str {
        "attention"
    }
    fn arity(&self) -> (usize, usize) {
        (1, 3 + self.program.input_row.len() - 1)
    }
    fn body(&self) -> String {
        product_chain_body(self)
    }
    fn meta(&self, views: &[View], _: &[Vec<usize>], dims: &DimValues) -> Result<Call, String> {
        let (q, v) = (&views[0], &views[2]);
        if views[..3].iter().any(|v| v.padded) {
            return Err("fused attention: padded q, k or v".into());
        }
        let rank = q.rank;
        let outer = &q.dims()[..rank - 2];
        let (t, kd, hd) = (q.shape[rank - 2], q.shape[rank - 1], v.shape[rank - 2]);
        if t > MAX_ATTENTION_KEYS {
            return Err(format!("fused attention over {t} keys exceeds the {MAX_ATTENTION_KEYS} one block holds"));
        }
        let rows: usize = outer.iter().product();
        let mut m = vec![rows as i64, t as i64, kd as i64, hd as i64, outer.len() as i64];
        push_dims(&mut m, outer);
        for v in &views[..3] {
            push_view(&mut m, v);
        }
        program_consts(&self.program, dims, &mut m);
        for v in &views[3..] {
            push_view(&mut m, v);
        }
        let launch = Launch { grid: rows.clamp(1, 1 << 30) as u32, block: 128, shared: (8 * t) as u32 };
        Ok((rows != 0).then_some((m, launch)))
    }
}
