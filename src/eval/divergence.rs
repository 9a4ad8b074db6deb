//! How far one model's next-token distributions are from a reference's on
//! the same text (llama.cpp's `perplexity --kl-divergence` numbers): the
//! mean KL(reference || model) per token, and how often both rank the same
//! token first. Computed in f64 from the logits.

use crate::sampling::{argmax, log_sum_exp};
use crate::session::Logits;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Divergence {
    /// sum over positions of KL(p_ref || p)
    pub kl: f64,
    /// the largest single-position KL seen
    pub max_kl: f64,
    /// positions whose top token is the same under both
    pub same_top: usize,
    pub positions: usize,
}

/// `log softmax(row)`
fn log_probs(row: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(row);
    row.iter().map(|&x| x as f64 - lse).collect()
}

impl Divergence {
    /// Add the first `rows` positions of two runs over the same tokens.
    pub fn add(&mut self, reference: &Logits, model: &Logits, rows: usize) {
        for j in 0..rows {
            let (r, m) = (reference.row(j), model.row(j));
            let (lr, lm) = (log_probs(r), log_probs(m));
            let kl: f64 = lr.iter().zip(&lm).map(|(a, b)| a.exp() * (a - b)).sum();
            // (rounding can leave an identical pair a hair below zero)
            let kl = kl.max(0.0);
            self.kl += kl;
            self.max_kl = self.max_kl.max(kl);
            self.same_top += (argmax(r) == argmax(m)) as usize;
            self.positions += 1;
        }
    }

    pub fn mean_kl(&self) -> f64 {
        self.kl / self.positions.max(1) as f64
    }

    /// The share of positions with the same top token, in percent.
    pub fn same_top_percent(&self) -> f64 {
        100.0 * self.same_top as f64 / self.positions.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(rows: &[[f32; 3]]) -> Logits {
        Logits { rows: rows.len(), vocab: 3, data: rows.iter().flatten().copied().collect() }
    }

    #[test]
    fn kl_is_zero_for_the_same_distribution_and_matches_the_formula() {
        let a = logits(&[[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]]);
        let mut d = Divergence::default();
        d.add(&a, &a, 2);
        assert_eq!((d.kl, d.same_top, d.positions), (0.0, 2, 2));
        // p = softmax(0, ln 3) = (1/4, 3/4) against q = (1/2, 1/2)
        let p = Logits { rows: 1, vocab: 2, data: vec![0.0, 3f32.ln()] };
        let q = Logits { rows: 1, vocab: 2, data: vec![0.0, 0.0] };
        let mut d = Divergence::default();
        d.add(&p, &q, 1);
        let want = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
        assert!((d.mean_kl() - want).abs() < 1e-7, "{} {want}", d.mean_kl());
        assert_eq!(d.same_top, 0);
    }
}
