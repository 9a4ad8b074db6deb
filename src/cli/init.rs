//! `lumind init`: seeded random weights.

use std::path::PathBuf;

use anyhow::Result;

use crate::model::params::{count_params, human};
use crate::model::{ModelDef, Weights};

#[derive(clap::Args)]
pub struct Args {
    /// Model definition (models/*.toml)
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Draw every matrix from N(0, std) instead of the definition's scheme
    #[arg(long)]
    std: Option<f32>,
    /// Output safetensors file
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let def = ModelDef::load(&a.model)?;
    if let Some(std) = a.std.filter(|s| !(s.is_finite() && *s > 0.0)) {
        anyhow::bail!("--std must be a finite number above 0, got {std}");
    }
    // (the weights, and their bytes as they are written)
    crate::model::memory::check_fits(&format!("the weights of model `{}`", def.name), 2 * crate::model::memory::weight_bytes(&def))?;
    Weights::init(&def, a.seed, a.std).save(&a.out)?;
    eprintln!("wrote {} random parameters of `{}` to {}", human(count_params(&def).total), def.name, a.out.display());
    Ok(())
}
