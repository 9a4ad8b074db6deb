//! `lumind profile`: time per kernel of a compiled job.

use super::args::CompileArgs;
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use lumind_compilers::executor::StepStats;
use lumind_compilers::inspect::op_name;
use lumind_compilers::Fusion;

use super::job::{options, Job};
use crate::bench::synthetic_tokens;
use crate::model::builder::ForwardOptions;
use crate::model::{ModelDef, Weights};

#[derive(clap::Args)]
pub struct Args {
    /// Model definition
    #[arg(long)]
    model: PathBuf,
    /// Weights (default: seeded random weights)
    #[arg(long)]
    weights: Option<PathBuf>,
    /// forward (a whole sequence, logits at every position), prefill (a
    /// prompt into an empty KV cache, last logits: what generation and
    /// `bench`'s pp tests run), decode (one token after a prompt) or train
    /// (forward, backward, AdamW)
    #[arg(long, default_value = "forward", value_parser = super::args::one_of::<Job>("job"))]
    job: Job,
    #[command(flatten)]
    compile: CompileArgs,

    /// Sequence length (prompt length for decode)
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    /// Sequences per run (decode: decoded together)
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Profiled runs (after one warm-up)
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Rows of the per-node table
    #[arg(long, default_value_t = 25)]
    top: usize,
}

pub fn run(mut a: Args) -> Result<()> {
    let def = ModelDef::load(&a.model)?;
    let weights = match &a.weights {
        Some(p) => {
            a.compile.precision = crate::packed_weights::precision_for(a.compile.precision, p)?;
            crate::weights_file::load(&def, p)?
        }
        None => Weights::random(&def, 0, None)?,
    };
    let job = JobRun { command: "profile", job: a.job, compile: a.compile, tokens: a.tokens, batch: a.batch };
    let (exec, tokens_per_run) = job.run(&def, weights, 1, a.runs)?;
    let stats = exec.profile().unwrap().to_vec();
    print_profile(&def.name, a.job, a.compile.fusion, &stats, &names(&exec), a.runs, tokens_per_run, a.top);
    Ok(())
}

/// A job to run: `profile` times it, `inspect --fusion search` runs it so
/// its kernels search for their ways.
pub(super) struct JobRun {
    /// the command, for errors
    pub command: &'static str,
    pub job: Job,
    pub compile: CompileArgs,
    /// sequence length (prompt length for decode)
    pub tokens: usize,
    /// sequences per run
    pub batch: usize,
}

impl JobRun {
    /// Compile the job and run it `warm_ups` times, then `runs` times
    /// profiled. Returns the executor (with the profile) and the tokens of a run.
    pub fn run(&self, def: &ModelDef, weights: Weights, warm_ups: usize, runs: usize) -> Result<(lumind_compilers::Executor, usize)> {
        let (job, compile) = (self.job, self.compile);
        Ok(match job {
            Job::Forward | Job::Prefill => {
                // prefill: one prompt into an empty KV cache (the generation graph)
                let batch = if job == Job::Prefill { 1 } else { self.batch };
                let mut s = compile.session(def, weights, options(job, self.tokens))?;
                let toks = synthetic_tokens(self.tokens * batch, def.vocab_size, 1);
                for _ in 0..warm_ups {
                    s.run(&toks, batch, 0)?;
                }
                s.exec.enable_profile();
                for _ in 0..runs {
                    let l = s.run(&toks, batch, 0)?;
                    s.recycle(l);
                }
                (s.exec, self.tokens * batch)
            }
            Job::Decode => {
                // --batch sequences decoded together, as `serve --parallel` does
                let (steps, b) = (warm_ups + runs, self.batch);
                let n = self.tokens + steps + 1;
                let mut s = compile.session(def, weights, ForwardOptions::batched(n, b))?;
                let toks = synthetic_tokens(n, def.vocab_size, 1);
                for r in 0..b {
                    s.run_rows(&toks[..self.tokens], r, &[0])?;
                }
                for i in 0..steps {
                    if i == warm_ups {
                        s.exec.enable_profile();
                    }
                    let step = vec![toks[self.tokens + i]; b];
                    let l = s.run_rows(&step, 0, &vec![self.tokens + i; b])?;
                    s.recycle(l);
                }
                (s.exec, b)
            }
            Job::Sft | Job::Lora | Job::Dpo => bail!(
                "`{} --job {job}` is not supported: it runs forward, prefill, decode or train (an SFT step costs what a train step does; \
                 LoRA and DPO need a training config, which it does not read)",
                self.command
            ),
            Job::Train => {
                use crate::train::graph::Update;
                use crate::train::{Batch, TrainCompile, TrainSession};
                // (bf16: mixed precision; TrainSession refuses q8)
                let how = TrainCompile { fusion: compile.fusion, precision: compile.precision.unwrap_or_default() };
                let mut s = TrainSession::on(
                    compile.device(),
                    def,
                    weights,
                    self.tokens,
                    crate::train::graph::Stage::LanguageModel,
                    Update::AdamW(Default::default()),
                    how,
                )?;
                let rows: Vec<(Vec<u32>, Vec<i64>)> = (0..self.batch)
                    .map(|r| {
                        let ids = synthetic_tokens(self.tokens, def.vocab_size, r);
                        let l = ids.iter().map(|&x| x as i64).collect();
                        (ids, l)
                    })
                    .collect();
                let b = Batch::from_labels(&rows);
                for i in 0..warm_ups {
                    s.step(&b, 1e-4, 1 + i as u64, true, 1.0)?;
                }
                s.exec.enable_profile();
                for i in 0..runs {
                    s.step(&b, 1e-4, (1 + warm_ups + i) as u64, true, 1.0)?;
                }
                (s.exec, self.tokens * self.batch)
            }
        })
    }
}

pub(super) fn names(exec: &lumind_compilers::Executor) -> BTreeMap<usize, String> {
    exec.graph().graph.node_indices().map(|n| (n.index(), op_name(exec.graph(), n))).collect()
}

#[allow(clippy::too_many_arguments)]
fn print_profile(
    model: &str,
    job: Job,
    fusion: Fusion,
    stats: &[StepStats],
    names: &BTreeMap<usize, String>,
    runs: usize,
    tokens: usize,
    top: usize,
) {
    let total: f64 = stats.iter().map(|s| s.time.as_secs_f64()).sum();
    let per_run = total / runs as f64;
    println!(
        "{model} / {job} / fusion {fusion}: {} kernels, {:.2} ms per run ({:.0} tokens/s)\n",
        stats.len(),
        per_run * 1e3,
        tokens as f64 / per_run
    );
    let line = |name: &str, calls: u64, t: f64, flops: f64, bytes: f64| {
        println!(
            "{:<44} {:>6} {:>10.3} {:>6.1}% {:>9.1} {:>8.1}",
            name,
            calls,
            t * 1e3 / runs as f64,
            100.0 * t / total,
            flops / t / 1e9,
            bytes / t / 1e9
        );
    };
    println!("{:<44} {:>6} {:>10} {:>7} {:>9} {:>8}", "kernel (by type)", "calls", "ms/run", "share", "GFLOP/s", "GB/s");
    let mut by: BTreeMap<String, (u64, f64, f64, f64)> = BTreeMap::new();
    for s in stats {
        let e = by.entry(s.kernel.split('(').next().unwrap().to_string()).or_default();
        e.0 += s.calls;
        e.1 += s.time.as_secs_f64();
        e.2 += s.cost.flops;
        e.3 += s.cost.bytes;
    }
    let mut by: Vec<_> = by.into_iter().collect();
    by.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    for (k, (c, t, f, b)) in &by {
        line(k, *c / runs as u64, *t, *f, *b);
    }
    println!("\n{:<44} {:>6} {:>10} {:>7} {:>9} {:>8}", "slowest nodes", "calls", "ms/run", "share", "GFLOP/s", "GB/s");
    let mut v: Vec<&StepStats> = stats.iter().collect();
    v.sort_by_key(|s| std::cmp::Reverse(s.time));
    for s in v.into_iter().take(top) {
        let name = format!("#{} {}", s.node.index(), names.get(&s.node.index()).map_or(s.kernel.as_str(), |n| n.as_str()));
        line(&name, s.calls / runs as u64, s.time.as_secs_f64(), s.cost.flops, s.cost.bytes);
    }
}
