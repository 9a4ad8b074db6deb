//! The graphs a job runs, shared by `inspect`, `profile` and `bench`.

use std::fmt;
use std::str::FromStr;

use anyhow::Result;
use lumind_compilers::optim::AdamWConfig;
use lumind_compilers::tensor::BuiltGraph;
use lumind_compilers::GraphBuilder;

use crate::model::builder::{declare_inputs, forward, ForwardOptions};
use crate::model::ModelDef;
use crate::train::graph::{build, Stage, Update};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Forward,
    Decode,
    Train,
}

impl FromStr for Job {
    type Err = String;
    fn from_str(s: &str) -> Result<Job, String> {
        match s {
            "forward" => Ok(Job::Forward),
            "decode" => Ok(Job::Decode),
            "train" => Ok(Job::Train),
            _ => Err(format!("unknown job `{s}` (expected forward, decode or train)")),
        }
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Job::Forward => "forward",
            Job::Decode => "decode",
            Job::Train => "train",
        })
    }
}

/// Positions the inspected graphs are built for (RoPE rows, cache size).
pub const POSITIONS: usize = 256;

pub fn options(job: Job, positions: usize) -> ForwardOptions {
    match job {
        Job::Decode => ForwardOptions::generation(positions),
        _ => ForwardOptions::full(positions),
    }
}

/// The uncompiled graph of a job.
pub fn build_job_graph(def: &ModelDef, job: Job) -> Result<BuiltGraph> {
    match job {
        Job::Train => Ok(build(def, POSITIONS, &Stage::LanguageModel, &Update::AdamW(AdamWConfig::default()))?.graph),
        _ => {
            let b = GraphBuilder::new();
            let inputs = declare_inputs(&b, def);
            let out = forward(&b, def, &inputs, &options(job, POSITIONS));
            b.output("logits", &out.logits);
            Ok(b.finish()?)
        }
    }
}
