//! CPU kernels. Each is a small struct implementing [`crate::kernel::Kernel`].

pub mod adamw;
pub mod all_reduce;
pub mod bf16_gemm;
pub mod binary;
pub mod causal_attention;
pub mod constant;
pub mod contiguous;
pub mod fastmath;
pub mod gather;
pub mod gemv;
pub mod iota;
pub mod kv_write;
pub mod matmul;
pub mod packed;
pub mod product_chain;
pub mod q8;
pub mod reduce;
pub mod rope;
mod rotary;
pub mod row_program;
pub mod simd;
pub mod topk;
pub mod unary;
pub mod walk;

/// Raw pointers (or a tuple of them) that tasks on several threads share:
/// each reads them, or writes its own part of what they point at.
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T: Copy> Shared<T> {
    /// (a method, so closures capture the whole wrapper)
    pub fn get(&self) -> T {
        self.0
    }
}

/// An output pointer that tasks on several threads write disjoint parts of.
#[derive(Clone, Copy)]
pub(crate) struct Ptr(pub *mut f32);
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    /// (a method, so closures capture the whole `Send` wrapper)
    pub fn get(&self) -> *mut f32 {
        self.0
    }
    /// The element `offset` elements in.
    pub fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer the pointer came from
        unsafe { self.0.add(offset) }
    }
}
