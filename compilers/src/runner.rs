//! A compiled graph ready to run on one backend: the CPU executor, or the
//! device executor on a GPU (CUDA) or on the CPU emulation of one. Sessions
//! hold a `Runner` and never care which.

use crate::cuda::{Device, DeviceError, DeviceExecutor};
use luminal::prelude::Graph;

use crate::executor::{Executor, Outputs, StepStats};
use crate::run_error::RunError;
use crate::tensor::{BuiltGraph, InputKind};
use crate::view::DimValues;

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

pub enum Runner {
    Cpu(Box<Executor>),
    Device(Box<DeviceExecutor>),
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
        Ok(match backend {
            Backend::Cpu => Runner::Cpu(Box::new(Executor::new(built))),
            _ => Runner::Device(Box::new(DeviceExecutor::new(built, open_device(backend)?)?)),
        })
    }

    pub fn backend_name(&self) -> String {
        match self {
            Runner::Cpu(_) => "cpu".into(),
            Runner::Device(d) => d.device_name(),
        }
    }

    /// Set a param, buffer or state (kept between runs).
    pub fn set(&mut self, name: &str, data: Vec<f32>) -> Result<(), RunError> {
        match self {
            Runner::Cpu(e) => Ok(e.set(name, data)?),
            Runner::Device(d) => d.set(name, data),
        }
    }

    /// A copy of a param, buffer or state.
    pub fn get(&self, name: &str) -> Option<Vec<f32>> {
        match self {
            Runner::Cpu(e) => e.get(name).map(|v| v.to_vec()),
            Runner::Device(d) => d.get(name),
        }
    }

    pub fn run(&mut self, data: &[(&str, &[f32])], dims: &DimValues) -> Result<Outputs, RunError> {
        match self {
            Runner::Cpu(e) => Ok(e.run(data, dims)?),
            Runner::Device(d) => d.run(data, dims),
        }
    }

    /// Give an output buffer back for reuse.
    pub fn recycle(&mut self, buf: Vec<f32>) {
        if let Runner::Cpu(e) = self {
            e.recycle(buf)
        }
    }

    /// Drop all state (KV caches).
    pub fn reset_state(&mut self) {
        match self {
            Runner::Cpu(e) => e.reset_state(),
            Runner::Device(d) => d.reset_state(),
        }
    }

    pub fn input_names(&self, kind: InputKind) -> Vec<String> {
        match self {
            Runner::Cpu(e) => e.input_names(kind),
            Runner::Device(d) => d.input_names(kind),
        }
    }

    pub fn has_input(&self, name: &str) -> bool {
        match self {
            Runner::Cpu(e) => e.has_input(name),
            Runner::Device(d) => d.has_input(name),
        }
    }

    /// Time every step from now on.
    pub fn enable_profile(&mut self) {
        match self {
            Runner::Cpu(e) => e.enable_profile(),
            Runner::Device(d) => d.enable_profile(),
        }
    }

    /// Time and work per step so far, if profiling.
    pub fn profile(&self) -> Option<&[StepStats]> {
        match self {
            Runner::Cpu(e) => e.profile.as_deref(),
            Runner::Device(d) => d.profile.as_deref(),
        }
    }

    /// The compiled graph.
    pub fn graph(&self) -> &Graph {
        match self {
            Runner::Cpu(e) => e.graph(),
            Runner::Device(d) => d.graph(),
        }
    }

    /// Wait for queued device work (timing).
    pub fn sync(&mut self) -> Result<(), DeviceError> {
        match self {
            Runner::Cpu(_) => Ok(()),
            Runner::Device(d) => d.sync(),
        }
    }
}
