//! `lumind eval`: multiple-choice accuracy (C-Eval format) and perplexity.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::args::ModelArgs;
use crate::chat_template::ChatTemplate;
use crate::eval::{answer, letter_ids, perplexity, read_choice_files};
use crate::model::builder::ForwardOptions;
use crate::session::Session;
use crate::tokenizer::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Accuracy on C-Eval-format CSV files (`id,question,A,B,C,D,answer`)
    Choice {
        #[command(flatten)]
        model: ModelArgs,
        /// A .csv file or a directory of them
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Plain text after a bos token instead of the chat template (base models)
        #[arg(long)]
        raw: bool,
    },
    /// Perplexity over `{"text": ...}` lines
    Ppl {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        max_seq_len: usize,
        /// Only the first N texts
        #[arg(long)]
        limit: Option<usize>,
    },
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Choice { model, data, tokenizer, raw } => {
            let (def, w) = model.load()?;
            let tok = Tokenizer::load_or_default(tokenizer.as_deref())?;
            let template = if raw { None } else { Some(ChatTemplate::for_tokenizer(&tok)?) };
            let letters = letter_ids(&tok)?;
            let files = read_choice_files(&data)?;
            let longest = files
                .iter()
                .flat_map(|f| f.1.iter())
                .map(|q| q.question.len() + q.options.iter().map(|o| o.len()).sum::<usize>())
                .max()
                .unwrap_or(0);
            let ctx = (longest + 64).min(def.max_position_embeddings);
            let mut s = Session::new(&def, w, ForwardOptions::generation(ctx), model.fusion)?;
            println!("{:<28} {:>9} {:>9} {:>9}", "subject", "questions", "correct", "accuracy");
            let (mut all, mut right) = (0, 0);
            for (subject, qs) in &files {
                let mut ok = 0;
                for q in qs {
                    s.exec.reset_state();
                    ok += (answer(&mut s, &tok, template.as_ref(), q, &letters)? == q.answer) as usize;
                }
                println!("{:<28} {:>9} {:>9} {:>8.1}%", subject, qs.len(), ok, 100.0 * ok as f64 / qs.len().max(1) as f64);
                all += qs.len();
                right += ok;
            }
            println!("{:<28} {:>9} {:>9} {:>8.1}%   (chance: 25%)", "total", all, right, 100.0 * right as f64 / all.max(1) as f64);
        }
        Cmd::Ppl { model, data, tokenizer, max_seq_len, limit } => {
            let (def, w) = model.load()?;
            let tok = Tokenizer::load_or_default(tokenizer.as_deref())?;
            let mut s = Session::new(&def, w, ForwardOptions::full(max_seq_len), model.fusion)?;
            let (nll, n, texts) = perplexity(&mut s, &tok, &data, max_seq_len, limit)?;
            println!("perplexity {:.3} (mean NLL {:.4} over {n} tokens of {texts} texts)", (nll / n as f64).exp(), nll / n as f64);
        }
    }
    Ok(())
}
