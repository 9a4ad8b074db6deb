//! Arguments shared by commands.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use lumind_compilers::Fusion;

use crate::model::{ModelDef, Weights};

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model definition (models/*.toml)
    #[arg(long)]
    pub model: PathBuf,
    /// Weights (safetensors, Hugging Face names)
    #[arg(long)]
    pub weights: PathBuf,
    /// Compiler strategy: none, generic or full
    #[arg(long, default_value = "full")]
    pub fusion: Fusion,
}

impl ModelArgs {
    pub fn load(&self) -> Result<(ModelDef, Weights)> {
        let def = ModelDef::load(&self.model)?;
        let w = Weights::load(&def, &self.weights)?;
        Ok((def, w))
    }
}

/// `1,2,3` or `1 2 3`
pub fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().with_context(|| format!("`{t}` in --tokens is not a token id")))
        .collect()
}
