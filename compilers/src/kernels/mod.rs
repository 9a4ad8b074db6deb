//! CPU kernels. Each is a small struct implementing [`crate::kernel::Kernel`].

pub mod adamw;
pub mod attention;
pub mod binary;
pub mod causal_attention;
pub mod constant;
pub mod copy;
pub mod fastmath;
pub mod gather;
pub mod iota;
pub mod kv_write;
pub mod matmul;
pub mod reduce;
pub mod rowfused;
pub mod topk;
pub mod unary;
pub mod walk;
