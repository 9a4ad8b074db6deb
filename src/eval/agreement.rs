//! How often two sessions of one model (two precisions) continue the same
//! prompts with the same greedy tokens: the share of prompts whose whole
//! continuation agrees, and the mean length of the agreeing start.
//! Decoding runs through the KV cache, so a quantized session's decode
//! path (Q8_0 activations included) is what is compared.

use std::path::Path;

use anyhow::Result;

use crate::data::jsonl::{check_text, JsonlIndex, OnBadLine};
use crate::data::pretrain::encode_text;
use crate::sampling::argmax;
use crate::session::Session;
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Agreement {
    pub prompts: usize,
    /// prompts whose `tokens` greedy tokens all agree
    pub whole: usize,
    /// the agreeing leading tokens, summed over prompts
    pub leading: usize,
    pub tokens: usize,
}

impl Agreement {
    pub fn mean_leading(&self) -> f64 {
        self.leading as f64 / self.prompts.max(1) as f64
    }
}

/// `n` greedy tokens after `prompt` (a session with a KV cache of at
/// least `prompt.len() + n` positions).
pub fn greedy(s: &mut Session, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(n);
    let mut l = s.run(prompt, 1, 0)?;
    for i in 0..n {
        let t = argmax(l.last());
        out.push(t);
        if i + 1 < n {
            s.recycle(l);
            l = s.run(&[t], 1, prompt.len() + i)?;
        }
    }
    Ok(out)
}

/// The first `len` tokens (bos first) of the first `count` texts of a
/// `{"text": ...}` file that have that many.
pub fn prompts_from(tok: &Tokenizer, path: &Path, len: usize, count: usize) -> Result<Vec<Vec<u32>>> {
    let index = JsonlIndex::build(path, OnBadLine::Skip, check_text)?;
    let mut reader = index.reader()?;
    let mut out = vec![];
    for i in 0..index.len() {
        if out.len() == count {
            break;
        }
        let (v, _) = reader.get(i)?;
        let (ids, _) = encode_text(tok, v["text"].as_str().unwrap_or_default(), len + 2)?;
        if ids.len() > len {
            out.push(ids[..len].to_vec());
        }
    }
    Ok(out)
}

/// Compare `a`'s and `b`'s `n`-token greedy continuations of each prompt.
pub fn greedy_agreement(a: &mut Session, b: &mut Session, prompts: &[Vec<u32>], n: usize) -> Result<Agreement> {
    let mut out = Agreement { tokens: n, ..Default::default() };
    for p in prompts {
        let (x, y) = (greedy(a, p, n)?, greedy(b, p, n)?);
        let lead = x.iter().zip(&y).take_while(|(u, v)| u == v).count();
        out.prompts += 1;
        out.whole += (lead == n) as usize;
        out.leading += lead;
    }
    Ok(out)
}
