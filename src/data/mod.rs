//! Training data: JSONL files, pretraining records, batches.

pub mod chat;
pub mod jsonl;
pub mod pretrain;
