//! CUDA C for the kernels the CPU compiler produces.
//!
//! Each kernel of a compiled graph becomes one `extern "C" __global__`
//! function whose text depends only on the kernel (its op, its row program,
//! its constants), never on sizes: views, sizes and dimension values reach
//! it at run time through `meta`, a block of 64-bit words the executor packs
//! per step ([`DeviceKernel::meta`]). So a graph's sources are known when it
//! is compiled, are deterministic, and compile once per process.
//!
//! Every function takes `(meta, outputs..., inputs...)`. Elementwise kernels
//! use grid-stride loops; row programs and attention use one block per row.
//! Reductions across a block go through shared memory in a tree, so the same
//! source also runs with one thread per block (the CPU emulator).

use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::kernel::Kernel;
use crate::kernels::adamw::AdamW;
use crate::kernels::binary::Binary;
use crate::kernels::constant::Constant;
use crate::kernels::contiguous::Contiguous;
use crate::kernels::gather::{Gather, ScatterAdd};
use crate::kernels::iota::Iota;
use crate::kernels::kv_write::KvWrite;
use crate::kernels::matmul::MatMul;
use crate::kernels::product_chain::ProductChain;
use crate::kernels::reduce::{Reduce, ReduceOp};
use crate::kernels::row_program::{RowOp, RowProgram};
use crate::kernels::topk::TopKMask;
use crate::kernels::unary::Unary;
use crate::view::{eval, DimValues, View, MAX_RANK};

/// Threads per block.
pub const BLOCK: u32 = 256;
/// Words one view takes in `meta`: offset, rank, padded, then shape,
/// strides, lo and hi for `MAX_RANK` dims.
pub const VIEW_WORDS: usize = 3 + 4 * MAX_RANK;

/// Definitions every kernel source starts with.
pub const PRELUDE: &str = r#"typedef long long i64;
#define MAXR 6
#ifdef __CUDACC_RTC__
extern __shared__ float lumind_smem[];
#define INFINITY __int_as_float(0x7f800000)
#define NAN __int_as_float(0x7fffffff)
#endif
struct V { i64 off; i64 rank; i64 padded; i64 shape[MAXR]; i64 st[MAXR]; i64 lo[MAXR]; i64 hi[MAXR]; };
#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)
#define VIEW(meta, w) ((const V*)((meta) + (w)))
static __device__ __forceinline__ float f32_of(i64 w) { return __int_as_float((int)w); }
/* element `lin` (row-major over the view's shape); padding reads 0 */
static __device__ __forceinline__ float ld(const float* p, const V* v, i64 lin) {
  i64 off = v->off;
  for (int d = (int)v->rank - 1; d >= 0; --d) {
    i64 n = v->shape[d], i = lin % n; lin /= n;
    if (v->padded && (i < v->lo[d] || i >= v->hi[d])) return 0.0f;
    off += i * v->st[d];
  }
  return p[off];
}
/* element at a multi-index */
static __device__ __forceinline__ float ldi(const float* p, const V* v, const i64* idx) {
  i64 off = v->off;
  for (int d = 0; d < (int)v->rank; ++d) {
    if (v->padded && (idx[d] < v->lo[d] || idx[d] >= v->hi[d])) return 0.0f;
    off += idx[d] * v->st[d];
  }
  return p[off];
}
/* row-major multi-index of `lin` over `shape` */
static __device__ __forceinline__ void unravel(i64 lin, const i64* shape, int rank, i64* idx) {
  for (int d = rank - 1; d >= 0; --d) { idx[d] = lin % shape[d]; lin /= shape[d]; }
}
/* where a row program's input row starts for outer index `idx` */
static __device__ __forceinline__ void row_base(const V* v, const i64* idx, int orank, i64* base, bool* ok) {
  i64 off = v->off; bool good = true;
  for (int d = 0; d < orank; ++d) {
    if (v->padded && (idx[d] < v->lo[d] || idx[d] >= v->hi[d])) good = false;
    off += idx[d] * v->st[d];
  }
  *base = off; *ok = good;
}
static __device__ __forceinline__ float row_at(const float* p, const V* v, i64 base, bool ok, int last, i64 j) {
  return (!ok || j < v->lo[last] || j >= v->hi[last]) ? 0.0f : p[base + j * v->st[last]];
}
/* sum (or max) of one value per thread; blockDim.x is a power of two */
static __device__ float block_reduce(float x, bool is_max, float* red) {
  red[threadIdx.x] = x;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] = is_max ? fmaxf(red[threadIdx.x], red[threadIdx.x + s]) : red[threadIdx.x] + red[threadIdx.x + s];
    __syncthreads();
  }
  float r = red[0];
  __syncthreads();
  return r;
}
"#;

/// How a step runs on the device.
#[derive(Clone, Debug)]
// one per step, made once at compile time: its size costs nothing
#[allow(clippy::large_enum_variant)]
pub enum DeviceKernel {
    /// a generated function
    Source { entry: String, source: String, kind: DeviceOp },
    /// a matrix product: cuBLAS where the views allow, else `matmul_naive`
    MatMul(MatMul),
}

/// What a generated function is, for its `meta` and launch shape.
#[derive(Clone, Debug)]
pub enum DeviceOp {
    Unary,
    Binary,
    Copy,
    Constant(Constant),
    Iota(Iota),
    Reduce(usize),
    MatMulNaive(usize),
    Gather,
    /// zero the output first
    ScatterAdd(ScatterAdd),
    KvWrite(KvWrite),
    TopK,
    AdamW,
    RowProgram(Box<RowProgram>),
    ProductChain(Box<ProductChain>),
}

/// Launch shape: blocks, threads per block, dynamic shared memory bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: u32,
    pub block: u32,
    pub shared: u32,
}

fn elementwise(n: usize) -> Launch {
    Launch { grid: (n.div_ceil(BLOCK as usize)).clamp(1, 65_535) as u32, block: BLOCK, shared: 0 }
}

fn per_row(rows: usize, row_len: usize) -> Launch {
    let block = (row_len.next_power_of_two() as u32).clamp(32, BLOCK);
    Launch { grid: rows.clamp(1, 1 << 30) as u32, block, shared: 0 }
}

/// The largest key count fused attention keeps in shared memory (scores
/// and probabilities of one row: 2 x 4 bytes each, under 48 KiB).
pub const MAX_ATTENTION_KEYS: usize = 5_888;

fn hash_of(s: &str) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    s.hash(&mut h);
    h.finish()
}

/// Name a body by its hash and wrap it as a kernel.
fn function(prefix: &str, params: &str, body: &str) -> (String, String) {
    let entry = format!("{prefix}_{:016x}", hash_of(&format!("{params}{body}")));
    (entry.clone(), format!("extern \"C\" __global__ void {entry}({params}) {{\n{body}}}\n"))
}

fn params(outputs: usize, inputs: usize) -> String {
    let mut p = vec!["const i64* meta".to_string()];
    p.extend((0..outputs).map(|i| format!("float* out{i}")));
    p.extend((0..inputs).map(|i| format!("const float* in{i}")));
    p.join(", ")
}

/// The device form of a kernel, or why there is none.
pub fn lower(k: &Arc<dyn Kernel>) -> Result<DeviceKernel, String> {
    let any = k.as_any();
    let src = |prefix: &str, outs: usize, ins: usize, body: String, kind: DeviceOp| {
        let (entry, source) = function(prefix, &params(outs, ins), &body);
        Ok(DeviceKernel::Source { entry, source, kind })
    };
    if let Some(u) = any.downcast_ref::<Unary>() {
        let body = format!("  GRID_STRIDE(i, meta[0]) out0[i] = {};\n", u.0.cuda("in0[i]"));
        return src("unary", 1, 1, body, DeviceOp::Unary);
    }
    if let Some(b) = any.downcast_ref::<Binary>() {
        let e = b.0.cuda("ld(in0, VIEW(meta, 1), i)", &format!("ld(in1, VIEW(meta, {}), i)", 1 + VIEW_WORDS));
        return src("binary", 1, 2, format!("  GRID_STRIDE(i, meta[0]) out0[i] = {e};\n"), DeviceOp::Binary);
    }
    if any.downcast_ref::<Contiguous>().is_some() {
        return src("copy", 1, 1, "  GRID_STRIDE(i, meta[0]) out0[i] = ld(in0, VIEW(meta, 1), i);\n".into(), DeviceOp::Copy);
    }
    if let Some(c) = any.downcast_ref::<Constant>() {
        let body = "  if (blockIdx.x == 0 && threadIdx.x == 0) out0[0] = f32_of(meta[0]);\n".to_string();
        return src("constant", 1, 0, body, DeviceOp::Constant(c.clone()));
    }
    if let Some(i) = any.downcast_ref::<Iota>() {
        return src("iota", 1, 0, "  GRID_STRIDE(i, meta[0]) out0[i] = (float)(meta[1] + i);\n".into(), DeviceOp::Iota(i.clone()));
    }
    if let Some(r) = any.downcast_ref::<Reduce>() {
        let (init, step) = match r.op {
            ReduceOp::Sum => ("0.0f", "acc += x;"),
            ReduceOp::Max => ("-INFINITY", "acc = fmaxf(acc, x);"),
        };
        let body = format!(
            "  const i64 axis = meta[1]; const V* v = VIEW(meta, 2);
  GRID_STRIDE(o, meta[0]) {{
    i64 idx[MAXR], rest = o;
    for (int d = (int)v->rank - 1; d >= 0; --d) {{ if (d == axis) continue; idx[d] = rest % v->shape[d]; rest /= v->shape[d]; }}
    float acc = {init};
    for (i64 j = 0; j < v->shape[axis]; ++j) {{ idx[axis] = j; float x = ldi(in0, v, idx); {step} }}
    out0[o] = acc;
  }}
"
        );
        return src("reduce", 1, 1, body, DeviceOp::Reduce(r.axis));
    }
    if let Some(m) = any.downcast_ref::<MatMul>() {
        return Ok(DeviceKernel::MatMul(m.clone()));
    }
    if any.downcast_ref::<Gather>().is_some() {
        let body = "  const i64 d = meta[1]; const V* t = VIEW(meta, 2); const V* ids = VIEW(meta, 2 + VW);
  GRID_STRIDE(e, meta[0] * d) {
    i64 i = e / d, c = e % d;
    float id = ld(in1, ids, i);
    i64 r = (i64)id;
    out0[e] = (id < 0.0f || r >= t->shape[0]) ? NAN : in0[t->off + r * t->st[0] + c * t->st[1]];
  }
"
        .replace("VW", &VIEW_WORDS.to_string());
        return src("gather", 1, 2, body, DeviceOp::Gather);
    }
    if let Some(s) = any.downcast_ref::<ScatterAdd>() {
        let body = "  const i64 d = meta[1], vocab = meta[2]; const V* g = VIEW(meta, 3); const V* ids = VIEW(meta, 3 + VW);
  GRID_STRIDE(e, meta[0] * d) {
    i64 i = e / d, c = e % d;
    i64 r = (i64)ld(in1, ids, i);
    if (r >= 0 && r < vocab) atomicAdd(&out0[r * d + c], ld(in0, g, e));
  }
"
        .replace("VW", &VIEW_WORDS.to_string());
        return src("scatter_add", 1, 2, body, DeviceOp::ScatterAdd(s.clone()));
    }
    if let Some(kv) = any.downcast_ref::<KvWrite>() {
        // out0 is the cache (in0, updated in place); in1 the new rows; in2
        // the position of each (batch row, new element)
        let body = "  const i64 axis = meta[1], first = meta[2]; const V* c = VIEW(meta, 3); const V* nw = VIEW(meta, 3 + VW);
  const V* ps = VIEW(meta, 3 + 2 * VW);
  GRID_STRIDE(e, meta[0]) {
    i64 idx[MAXR];
    unravel(e, nw->shape, (int)nw->rank, idx);
    i64 pi[2] = {idx[0], idx[axis]};
    i64 pos = (i64)ldi(in2, ps, pi);
    i64 dst = c->off;
    for (int d = 0; d < (int)c->rank; ++d) dst += (d == axis ? pos : idx[d] + (d == 0 ? first : 0)) * c->st[d];
    out0[dst] = ld(in1, nw, e);
  }
"
        .replace("VW", &VIEW_WORDS.to_string());
        return src("kv_write", 1, 3, body, DeviceOp::KvWrite(kv.clone()));
    }
    if let Some(t) = any.downcast_ref::<TopKMask>() {
        let body = format!(
            "  const i64 e = meta[1]; const V* v = VIEW(meta, 2);
  GRID_STRIDE(r, meta[0]) {{
    float* o = out0 + r * e;
    for (i64 j = 0; j < e; ++j) o[j] = 0.0f;
    for (int n = 0; n < {k} && n < e; ++n) {{
      i64 best = -1; float bv = 0.0f;
      for (i64 j = 0; j < e; ++j) {{
        float x = ld(in0, v, r * e + j);
        if (o[j] == 0.0f && (best < 0 || x > bv)) {{ best = j; bv = x; }}
      }}
      o[best] = 1.0f;
    }}
  }}
",
            k = t.k
        );
        return src("topk", 1, 1, body, DeviceOp::TopK);
    }
    if let Some(a) = any.downcast_ref::<AdamW>() {
        // outputs p, m, v, acc are inputs 0-3 updated in place; in4 the
        // gradient (contiguous), in5 its squared norm, in6-in8 the scalars
        // lr, step and apply
        let f = |x: f32| format!("{:?}f", x);
        let body = format!(
            "  const V* gs = VIEW(meta, 1);
  const float lr = in6[VIEW(meta, 1 + {vw})->off], step = in7[VIEW(meta, 1 + 2 * {vw})->off], apply = in8[VIEW(meta, 1 + 3 * {vw})->off];
  const float norm = sqrtf(in5[gs->off]);
  const float b1 = {b1}, b2 = {b2}, eps = {eps}, wd = {wd}, max_norm = {mn};
  const float clip = max_norm > 0.0f ? fminf(max_norm / (norm + 1e-6f), 1.0f) : 1.0f;
  const float bc1 = 1.0f - powf(b1, step), bc2_sqrt = sqrtf(1.0f - powf(b2, step));
  const float step_size = lr / bc1, decay = 1.0f - lr * wd;
  GRID_STRIDE(i, meta[0]) {{
    if (apply == 0.0f) {{ out3[i] = in4[i]; continue; }}
    if (isfinite(norm)) {{
      float g = in4[i] * clip;
      out0[i] *= decay;
      out1[i] = b1 * out1[i] + (1.0f - b1) * g;
      out2[i] = b2 * out2[i] + (1.0f - b2) * g * g;
      out0[i] -= step_size * out1[i] / (sqrtf(out2[i]) / bc2_sqrt + eps);
    }}
    out3[i] = 0.0f;
  }}
",
            vw = VIEW_WORDS,
            b1 = f(a.beta1),
            b2 = f(a.beta2),
            eps = f(a.eps),
            wd = f(a.weight_decay),
            mn = f(a.max_norm)
        );
        return src("adamw", 4, 9, body, DeviceOp::AdamW);
    }
    if let Some(r) = any.downcast_ref::<RowProgram>() {
        let n_in = r.input_row.len();
        let body = row_program_body(r);
        return src("rowfused", r.outputs.len(), n_in, body, DeviceOp::RowProgram(Box::new(r.clone())));
    }
    if let Some(a) = any.downcast_ref::<ProductChain>() {
        let n_in = 3 + a.program.input_row.len() - 1;
        let body = product_chain_body(a);
        return src("attention", 1, n_in, body, DeviceOp::ProductChain(Box::new(a.clone())));
    }
    Err(format!("no device kernel for `{}`", k.name()))
}

/// The generic matrix product for views cuBLAS cannot take.
pub fn matmul_naive() -> (String, String) {
    let body = format!(
        "  const i64 axis = meta[1]; const V* a = VIEW(meta, 2); const V* b = VIEW(meta, 2 + {vw});
  GRID_STRIDE(o, meta[0]) {{
    i64 idx[MAXR], rest = o;
    for (int d = (int)a->rank - 1; d >= 0; --d) {{ if (d == axis) continue; idx[d] = rest % a->shape[d]; rest /= a->shape[d]; }}
    float acc = 0.0f;
    for (i64 j = 0; j < a->shape[axis]; ++j) {{ idx[axis] = j; acc += ldi(in0, a, idx) * ldi(in1, b, idx); }}
    out0[o] = acc;
  }}
",
        vw = VIEW_WORDS
    );
    function("matmul_naive", &params(1, 2), &body)
}

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

fn push_view(meta: &mut Vec<i64>, v: &View) {
    meta.extend([v.offset as i64, v.rank as i64, v.padded as i64]);
    meta.extend(v.shape.iter().map(|&x| x as i64));
    meta.extend(v.strides.iter().map(|&x| x as i64));
    meta.extend(v.lo.iter().map(|&x| x as i64));
    meta.extend(v.hi.iter().map(|&x| x as i64));
}

fn push_dims(meta: &mut Vec<i64>, dims: &[usize]) {
    assert!(dims.len() <= MAX_RANK, "{} outer dims exceed {MAX_RANK}", dims.len());
    meta.extend((0..MAX_RANK).map(|d| dims.get(d).map_or(1, |&x| x as i64)));
}

fn f32_word(x: f32) -> i64 {
    x.to_bits() as i32 as i64
}

fn program_consts(p: &RowProgram, dims: &DimValues, meta: &mut Vec<i64>) {
    for ins in &p.instrs {
        meta.push(match &ins.op {
            RowOp::Const(v) => f32_word(*v),
            RowOp::Dim(e) => f32_word(eval(e, dims, &mut vec![]) as f32),
            _ => 0,
        });
    }
}

impl DeviceOp {
    /// The words this step's function reads, and how to launch it, for
    /// inputs seen through `views` and outputs of `out_shapes`. None: nothing
    /// to do (no elements).
    pub fn meta(&self, views: &[View], out_shapes: &[Vec<usize>], dims: &DimValues) -> Result<Option<(Vec<i64>, Launch)>, String> {
        let out_len = |o: usize| out_shapes[o].iter().product::<usize>();
        let mut m = vec![];
        let launch = match self {
            DeviceOp::Unary => {
                m.push(out_len(0) as i64);
                elementwise(out_len(0))
            }
            DeviceOp::Binary => {
                m.push(out_len(0) as i64);
                push_view(&mut m, &views[0]);
                push_view(&mut m, &views[1]);
                elementwise(out_len(0))
            }
            DeviceOp::Copy => {
                m.push(out_len(0) as i64);
                push_view(&mut m, &views[0]);
                elementwise(out_len(0))
            }
            DeviceOp::Constant(c) => {
                let v = match c {
                    Constant::Float(v) => *v,
                    Constant::Dim(e) => eval(e, dims, &mut vec![]) as f32,
                };
                m.push(f32_word(v));
                Launch { grid: 1, block: 1, shared: 0 }
            }
            DeviceOp::Iota(i) => {
                m.extend([out_len(0) as i64, eval(&i.offset, dims, &mut vec![]) as i64]);
                elementwise(out_len(0))
            }
            DeviceOp::Reduce(axis) | DeviceOp::MatMulNaive(axis) => {
                m.extend([out_len(0) as i64, *axis as i64]);
                for v in views {
                    push_view(&mut m, v);
                }
                elementwise(out_len(0))
            }
            DeviceOp::Gather => {
                let d = views[0].shape[1];
                m.extend([views[1].numel() as i64, d as i64]);
                push_view(&mut m, &views[0]);
                push_view(&mut m, &views[1]);
                elementwise(views[1].numel() * d)
            }
            DeviceOp::ScatterAdd(_) => {
                let d = *out_shapes[0].last().unwrap();
                m.extend([views[1].numel() as i64, d as i64, out_shapes[0][0] as i64]);
                push_view(&mut m, &views[0]);
                push_view(&mut m, &views[1]);
                elementwise(views[1].numel() * d)
            }
            DeviceOp::KvWrite(kv) => {
                // (positions stay on the device: sessions check them before a run)
                let first = kv.first_row(&views[0], &views[1], dims)?;
                m.extend([views[1].numel() as i64, kv.axis as i64, first as i64]);
                push_view(&mut m, &views[0]);
                push_view(&mut m, &views[1]);
                push_view(&mut m, &views[2]);
                elementwise(views[1].numel())
            }
            DeviceOp::TopK => {
                let e = *views[0].dims().last().unwrap();
                let rows = views[0].numel() / e.max(1);
                m.extend([rows as i64, e as i64]);
                push_view(&mut m, &views[0]);
                elementwise(rows)
            }
            DeviceOp::AdamW => {
                if !views[4].is_plain() {
                    return Err("AdamW: the gradient must be contiguous".into());
                }
                m.push(views[0].numel() as i64);
                for v in &views[5..9] {
                    push_view(&mut m, v);
                }
                elementwise(views[0].numel())
            }
            DeviceOp::RowProgram(p) => {
                let mut st = vec![];
                let outer: Vec<usize> = p.outer.iter().map(|e| eval(e, dims, &mut st)).collect();
                let (rows, r) = (outer.iter().product::<usize>(), eval(&p.row_len, dims, &mut st));
                m.extend([rows as i64, r as i64, outer.len() as i64]);
                push_dims(&mut m, &outer);
                program_consts(p, dims, &mut m);
                for v in views {
                    push_view(&mut m, v);
                }
                per_row(rows, r)
            }
            DeviceOp::ProductChain(a) => {
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
                m.extend([rows as i64, t as i64, kd as i64, hd as i64, outer.len() as i64]);
                push_dims(&mut m, outer);
                for v in &views[..3] {
                    push_view(&mut m, v);
                }
                program_consts(&a.program, dims, &mut m);
                for v in &views[3..] {
                    push_view(&mut m, v);
                }
                Launch { grid: rows.clamp(1, 1 << 30) as u32, block: 128, shared: (8 * t) as u32 }
            }
        };
        let empty = match self {
            DeviceOp::Constant(_) => false,
            DeviceOp::RowProgram(_) | DeviceOp::ProductChain(_) => m[0] == 0,
            _ => m[0] == 0 || out_shapes.iter().all(|s| s.iter().product::<usize>() == 0),
        };
        Ok((!empty).then_some((m, launch)))
    }
}

/// (name, parameter list) of every kernel of a module [`module_source`] wrote.
pub fn kernels(module: &str) -> impl Iterator<Item = (&str, &str)> {
    module.lines().filter_map(|line| {
        let rest = line.strip_prefix("extern \"C\" __global__ void ")?;
        let (name, params) = rest.split_once('(').expect("a kernel signature");
        Some((name, params.split_once(')').expect("a kernel signature").0))
    })
}

/// Every source a graph's kernels need, deduplicated, as one module.
pub fn module_source(kernels: &[DeviceKernel]) -> String {
    let mut seen = std::collections::BTreeMap::new();
    for k in kernels {
        match k {
            DeviceKernel::Source { entry, source, .. } => {
                seen.insert(entry.clone(), source.clone());
            }
            DeviceKernel::MatMul(_) => {
                let (entry, source) = matmul_naive();
                seen.insert(entry, source);
            }
        }
    }
    let mut s = String::from(PRELUDE);
    for src in seen.values() {
        s.push_str(src);
    }
    s
}
