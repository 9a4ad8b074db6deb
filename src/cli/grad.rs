//! `lumind grad`: the loss of a token sequence and its gradient for every
//! parameter, under Hugging Face names.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::args::{parse_tokens, ModelArgs};
use crate::train::graph::{Stage, Update};
use crate::train::{Batch, TrainSession};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Token ids; the loss is cross-entropy of each next token (plus the MoE
    /// auxiliary loss, as MiniMind trains)
    #[arg(long)]
    tokens: String,
    /// Output safetensors: `loss` and one gradient per parameter
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let tokens = parse_tokens(&a.tokens)?;
    if tokens.len() < 2 {
        bail!("--tokens needs at least two ids (the loss scores each next token)");
    }
    let (def, w) = a.model.load()?;
    let mut s = TrainSession::new(&def, w, tokens.len(), Stage::LanguageModel, Update::OutputGrads, a.model.fusion)?;
    let labels: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let batch = Batch::from_labels(&[(tokens, labels)]);
    let (loss, mut grads) = s.grads(&batch)?;
    grads.insert("loss", vec![], vec![loss.loss]);
    grads.save(&a.out)?;
    eprintln!(
        "loss {:.6} (cross-entropy {:.6}, aux {:.6}); wrote {} gradients to {}",
        loss.loss,
        loss.ce,
        loss.aux,
        grads.0.len() - 1,
        a.out.display()
    );
    Ok(())
}
