//! A compiled training graph and the state it updates in place: the trained
//! tensors (weights, or LoRA adapters), AdamW moments and accumulated
//! gradients; frozen weights (LoRA's base, DPO's reference) sit beside them
//! as buffers.

use anyhow::{bail, Context, Result};
use lumind_compilers::optim::{input_values, state_names};
use lumind_compilers::passes::bf16_products::Bf16Products;
use lumind_compilers::passes::{fuses_attention, pipeline_for, Pass};
use lumind_compilers::{compile, Backend, DimValues, Executor, Fusion};

use super::graph::{build, Stage, Update};
use crate::graph_io::{dim, input, output};
use crate::model::def::ModelDef;
use crate::model::weights::{Tensors, Weights};
use crate::model::Precision;
use crate::rng::Rng;

/// Losses of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLoss {
    /// the stage's loss + aux
    pub loss: f32,
    /// cross-entropy (DPO: the DPO loss)
    pub ce: f32,
    pub aux: f32,
    /// global norm of the accumulated gradient (before clipping), when the
    /// step applied an update
    pub grad_norm: Option<f32>,
    /// DPO: share of pairs whose policy margin exceeds the reference's, and
    /// the mean reward margin `beta * logits`
    pub dpo: Option<(f32, f32)>,
}

/// A batch: `batch` rows of `seq` token ids and the target of each position
/// (the next token, or -100 where nothing is scored). For DPO the first half
/// of the rows are chosen answers, the second half the rejected ones.
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

/// How a training graph compiles: its fusion strategy, and the precision
/// its matrix products multiply in (`bf16`: mixed precision, with f32
/// weights, gradients and optimizer state; fp32 or bf16 only).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainCompile {
    pub fusion: Fusion,
    pub precision: Precision,
}

impl TrainCompile {
    /// The compiler passes of a training graph on `backend`: the fusion's
    /// pipeline, then `Bf16Products` for bf16.
    pub fn passes(self, backend: Backend) -> Result<Vec<Pass>> {
        let mut passes = pipeline_for(self.fusion, backend);
        match self.precision {
            Precision::Fp32 => {}
            Precision::Bf16 if backend == Backend::Cpu => passes.push(Pass::new("Bf16Products", Bf16Products)),
            Precision::Bf16 => bail!("precision bf16 trains on the CPU only (asked for on {backend}); use fp32 there"),
            Precision::Q8 => bail!("precision q8 is for inference (`lumind quantize`); training runs in fp32 or bf16"),
        }
        Ok(passes)
    }
}

impl From<Fusion> for TrainCompile {
    fn from(fusion: Fusion) -> TrainCompile {
        TrainCompile { fusion, precision: Precision::Fp32 }
    }
}

pub struct TrainSession {
    pub def: ModelDef,
    pub exec: Executor,
    pub stage: Stage,
    update: Update,
    pub max_positions: usize,
    pub trainable: Vec<(String, Vec<usize>)>,
    pub frozen: Vec<(String, String)>,
}

/// LoRA adapters as MiniMind starts them: A ~ N(0, 0.02), B = 0.
pub fn init_adapters(trainable: &[(String, Vec<usize>)], seed: u64) -> Tensors {
    let mut t = Tensors::default();
    for (name, shape) in trainable {
        let n: usize = shape.iter().product();
        let data = if name.ends_with("lora_A.weight") {
            let mut rng = Rng::for_name(seed, name);
            (0..n).map(|_| rng.normal() * 0.02).collect()
        } else {
            vec![0.0; n]
        };
        t.insert(name.clone(), shape.clone(), data);
    }
    t
}

impl TrainSession {
    /// `weights` are the model's (the base for LoRA, the policy and reference
    /// for DPO); `trained` overrides the trained tensors (LoRA adapters; a
    /// checkpoint's weights).
    pub fn new(
        def: &ModelDef,
        weights: Weights,
        positions: usize,
        stage: Stage,
        update: Update,
        how: impl Into<TrainCompile>,
    ) -> Result<TrainSession> {
        TrainSession::on(Backend::Cpu, def, weights, positions, stage, update, how)
    }

    /// On a backend (`cpu`, `cuda`, `emulated`).
    pub fn on(
        backend: Backend,
        def: &ModelDef,
        weights: Weights,
        positions: usize,
        stage: Stage,
        update: Update,
        how: impl Into<TrainCompile>,
    ) -> Result<TrainSession> {
        let how = how.into();
        let passes = how.passes(backend)?;
        let mut g = build(def, positions, &stage, &update, fuses_attention(how.fusion, backend))?;
        compile(&mut g.graph, &passes, |_, _| {});
        let mut exec = Executor::on(g.graph, backend).with_context(|| format!("training model `{}` on {backend}", def.name))?;
        let w = weights.into_map();
        for (name, input) in &g.frozen {
            exec.set(input, w[name].1.clone())?;
        }
        if !matches!(stage, Stage::Lora(_)) {
            for (name, (_, data)) in w {
                exec.set(&name, data)?;
            }
        }
        let (cos, sin) = def.rope_tables(positions);
        exec.set("rope.cos", cos)?;
        exec.set("rope.sin", sin)?;
        let mut s =
            TrainSession { def: def.clone(), exec, stage, update, max_positions: positions, trainable: g.trainable, frozen: g.frozen };
        if matches!(s.stage, Stage::Lora(_)) {
            let init = init_adapters(&s.trainable, 0);
            s.set_trained(&init)?;
        }
        Ok(s)
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
        let mut dims: DimValues = [(dim::BATCH, b.batch), (dim::SEQ, b.seq)].into_iter().collect();
        if matches!(self.stage, Stage::Dpo { .. }) {
            if !b.batch.is_multiple_of(2) {
                bail!("a DPO batch holds chosen and rejected rows in equal numbers, got {} rows", b.batch);
            }
            dims.insert(dim::PAIRS, b.batch / 2);
        }
        Ok((tokens, targets, dims))
    }

    /// `[n, b]`: +1 at each pair's chosen row, -1 at its rejected row.
    fn pairs(b: &Batch) -> Vec<f32> {
        let n = b.batch / 2;
        let mut p = vec![0.0; n * b.batch];
        for i in 0..n {
            p[i * b.batch + i] = 1.0;
            p[i * b.batch + n + i] = -1.0;
        }
        p
    }

    fn run(&mut self, b: &Batch, extra: &[(&str, &[f32])]) -> Result<lumind_compilers::Outputs> {
        let (tokens, targets, dims) = self.inputs(b)?;
        let pairs = Self::pairs(b);
        let mut args: Vec<(&str, &[f32])> = vec![(input::TOKENS, &tokens), (input::TARGETS, &targets)];
        if matches!(self.stage, Stage::Dpo { .. }) {
            args.push((input::PAIRS, &pairs));
        }
        args.extend_from_slice(extra);
        Ok(self.exec.run(&args, &dims)?)
    }

    /// Loss and gradients of the trained tensors (graph built with `OutputGrads`).
    pub fn grads(&mut self, b: &Batch) -> Result<(StepLoss, Tensors)> {
        let mut out = self.run(b, &[])?;
        let loss = read_loss(&mut out, None, &self.stage);
        let mut t = Tensors::default();
        for (name, _) in &self.trainable {
            let (shape, data) = out.take(&output::grad(name)).context("missing gradient output")?;
            t.insert(name.clone(), shape, data);
        }
        Ok((loss, t))
    }

    /// One micro-step: accumulate this batch's gradient of `loss * loss_scale`;
    /// with `apply`, take an AdamW step (optimizer step number `step`, from 1)
    /// at learning rate `lr` and clear the accumulator.
    pub fn step(&mut self, b: &Batch, lr: f32, step: u64, apply: bool, loss_scale: f32) -> Result<StepLoss> {
        assert!(self.update.adamw().is_some(), "session was built without an optimizer");
        let optim = input_values(lr, step, apply);
        let scale = [loss_scale];
        let mut extra: Vec<(&str, &[f32])> = optim.iter().map(|(n, v)| (*n, &v[..])).collect();
        extra.push((input::LOSS_SCALE, &scale));
        let mut out = self.run(b, &extra)?;
        Ok(read_loss(&mut out, Some(apply), &self.stage))
    }

    /// The trained tensors (model weights, or LoRA adapters under PEFT names).
    pub fn trained(&self) -> Tensors {
        let mut t = Tensors::default();
        for (name, shape) in &self.trainable {
            t.insert(name.clone(), shape.clone(), self.exec.get(name).expect("trained tensors are set"));
        }
        t
    }

    /// The model weights (pretraining, SFT, DPO's policy).
    pub fn weights(&self) -> Weights {
        Weights(self.trained())
    }

    /// Replace the frozen copy DPO compares against (it starts as `weights`).
    pub fn set_reference(&mut self, w: &Weights) -> Result<()> {
        for (name, input) in &self.frozen {
            let (_, v) = w.0.get(name).with_context(|| format!("reference weights lack `{name}`"))?;
            self.exec.set(input, v.clone())?;
        }
        Ok(())
    }

    pub fn set_trained(&mut self, t: &Tensors) -> Result<()> {
        for (name, shape) in &self.trainable {
            let (s, v) = t.get(name).with_context(|| format!("no tensor `{name}`"))?;
            if s != shape {
                bail!("tensor `{name}` has shape {s:?}, expected {shape:?}");
            }
            self.exec.set(name, v.clone())?;
        }
        Ok(())
    }

    /// AdamW moments and accumulated gradients (absent before the first step).
    pub fn optimizer_state(&self) -> Tensors {
        let mut t = Tensors::default();
        for (name, shape) in &self.trainable {
            for n in state_names(name) {
                if let Some(v) = self.exec.get(&n) {
                    t.insert(n, shape.clone(), v);
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
}

fn read_loss(out: &mut lumind_compilers::Outputs, apply: Option<bool>, stage: &Stage) -> StepLoss {
    let mut scalar = |n: &str| out.take(n).map(|(_, v)| v[0]).unwrap_or(0.0);
    let (loss, ce, aux) = (scalar(output::LOSS), scalar(output::CE), scalar(output::AUX));
    let norm = scalar(output::GRAD_NORM);
    let dpo = match stage {
        Stage::Dpo { beta } => out.take(output::DPO_LOGITS).map(|(_, l)| {
            let n = l.len().max(1) as f32;
            (l.iter().filter(|&&x| x > 0.0).count() as f32 / n, l.iter().map(|x| beta * x).sum::<f32>() / n)
        }),
        _ => None,
    };
    StepLoss { loss, ce, aux, grad_norm: (apply == Some(true)).then_some(norm), dpo }
}
