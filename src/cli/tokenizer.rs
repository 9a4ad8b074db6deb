//! `lumind tokenizer train`: a byte-level BPE tokenizer with MiniMind's
//! special tokens, trained on a JSONL corpus.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train on the `text` of every line of a JSONL file
    Train {
        /// Corpus (JSONL with a `text` field per line)
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value_t = 6400)]
        vocab_size: usize,
        /// Output directory for tokenizer.json and tokenizer_config.json
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Train { input, vocab_size, out } => crate::tokenizer_train::train(&input, vocab_size, &out),
    }
}
