//! What a kernel needs to give itself a CUDA C form: the [`CudaKernel`]
//! trait, which each kernel with one implements beside its CPU code, and the
//! pieces those forms share (how views go into `meta`, launch shapes). The
//! code generator ([`super::codegen`]) names the functions and assembles
//! them into one module per graph.
//!
//! Every function takes `(meta, outputs..., inputs...)`. Elementwise kernels
//! use grid-stride loops; row programs and attention use one block per row.

use crate::view::{DimValues, View, MAX_RANK};

/// Threads per block.
pub const BLOCK: u32 = 256;
/// Words one view takes in `meta`: offset, rank, padded, then shape,
/// strides, lo and hi for `MAX_RANK` dims.
pub const VIEW_WORDS: usize = 3 + 4 * MAX_RANK;

/// Launch shape: blocks, threads per block, dynamic shared memory bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: u32,
    pub block: u32,
    pub shared: u32,
}

/// One call's `meta` words and launch shape; None: nothing to launch.
pub type Call = Option<(Vec<i64>, Launch)>;

/// A kernel as CUDA C: the body of `extern "C" __global__ void
/// PREFIX_HASH(const i64* meta, float* out0.., const float* in0..)`, whose
/// text depends only on the kernel (never on sizes), and each call's
/// `meta` words, which carry the views, sizes and dimension values.
pub trait CudaKernel {
    /// names the function (with a hash of its text), e.g. `adamw`
    fn prefix(&self) -> &'static str;
    /// (outputs, inputs)
    fn arity(&self) -> (usize, usize);
    fn body(&self) -> String;
    /// The call for inputs seen through `views` and outputs of `out_shapes`.
    fn meta(&self, views: &[View], out_shapes: &[Vec<usize>], dims: &DimValues) -> Result<Call, String>;
    /// Zero the first output before the launch (the kernel accumulates into it).
    fn zeroes_output(&self) -> bool {
        false
    }
}

/// Enough blocks of [`BLOCK`] threads for `n` elements.
pub fn elementwise(n: usize) -> Launch {
    Launch { grid: (n.div_ceil(BLOCK as usize)).clamp(1, 65_535) as u32, block: BLOCK, shared: 0 }
}

/// One block per row, as many threads as the row has elements (a power of two).
pub fn per_row(rows: usize, row_len: usize) -> Launch {
    let block = (row_len.next_power_of_two() as u32).clamp(32, BLOCK);
    Launch { grid: rows.clamp(1, 1 << 30) as u32, block, shared: 0 }
}

/// The call, unless it has no elements: `meta[0]` counts them, or every
/// output is empty.
pub fn unless_empty(meta: Vec<i64>, launch: Launch, out_shapes: &[Vec<usize>]) -> Call {
    let empty = meta[0] == 0 || out_shapes.iter().all(|s| s.iter().product::<usize>() == 0);
    (!empty).then_some((meta, launch))
}

/// The number of elements of output `o`.
pub fn out_len(out_shapes: &[Vec<usize>], o: usize) -> usize {
    out_shapes[o].iter().product()
}

pub fn push_view(meta: &mut Vec<i64>, v: &View) {
    meta.extend([v.offset as i64, v.rank as i64, v.padded as i64]);
    meta.extend(v.shape.iter().map(|&x| x as i64));
    meta.extend(v.strides.iter().map(|&x| x as i64));
    meta.extend(v.lo.iter().map(|&x| x as i64));
    meta.extend(v.hi.iter().map(|&x| x as i64));
}

pub fn push_dims(meta: &mut Vec<i64>, dims: &[usize]) {
    assert!(dims.len() <= MAX_RANK, "{} outer dims exceed {MAX_RANK}", dims.len());
    meta.extend((0..MAX_RANK).map(|d| dims.get(d).map_or(1, |&x| x as i64)));
}

/// An f32 as the `meta` word `f32_of` reads.
pub fn f32_word(x: f32) -> i64 {
    x.to_bits() as i32 as i64
}
