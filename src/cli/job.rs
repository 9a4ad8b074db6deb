//! The graphs a job runs, shared by `inspect`, `profile` and `bench`.

use anyhow::Result;
use lumind_compilers::collective::ThreadRanks;
use lumind_compilers::optim::AdamWConfig;
use lumind_compilers::tensor::BuiltGraph;
use lumind_compilers::GraphBuilder;

use crate::graph_io::output;
use crate::model::builder::{declare_inputs, forward, ForwardOptions};
use crate::model::ModelDef;
use crate::train::graph::{build, Stage, Update};

/// A graph `inspect`, `profile` and `bench` can build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::EnumString, strum::Display, strum::VariantNames)]
#[strum(serialize_all = "lowercase")]
pub enum Job {
    Forward,
    Prefill,
    Decode,
    Train,
    Sft,
    Lora,
    Dpo,
}

/// Positions the inspected graphs are built for (RoPE rows, cache size).
pub const POSITIONS: usize = 256;

pub fn options(job: Job, positions: usize) -> ForwardOptions {
    match job {
        Job::Prefill | Job::Decode => ForwardOptions::generation(positions),
        _ => ForwardOptions::full(positions),
    }
}

/// The uncompiled graph of a job (training stages take their settings from
/// `stage`), with a description of what it trains and keeps frozen;
/// `fuse_attention` per `lumind_compilers::passes::fuses_attention`; a
/// training graph for `ranks` > 1 is one rank's of a data-parallel run.
pub fn build_job_graph(def: &ModelDef, job: Job, stage: Option<Stage>, fuse_attention: bool, ranks: usize) -> Result<(BuiltGraph, String)> {
    match job {
        Job::Train | Job::Sft | Job::Lora | Job::Dpo => {
            let stage = stage.unwrap_or(Stage::LanguageModel);
            let update = match ranks {
                0 | 1 => Update::AdamW(AdamWConfig::default()),
                // (a group that is only inspected: nothing calls it)
                n => Update::AllReducedAdamW(AdamWConfig::default(), ThreadRanks::group(n).swap_remove(0)),
            };
            let g = build(def, POSITIONS, &stage, &update, fuse_attention)?;
            let mut d = format!("stage {stage:?}\ntrained: {} tensors", g.trainable.len());
            for (n, s) in g.trainable.iter().take(12) {
                d += &format!("\n  {n} {s:?}");
            }
            if g.trainable.len() > 12 {
                d += &format!("\n  ... and {} more", g.trainable.len() - 12);
            }
            if g.fused_attention > 0 {
                d += &format!("\nbefore autograd: CausalAttentionFusion made {} CausalAttention kernels", g.fused_attention);
            }
            d += &format!("\nfrozen (graph buffers, no gradient, no optimizer state): {} tensors", g.frozen.len());
            for (_, input) in g.frozen.iter().take(4) {
                d += &format!("\n  {input}");
            }
            if ranks > 1 {
                let values: usize = g.trainable.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
                d += &format!(
                    "\ndata-parallel over {ranks} ranks: one AllReduce node sums every gradient in one flat buffer \
                     ({values} values, {:.1} MB) over the ranks, on the runs that apply the AdamW step",
                    values as f64 * 4.0 / 1e6
                );
            }
            if let Stage::Dpo { .. } = stage {
                d += "\npairs: input `pairs` [n, b] holds +1 at each pair's chosen row and -1 at its rejected row; \
                      policy and reference (`ref.*`) read the same tokens";
            }
            Ok((g.graph, d))
        }
        _ => {
            let b = GraphBuilder::new();
            let inputs = declare_inputs(&b, def);
            let out = forward(&b, def, &inputs, &options(job, POSITIONS));
            b.output(output::LOGITS, &out.logits);
            Ok((b.finish()?, String::new()))
        }
    }
}
