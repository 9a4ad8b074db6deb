//! Arguments shared by commands.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result};
use clap::builder::{PossibleValue, TypedValueParser};
use clap::Args;
use lumind_compilers::{Backend, Fusion};

use crate::model::builder::ForwardOptions;
use crate::model::{ModelDef, Precision, Weights};
use crate::session::Session;

/// A flag whose values are an enum's names (`what` says what they name):
/// `--help` lists them, and any other value is refused with the list.
#[derive(Clone)]
pub struct OneOf<T> {
    what: &'static str,
    of: std::marker::PhantomData<T>,
}

pub fn one_of<T>(what: &'static str) -> OneOf<T> {
    OneOf { what, of: std::marker::PhantomData }
}

impl<T: FromStr + strum::VariantNames + Clone + Send + Sync + 'static> TypedValueParser for OneOf<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, _: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<T, clap::Error> {
        let s = value.to_string_lossy();
        s.parse().map_err(|_| {
            let names = T::VARIANTS.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ");
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("unknown {} `{s}` (expected one of {names})\n", self.what))
                .with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(T::VARIANTS.iter().map(PossibleValue::new)))
    }
}

/// How and where a command's graph is compiled and run.
#[derive(Args, Clone, Copy, Debug)]
pub struct CompileArgs {
    /// Compiler strategy
    #[arg(long, default_value = "full", value_parser = one_of::<Fusion>("fusion strategy"))]
    pub fusion: Fusion,
    /// How the weights of matrix products are stored: fp32, bf16 (rounded at load; prompts multiply in bf16 where the CPU has AVX512-BF16) or q8 (GGUF's Q8_0, quantized at load); bf16 and q8 run on the CPU, and a training step takes fp32 or bf16 (mixed precision) [default: the weights file's, from `lumind quantize`, else fp32]
    #[arg(long, value_parser = one_of::<Precision>("precision"))]
    pub precision: Option<Precision>,
    #[command(flatten)]
    pub on: DeviceArgs,
}

impl CompileArgs {
    pub fn device(&self) -> Backend {
        self.on.device
    }

    /// The precision asked for, else fp32.
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or_default()
    }

    /// A session of `def` compiled and run as these flags say.
    pub fn session(&self, def: &ModelDef, weights: Weights, opts: ForwardOptions) -> Result<Session> {
        Session::on(self.device(), def, weights, opts.with_precision(self.precision()), self.fusion)
    }

    /// Refuse a precision a training graph does not run in.
    pub fn fp32_only(&self, what: &str) -> Result<()> {
        if let Some(p) = self.precision.filter(|&p| p != Precision::Fp32) {
            anyhow::bail!("{what} runs in fp32: --precision {p} is for inference");
        }
        Ok(())
    }
}

/// Where a command runs.
#[derive(Args, Clone, Copy, Debug)]
pub struct DeviceArgs {
    /// Where to run: cpu, cuda (an NVIDIA GPU) or emulated (the CUDA kernels on the CPU, for checks)
    #[arg(long, default_value = "cpu", value_parser = one_of::<Backend>("device"))]
    pub device: Backend,
}

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model definition (models/*.toml)
    #[arg(long)]
    pub model: PathBuf,
    /// Weights (safetensors, Hugging Face names)
    #[arg(long)]
    pub weights: PathBuf,
    /// A LoRA adapter directory (PEFT layout), folded into the weights
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub compile: CompileArgs,
}

impl ModelArgs {
    /// The definition and weights; a file that `lumind quantize` wrote
    /// sets the precision, unless `--precision` was given.
    pub fn load(&mut self) -> Result<(ModelDef, Weights)> {
        let def = ModelDef::load(&self.model)?;
        let w = crate::weights_file::load(&def, &self.weights)?;
        self.compile.precision = crate::packed_weights::precision_for(self.compile.precision, &self.weights)?;
        let w = match &self.adapter {
            Some(dir) => crate::lora::merge_adapter(&def, w, dir)?,
            None => w,
        };
        Ok((def, w))
    }
}

/// `1,2,3` or `1 2 3`
pub fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().with_context(|| format!("`{t}` in --tokens is not a token id")))
        .collect()
}

/// Sampling flags shared by `chat`.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// 0 = greedy
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all)
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<crate::sampling::SamplingParams> {
        let p = crate::sampling::SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        };
        p.validate().map_err(anyhow::Error::msg)?;
        Ok(p)
    }
}
