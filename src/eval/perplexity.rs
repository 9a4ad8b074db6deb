//! Log-probabilities of given tokens under the model: perplexity of plain
//! text, and the scored part of a labelled sequence.

use std::path::Path;

use anyhow::Result;
use indicatif::ProgressBar;

use crate::data::jsonl::{check_text, JsonlIndex, OnBadLine};
use crate::data::pretrain::encode_text;
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
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        sum += row[ids[j] as usize] as f64 - lse;
        n += 1;
    }
    (sum, n)
}

/// Negative log-likelihood of every text (each predicted token), as
/// (total NLL, tokens, texts).
pub fn perplexity(
    s: &mut Session,
    tok: &Tokenizer,
    path: &Path,
    max_len: usize,
    limit: Option<usize>,
    progress: &ProgressBar,
) -> Result<(f64, usize, usize)> {
    let index = JsonlIndex::build(path, OnBadLine::Skip, check_text)?;
    let mut reader = index.reader()?;
    let (mut nll, mut count, mut texts) = (0f64, 0usize, 0usize);
    let n = index.len().min(limit.unwrap_or(usize::MAX));
    progress.set_length(n as u64);
    for i in 0..n {
        progress.inc(1);
        let (v, _) = reader.get(i)?;
        let (ids, _) = encode_text(tok, v["text"].as_str().unwrap_or_default(), max_len)?;
        let labels: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let l = s.run(&ids, 1, 0)?;
        let (lp, n) = scored_log_prob(&l, &ids, &labels);
        s.recycle(l);
        nll -= lp;
        count += n;
        texts += 1;
    }
    Ok((nll, count, texts))
}
