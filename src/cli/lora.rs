//! `lumind lora merge`: fold an adapter into the base weights.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::lora::merge_adapter;
use crate::model::ModelDef;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// W += (alpha/r) B A for every adapted module; writes full weights
    Merge {
        /// Model definition (models/*.toml)
        #[arg(long)]
        model: PathBuf,
        /// Base weights the adapter was trained on
        #[arg(long)]
        weights: PathBuf,
        /// Adapter directory (adapter_config.json + adapter_model.safetensors)
        #[arg(long)]
        adapter: PathBuf,
        /// The merged weights to write (.safetensors)
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Merge { model, weights, adapter, out } => {
            let def = ModelDef::load(&model)?;
            let w = merge_adapter(&def, crate::weights_file::load(&def, &weights)?, &adapter)?;
            w.save(&out)?;
            eprintln!("merged {} into {}", adapter.display(), out.display());
        }
    }
    Ok(())
}
