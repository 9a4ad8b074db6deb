//! Weights stored in fewer bits than f32 (`--precision bf16` or `q8`), as a
//! kernel receives them: bf16 values, or GGUF Q8_0 blocks ([`super::q8`]).
//! A kernel that reads an input packed ([`crate::kernel::Kernel::reads_packed`])
//! multiplies a few rows (decoding) against the packed weights as they are,
//! and for anything else borrows their f32 values ([`Packed::with_values`]).

use half::bf16;
use rayon::prelude::*;

use super::q8;
use crate::dtype::DType;

/// A packed input's elements.
#[derive(Clone, Copy, Debug)]
pub enum Packed<'a> {
    Bf16(&'a [bf16]),
    Q8_0(&'a [u8]),
}

impl<'a> Packed<'a> {
    pub fn dtype(&self) -> DType {
        match self {
            Packed::Bf16(_) => DType::Bf16,
            Packed::Q8_0(_) => DType::Q8_0,
        }
    }

    /// Element `i`'s value.
    pub fn value(&self, i: usize) -> f32 {
        match self {
            Packed::Bf16(v) => v[i].to_f32(),
            Packed::Q8_0(q) => q8::value(q, i),
        }
    }

    /// How many values it holds.
    pub fn len(&self) -> usize {
        match self {
            Packed::Bf16(v) => v.len(),
            Packed::Q8_0(q) => q8::values_in(q.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every value, in f32.
    pub fn values(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.len()];
        self.values_into(&mut out);
        out
    }

    /// `f` of the values, in a buffer of this thread's.
    pub fn with_values<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R {
        lend(&SCRATCH, self.len(), |buf| self.values_into(buf), f)
    }

    /// `f` of the values as bf16: a bf16 input's own, Q8_0 blocks' values
    /// rounded (to nearest even) into a buffer of this thread's, for a
    /// product in bf16 ([`super::bf16_gemm`]).
    pub fn with_bf16<R>(&self, f: impl FnOnce(&[bf16]) -> R) -> R {
        let q = match self {
            Packed::Bf16(v) => return f(v),
            Packed::Q8_0(q) => q,
        };
        lend(&SCRATCH_BF16, self.len(), |buf| q8::dequantize_bf16_into(q, buf), f)
    }

    /// The values into `out`, on every thread (a prompt's matrix products
    /// wait for them).
    fn values_into(&self, out: &mut [f32]) {
        match self {
            Packed::Bf16(v) => out.par_chunks_mut(8192).zip(v.par_chunks(8192)).for_each(|(o, v)| {
                for (o, v) in o.iter_mut().zip(v.iter()) {
                    *o = v.to_f32();
                }
            }),
            Packed::Q8_0(q) => q8::dequantize_into(q, out),
        }
    }
}

/// `f` of a buffer of `len` values that `fill` wrote, borrowed from this
/// thread's `pool` and given back after.
fn lend<T: Copy + Default, R>(
    pool: &'static std::thread::LocalKey<std::cell::RefCell<Vec<Vec<T>>>>,
    len: usize,
    fill: impl FnOnce(&mut [T]),
    f: impl FnOnce(&[T]) -> R,
) -> R {
    let mut buf = pool.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    buf.resize(len, T::default());
    fill(&mut buf);
    let r = f(&buf);
    pool.with(|s| s.borrow_mut().push(buf));
    r
}

thread_local! {
    /// Buffers [`Packed::with_values`] lends, kept so that a prompt's every
    /// product does not map (and fault in) fresh pages.
    static SCRATCH: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(vec![]) };
    /// The same for [`Packed::with_bf16`].
    static SCRATCH_BF16: std::cell::RefCell<Vec<Vec<bf16>>> = const { std::cell::RefCell::new(vec![]) };
}

/// `values` packed as `dtype` (bf16 rounds to nearest even), as bytes.
pub fn pack(dtype: DType, values: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::Bf16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes()).collect(),
        DType::Q8_0 => q8::quantize(values),
    }
}

/// Whether `len` values can be packed as `dtype` (Q8_0 holds whole blocks).
pub fn fits(dtype: DType, len: usize) -> bool {
    len > 0 && (dtype != DType::Q8_0 || len.is_multiple_of(q8::BLOCK))
}

/// Bytes that `len` values take as `dtype`.
pub fn bytes_for(dtype: DType, len: usize) -> usize {
    match dtype {
        DType::F32 => 4 * len,
        DType::Bf16 => 2 * len,
        DType::Q8_0 => q8::bytes_for(len),
    }
}
