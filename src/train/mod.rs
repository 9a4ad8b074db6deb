//! Training: the training graph, the session that runs it, data, schedule,
//! checkpoints, the trainer loop and the ranks of a data-parallel run.

pub mod checkpoint;
pub mod config;
pub mod graph;
pub mod lock;
pub mod metrics;
#[cfg(feature = "mpi")]
mod mpi;
pub mod schedule;
pub mod session;
pub mod trainer;
pub mod world;

pub use session::{Batch, StepLoss, TrainCompile, TrainSession};
