//! The optimizer as a graph transform: for each parameter, state inputs
//! (`adam.m.NAME`, `adam.v.NAME`, `grad_acc.NAME`) and one in-place
//! [`AdamW`] node, so a training step is a single graph run and nothing is
//! recompiled between steps.

use crate::collective::Comm;
use crate::kernels::adamw::AdamW;
use crate::kernels::all_reduce::AllReduce;
use crate::losses::sum_all;
use crate::shape::{d, Dim};
use crate::tensor::{InputKind, Tensor};

/// Hyper-parameters fixed for a run (lr and step arrive per run).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
}

impl Default for AdamWConfig {
    /// `torch.optim.AdamW` defaults and MiniMind's clip of 1.0.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, max_grad_norm: 1.0 }
    }
}

/// Names of the optimizer state of one parameter.
pub fn state_names(param: &str) -> [String; 3] {
    [format!("adam.m.{param}"), format!("adam.v.{param}"), format!("grad_acc.{param}")]
}

/// The optimizer's inputs per run, each a scalar.
pub mod inputs {
    /// the learning rate of this step
    pub const LR: &str = "optim.lr";
    /// the optimizer step number, from 1 (for the bias corrections)
    pub const STEP: &str = "optim.step";
    /// 1 to take the step, 0 to only add this run's gradient to the accumulator
    pub const APPLY: &str = "optim.apply";
}

/// Add the update of every `(name, param, grad)`, reading the
/// [`inputs`]. With `all_reduce`, the gradients are summed over its ranks
/// (one [`AllReduce`] node) before the norm and the update, so every rank
/// takes the same step. Returns the global gradient norm (before clipping)
/// of the accumulated gradient.
pub fn adamw(params: &[(String, Tensor, Tensor)], cfg: &AdamWConfig, all_reduce: Option<&Comm>) -> Tensor {
    let b = params.first().expect("at least one parameter").1.builder();
    let [lr, step, apply] = [inputs::LR, inputs::STEP, inputs::APPLY].map(|n| b.input(n, &[], InputKind::Data));
    let kernel = AdamW { beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: cfg.weight_decay, max_norm: cfg.max_grad_norm };
    let mut updates = vec![];
    for (name, p, g) in params {
        let dims: Vec<Dim> = p.dims();
        let [m, v, acc] = state_names(name).map(|n| b.input(&n, &dims, InputKind::State));
        let g_total = acc.add(g);
        updates.push((p.clone(), m, v, acc, g_total));
    }
    let (grads, gsq) = match all_reduce {
        None => {
            let gsq = updates.iter().map(|u| sum_all(&u.4.square())).reduce(|a, x| a + x).expect("at least one parameter");
            (updates.iter().map(|u| u.4.clone()).collect::<Vec<_>>(), gsq)
        }
        Some(comm) => {
            let _g = b.scope("all_reduce");
            let mut ins: Vec<&Tensor> = updates.iter().map(|u| &u.4).collect();
            ins.push(&apply);
            let sizes: Vec<usize> =
                (updates.iter()).map(|u| u.0.dims().iter().map(|x| x.to_usize().expect("parameter shapes are fixed")).product()).collect();
            let flat = b.kernel(AllReduce { comm: comm.clone() }, &ins, &[d(sizes.iter().sum())]);
            let mut at = 0;
            let grads = (sizes.iter())
                .map(|&n| {
                    at += n;
                    flat.slice(0, d(at - n), d(at))
                })
                .collect();
            (grads, sum_all(&flat.square()))
        }
    };
    for ((p, m, v, acc, _), g) in updates.into_iter().zip(grads) {
        let dims = p.dims();
        let node = b.kernel(kernel.clone(), &[&p, &m, &v, &acc, &g, &gsq, &lr, &step, &apply], &dims);
        b.keep(&node);
    }
    gsq.sqrt()
}

/// The values of the [`inputs`] for one run.
pub fn input_values(lr: f32, step: u64, apply: bool) -> [(&'static str, [f32; 1]); 3] {
    [(inputs::LR, [lr]), (inputs::STEP, [step as f32]), (inputs::APPLY, [apply as u8 as f32])]
}
