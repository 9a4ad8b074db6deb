//! Where the executor's steps run: the [`Target`] trait, with the CPU
//! ([`crate::cpu_target`]) and a CUDA device, real or emulated
//! ([`crate::cuda::target`]), as its implementations. A target owns the
//! memory behind buffer handles, moves values in and out of it, and runs
//! (or queues) one step of the plan at a time; the executor
//! ([`crate::executor`]) does everything else the same way for all of them:
//! binding inputs, the buffer pool, when a temporary is free, and gathering
//! the named outputs.

pub use crate::dtype::DType;

use crate::cuda::DeviceError;
use crate::kernel::Kernel;
use crate::step_stats::StepStats;
use crate::view::{DimValues, View};

/// A buffer of a target, by handle: `len` values in use of `cap` allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub id: usize,
    pub len: usize,
    pub cap: usize,
    pub dtype: DType,
}

/// One step of a run as its target sees it.
pub struct StepCall<'a> {
    /// its index in the plan
    pub index: usize,
    pub kernel: &'a dyn Kernel,
    /// how each input is read
    pub views: &'a [View],
    pub out_shapes: &'a [Vec<usize>],
    pub ins: &'a [Buf],
    /// an output updated in place is its input's buffer
    pub outs: &'a [Buf],
    /// (output, input) pairs updated in place
    pub inplace: &'a [(usize, usize)],
    pub dims: &'a DimValues,
}

pub trait Target {
    /// `cpu`, or the device's name
    fn name(&self) -> String;
    /// A zero-filled buffer of `len` values.
    fn alloc(&mut self, len: usize, dtype: DType) -> Result<Buf, DeviceError>;
    /// A buffer holding `data`, which the CPU keeps as it is and a device
    /// copies up.
    fn adopt(&mut self, data: Vec<f32>) -> Result<Buf, DeviceError>;
    /// A buffer holding `len` values packed as `dtype` (`bytes`: bf16 or
    /// Q8_0), for the kernels that read them ([`Kernel::reads_packed`]).
    fn adopt_packed(&mut self, dtype: DType, _bytes: Vec<u8>, _len: usize) -> Result<Buf, DeviceError> {
        Err(DeviceError(format!("{} holds f32 values only: {dtype:?} weights run on the CPU", self.name())))
    }
    fn free(&mut self, b: Buf);
    /// Copy `data` (`b.len` values) into `b`.
    fn upload(&mut self, b: Buf, data: &[f32]) -> Result<(), DeviceError>;
    /// A copy of `b`'s values.
    fn download(&self, b: Buf) -> Result<Vec<f32>, DeviceError>;
    /// `b`'s values for a caller who keeps them, and the buffer if it is
    /// still the target's: the CPU hands its buffer over, a device copies the
    /// values down and keeps it.
    fn take(&mut self, b: Buf) -> Result<(Vec<f32>, Option<Buf>), DeviceError>;
    /// Host memory a caller is done with, as a buffer to pool, where the
    /// target can use it (the CPU).
    fn reuse(&mut self, _data: Vec<f32>) -> Option<Buf> {
        None
    }
    /// Run one step, or queue it until [`Target::flush`]; with `stats`,
    /// time what it runs now.
    fn step(&mut self, call: &StepCall, stats: Option<&mut StepStats>) -> Result<(), DeviceError>;
    /// Run what the steps queued; with `stats`, time each step (by index).
    fn flush(&mut self, _stats: Option<&mut [StepStats]>) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Wait for queued work (timing).
    fn sync(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}
