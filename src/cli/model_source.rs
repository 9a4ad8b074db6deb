//! Where `chat` and `serve` get their model: files given on the command
//! line, or the bundle appended to this executable (`lumind bundle`).

use super::args::CompileArgs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use lumind_compilers::{Backend, Fusion};

use crate::model::{ModelDef, Weights};
use crate::tokenizer::Tokenizer;

#[derive(Args, Clone, Debug)]
pub struct ModelSource {
    /// Model definition (models/*.toml); not needed in a bundled executable
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Weights (safetensors); not needed in a bundled executable
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// A LoRA adapter directory (PEFT layout) applied on the weights
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub compile: CompileArgs,
}

pub struct Loaded {
    pub def: ModelDef,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    pub fusion: Fusion,
    pub precision: crate::model::Precision,
    pub device: Backend,
}

impl ModelSource {
    pub fn load(&self, tokenizer: Option<&Path>) -> Result<Loaded> {
        // (a file `lumind quantize` wrote runs at its precision unless told otherwise)
        let (def, weights, bundled_tok, stored) = match (&self.model, &self.weights) {
            (Some(m), Some(w)) => {
                let def = ModelDef::load(m)?;
                let stored = crate::packed_weights::precision_for(self.compile.precision, w)?;
                let w = crate::weights_file::load(&def, w)?;
                (def, w, None, stored)
            }
            (None, None) => match crate::bundle::current()? {
                Some(b) => {
                    let stored = b.precision()?;
                    let (def, w, tok) = b.open()?;
                    (def, w, Some(tok), stored)
                }
                None => bail!("give --model and --weights (this executable carries no bundled model)"),
            },
            _ => bail!("give both --model and --weights"),
        };
        let tokenizer = match (tokenizer, bundled_tok) {
            (Some(dir), _) => Tokenizer::load(dir)?,
            (None, Some(t)) => t,
            (None, None) => Tokenizer::default_minimind(),
        };
        if tokenizer.vocab_size() > def.vocab_size {
            bail!("the tokenizer has {} tokens but model `{}` only {}", tokenizer.vocab_size(), def.name, def.vocab_size);
        }
        let weights = match &self.adapter {
            Some(dir) => crate::lora::merge_adapter(&def, weights, dir)?,
            None => weights,
        };
        Ok(Loaded {
            def,
            weights,
            tokenizer,
            fusion: self.compile.fusion,
            precision: self.compile.precision.or(stored).unwrap_or_default(),
            device: self.compile.device(),
        })
    }
}
