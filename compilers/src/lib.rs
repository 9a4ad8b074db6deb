//! lumind's graph layer, below the models: a runtime-shaped tensor API over
//! luminal's `Graph`, compiler passes (each a `luminal::Compiler`), CPU
//! kernels (each behind a luminal `Operator`) and the executor that runs a
//! compiled graph on a target (the CPU, or a CUDA device). It knows nothing of models, files or the command line.

pub mod autograd;
pub mod backend;
pub mod collective;
pub mod cpu_target;
pub mod cuda;
pub mod dtype;
pub mod executor;
pub mod fnv;
pub mod inspect;
pub mod kernel;
pub mod kernels;
pub mod lora;
pub mod losses;
pub mod optim;
pub mod passes;
mod plan;
pub mod primop;
mod run_error;
pub mod search;
pub mod shape;
pub mod step_stats;
pub mod target;
pub mod tensor;
pub mod view;

pub use backend::Backend;
pub use dtype::DType;
pub use executor::{Executor, Outputs};
pub use passes::{compile, pipeline, Fusion};
pub use plan::ExecError;
pub use run_error::RunError;
pub use shape::{d, sym, Dim};
pub use tensor::{BuiltGraph, GraphBuilder, InputKind, Tensor};
pub use view::DimValues;
