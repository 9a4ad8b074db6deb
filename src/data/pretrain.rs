//! Pretraining data as MiniMind prepares it: each `{"text": ...}` becomes
//! `[bos] + tokens[..max_len-2] + [eos]`, padded with the pad id; labels are
//! the ids with padding set to -100. Records are shuffled with a seed per
//! epoch and batched; a position (epoch, index) says where a run is.

use anyhow::Result;

use super::jsonl::{JsonlIndex, OnBadLine};
use crate::tokenizer::Tokenizer;
use crate::train::Batch;

/// How short sequences are padded.
#[derive(Clone, Copy, Debug, serde::Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PadTo {
    /// to the longest sequence of the batch (same loss, less work)
    #[default]
    Longest,
    /// always to max_seq_len, as MiniMind does
    MaxLen,
}

pub struct PretrainData {
    pub index: JsonlIndex,
    pub max_len: usize,
    pub pad_to: PadTo,
    pub seed: u64,
}

/// Where a run is in its data: epoch and index into that epoch's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub index: usize,
}

/// A row of ids and labels before padding.
pub fn encode_text(tok: &Tokenizer, text: &str, max_len: usize) -> Result<(Vec<u32>, Vec<i64>)> {
    let mut ids = vec![tok.bos];
    let body = tok.encode_prefix(text, max_len.saturating_sub(2))?;
    ids.extend(body.iter().take(max_len.saturating_sub(2)));
    ids.push(tok.eos);
    let labels = ids.iter().map(|&t| t as i64).collect();
    Ok((ids, labels))
}

/// Pad rows to one length with `pad` ids and -100 labels.
pub fn pad_rows(rows: &mut [(Vec<u32>, Vec<i64>)], len: usize, pad: u32) {
    for (ids, labels) in rows.iter_mut() {
        ids.resize(len, pad);
        labels.resize(len, -100);
    }
}

impl PretrainData {
    pub fn open(path: &std::path::Path, max_len: usize, pad_to: PadTo, on_bad: OnBadLine, seed: u64) -> Result<PretrainData> {
        let index = JsonlIndex::build(path, on_bad, super::jsonl::check_text)?;
        Ok(PretrainData { index, max_len, pad_to, seed })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The record order of an epoch (a seeded shuffle).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        self.index.order(self.seed, epoch)
    }

    /// The batch of up to `batch` records starting at `pos` (which must be
    /// inside the epoch) and the position after it.
    pub fn batch(&self, tok: &Tokenizer, order: &[usize], pos: Position, batch: usize) -> Result<(Batch, Position)> {
        let records = self.index.read(order, pos.index, batch)?;
        let mut rows =
            records.iter().map(|v| encode_text(tok, v["text"].as_str().unwrap_or_default(), self.max_len)).collect::<Result<Vec<_>>>()?;
        let len = match self.pad_to {
            PadTo::MaxLen => self.max_len,
            PadTo::Longest => rows.iter().map(|r| r.0.len()).max().unwrap_or(1),
        };
        pad_rows(&mut rows, len, tok.pad);
        Ok((Batch::from_labels(&rows), Position { epoch: pos.epoch, index: pos.index + records.len() }))
    }
}
