//! Training: the training graph, the session that runs it, data, schedule,
//! checkpoints and the trainer loop.

pub mod checkpoint;
pub mod config;
pub mod graph;
pub mod lock;
pub mod metrics;
pub mod schedule;
pub mod session;
pub mod trainer;

pub use session::{Batch, StepLoss, TrainCompile, TrainSession};
