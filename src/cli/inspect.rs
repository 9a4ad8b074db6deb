//! `lumind inspect`: the graph of a job after every compiler pass.

use super::args::CompileArgs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use lumind_compilers::cuda::graph_source;
use lumind_compilers::inspect::{fusion_report, html_report, summary_table, Snapshot};
use lumind_compilers::passes::{fuses_attention, pipeline_for};
use lumind_compilers::{compile, search, Backend, Fusion};

use super::job::{build_job_graph, Job};
use crate::model::{ModelDef, Precision, Weights};
use crate::train::TrainCompile;

#[derive(clap::Args)]
pub struct Args {
    /// Model definition (models/*.toml); not needed with --config
    #[arg(long)]
    model: Option<PathBuf>,
    /// Which graph: forward (whole sequence), prefill or decode (the
    /// generation graph, with a KV cache: one graph for both), train
    /// (forward, loss, backward, AdamW), or a stage of a training config:
    /// sft, lora, dpo
    #[arg(long, default_value = "forward", value_parser = super::args::one_of::<Job>("job"))]
    job: Job,
    /// Training config (configs/*.toml): its model and stage settings
    #[arg(long)]
    config: Option<PathBuf>,
    /// (the device decides the pipeline shown: cuda and emulated leave the
    /// gated MLP to cuBLAS)
    #[command(flatten)]
    compile: CompileArgs,
    /// Output directory: NN-pass.dot, NN-pass.json (egraph-serialize),
    /// summary.txt, report.html, and kernels.cu (the CUDA C that
    /// `--device cuda` compiles for this job)
    #[arg(long)]
    out: PathBuf,
    /// With `--fusion search`: the sequence length the job runs at (random
    /// weights) while its kernels search for their ways, which are then
    /// listed per kernel
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    /// A training job as one rank of a data-parallel run of this many
    /// (`mpirun -np N lumind train`): shows its AllReduce node
    #[arg(long, default_value_t = 1)]
    ranks: usize,
}

pub fn run(a: Args) -> Result<()> {
    let (def, stage, trained_in) = match (&a.config, &a.model) {
        (Some(c), _) => {
            let cfg = crate::train::config::TrainConfig::load(c)?;
            (ModelDef::load(&cfg.model)?, Some(cfg.stage()), cfg.precision)
        }
        (None, Some(m)) => (ModelDef::load(m)?, None, Precision::Fp32),
        (None, None) => anyhow::bail!("give --model or --config"),
    };
    if matches!(a.job, Job::Lora | Job::Dpo)
        && !matches!(stage, Some(crate::train::graph::Stage::Lora(_)) | Some(crate::train::graph::Stage::Dpo { .. }))
    {
        anyhow::bail!("--job {} needs --config with that stage", a.job);
    }
    let (mut built, about) = build_job_graph(&def, a.job, stage.clone(), fuses_attention(a.compile.fusion, a.compile.device()), a.ranks)?;
    let mut snaps = vec![Snapshot::take("built", &built.graph, None)];
    // a training job's passes end with its precision's (bf16: Bf16Products)
    let passes = if matches!(a.job, Job::Train | Job::Sft | Job::Lora | Job::Dpo) {
        let how = TrainCompile { fusion: a.compile.fusion, precision: a.compile.precision.unwrap_or(trained_in) };
        how.passes(a.compile.device())?
    } else {
        pipeline_for(a.compile.fusion, a.compile.device())
    };
    compile(&mut built, &passes, |pass, g| {
        let s = Snapshot::take(pass, g, snaps.last());
        snaps.push(s);
    });
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    for (i, s) in snaps.iter().enumerate() {
        let stem = a.out.join(format!("{i:02}-{}", s.pass));
        std::fs::write(stem.with_extension("dot"), s.dot())?;
        s.egraph().to_json_file(stem.with_extension("json"))?;
    }
    let title = format!("{} / {} / fusion {} / device {}", def.name, a.job, a.compile.fusion, a.compile.device());
    let summary = format!("{title}\n{about}\n\n{}\n{}", summary_table(&snaps), fusion_report(&snaps));
    std::fs::write(a.out.join("summary.txt"), &summary)?;
    std::fs::write(a.out.join("report.html"), html_report(&format!("{title}\n{about}"), &snaps))?;
    // kernels.cu is what `--device cuda` compiles: for the CPU, build the
    // job again as the CUDA backend does (its attention in primops, its own
    // pipeline; the CPU's attention kernels and row routines have no CUDA C)
    if a.compile.device() == Backend::Cpu {
        (built, _) = build_job_graph(&def, a.job, stage, false, a.ranks)?;
        compile(&mut built, &pipeline_for(a.compile.fusion, Backend::Cuda), |_, _| {});
    }
    std::fs::write(a.out.join("kernels.cu"), graph_source(built)?)?;
    if !about.is_empty() {
        println!("{about}\n");
    }
    print!("{}", summary_table(&snaps));
    if a.compile.fusion == Fusion::Search && matches!(a.job, Job::Sft | Job::Lora | Job::Dpo) {
        println!("\n(search: the ways are listed for --job forward, prefill, decode and train; a stage's products are a train step's)");
    } else if a.compile.fusion == Fusion::Search && a.compile.device() == Backend::Cpu {
        let report = search_report(&def, a.job, a.compile, a.tokens)?;
        print!("\n{report}");
        let mut text = std::fs::read_to_string(a.out.join("summary.txt"))?;
        text.push('\n');
        text.push_str(&report);
        std::fs::write(a.out.join("summary.txt"), text)?;
    }
    eprintln!("wrote {} passes (DOT, egraph JSON), summary.txt, report.html and kernels.cu to {}", snaps.len(), a.out.display());
    Ok(())
}

/// Run the job (random weights) until its kernels have found their ways
/// (`--fusion search`), then list, per kernel, the way chosen and what
/// every way measured.
fn search_report(def: &ModelDef, job: Job, compile: super::args::CompileArgs, tokens: usize) -> Result<String> {
    let run = super::profile::JobRun { command: "inspect --fusion search", job, compile, tokens, batch: 1 };
    let t = std::time::Instant::now();
    let (mut exec, _) = run.run(def, Weights::random(def, 0, None)?, 1, 0)?;
    while search::global().pending() > 0 && t.elapsed() < crate::bench::SEARCH_LIMIT {
        exec = run.run(def, Weights::random(def, 0, None)?, 1, 0)?.0;
    }
    let names = super::profile::names(&exec);
    let tuner = search::global();
    let mut out = format!(
        "search: the way each kernel runs ({} threads, {} tokens; {:.1} s to run the job until every way was chosen, {} calls timed; cache {})\n",
        rayon::current_num_threads(),
        tokens,
        t.elapsed().as_secs_f64(),
        tuner.measured_calls,
        tuner.file().map_or("in memory only".into(), |f| f.display().to_string())
    );
    for (node, key) in tuner.consulted() {
        let name = names.get(node).map_or("?", |n| n.as_str());
        let Some(c) = tuner.choice(key) else {
            out.push_str(&format!("#{node} {name} ({key}): still searching\n"));
            continue;
        };
        let mut others: Vec<(&String, &f64)> = c.measured_us.iter().filter(|(w, _)| **w != c.chosen).collect();
        others.sort_by(|x, y| x.1.total_cmp(y.1));
        let others: Vec<String> = others.iter().map(|(w, us)| format!("{w} {us:.1}")).collect();
        out.push_str(&format!(
            "#{node} {key}: {} {:.1} us; others (us): {}\n",
            c.chosen,
            c.measured_us.get(&c.chosen).copied().unwrap_or(f64::NAN),
            others.join(", ")
        ));
    }
    Ok(out)
}
