//! `lumind train`: run a training job from a config file.

use super::args::DeviceArgs;
use std::path::PathBuf;

use anyhow::Result;

use crate::train::config::TrainConfig;

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
    #[command(flatten)]
    on: DeviceArgs,
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
    if train(&cfg, a.resume, a.on.device)?.interrupted {
        return Err(super::interrupted::Interrupted.into());
    }
    Ok(())
}
