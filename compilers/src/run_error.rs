//! Why running a compiled graph failed, on any backend.

use crate::cuda::DeviceError;
use crate::plan::ExecError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// the inputs do not fit the graph
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// the device refused
    #[error("{0}")]
    Device(#[from] DeviceError),
}
