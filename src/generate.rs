//! Generation of one sequence with a KV cache: the prompt is prefilled
//! once, then each new token is one decode step that appends its keys and
//! values to the cache in place. A new prompt sharing a prefix with what is
//! cached reuses it. (The server decodes many sequences at once with the
//! same [`Slots`]; a sequence gets the same tokens either way.)

use anyhow::{bail, Result};

use crate::sampling::Sampler;
use crate::session::{Logits, Session};
use crate::slots::Slots;

pub struct Generator {
    pub slots: Slots,
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

/// Check a prompt before it is prefilled: not empty, tokens in the
/// vocabulary, and room for at least one new token in the context.
pub fn check_prompt(session: &Session, prompt: &[u32]) -> Result<()> {
    session.check_tokens(prompt)?;
    let context = session.opts.max_positions;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    if prompt.len() >= context {
        bail!("the prompt has {} tokens but the context holds {context}, leaving no room for a new token", prompt.len());
    }
    Ok(())
}

impl Generator {
    /// `session` must be built with `kv_cache` (and usually `last_only`);
    /// its first cache row is used.
    pub fn new(session: Session) -> Generator {
        Generator { slots: Slots::new(session) }
    }

    pub fn session(&mut self) -> &mut Session {
        &mut self.slots.session
    }

    pub fn context(&self) -> usize {
        self.slots.context()
    }

    /// Forget the cache.
    pub fn reset(&mut self) {
        self.slots.clear(0);
    }

    /// Run `ids` from an empty cache and return the session's logits (every
    /// position's unless it was built `last_only`); the cache then holds
    /// `ids`, so a prompt that starts with them reuses their keys and values.
    pub fn run_fresh(&mut self, ids: &[u32]) -> Result<Logits> {
        self.slots.run_fresh(0, ids)
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
        check_prompt(&self.slots.session, prompt)?;
        let mut out = vec![];
        if max_new == 0 {
            return Ok((out, Finish::Length));
        }
        let mut logits = self.slots.prefill(0, prompt)?;
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
            // (a sequence never outgrows the context: the last token is not fed back)
            if out.len() >= max_new || seen.len() >= self.context() {
                return Ok((out, Finish::Length));
            }
            logits = self.slots.decode(&[(0, tok)])?.swap_remove(0);
        }
    }
}
