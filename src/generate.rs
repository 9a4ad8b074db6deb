//! Generation with a KV cache: the prompt is prefilled once, then each new
//! token is one decode step that appends its keys and values to the cache in
//! place. A new prompt sharing a prefix with what is cached reuses it.

use anyhow::Result;

use crate::sampling::Sampler;
use crate::session::{Logits, Session};

pub struct Generator {
    pub session: Session,
    /// Tokens whose keys and values are in the cache, in order.
    cached: Vec<u32>,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// produced a stop token (not included in the output)
    Stop,
    /// reached the token limit or the context
    Length,
    /// the callback asked to stop
    Cancelled,
}

impl Generator {
    /// `session` must be built with `kv_cache` (and usually `last_only`).
    pub fn new(session: Session) -> Generator {
        assert!(session.opts.kv_cache, "a generator needs a session with a KV cache");
        Generator { session, cached: vec![] }
    }

    pub fn context(&self) -> usize {
        self.session.opts.max_positions
    }

    /// Forget the cache.
    pub fn reset(&mut self) {
        self.cached.clear();
    }

    /// Run `ids` from an empty cache and return the session's logits (every
    /// position's unless it was built `last_only`); the cache then holds
    /// `ids`, so a prompt that starts with them reuses their keys and values.
    pub fn run_fresh(&mut self, ids: &[u32]) -> Result<Logits> {
        self.cached.clear();
        let l = self.session.run(ids, 1, 0)?;
        self.cached.extend_from_slice(ids);
        Ok(l)
    }

    /// Feed `prompt`, reusing the longest cached prefix; returns the logits
    /// of its last position.
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        let mut keep = self.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        keep = keep.min(prompt.len().saturating_sub(1)); // at least one new token to get logits
        self.cached.truncate(keep);
        let logits = self.session.run(&prompt[keep..], 1, keep)?;
        self.cached.extend_from_slice(&prompt[keep..]);
        let last = logits.last().to_vec();
        self.session.recycle(logits);
        Ok(last)
    }

    /// Generate up to `max_new` tokens after `prompt`. `on_token` sees each
    /// new token and returns false to stop. Stop tokens end generation and
    /// are not returned.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        sampler: &mut Sampler,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, Finish)> {
        self.session.check_tokens(prompt)?;
        if prompt.is_empty() {
            anyhow::bail!("the prompt is empty");
        }
        let mut out = vec![];
        if max_new == 0 {
            return Ok((out, Finish::Length));
        }
        let mut logits = self.prefill(prompt)?;
        let mut seen: Vec<u32> = prompt.to_vec();
        loop {
            let tok = sampler.sample(&logits, &seen);
            if stop.contains(&tok) {
                return Ok((out, Finish::Stop));
            }
            out.push(tok);
            seen.push(tok);
            if !on_token(tok) {
                return Ok((out, Finish::Cancelled));
            }
            if out.len() >= max_new || self.cached.len() + 1 > self.context() {
                return Ok((out, Finish::Length));
            }
            let l = self.session.run(&[tok], 1, self.cached.len())?;
            self.cached.push(tok);
            logits.copy_from_slice(l.last());
            self.session.recycle(l);
        }
    }
}
