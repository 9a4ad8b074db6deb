//! What running a compiled graph means on any backend: the [`Run`] trait
//! that the CPU executor and the device executor implement, and the
//! per-step statistics both keep when profiling.

use std::time::Duration;

use luminal::prelude::{Graph, NodeIndex};

use crate::cuda::DeviceError;
use crate::kernel::Cost;
use crate::plan::{Outputs, Plan};
use crate::run_error::RunError;
use crate::tensor::InputKind;
use crate::view::DimValues;

/// Time and work per step, accumulated over runs.
#[derive(Clone, Debug, Default)]
pub struct StepStats {
    pub node: NodeIndex,
    pub kernel: String,
    pub calls: u64,
    pub time: Duration,
    pub cost: Cost,
}

impl StepStats {
    /// One empty record per step of `plan`, where profiling starts.
    pub(crate) fn zeroed(plan: &Plan) -> Vec<StepStats> {
        plan.steps.iter().map(|s| StepStats { node: s.node, kernel: s.kernel.name(), ..Default::default() }).collect()
    }
}

/// A compiled graph on one backend, as sessions use it: what the CPU
/// executor and the device executor both do.
pub trait Run {
    /// `cpu`, or the device's name
    fn backend_name(&self) -> String;
    /// The compiled graph.
    fn graph(&self) -> &Graph;
    fn input_names(&self, kind: InputKind) -> Vec<String>;
    fn has_input(&self, name: &str) -> bool;
    /// Set a param, buffer or state (kept between runs).
    fn set(&mut self, name: &str, data: Vec<f32>) -> Result<(), RunError>;
    /// A copy of a param, buffer or state.
    fn get(&self, name: &str) -> Option<Vec<f32>>;
    /// Drop all state (KV caches) so the next run starts afresh.
    fn reset_state(&mut self);
    /// Run once. `data` gives every `Data` input; `dims` every symbol the
    /// graph uses. Returns the named outputs with their shapes.
    fn run(&mut self, data: &[(&str, &[f32])], dims: &DimValues) -> Result<Outputs, RunError>;
    /// Give an output buffer back for reuse.
    fn recycle(&mut self, _buf: Vec<f32>) {}
    /// Time every step from now on.
    fn enable_profile(&mut self);
    /// Time and work per step so far, if profiling.
    fn profile(&self) -> Option<&[StepStats]>;
    /// Wait for queued device work (timing).
    fn sync(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}
