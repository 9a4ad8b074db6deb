//! `lumind quantize`: a weights file with the matrices stored as bf16 or
//! Q8_0 ([`crate::packed_weights`]), which every command reads and runs at
//! that precision unless `--precision` says otherwise.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::args::one_of;
use crate::model::{ModelDef, Precision};

#[derive(clap::Args)]
pub struct Args {
    /// Model definition (models/*.toml)
    #[arg(long)]
    model: PathBuf,
    /// Weights to quantize (safetensors or GGUF)
    #[arg(long)]
    weights: PathBuf,
    /// The matrices' type: bf16, or q8 (GGUF's Q8_0); norms stay f32
    #[arg(long, value_parser = one_of::<Precision>("precision"))]
    to: Precision,
    /// The safetensors file to write
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    if a.to == Precision::Fp32 {
        bail!("--to fp32 would only copy the weights: quantize writes bf16 or q8");
    }
    let def = ModelDef::load(&a.model)?;
    let w = crate::weights_file::load(&def, &a.weights)?;
    let n = crate::packed_weights::write(&def, &w, a.to, &a.out)?;
    let (from, to) = (std::fs::metadata(&a.weights)?.len(), std::fs::metadata(&a.out)?.len());
    println!(
        "wrote {}: {n} matrices as {}, {:.1} MB (from {:.1} MB); commands run it at --precision {} unless told otherwise",
        a.out.display(),
        a.to,
        to as f64 / 1e6,
        from as f64 / 1e6,
        a.to
    );
    Ok(())
}
