//! Chat answers against references. Each held-out conversation's last
//! assistant reply is the reference: the model answers the conversation
//! before it greedily, and we count exact matches and containment, and the
//! word overlap (SQuAD's F1) that credits an answer in the right form with
//! the wrong fact. The reference's own log-likelihood (teacher-forced, per
//! token) is reported too: it moves even while a small model's greedy
//! answers are never exactly right.

use std::path::Path;

use anyhow::{bail, Result};

use crate::chat_template::{ChatTemplate, Message, Role};
use crate::data::chat::{check_conversation, encode_conversation, messages, LossOn, Markers};
use crate::data::jsonl::{JsonlIndex, OnBadLine};
use crate::eval::scored_log_prob;
use crate::generate::Generator;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;

/// A conversation up to its last assistant reply, and that reply.
pub struct ChatCase {
    pub messages: Vec<Message>,
    pub reference: String,
}

/// The cases of a `{"conversations": [...]}` file (the first `limit`).
pub fn read_chat_cases(path: &Path, limit: Option<usize>) -> Result<Vec<ChatCase>> {
    let index = JsonlIndex::build(path, OnBadLine::Fail, check_conversation)?;
    let mut reader = index.reader()?;
    let mut cases = vec![];
    for i in 0..index.len().min(limit.unwrap_or(usize::MAX)) {
        let (v, line) = reader.get(i)?;
        let mut msgs = messages(&v["conversations"]).map_err(anyhow::Error::msg)?;
        match msgs.pop() {
            Some(m) if m.role == Role::Assistant => cases.push(ChatCase { messages: msgs, reference: m.content }),
            _ => bail!("{}:{line}: the conversation does not end with an assistant reply", path.display()),
        }
    }
    Ok(cases)
}

/// How one case went.
pub struct ChatOutcome {
    pub answer: String,
    /// the answer equals the reference (both trimmed)
    pub exact: bool,
    /// the answer contains the reference, or the `expect` string when given
    pub contains: bool,
    /// word-overlap F1 between answer and reference, in [0, 1]
    pub f1: f64,
    /// log-likelihood of the reference reply and its token count
    pub log_prob: f64,
    pub tokens: usize,
}

pub struct ChatScorer {
    generator: Generator,
    tok: Tokenizer,
    template: ChatTemplate,
    markers: Markers,
    stop: Vec<u32>,
    max_new: usize,
}

impl ChatScorer {
    /// `generator` must keep every position's logits (built without `last_only`).
    pub fn new(generator: Generator, tok: Tokenizer, max_new: usize) -> Result<ChatScorer> {
        assert!(!generator.slots.session.opts.last_only, "scoring a reference needs the logits of every position");
        let template = ChatTemplate::for_tokenizer(&tok)?;
        let markers = Markers::new(&tok)?;
        let stop = vec![tok.eos];
        Ok(ChatScorer { generator, tok, template, markers, stop, max_new })
    }

    pub fn score(&mut self, case: &ChatCase, expect: Option<&str>) -> Result<ChatOutcome> {
        let context = self.generator.context();
        let mut full = case.messages.clone();
        full.push(Message::new(Role::Assistant, &case.reference));
        let (ids, labels) = encode_conversation(&self.tok, &self.template, &self.markers, &full, context, LossOn::Last)?;
        let l = self.generator.run_fresh(&ids)?;
        let (log_prob, tokens) = scored_log_prob(&l, &ids, &labels);
        self.generator.session().recycle(l);

        let prompt = self.template.encode(&self.tok, &case.messages, true)?;
        if prompt.len() >= context {
            bail!("a prompt of {} tokens leaves no room to answer in a context of {context}", prompt.len());
        }
        let mut greedy = Sampler::new(SamplingParams::default());
        let (out, _) = self.generator.generate(&prompt, self.max_new, &self.stop, &mut greedy, |_| true)?;
        let answer = self.tok.decode(&out)?;
        let (a, r) = (answer.trim(), case.reference.trim());
        let contains = answer.contains(expect.unwrap_or(r));
        Ok(ChatOutcome { exact: a == r, contains, f1: word_f1(a, r), answer, log_prob, tokens })
    }
}

/// Lower-cased words: runs of ASCII letters and digits, and every other
/// letter on its own (so Chinese counts by character); punctuation dropped.
fn words(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut run = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            run.push(c.to_ascii_lowercase());
            continue;
        }
        if !run.is_empty() {
            out.push(std::mem::take(&mut run));
        }
        if c.is_alphanumeric() {
            out.push(c.to_string());
        }
    }
    if !run.is_empty() {
        out.push(run);
    }
    out
}

/// SQuAD's F1: precision and recall of the answer's words against the
/// reference's, counting repeats at most as often as they occur in both.
pub fn word_f1(answer: &str, reference: &str) -> f64 {
    let (a, r) = (words(answer), words(reference));
    let mut left: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for w in &r {
        *left.entry(w).or_default() += 1;
    }
    let mut common = 0;
    for w in &a {
        if let Some(n) = left.get_mut(w.as_str()).filter(|n| **n > 0) {
            *n -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let (p, rc) = (common as f64 / a.len() as f64, common as f64 / r.len() as f64);
    2.0 * p * rc / (p + rc)
}

#[cfg(test)]
mod tests {
    use super::word_f1;

    #[test]
    fn word_f1_counts_shared_words() {
        assert_eq!(word_f1("That line is from Othello.", "That line is from Othello."), 1.0);
        // 4 of 5 words shared both ways
        assert!((word_f1("That line is from Hamlet.", "That line is from Othello.") - 0.8).abs() < 1e-12);
        // repeats count once per occurrence in the reference
        assert!((word_f1("the the the", "the cat") - 2.0 * (1.0 / 3.0) * 0.5 / (1.0 / 3.0 + 0.5)).abs() < 1e-12);
        // Chinese by character, punctuation ignored
        assert!((word_f1("我是MiniMind。", "我叫MiniMind") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(word_f1("", "anything"), 0.0);
    }
}
