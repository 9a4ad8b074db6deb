//! The `lumind` command line.

mod args;
mod bench;
mod chat;
mod eval;
mod export;
mod generate;
mod grad;
mod info;
mod init;
mod inspect;
mod interrupted;
pub mod job;
mod logits;
mod lora;
mod model_source;
mod profile;
mod quantize;
mod serve;
mod tokenizer;
mod train;

use clap::{Parser, Subcommand};

pub use args::{parse_tokens, ModelArgs};
use interrupted::Interrupted;

#[derive(Parser)]
#[command(name = "lumind", version, about = "Train and run tiny language models from TOML definitions, compiled through luminal graphs.")]
struct Cli {
    /// Worker threads for kernels (default: all cores)
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the logits of a token sequence to a safetensors file
    Logits(logits::Args),
    /// Continue a prompt with a KV cache (greedy or sampled)
    Generate(generate::Args),
    /// Write the loss of a token sequence and its gradient per parameter
    Grad(grad::Args),
    /// Write seeded random weights for a model definition
    Init(init::Args),
    /// Show a model's size per component, or its transformers config.json
    Info(info::Args),
    /// Train from a config file: pretraining, SFT, LoRA or DPO (checkpoints, metrics, resume)
    Train(train::Args),
    /// Tokenizer tools
    Tokenizer(tokenizer::Args),
    /// Show the graph of a job after every compiler pass (DOT, JSON, HTML)
    Inspect(inspect::Args),
    /// Time per kernel of a compiled job
    Profile(profile::Args),
    /// Prefill, decode (and training) speed per fusion strategy
    Bench(bench::Args),
    /// Chat in the terminal
    Chat(chat::Args),
    /// Serve an OpenAI-compatible API and a web chat page
    Serve(serve::Args),
    /// Score a model: multiple choice (C-Eval), perplexity, chat answers, preference pairs
    Eval(eval::Args),
    /// Write a transformers directory (config.json, model.safetensors, tokenizer)
    Export(export::ExportArgs),
    /// Write a weights file with its matrices stored as bf16 or Q8_0
    Quantize(quantize::Args),
    /// Read a transformers or MiniMind directory into a definition and weights
    Import(export::ImportArgs),
    /// Write one executable carrying the model, weights and tokenizer
    Bundle(export::BundleArgs),
    /// LoRA adapter tools
    Lora(lora::Args),
}

/// Run the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // This thread runs the graphs, so it works as one of the kernel threads
    // too: a kernel's parallel loop then starts here instead of being handed
    // to a pool thread and waited for, a round trip per kernel that cost
    // decoding (about 120 kernels a token) a fifth of its speed. Not for
    // `serve`, whose requests run on other threads while this one accepts
    // connections: there every kernel thread must be free to take work.
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = cli.threads {
        pool = pool.num_threads(n.max(1));
    }
    if !matches!(cli.cmd, Cmd::Serve(_)) {
        pool = pool.use_current_thread();
    }
    let _ = pool.build_global();
    let r = match cli.cmd {
        Cmd::Logits(a) => logits::run(a),
        Cmd::Generate(a) => generate::run(a),
        Cmd::Grad(a) => grad::run(a),
        Cmd::Init(a) => init::run(a),
        Cmd::Info(a) => info::run(a),
        Cmd::Train(a) => train::run(a),
        Cmd::Tokenizer(a) => tokenizer::run(a),
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::Profile(a) => profile::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Chat(a) => chat::run(a),
        Cmd::Serve(a) => serve::run(a),
        Cmd::Eval(a) => eval::run(a),
        Cmd::Export(a) => export::run_export(a),
        Cmd::Import(a) => export::run_import(a),
        Cmd::Quantize(a) => quantize::run(a),
        Cmd::Bundle(a) => export::run_bundle(a),
        Cmd::Lora(a) => lora::run(a),
    };
    match r {
        Ok(()) => 0,
        Err(e) if e.is::<Interrupted>() => 130,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
