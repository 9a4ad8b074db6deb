//! The training graph: forward + loss + backward (+ AdamW) built from the same
//! definition as inference. Stages differ only in the transforms applied.

use lumind_compilers::autograd::backward;
use lumind_compilers::losses::cross_entropy;
use lumind_compilers::optim::{adamw, AdamWConfig};
use lumind_compilers::shape::{d, sym};
use lumind_compilers::tensor::BuiltGraph;
use lumind_compilers::{GraphBuilder, InputKind, Tensor};

use crate::model::builder::{declare_inputs, forward, ForwardOptions, ModelInputs};
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
}

/// The language-model loss of a batch: cross-entropy of the logits against
/// `targets` (`[b, s]`, the next token per position or -100), plus the MoE
/// auxiliary loss. Returns (total, cross-entropy, aux).
pub fn lm_loss(b: &GraphBuilder, def: &ModelDef, inputs: &ModelInputs, max_positions: usize) -> (Tensor, Tensor, Option<Tensor>) {
    let opts = ForwardOptions { aux_loss: true, ..ForwardOptions::full(max_positions) };
    let out = forward(b, def, inputs, &opts);
    let targets = b.input("targets", &[sym('b'), sym('s')], InputKind::Data);
    let ce = cross_entropy(&out.logits, &targets);
    let total = match &out.aux_loss {
        Some(a) => ce.add(a),
        None => ce.clone(),
    };
    (total, ce, out.aux_loss)
}

/// Build the pretraining graph of a model: outputs `loss`, `ce`, `aux` and
/// either gradients or (with AdamW) `grad_norm`.
pub fn build(def: &ModelDef, max_positions: usize, update: &Update) -> anyhow::Result<BuiltGraph> {
    let b = GraphBuilder::new();
    let inputs = declare_inputs(&b, def);
    let (total, ce, aux) = lm_loss(&b, def, &inputs, max_positions);
    finish(b, def, &inputs, total, ce, aux, update)
}

/// Differentiate `total` w.r.t. every parameter and add the update.
pub fn finish(
    b: GraphBuilder,
    def: &ModelDef,
    inputs: &ModelInputs,
    total: Tensor,
    ce: Tensor,
    aux: Option<Tensor>,
    update: &Update,
) -> anyhow::Result<BuiltGraph> {
    let names: Vec<String> = param_specs(def).into_iter().map(|s| s.name).collect();
    b.output("loss", &total);
    b.output("ce", &ce);
    b.output("aux", &aux.unwrap_or_else(|| b.constant(0.0)));
    let scaled = match update {
        Update::OutputGrads => total,
        Update::AdamW(_) => total.mul(&b.input("loss_scale", &[], InputKind::Data)),
    };
    let params: Vec<Tensor> = names.iter().map(|n| inputs.params[n].clone()).collect();
    let grads = backward(&scaled, &params).map_err(anyhow::Error::msg)?;
    match update {
        Update::OutputGrads => {
            for (n, g) in names.iter().zip(&grads) {
                let g = g.clone().unwrap_or_else(|| inputs.params[n].full_like(0.0));
                b.output(&format!("grad.{n}"), &g);
            }
        }
        Update::AdamW(cfg) => {
            let hyper = b.input("optim", &[d(3)], InputKind::Data);
            let with_grads: Vec<(String, Tensor, Tensor)> = names
                .iter()
                .zip(grads)
                .map(|(n, g)| {
                    let p = inputs.params[n].clone();
                    let g = g.unwrap_or_else(|| p.full_like(0.0));
                    (n.clone(), p, g)
                })
                .collect();
            let norm = adamw(&with_grads, &hyper, cfg);
            b.output("grad_norm", &norm);
        }
    }
    b.finish().map_err(|e| anyhow::anyhow!("building the training graph of `{}`: {e}", def.name))
}
