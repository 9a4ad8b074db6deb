//! The CUDA backend: the CPU compiler's fused kernels generated as CUDA C
//! ([`codegen`]), run by the executor on a device target ([`target`]): the GPU through
//! the CUDA driver, NVRTC and cuBLAS, loaded at run time ([`driver`], cargo
//! feature `cuda`), or on the CPU through an emulator that compiles the same
//! sources with the system's C++ compiler ([`emulator`]), which is how the
//! backend is tested without a GPU.

pub mod codegen;
pub mod device;
#[cfg(feature = "cuda")]
pub mod driver;
pub mod emulator;
pub mod row_code;
pub mod source;
pub mod target;

pub use device::{Device, DeviceError};
pub use target::graph_source;
