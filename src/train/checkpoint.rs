//! Checkpoints: one safetensors file holding the weights, the optimizer
//! state and (in its header) where the run is; written atomically (temp file
//! + rename), so a crash leaves the previous checkpoint intact. Beside it,
//! `model.safetensors` holds the weights alone, with Hugging Face names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::pretrain::Position;
use crate::model::def::ModelDef;
use crate::model::params::param_specs;
use crate::model::weights::{Tensors, Weights};

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
}

pub struct Checkpoint {
    pub state: RunState,
    pub weights: Weights,
    pub optimizer: Tensors,
}

pub fn path(out: &Path) -> PathBuf {
    out.join("checkpoint.safetensors")
}

pub fn save(out: &Path, state: &RunState, weights: &Weights, optimizer: &Tensors) -> Result<()> {
    let mut all = optimizer.clone();
    for (n, v) in &weights.0 .0 {
        all.0.insert(n.clone(), v.clone());
    }
    let meta: HashMap<String, String> = [("lumind_run_state".to_string(), serde_json::to_string(state)?)].into();
    all.save_with_metadata(&path(out), meta)?;
    weights.save(&out.join("model.safetensors"))
}

pub fn load(out: &Path, def: &ModelDef) -> Result<Checkpoint> {
    let p = path(out);
    let meta = Tensors::load_metadata(&p)?;
    let state: RunState = serde_json::from_str(meta.get("lumind_run_state").context("not a lumind checkpoint (no run state)")?)
        .with_context(|| format!("{}: unreadable run state", p.display()))?;
    let mut all = Tensors::load(&p)?;
    let mut w = Tensors::default();
    for s in param_specs(def) {
        match all.0.remove(&s.name) {
            Some(v) => {
                w.0.insert(s.name, v);
            }
            None => bail!("{}: no tensor `{}`: the checkpoint is of another model than `{}`", p.display(), s.name, def.name),
        }
    }
    let weights = Weights::check(def, w).with_context(|| format!("{}", p.display()))?;
    Ok(Checkpoint { state, weights, optimizer: all })
}
