//! A compiled graph ready to run on one backend: the CPU executor, or the
//! device executor on a GPU (CUDA) or on the CPU emulation of one. Sessions
//! hold a `Runner` and never care which.

use crate::cuda::{Device, DeviceError, DeviceExecutor};
use crate::executor::Executor;
use crate::run::Run;
use crate::tensor::BuiltGraph;

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

/// The compiled graph of a session, on the backend it was opened for.
pub struct Runner(Box<dyn Run>);

impl std::ops::Deref for Runner {
    type Target = dyn Run;
    fn deref(&self) -> &(dyn Run + 'static) {
        &*self.0
    }
}

impl std::ops::DerefMut for Runner {
    fn deref_mut(&mut self) -> &mut (dyn Run + 'static) {
        &mut *self.0
    }
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

impl Runner {
    pub fn new(built: BuiltGraph, backend: Backend) -> Result<Runner, DeviceError> {
        Ok(Runner(match backend {
            Backend::Cpu => Box::new(Executor::new(built)),
            _ => Box::new(DeviceExecutor::new(built, open_device(backend)?)?),
        }))
    }
}
