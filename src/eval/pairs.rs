//! Preference pairs (`{"chosen": [...], "rejected": [...]}`) scored as DPO
//! sees them: the summed log-probability of each reply's assistant tokens,
//! under the policy and, optionally, a frozen reference.

use std::path::Path;

use anyhow::Result;
use indicatif::ProgressBar;

use crate::chat_template::ChatTemplate;
use crate::data::chat::{check_pair, encode_conversation, messages, LossOn, Markers};
use crate::data::jsonl::{JsonlIndex, OnBadLine};
use crate::eval::scored_log_prob;
use crate::session::Session;
use crate::tokenizer::Tokenizer;

/// Log-probabilities of one pair's replies.
#[derive(Clone, Copy, Debug)]
pub struct PairLogProbs {
    pub chosen: f64,
    pub rejected: f64,
}

impl PairLogProbs {
    pub fn margin(&self) -> f64 {
        self.chosen - self.rejected
    }
}

/// Every pair of `path` (the first `limit`), scored by `s`. Sequences are
/// cut at `max_len` tokens as in training.
pub fn pair_log_probs(
    s: &mut Session,
    tok: &Tokenizer,
    path: &Path,
    max_len: usize,
    limit: Option<usize>,
    progress: &ProgressBar,
) -> Result<Vec<PairLogProbs>> {
    let index = JsonlIndex::build(path, OnBadLine::Fail, check_pair)?;
    let mut reader = index.reader()?;
    let (template, markers) = (ChatTemplate::for_tokenizer(tok)?, Markers::new(tok)?);
    let mut out = vec![];
    let n = index.len().min(limit.unwrap_or(usize::MAX));
    progress.set_length(n as u64);
    for i in 0..n {
        progress.inc(1);
        let (v, _) = reader.get(i)?;
        let mut score = |key: &str| -> Result<f64> {
            let msgs = messages(&v[key]).map_err(anyhow::Error::msg)?;
            let (ids, labels) = encode_conversation(tok, &template, &markers, &msgs, max_len, LossOn::All)?;
            let l = s.run(&ids, 1, 0)?;
            let (lp, _) = scored_log_prob(&l, &ids, &labels);
            s.recycle(l);
            Ok(lp)
        };
        out.push(PairLogProbs { chosen: score("chosen")?, rejected: score("rejected")? });
    }
    Ok(out)
}

/// Summary over pairs.
#[derive(Debug, PartialEq)]
pub struct PairSummary {
    pub pairs: usize,
    /// the policy gives the chosen reply the higher log-probability
    pub policy_prefers_chosen: usize,
    pub mean_policy_margin: f64,
    /// with a reference: the policy's margin exceeds the reference's (DPO's
    /// reward accuracy), how many margins are exactly equal, and the mean of
    /// `beta * (policy margin - reference margin)`
    pub reward_wins: Option<usize>,
    pub reward_ties: Option<usize>,
    pub mean_reward_margin: Option<f64>,
}

pub fn summarize(policy: &[PairLogProbs], reference: Option<&[PairLogProbs]>, beta: f64) -> PairSummary {
    let n = policy.len();
    let mean = |x: f64| x / n.max(1) as f64;
    let rewards: Option<Vec<f64>> = reference.map(|r| policy.iter().zip(r).map(|(p, r)| beta * (p.margin() - r.margin())).collect());
    PairSummary {
        pairs: n,
        policy_prefers_chosen: policy.iter().filter(|p| p.margin() > 0.0).count(),
        mean_policy_margin: mean(policy.iter().map(|p| p.margin()).sum()),
        reward_wins: rewards.as_ref().map(|r| r.iter().filter(|&&x| x > 0.0).count()),
        reward_ties: rewards.as_ref().map(|r| r.iter().filter(|&&x| x == 0.0).count()),
        mean_reward_margin: rewards.as_ref().map(|r| mean(r.iter().sum())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_margins_against_the_reference() {
        let p = |c, r| PairLogProbs { chosen: c, rejected: r };
        let policy = [p(-1.0, -3.0), p(-2.0, -1.0), p(-5.0, -5.0)];
        let reference = [p(-1.0, -2.0), p(-2.0, -1.5), p(-5.0, -5.0)];
        let s = summarize(&policy, Some(&reference), 0.5);
        assert_eq!(s.pairs, 3);
        assert_eq!(s.policy_prefers_chosen, 1);
        assert!((s.mean_policy_margin - (2.0 - 1.0 + 0.0) / 3.0).abs() < 1e-12);
        // rewards: 0.5*(2-1)=0.5, 0.5*(-1+0.5)=-0.25, 0
        assert_eq!((s.reward_wins, s.reward_ties), (Some(1), Some(1)));
        assert!((s.mean_reward_margin.unwrap() - 0.25 / 3.0).abs() < 1e-12);
        assert_eq!(summarize(&policy, None, 0.5).reward_wins, None);
    }
}
