//! Log-probabilities of given tokens under the model: perplexity of plain
//! text, and the scored part of a labelled sequence.

use std::path::Path;

use anyhow::Result;
use indicatif::ProgressBar;

use super::divergence::Divergence;
use crate::data::jsonl::{check_text, JsonlIndex, OnBadLine};
use crate::data::pretrain::encode_text;
use crate::sampling::log_sum_exp;
use crate::session::{Logits, Session};
use crate::tokenizer::Tokenizer;

/// Sum of `log p(ids[j] | ids[..j])` over the positions whose label is not
/// -100 (labels align with `ids`, as the trainer's), and how many there were.
/// `l` holds the logits of one sequence. Computed in f64.
pub fn scored_log_prob(l: &Logits, ids: &[u32], labels: &[i64]) -> (f64, usize) {
    let (mut sum, mut n) = (0f64, 0usize);
    for j in 1..ids.len() {
        if labels[j] < 0 {
            continue;
        }
        let row = l.row(j - 1);
        sum += row[ids[j] as usize] as f64 - log_sum_exp(row);
        n += 1;
    }
    (sum, n)
}

/// What [`perplexity`] measured.
#[derive(Clone, Debug, Default)]
pub struct Perplexity {
    /// negative log-likelihood of every predicted token, summed
    pub nll: f64,
    pub tokens: usize,
    pub texts: usize,
    /// the reference's own NLL and the distance from it, when given one
    pub reference: Option<(f64, Divergence)>,
}

impl Perplexity {
    pub fn value(&self) -> f64 {
        (self.nll / self.tokens.max(1) as f64).exp()
    }
}

/// Perplexity of every text, and, with a `reference` session (the same
/// model at another precision), the reference's perplexity and each
/// position's KL divergence from it.
pub fn perplexity(
    s: &mut Session,
    mut reference: Option<&mut Session>,
    tok: &Tokenizer,
    path: &Path,
    max_len: usize,
    limit: Option<usize>,
    progress: &ProgressBar,
) -> Result<Perplexity> {
    let index = JsonlIndex::build(path, OnBadLine::Skip, check_text)?;
    let mut reader = index.reader()?;
    let mut out = Perplexity { reference: reference.as_ref().map(|_| (0.0, Divergence::default())), ..Default::default() };
    let n = index.len().min(limit.unwrap_or(usize::MAX));
    progress.set_length(n as u64);
    for i in 0..n {
        progress.inc(1);
        let (v, _) = reader.get(i)?;
        let (ids, _) = encode_text(tok, v["text"].as_str().unwrap_or_default(), max_len)?;
        let labels: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let l = s.run(&ids, 1, 0)?;
        let (lp, n) = scored_log_prob(&l, &ids, &labels);
        if let (Some(r), Some((nll, d))) = (reference.as_deref_mut(), out.reference.as_mut()) {
            let lr = r.run(&ids, 1, 0)?;
            *nll -= scored_log_prob(&lr, &ids, &labels).0;
            // (the positions that predict a token: all but the last)
            d.add(&lr, &l, ids.len().saturating_sub(1));
            r.recycle(lr);
        }
        s.recycle(l);
        out.nll -= lp;
        out.tokens += n;
        out.texts += 1;
    }
    Ok(out)
}
