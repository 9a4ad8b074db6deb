//! Learning-rate schedules.

/// MiniMind's cosine schedule: `lr * (0.1 + 0.45 * (1 + cos(pi * t / T)))`
/// with the micro-step `t` counted from 1 to `T`: from about `lr` down to
/// `0.1 lr`.
pub fn minimind_lr(lr: f32, t: u64, total: u64) -> f32 {
    let x = std::f64::consts::PI * t as f64 / total.max(1) as f64;
    (lr as f64 * (0.1 + 0.45 * (1.0 + x.cos()))) as f32
}

/// The schedule with an optional linear warmup over the first `warmup`
/// micro-steps.
pub fn lr_at(lr: f32, t: u64, total: u64, warmup: u64) -> f32 {
    if t <= warmup && warmup > 0 {
        return lr * t as f32 / warmup as f32;
    }
    minimind_lr(lr, t, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_ends_at_a_tenth() {
        assert!((minimind_lr(1.0, 0, 100) - 1.0).abs() < 1e-6);
        assert!((minimind_lr(1.0, 100, 100) - 0.1).abs() < 1e-6);
        assert!((minimind_lr(1.0, 50, 100) - 0.55).abs() < 1e-6);
        assert!((lr_at(1.0, 5, 100, 10) - 0.5).abs() < 1e-6);
    }
}
