//! `lumind generate`: continue a prompt with a KV cache.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::ArgGroup;

use super::args::{parse_tokens, ModelArgs};
use crate::generate::Generator;
use crate::model::builder::ForwardOptions;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{TextStream, Tokenizer};

#[derive(clap::Args)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "tokens"])))]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to continue (encoded after a bos token, as MiniMind's pretraining data)
    #[arg(long)]
    prompt: Option<String>,
    /// Token ids to continue, e.g. 1,2,3
    #[arg(long)]
    tokens: Option<String>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = all)
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tokenizer directory (default: the built-in MiniMind tokenizer)
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Keep generating past the end-of-sequence token
    #[arg(long)]
    ignore_eos: bool,
    /// Print {"tokens": [...], "text": "..."} instead of streaming text
    #[arg(long)]
    json: bool,
}

pub fn run(mut a: Args) -> Result<()> {
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
    };
    params.validate().map_err(anyhow::Error::msg)?;
    let tok = Tokenizer::load_or_default(a.tokenizer.as_deref())?;
    let prompt = match (&a.prompt, &a.tokens) {
        (Some(p), _) => [vec![tok.bos], tok.encode(p)?].concat(),
        (_, Some(t)) => parse_tokens(t)?,
        _ => unreachable!("clap requires one"),
    };
    if prompt.is_empty() {
        bail!("--tokens is empty");
    }
    let (def, w) = a.model.load()?;
    if prompt.len() >= def.max_position_embeddings {
        bail!(
            "the prompt has {} tokens but model `{}` has a context of {} (max_position_embeddings), which leaves no room for a new token",
            prompt.len(),
            def.name,
            def.max_position_embeddings
        );
    }
    let ctx = prompt.len().saturating_add(a.max_new_tokens.max(1)).min(def.max_position_embeddings);
    let opts = ForwardOptions::generation(ctx);
    let mut g = Generator::new(a.model.compile.session(&def, w, opts)?);
    let mut sampler = Sampler::new(params);
    let stop = if a.ignore_eos { vec![] } else { vec![tok.eos] };
    let mut stream = TextStream::default();
    let stdout = std::io::stdout();
    let t = Instant::now();
    let (out, _) = g.generate(&prompt, a.max_new_tokens, &stop, &mut sampler, |id| {
        if !a.json {
            if let Ok(piece) = stream.push(&tok, id) {
                let mut o = stdout.lock();
                let _ = o.write_all(piece.as_bytes());
                let _ = o.flush();
            }
        }
        true
    })?;
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        let text = tok.decode(&out)?;
        println!("{}", serde_json::json!({"tokens": out, "text": text}));
    } else {
        println!();
        eprintln!("[{} prompt + {} new tokens in {:.2}s, {:.1} tokens/s]", prompt.len(), out.len(), secs, out.len() as f64 / secs);
    }
    Ok(())
}
