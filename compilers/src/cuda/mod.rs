//! The CUDA backend: the CPU compiler's fused kernels generated as CUDA C
//! ([`codegen`]), run by a device executor ([`executor`]) on the GPU through
//! the CUDA driver, NVRTC and cuBLAS, loaded at run time ([`driver`], cargo
//! feature `cuda`), or on the CPU through an emulator that compiles the same
//! sources with the system's C++ compiler ([`emulator`]), which is how the
//! backend is tested without a GPU.

pub mod codegen;
pub mod device;
#[cfg(feature = "cuda")]
pub mod driver;
pub mod emulator;
pub mod executor;

pub use device::{Device, DeviceError};
pub use executor::{graph_source, DeviceExecutor};
