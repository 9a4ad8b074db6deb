//! `lumind grad`: a loss and its gradients, written under the names people
//! load them by (Hugging Face names; PEFT names for LoRA adapters).
//!
//! Either a token sequence through the language-model loss (`--model
//! --weights --tokens`), or the first K examples of a stage's data through
//! that stage's loss (`--config --data --n`).

use super::args::CompileArgs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::args::parse_tokens;
use crate::data::pretrain::Position;
use crate::model::ModelDef;
use crate::tokenizer::Tokenizer;
use crate::train::config::TrainConfig;
use crate::train::graph::{Stage, Update};
use crate::train::trainer::{session_for, Data};
use crate::train::{Batch, TrainSession};

#[derive(clap::Args)]
pub struct Args {
    /// Model definition (with --weights and --tokens)
    #[arg(long, conflicts_with = "config")]
    model: Option<PathBuf>,
    #[arg(long, conflicts_with = "config")]
    weights: Option<PathBuf>,
    /// Token ids; the loss is cross-entropy of each next token (plus the MoE
    /// auxiliary loss, as MiniMind trains)
    #[arg(long, conflicts_with = "config")]
    tokens: Option<String>,
    /// A training config: the stage's loss on the first --n examples of --data
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data file for --config (default: the config's `data.train`)
    #[arg(long, requires = "config")]
    data: Option<PathBuf>,
    /// Examples (DPO: pairs) for --config
    #[arg(long, default_value_t = 4)]
    n: usize,
    /// LoRA: start the adapters from this directory instead of MiniMind's init
    #[arg(long, requires = "config")]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    compile: CompileArgs,
    /// Output safetensors: `loss` and one gradient per trained tensor
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    a.compile.fp32_only("`grad`")?;
    let (mut s, batch) = match (&a.config, &a.model, &a.weights, &a.tokens) {
        (Some(cfg_path), _, _, _) => {
            let mut cfg = TrainConfig::load(cfg_path)?;
            if let Some(d) = &a.data {
                cfg.data.train = d.clone();
            }
            let def = ModelDef::load(&cfg.model)?;
            let tok = Tokenizer::load_or_default(cfg.tokenizer.as_deref())?;
            let data = Data::open(&cfg, &tok)?;
            cfg.check_against(&def, data.len(), 1)?;
            if a.n == 0 {
                bail!("--n must be at least 1");
            }
            let order: Vec<usize> = (0..a.n.min(data.len())).collect();
            let (batch, _) = data.batch(&tok, &order, Position::default(), order.len())?;
            // (the graph, weights and reference `lumind train` would use)
            let mut s = session_for(&cfg, &def, Update::OutputGrads, a.compile.device(), a.compile.fusion)?;
            if let Some(dir) = &a.adapter {
                let (_, mods) = crate::lora::load_adapter(dir)?;
                let mut t = crate::model::weights::Tensors::default();
                for crate::lora::AdapterModule { module: m, a: (ash, av), b: (bsh, bv) } in mods {
                    let (an, bn) = crate::lora::peft_names(&m);
                    t.insert(an, ash, av);
                    t.insert(bn, bsh, bv);
                }
                s.set_trained(&t).context("the adapter does not fit the config's LoRA targets")?;
            }
            (s, batch)
        }
        (None, Some(m), Some(w), Some(t)) => {
            let tokens = parse_tokens(t)?;
            if tokens.len() < 2 {
                bail!("--tokens needs at least two ids (the loss scores each next token)");
            }
            let def = ModelDef::load(m)?;
            let w = crate::weights_file::load(&def, w)?;
            let s =
                TrainSession::on(a.compile.device(), &def, w, tokens.len(), Stage::LanguageModel, Update::OutputGrads, a.compile.fusion)?;
            let labels: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
            (s, Batch::from_labels(&[(tokens, labels)]))
        }
        _ => bail!("give --model, --weights and --tokens, or --config"),
    };
    let (loss, mut grads) = s.grads(&batch)?;
    grads.insert("loss", vec![], vec![loss.loss]);
    grads.save(&a.out)?;
    eprintln!(
        "loss {:.6} (stage loss {:.6}, aux {:.6}); wrote {} gradients to {}",
        loss.loss,
        loss.ce,
        loss.aux,
        grads.0.len() - 1,
        a.out.display()
    );
    Ok(())
}
