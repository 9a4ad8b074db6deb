//! `lumind logits`: one forward pass, logits to a safetensors file.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::args::{parse_tokens, ModelArgs};
use crate::model::builder::ForwardOptions;
use crate::model::weights::Tensors;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Token ids, e.g. 1,2,3
    #[arg(long)]
    tokens: String,
    /// Output safetensors file; gets tensor `logits` [T, vocab] (f32)
    #[arg(long)]
    out: PathBuf,
}

pub fn run(mut a: Args) -> Result<()> {
    let tokens = parse_tokens(&a.tokens)?;
    if tokens.is_empty() {
        bail!("--tokens is empty");
    }
    let (def, w) = a.model.load()?;
    if tokens.len() > def.max_position_embeddings {
        bail!(
            "--tokens has {} ids but model `{}` has a context of {} (max_position_embeddings)",
            tokens.len(),
            def.name,
            def.max_position_embeddings
        );
    }
    let opts = ForwardOptions::full(tokens.len());
    let mut s = a.model.compile.session(&def, w, opts)?;
    let l = s.run(&tokens, 1, 0)?;
    let mut t = Tensors::default();
    t.insert("logits", vec![l.rows, l.vocab], l.data);
    t.save(&a.out)?;
    let precision = s.opts.precision;
    eprintln!("wrote logits [{}, {}] to {} ({precision}: {} params packed)", tokens.len(), def.vocab_size, a.out.display(), s.packed.len());
    Ok(())
}
