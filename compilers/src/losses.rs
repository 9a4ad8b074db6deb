//! Losses built from primops, so autograd differentiates them like the model.

use crate::shape::d;
use crate::tensor::Tensor;

/// Label value that is not scored (PyTorch's `ignore_index`).
pub const IGNORE: f32 = -100.0;

/// 1.0 where `a == b`, from two `LessThan`s.
pub fn equal(a: &Tensor, b: &Tensor) -> Tensor {
    a.lt(b).add(&b.lt(a)).scale(-1.0).add_scalar(1.0)
}

/// Sum of every element (rank 0 result).
pub fn sum_all(x: &Tensor) -> Tensor {
    let mut x = x.clone();
    while x.rank() > 0 {
        x = x.sum(x.rank() - 1);
    }
    x
}

/// `log_softmax(logits)[target]` per position: `[..., V]` logits and `[...]`
/// targets (class ids as f32) give `[...]`; 0 where the target is ignored.
pub fn target_log_probs(logits: &Tensor, targets: &Tensor) -> Tensor {
    let dims = logits.dims();
    let last = dims.len() - 1;
    let logp = logits.log_softmax(last);
    let classes = logits.builder().iota(dims[last], d(0)).expand_to(&dims);
    let onehot = equal(&classes, &targets.expand(last, dims[last]));
    logp.mul(&onehot).sum(last)
}

/// 1.0 where a target is scored.
pub fn target_mask(targets: &Tensor) -> Tensor {
    targets.lt(&targets.full_like(0.0)).scale(-1.0).add_scalar(1.0)
}

/// Mean cross-entropy over the scored targets (targets equal to -100 are
/// ignored), as `torch.nn.functional.cross_entropy(..., ignore_index=-100)`;
/// with nothing scored it is 0, not PyTorch's NaN (the count is taken as at
/// least 1, which changes no other value).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    let picked = sum_all(&target_log_probs(logits, targets));
    let count = sum_all(&target_mask(targets));
    let count = count.add(&count.lt(&count.full_like(1.0)));
    picked.div(&count).scale(-1.0)
}

/// `log(1 + exp(u))`, computed as `max(u, 0) + log(1 + exp(-|u|))` so it
/// never overflows.
pub fn softplus(u: &Tensor) -> Tensor {
    let pos = u.full_like(0.0).lt(u); // 1 where u > 0
    let relu = u.mul(&pos);
    let abs = u.mul(&pos.scale(2.0).add_scalar(-1.0));
    relu.add(&abs.scale(-1.0).exp().add_scalar(1.0).ln())
}

/// The DPO loss of MiniMind (and the DPO paper): with `policy` and
/// `reference` the summed log-probabilities of each row (`[b]`, chosen rows
/// and rejected rows), and `pairs` (`[n, b]`) +1 at each pair's chosen row
/// and -1 at its rejected row, `logits = pairs @ (policy - reference)` and
/// `loss = mean(-logsigmoid(beta * logits))`. Returns (loss, logits `[n]`).
pub fn dpo_loss(policy: &Tensor, reference: &Tensor, pairs: &Tensor, beta: f32) -> (Tensor, Tensor) {
    let b = policy.dim(0);
    let diff = policy.sub(reference).reshape(&[b, d(1)]);
    let n = pairs.dim(0);
    let logits = pairs.matmul(&diff).reshape(&[n]);
    let loss = softplus(&logits.scale(-beta)).mean(0);
    (loss, logits)
}
