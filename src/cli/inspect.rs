//! `lumind inspect`: the graph of a job after every compiler pass.

use super::args::CompileArgs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use lumind_compilers::cuda::graph_source;
use lumind_compilers::inspect::{fusion_report, html_report, summary_table, Snapshot};
use lumind_compilers::passes::{fuses_attention, pipeline_for};
use lumind_compilers::{compile, Backend};

use super::job::{build_job_graph, Job};
use crate::model::ModelDef;

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
}

pub fn run(a: Args) -> Result<()> {
    let (def, stage) = match (&a.config, &a.model) {
        (Some(c), _) => {
            let cfg = crate::train::config::TrainConfig::load(c)?;
            (ModelDef::load(&cfg.model)?, Some(cfg.stage()))
        }
        (None, Some(m)) => (ModelDef::load(m)?, None),
        (None, None) => anyhow::bail!("give --model or --config"),
    };
    if matches!(a.job, Job::Lora | Job::Dpo)
        && !matches!(stage, Some(crate::train::graph::Stage::Lora(_)) | Some(crate::train::graph::Stage::Dpo { .. }))
    {
        anyhow::bail!("--job {} needs --config with that stage", a.job);
    }
    let (mut built, about) = build_job_graph(&def, a.job, stage.clone(), fuses_attention(a.compile.fusion, a.compile.device()))?;
    let mut snaps = vec![Snapshot::take("built", &built.graph, None)];
    compile(&mut built, &pipeline_for(a.compile.fusion, a.compile.device()), |pass, g| {
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
        (built, _) = build_job_graph(&def, a.job, stage, false)?;
        compile(&mut built, &pipeline_for(a.compile.fusion, Backend::Cuda), |_, _| {});
    }
    std::fs::write(a.out.join("kernels.cu"), graph_source(built)?)?;
    if !about.is_empty() {
        println!("{about}\n");
    }
    print!("{}", summary_table(&snaps));
    eprintln!("wrote {} passes (DOT, egraph JSON), summary.txt, report.html and kernels.cu to {}", snaps.len(), a.out.display());
    Ok(())
}
