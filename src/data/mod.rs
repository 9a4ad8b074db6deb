//! Training data: JSONL files, pretraining records, batches.

pub mod jsonl;
pub mod pretrain;
