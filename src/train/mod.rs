//! Training: the training graph, the session that runs it, data, schedule,
//! checkpoints and the trainer loop.

pub mod graph;
pub mod schedule;
pub mod session;

pub use session::{Batch, StepLoss, TrainSession};
