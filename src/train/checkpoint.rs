//! Checkpoints: one safetensors file holding the weights, the optimizer
//! state and (in its header) where the run is; written atomically (a temp
//! file, then a rename), so a crash leaves the previous checkpoint intact. Beside it,
//! `model.safetensors` holds the weights alone, with Hugging Face names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::pretrain::Position;
use crate::model::weights::Tensors;

/// Where a run is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// micro-steps done (batches seen)
    pub micro_step: u64,
    /// optimizer steps done
    pub step: u64,
    pub position: Position,
    /// tokens processed so far (padding included)
    pub tokens: u64,
    /// training seconds so far
    pub elapsed: f64,
    /// seed of the data order (the only randomness in a run)
    pub seed: u64,
    /// the config this run was started with, minus the step limit
    pub fingerprint: String,
    /// the micro-steps of the optimizer step under way (a run stopped in
    /// the middle of gradient accumulation logs the same step on resume)
    #[serde(default)]
    pub window: Window,
    /// ranks of the data-parallel run that wrote it (its data order and
    /// batches depend on them)
    #[serde(default = "super::config::one")]
    pub ranks: usize,
}

/// Sums over the micro-steps of one optimizer step, for its metrics row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub micro_steps: u32,
    pub loss: f32,
    pub ce: f32,
    pub aux: f32,
    /// DPO: reward accuracy and margin
    pub reward_acc: f32,
    pub reward_margin: f32,
    pub tokens: u64,
    /// the sums above are of each micro-step's value times its weight in
    /// the step's loss; this sums the weights
    #[serde(default)]
    pub weight: f32,
    /// scored units (label tokens, DPO pairs) of the whole step, on every
    /// rank, that the micro-steps' weights divide by
    #[serde(default)]
    pub units: f64,
}

pub struct Checkpoint {
    pub state: RunState,
    /// the trained tensors (model weights, or LoRA adapters)
    pub trained: Tensors,
    pub optimizer: Tensors,
}

pub fn path(out: &Path) -> PathBuf {
    out.join("checkpoint.safetensors")
}

/// Write the checkpoint (trained tensors, optimizer state, run state).
pub fn save(out: &Path, state: &RunState, trained: &Tensors, optimizer: &Tensors) -> Result<()> {
    let mut all = optimizer.clone();
    for (n, v) in &trained.0 {
        all.0.insert(n.clone(), v.clone());
    }
    let meta: HashMap<String, String> = [("lumind_run_state".to_string(), serde_json::to_string(state)?)].into();
    all.save_with_metadata(&path(out), meta)
}

/// Read a checkpoint; `trained` names the tensors that are not optimizer state.
pub fn load(out: &Path, trained: &[(String, Vec<usize>)]) -> Result<Checkpoint> {
    let p = path(out);
    let meta = Tensors::load_metadata(&p)?;
    let state: RunState = serde_json::from_str(meta.get("lumind_run_state").context("not a lumind checkpoint (no run state)")?)
        .with_context(|| format!("{}: unreadable run state", p.display()))?;
    let mut all = Tensors::load(&p)?;
    let mut t = Tensors::default();
    for (name, shape) in trained {
        match all.0.remove(name) {
            Some((s, v)) if &s == shape => t.insert(name.clone(), s, v),
            Some((s, _)) => bail!("{}: tensor `{name}` has shape {s:?}, the run trains {shape:?}", p.display()),
            None => bail!("{}: no tensor `{name}`: the checkpoint belongs to another model or stage", p.display()),
        }
    }
    Ok(Checkpoint { state, trained: t, optimizer: all })
}
