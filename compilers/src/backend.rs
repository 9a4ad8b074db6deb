//! Where a compiled graph runs, as users choose it (`--device`): the CPU,
//! a GPU through CUDA, or the CPU emulation of one.

use crate::cuda::{Device, DeviceError};

/// Where a graph runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, strum::EnumString, strum::Display, strum::VariantNames)]
#[strum(serialize_all = "lowercase")]
pub enum Backend {
    /// our CPU kernels
    #[default]
    Cpu,
    /// the generated CUDA kernels on the first GPU
    Cuda,
    /// the generated CUDA kernels, emulated on the CPU (slow; for tests)
    Emulated,
}

/// The device behind a backend; a clear error where there is none.
pub fn open_device(backend: Backend) -> Result<Box<dyn Device>, DeviceError> {
    match backend {
        Backend::Cpu => Err(DeviceError("the CPU backend has no device".into())),
        Backend::Emulated => Ok(Box::new(crate::cuda::emulator::Emulator::new())),
        #[cfg(feature = "cuda")]
        Backend::Cuda => Ok(Box::new(crate::cuda::driver::Cuda::open(0)?)),
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => Err(DeviceError("this lumind was built without CUDA support (cargo feature `cuda`)".into())),
    }
}
