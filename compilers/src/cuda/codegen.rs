//! CUDA C for the kernels the CPU compiler produces, one module per graph.
//!
//! Each kernel of a compiled graph becomes one `extern "C" __global__`
//! function whose text depends only on the kernel (its op, its row program,
//! its constants), never on sizes: views, sizes and dimension values reach
//! it at run time through `meta`, a block of 64-bit words packed per call.
//! So a graph's sources are known when it is compiled, are deterministic,
//! and compile once per process. Each kernel writes its own function body
//! and `meta` ([`CudaKernel`], beside its CPU code); here they are named,
//! given their parameters and put after one prelude of device helpers.
//! Reductions across a block go through shared memory in a tree, so the
//! same source also runs with one thread per block (the CPU emulator).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::source::{elementwise, out_len, push_view, unless_empty, Call, CudaKernel, VIEW_WORDS};
use crate::kernel::Kernel;
use crate::kernels::matmul::MatMul;
use crate::view::View;

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
pub enum DeviceKernel {
    /// a generated function, for the kernel whose [`CudaKernel`] wrote it
    Source { entry: String, source: String, kernel: Arc<dyn Kernel> },
    /// a matrix product: cuBLAS where the views allow, else `matmul_naive`
    MatMul(MatMul),
}

impl DeviceKernel {
    /// The kernel's device form (a `Source` always has one).
    pub fn cuda(&self) -> Option<&dyn CudaKernel> {
        match self {
            DeviceKernel::Source { kernel, .. } => kernel.cuda(),
            DeviceKernel::MatMul(_) => None,
        }
    }
}

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
    if let Some(m) = k.as_any().downcast_ref::<MatMul>() {
        return Ok(DeviceKernel::MatMul(m.clone()));
    }
    let c = k.cuda().ok_or_else(|| format!("no device kernel for `{}`", k.name()))?;
    let (outs, ins) = c.arity();
    let (entry, source) = function(c.prefix(), &params(outs, ins), &c.body());
    Ok(DeviceKernel::Source { entry, source, kernel: k.clone() })
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

/// The call of [`matmul_naive`] reducing `axis`.
pub fn matmul_naive_meta(axis: usize, views: &[View], out_shapes: &[Vec<usize>]) -> Call {
    let n = out_len(out_shapes, 0);
    let mut m = vec![n as i64, axis as i64];
    for v in views {
        push_view(&mut m, v);
    }
    unless_empty(m, elementwise(n), out_shapes)
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
