//! Models: definitions, their parameters, the graph builder, weights.

pub mod builder;
pub mod def;
pub mod hf_config;
pub mod memory;
pub mod names;
pub mod params;
pub mod precision;
pub mod rope;
pub mod weights;

pub use def::ModelDef;
pub use precision::Precision;
pub use weights::Weights;
