//! `lumind train`: run a training job from a config file.

use std::path::PathBuf;

use anyhow::Result;

use crate::train::config::TrainConfig;
use lumind_compilers::Backend;

use crate::train::trainer::train;

#[derive(clap::Args)]
pub struct Args {
    /// Job config (configs/*.toml)
    #[arg(long)]
    config: PathBuf,
    /// Continue the run from its last checkpoint in `out`
    #[arg(long)]
    resume: bool,
    /// Override `optim.max_steps`
    #[arg(long)]
    max_steps: Option<usize>,
    /// Override `out` (the run directory)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where to train: cpu, cuda (an NVIDIA GPU) or emulated (the CUDA kernels on the CPU, for checks)
    #[arg(long, default_value = "cpu")]
    device: Backend,
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg = TrainConfig::load(&a.config)?;
    if let Some(m) = a.max_steps {
        cfg.optim.max_steps = Some(m);
    }
    if let Some(o) = a.out {
        cfg.out = o;
    }
    cfg.validate().map_err(|e| anyhow::anyhow!("{}: {e:#}", a.config.display()))?;
    if train(&cfg, a.resume, a.device)?.interrupted {
        return Err(super::Interrupted.into());
    }
    Ok(())
}
