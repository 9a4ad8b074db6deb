//! lumind: train and run tiny language models (the MiniMind family) from
//! declarative TOML definitions, built as lazy luminal graphs and compiled
//! into fused CPU kernels. See the README for the tour.

pub mod bench;
pub mod bundle;
pub mod chat_template;
pub mod cli;
pub mod conversation;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod gguf;
pub mod graph_io;
pub mod io;
pub mod lora;
pub mod model;
pub mod packed_weights;
pub mod progress;
pub mod rng;
pub mod sampling;
pub mod server;
pub mod session;
pub mod slots;
pub mod tokenizer;
pub mod tokenizer_train;
pub mod train;
pub mod weights_file;

pub use lumind_compilers as compilers;
