//! Several sequences in one KV cache, decoded together.
//!
//! The session's cache holds `slots` rows, one sequence each. A prompt is
//! prefilled into its slot in chunks (reusing what the slot already holds of
//! it); then one decode step appends one token to every sequence that asks,
//! in a single run of the graph, so the weights are read once for all of
//! them. Every kernel computes a row the same way whatever else is in the
//! batch, so a sequence gets the same logits, bit for bit, as when it runs
//! alone.

use anyhow::{bail, Result};

use crate::session::{Logits, Session, PREFILL_CHUNK};

/// The most sequences decoded together: up to this many rows, every kernel
/// computes a row as it would alone (`kernels::gemv::MAX_ROWS`).
pub const MAX_PARALLEL: usize = lumind_compilers::kernels::gemv::MAX_ROWS;

pub struct Slots {
    pub session: Session,
    /// per slot: the tokens whose keys and values are in its cache row
    cached: Vec<Vec<u32>>,
}

impl Slots {
    /// `session` must be built with a KV cache (`ForwardOptions::batched`).
    pub fn new(session: Session) -> Slots {
        assert!(session.opts.kv_cache, "decoding needs a session with a KV cache");
        let n = session.opts.slots;
        Slots { session, cached: vec![vec![]; n] }
    }

    pub fn len(&self) -> usize {
        self.cached.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cached.is_empty()
    }

    /// Positions each sequence may reach.
    pub fn context(&self) -> usize {
        self.session.opts.max_positions
    }

    /// Tokens cached in `slot`.
    pub fn cached(&self, slot: usize) -> &[u32] {
        &self.cached[slot]
    }

    /// Forget what `slot` holds.
    pub fn clear(&mut self, slot: usize) {
        self.cached[slot].clear();
    }

    /// Of the slots `free` allows, the one whose cache shares the longest
    /// prefix with `prompt` (the first on a tie).
    pub fn pick(&self, prompt: &[u32], free: impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.len()).filter(|&s| free(s)).max_by_key(|&s| (common_prefix(&self.cached[s], prompt), std::cmp::Reverse(s)))
    }

    fn check_slot(&self, slot: usize) -> Result<()> {
        if slot >= self.len() {
            bail!("slot {slot} does not exist (the session has {})", self.len());
        }
        Ok(())
    }

    /// Feed the next chunk of `prompt` into `slot`. The slot keeps the part
    /// of its cache that `prompt` starts with. Returns the logits of the
    /// prompt's last position once all of it is in.
    pub fn prefill_chunk(&mut self, slot: usize, prompt: &[u32]) -> Result<Option<Vec<f32>>> {
        self.check_slot(slot)?;
        if prompt.is_empty() {
            bail!("the prompt is empty");
        }
        if prompt.len() > self.context() {
            bail!("the prompt has {} tokens; the context holds {}", prompt.len(), self.context());
        }
        let cached = &mut self.cached[slot];
        // at least one token is fed, for its logits
        let keep = common_prefix(cached, prompt).min(prompt.len() - 1);
        cached.truncate(keep);
        let end = (keep + PREFILL_CHUNK).min(prompt.len());
        let logits = self.session.run_rows(&prompt[keep..end], slot, &[keep])?;
        self.cached[slot].extend_from_slice(&prompt[keep..end]);
        let last = (end == prompt.len()).then(|| logits.last().to_vec());
        self.session.recycle(logits);
        Ok(last)
    }

    /// Run `ids` into `slot` from an empty cache, in one run, and return
    /// every logit the session computes (every position's unless it was
    /// built `last_only`).
    pub fn run_fresh(&mut self, slot: usize, ids: &[u32]) -> Result<Logits> {
        self.check_slot(slot)?;
        self.cached[slot].clear();
        let l = self.session.run_rows(ids, slot, &[0])?;
        self.cached[slot].extend_from_slice(ids);
        Ok(l)
    }

    /// Feed all of `prompt` into `slot`: the logits of its last position.
    pub fn prefill(&mut self, slot: usize, prompt: &[u32]) -> Result<Vec<f32>> {
        loop {
            if let Some(l) = self.prefill_chunk(slot, prompt)? {
                return Ok(l);
            }
        }
    }

    /// One decode step: append `token` to each `(slot, token)` sequence (each
    /// slot at most once, each below the context) and return the next-token
    /// logits of each, in order.
    pub fn decode(&mut self, rows: &[(usize, u32)]) -> Result<Vec<Vec<f32>>> {
        let Some(first) = rows.iter().map(|r| r.0).min() else { return Ok(vec![]) };
        let last = rows.iter().map(|r| r.0).max().unwrap();
        self.check_slot(last)?;
        let ctx = self.context();
        // one run covers the slots first..=last; slots in between that are
        // not decoding run a harmless token at the end of what they hold
        // (written past their cached tokens, and ignored)
        let mut tokens = vec![0u32; last - first + 1];
        let mut asked = vec![false; last - first + 1];
        for &(slot, tok) in rows {
            if std::mem::replace(&mut asked[slot - first], true) {
                bail!("slot {slot} is decoded twice in one step");
            }
            if self.cached[slot].len() + 1 > ctx {
                bail!("slot {slot} is full ({ctx} tokens)");
            }
            tokens[slot - first] = tok;
        }
        let past: Vec<usize> = (first..=last)
            .map(|slot| {
                let c = &mut self.cached[slot];
                if !asked[slot - first] {
                    c.truncate(ctx - 1);
                }
                c.len()
            })
            .collect();
        let logits = self.session.run_rows(&tokens, first, &past)?;
        let out = rows
            .iter()
            .map(|&(slot, tok)| {
                self.cached[slot].push(tok);
                logits.row(slot - first).to_vec()
            })
            .collect();
        self.session.recycle(logits);
        Ok(out)
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
