//! Training graphs: forward + loss + backward (+ AdamW), built from the same
//! definition as inference. The stages differ only in the transforms applied
//! to that one forward graph:
//!
//! - pretrain and SFT: cross-entropy of the next tokens (SFT's targets are
//!   masked to the assistant's replies by the data), plus the MoE aux loss;
//!   every parameter trains;
//! - LoRA: low-rank branches injected beside the targeted products; the base
//!   weights are frozen graph buffers and only the adapters are
//!   differentiated, so only they have optimizer state;
//! - DPO: a second forward over the same tokens with a frozen reference copy
//!   of the weights, the DPO loss over chosen/rejected pairs, gradients for
//!   the policy only.

use lumind_compilers::autograd::backward;
use lumind_compilers::collective::Comm;
use lumind_compilers::lora::inject;
use lumind_compilers::losses::{cross_entropy, dpo_loss, target_log_probs};
use lumind_compilers::optim::{adamw, AdamWConfig};
use lumind_compilers::passes::causal_attention::fuse_before_autograd;
use lumind_compilers::shape::{d, sym};
use lumind_compilers::tensor::BuiltGraph;
use lumind_compilers::{GraphBuilder, InputKind, Tensor};

use crate::graph_io::{dim, input, output};
pub use crate::lora::LoraConfig;
use crate::model::builder::{forward, ForwardOptions, ModelInputs};
use crate::model::def::ModelDef;
use crate::model::params::param_specs;

/// What the graph does after computing gradients.
#[derive(Clone, Debug)]
pub enum Update {
    /// Output each gradient as `grad.NAME` (for `lumind grad`).
    OutputGrads,
    /// Apply AdamW in place; `optim` ([lr, step, apply]) and `loss_scale`
    /// arrive per run.
    AdamW(AdamWConfig),
    /// The same, with the gradients summed over the ranks of a
    /// data-parallel run first (an `AllReduce` node before the update).
    AllReducedAdamW(AdamWConfig, Comm),
}

impl Update {
    /// The optimizer, if the graph updates the weights.
    pub fn adamw(&self) -> Option<&AdamWConfig> {
        match self {
            Update::OutputGrads => None,
            Update::AdamW(c) | Update::AllReducedAdamW(c, _) => Some(c),
        }
    }
}

/// A training stage.
#[derive(Clone, Debug)]
pub enum Stage {
    /// pretraining and SFT (the data decides what is scored)
    LanguageModel,
    Lora(LoraConfig),
    Dpo {
        beta: f32,
    },
}

/// A built training graph and what it trains.
pub struct TrainGraph {
    pub graph: BuiltGraph,
    /// (name, shape) of every trained tensor, in order
    pub trainable: Vec<(String, Vec<usize>)>,
    /// names of frozen model weights the graph reads (LoRA base, DPO reference)
    pub frozen: Vec<(String, String)>,
    /// attention blocks fused before autograd (`CausalAttentionFusion`)
    pub fused_attention: usize,
}

/// Declare the token input and a parameter set under `prefix` of kind `kind`.
fn declare(b: &GraphBuilder, def: &ModelDef, tokens: &Tensor, prefix: &str, kind: InputKind) -> ModelInputs {
    let params = param_specs(def)
        .into_iter()
        .map(|s| {
            let dims: Vec<_> = s.shape.iter().map(|&x| d(x)).collect();
            (s.name.clone(), b.input(&format!("{prefix}{}", s.name), &dims, kind))
        })
        .collect();
    ModelInputs { tokens: tokens.clone(), params }
}

fn lm_forward(b: &GraphBuilder, def: &ModelDef, inputs: &ModelInputs, positions: usize) -> (Tensor, Option<Tensor>) {
    let opts = ForwardOptions { aux_loss: true, ..ForwardOptions::full(positions) };
    let out = forward(b, def, inputs, &opts);
    (out.logits, out.aux_loss)
}

fn plus_aux(x: Tensor, aux: &Option<Tensor>) -> Tensor {
    match aux {
        Some(a) => x.add(a),
        None => x,
    }
}

/// Build the training graph of a stage. Outputs `loss`, `ce`, `aux` (and
/// for DPO `dpo_logits`), then gradients or `grad_norm`. With
/// `fuse_attention` (`lumind_compilers::passes::fuses_attention`), the
/// attention of the forward becomes kernels before autograd runs, so the
/// backward pass is their own rule.
pub fn build(def: &ModelDef, positions: usize, stage: &Stage, update: &Update, fuse_attention: bool) -> anyhow::Result<TrainGraph> {
    let b = GraphBuilder::new();
    let rows = [sym(dim::BATCH), sym(dim::SEQ)];
    let tokens = b.input(input::TOKENS, &rows, InputKind::Data);
    let targets = b.input(input::TARGETS, &rows, InputKind::Data);
    let specs = param_specs(def);
    let (total, ce, aux, wrt, trainable, frozen) = match stage {
        Stage::LanguageModel => {
            let inputs = declare(&b, def, &tokens, "", InputKind::Param);
            let (logits, aux) = lm_forward(&b, def, &inputs, positions);
            let ce = cross_entropy(&logits, &targets);
            let wrt: Vec<Tensor> = specs.iter().map(|s| inputs.params[&s.name].clone()).collect();
            let trainable = specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect();
            (plus_aux(ce.clone(), &aux), ce, aux, wrt, trainable, vec![])
        }
        Stage::Lora(cfg) => {
            let inputs = declare(&b, def, &tokens, "", InputKind::Buffer);
            let (logits, aux) = lm_forward(&b, def, &inputs, positions);
            // the transform: a low-rank branch beside every targeted product
            let (mut wrt, mut trainable) = (vec![], vec![]);
            let _g = b.scope("lora");
            for (module, out, inp) in cfg.modules(def) {
                let (an, bn) = crate::lora::peft_names(&module);
                let a = b.input(&an, &[d(cfg.rank), d(inp)], InputKind::Param);
                let bb = b.input(&bn, &[d(out), d(cfg.rank)], InputKind::Param);
                if inject(&inputs.params[&format!("{module}.weight")], &a, &bb, cfg.scale()) == 0 {
                    anyhow::bail!("LoRA: `{module}` is not read by any matrix product");
                }
                trainable.push((an, vec![cfg.rank, inp]));
                trainable.push((bn, vec![out, cfg.rank]));
                wrt.push(a);
                wrt.push(bb);
            }
            drop(_g);
            if wrt.is_empty() {
                anyhow::bail!("no module of `{}` matches the LoRA targets {:?}", def.name, cfg.targets);
            }
            let ce = cross_entropy(&logits, &targets);
            let frozen = specs.iter().map(|s| (s.name.clone(), s.name.clone())).collect();
            (plus_aux(ce.clone(), &aux), ce, aux, wrt, trainable, frozen)
        }
        Stage::Dpo { beta } => {
            let policy = declare(&b, def, &tokens, "", InputKind::Param);
            let reference = declare(&b, def, &tokens, "ref.", InputKind::Buffer);
            let (pl, aux) = lm_forward(&b, def, &policy, positions);
            let rl = {
                let _g = b.scope("reference");
                lm_forward(&b, def, &reference, positions).0
            };
            let pairs = b.input(input::PAIRS, &[sym(dim::PAIRS), sym(dim::BATCH)], InputKind::Data);
            let seq = |logits: &Tensor| target_log_probs(logits, &targets).sum(1);
            let (loss, logits) = dpo_loss(&seq(&pl), &seq(&rl), &pairs, *beta);
            b.output(output::DPO_LOGITS, &logits);
            let wrt: Vec<Tensor> = specs.iter().map(|s| policy.params[&s.name].clone()).collect();
            let trainable = specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect();
            let frozen = specs.iter().map(|s| (s.name.clone(), format!("ref.{}", s.name))).collect();
            (plus_aux(loss.clone(), &aux), loss, aux, wrt, trainable, frozen)
        }
    };
    b.output(output::LOSS, &total);
    b.output(output::CE, &ce);
    b.output(output::AUX, &aux.unwrap_or_else(|| b.constant(0.0)));
    let scaled = match update {
        Update::OutputGrads => total,
        _ => total.mul(&b.input(input::LOSS_SCALE, &[], InputKind::Data)),
    };
    let fused_attention = if fuse_attention { fuse_before_autograd(&b) } else { 0 };
    let grads = backward(&scaled, &wrt).map_err(anyhow::Error::msg)?;
    let with_grads: Vec<(String, Tensor, Tensor)> = trainable
        .iter()
        .zip(wrt.iter().zip(grads))
        .map(|((n, _), (p, g))| (n.clone(), p.clone(), g.unwrap_or_else(|| p.full_like(0.0))))
        .collect();
    match update {
        Update::OutputGrads => {
            for (n, _, g) in &with_grads {
                b.output(&output::grad(n), g);
            }
        }
        Update::AdamW(cfg) => b.output(output::GRAD_NORM, &adamw(&with_grads, cfg, None)),
        Update::AllReducedAdamW(cfg, comm) => b.output(output::GRAD_NORM, &adamw(&with_grads, cfg, Some(comm))),
    }
    let graph = b.finish().map_err(|e| anyhow::anyhow!("building the training graph of `{}`: {e}", def.name))?;
    Ok(TrainGraph { graph, trainable, frozen, fused_attention })
}
