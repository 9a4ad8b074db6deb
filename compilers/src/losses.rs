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
/// ignored), as `torch.nn.functional.cross_entropy(..., ignore_index=-100)`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    let picked = sum_all(&target_log_probs(logits, targets));
    let count = sum_all(&target_mask(targets));
    picked.div(&count).scale(-1.0)
}
