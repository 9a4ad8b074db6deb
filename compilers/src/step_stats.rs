//! The per-step statistics the executor keeps when profiling, on any target.

use std::time::Duration;

use luminal::prelude::NodeIndex;

use crate::kernel::Cost;
use crate::plan::Plan;

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
