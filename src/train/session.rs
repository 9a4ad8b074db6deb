//! A compiled training graph and the state it updates in place: weights,
//! AdamW moments and accumulated gradients.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use lumind_compilers::optim::{hyper_values, state_names};
use lumind_compilers::{compile, pipeline, DimValues, Executor, Fusion};

use super::graph::{build, Update};
use crate::model::def::ModelDef;
use crate::model::params::param_specs;
use crate::model::rope;
use crate::model::weights::{Tensors, Weights};

/// Losses of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLoss {
    /// cross-entropy + aux
    pub loss: f32,
    pub ce: f32,
    pub aux: f32,
    /// global norm of the accumulated gradient (before clipping), when the
    /// step applied an update
    pub grad_norm: Option<f32>,
}

/// A batch: `batch` rows of `seq` token ids and the target of each position
/// (the next token, or -100 where nothing is scored).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    pub tokens: Vec<u32>,
    pub targets: Vec<i64>,
}

impl Batch {
    /// Rows of ids and labels (-100 = not scored) as MiniMind builds them;
    /// the model predicts label t+1 at position t.
    pub fn from_labels(rows: &[(Vec<u32>, Vec<i64>)]) -> Batch {
        let seq = rows[0].0.len();
        let mut b = Batch { batch: rows.len(), seq, tokens: vec![], targets: vec![] };
        for (ids, labels) in rows {
            assert_eq!(ids.len(), seq, "rows of one batch have equal length");
            b.tokens.extend_from_slice(ids);
            b.targets.extend(labels[1..].iter().copied());
            b.targets.push(-100);
        }
        b
    }

    /// Scored positions.
    pub fn scored(&self) -> usize {
        self.targets.iter().filter(|&&t| t >= 0).count()
    }
}

pub struct TrainSession {
    pub def: ModelDef,
    pub exec: Executor,
    update: Update,
    pub max_positions: usize,
}

impl TrainSession {
    pub fn new(def: &ModelDef, weights: Weights, max_positions: usize, update: Update, fusion: Fusion) -> Result<TrainSession> {
        let mut built = build(def, max_positions, &update)?;
        compile(&mut built, &pipeline(fusion), |_, _| {});
        let mut exec = Executor::new(built);
        for (name, (_, data)) in weights.into_map() {
            exec.set(&name, data)?;
        }
        let (cos, sin) = rope::tables(def, max_positions);
        exec.set("rope.cos", cos)?;
        exec.set("rope.sin", sin)?;
        Ok(TrainSession { def: def.clone(), exec, update, max_positions })
    }

    fn inputs(&self, b: &Batch) -> Result<(Vec<f32>, Vec<f32>, DimValues)> {
        if b.seq > self.max_positions {
            bail!("sequences of {} tokens exceed max_seq_len {}", b.seq, self.max_positions);
        }
        if let Some(t) = b.tokens.iter().find(|&&t| t as usize >= self.def.vocab_size) {
            bail!("token id {t} is out of range for model `{}` (vocab_size {})", self.def.name, self.def.vocab_size);
        }
        let tokens = b.tokens.iter().map(|&t| t as f32).collect();
        let targets = b.targets.iter().map(|&t| t as f32).collect();
        let dims: DimValues = [('b', b.batch), ('s', b.seq)].into_iter().collect();
        Ok((tokens, targets, dims))
    }

    /// Loss and gradients by parameter name (graph built with `OutputGrads`).
    pub fn grads(&mut self, b: &Batch) -> Result<(StepLoss, Tensors)> {
        let (tokens, targets, dims) = self.inputs(b)?;
        let mut out = self.exec.run(&[("tokens", &tokens), ("targets", &targets)], &dims)?;
        let loss = read_loss(&mut out, None);
        let mut t = Tensors::default();
        for s in param_specs(&self.def) {
            let (shape, data) = out.take(&format!("grad.{}", s.name)).context("missing gradient output")?;
            t.insert(s.name, shape, data);
        }
        Ok((loss, t))
    }

    /// One micro-step: accumulate this batch's gradient of `loss * loss_scale`;
    /// with `apply`, take an AdamW step (optimizer step number `step`, from 1)
    /// at learning rate `lr` and clear the accumulator.
    pub fn step(&mut self, b: &Batch, lr: f32, step: u64, apply: bool, loss_scale: f32) -> Result<StepLoss> {
        assert!(matches!(self.update, Update::AdamW(_)), "session was built without an optimizer");
        let (tokens, targets, dims) = self.inputs(b)?;
        let hyper = hyper_values(lr, step, apply);
        let scale = [loss_scale];
        let mut out = self.exec.run(&[("tokens", &tokens), ("targets", &targets), ("optim", &hyper), ("loss_scale", &scale)], &dims)?;
        Ok(read_loss(&mut out, Some(apply)))
    }

    /// Current weights.
    pub fn weights(&self) -> Weights {
        let mut t = Tensors::default();
        for s in param_specs(&self.def) {
            t.insert(s.name.clone(), s.shape.clone(), self.exec.get(&s.name).expect("weights are set").to_vec());
        }
        Weights(t)
    }

    /// AdamW moments and accumulated gradients (absent before the first step).
    pub fn optimizer_state(&self) -> Tensors {
        let mut t = Tensors::default();
        for s in param_specs(&self.def) {
            for n in state_names(&s.name) {
                if let Some(v) = self.exec.get(&n) {
                    t.insert(n, s.shape.clone(), v.to_vec());
                }
            }
        }
        t
    }

    pub fn set_optimizer_state(&mut self, t: &Tensors) -> Result<()> {
        for (n, (_, v)) in &t.0 {
            self.exec.set(n, v.clone()).with_context(|| format!("optimizer state `{n}`"))?;
        }
        Ok(())
    }

    pub fn set_weights(&mut self, w: Weights) -> Result<()> {
        for (name, (_, data)) in w.into_map() {
            self.exec.set(&name, data)?;
        }
        Ok(())
    }
}

fn read_loss(out: &mut lumind_compilers::Outputs, apply: Option<bool>) -> StepLoss {
    let mut scalar = |n: &str| out.take(n).map(|(_, v)| v[0]).unwrap_or(0.0);
    let (loss, ce, aux) = (scalar("loss"), scalar("ce"), scalar("aux"));
    let norm = scalar("grad_norm");
    StepLoss { loss, ce, aux, grad_norm: (apply == Some(true)).then_some(norm) }
}

/// Names of every tensor a checkpoint holds besides the weights.
pub fn optimizer_names(def: &ModelDef) -> BTreeMap<String, Vec<usize>> {
    param_specs(def).into_iter().flat_map(|s| state_names(&s.name).map(|n| (n, s.shape.clone()))).collect()
}
