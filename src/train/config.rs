//! Training job configs (`configs/*.toml`). Paths are relative to the
//! directory `lumind train` runs in.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::jsonl::OnBadLine;
use crate::data::pretrain::PadTo;
use crate::model::def::ModelDef;

/// Which training stage a config runs.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StageName {
    /// next-token prediction on `{"text": ...}` lines
    #[default]
    Pretrain,
    /// supervised fine-tuning on `{"conversations": [...]}` (assistant tokens scored)
    Sft,
    /// LoRA adapters trained on conversations, base weights frozen
    Lora,
    /// preference alignment on `{"chosen": [...], "rejected": [...]}`
    Dpo,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default)]
    pub stage: StageName,
    /// model definition (models/*.toml)
    pub model: PathBuf,
    /// start from these weights instead of a random init
    pub weights: Option<PathBuf>,
    /// tokenizer directory (default: the built-in MiniMind tokenizer)
    pub tokenizer: Option<PathBuf>,
    /// run directory: checkpoints, metrics, plots
    pub out: PathBuf,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub fusion: lumind_compilers::Fusion,
    /// what the matrix products multiply in: `fp32`, or `bf16` (mixed
    /// precision on the CPU: products in bf16 where it has AVX512-BF16;
    /// weights, gradients, optimizer state and checkpoints stay f32; left
    /// out when fp32, so fp32 runs keep the fingerprint they had before it)
    #[serde(default, skip_serializing_if = "is_fp32")]
    pub precision: crate::model::Precision,
    pub data: DataConfig,
    pub optim: OptimConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub sft: SftConfig,
    pub lora: Option<crate::lora::LoraConfig>,
    #[serde(default)]
    pub dpo: DpoConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// score every assistant reply (`all`) or only the last one (`last`)
    #[serde(default)]
    pub loss_on: crate::data::chat::LossOn,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DpoConfig {
    #[serde(default = "default_beta")]
    pub beta: f32,
    /// the frozen reference's weights (default: `weights`, the starting policy)
    pub reference: Option<PathBuf>,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig { beta: default_beta(), reference: None }
    }
}

fn default_beta() -> f32 {
    0.1
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub train: PathBuf,
    pub max_seq_len: usize,
    #[serde(default)]
    pub pad_to: PadTo,
    #[serde(default)]
    pub on_bad_line: OnBadLine,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub learning_rate: f32,
    pub batch_size: usize,
    #[serde(default = "one")]
    pub accumulation_steps: usize,
    #[serde(default = "one")]
    pub epochs: usize,
    /// stop after this many optimizer steps (default: all epochs)
    pub max_steps: Option<usize>,
    /// linear warmup over this many optimizer steps, then MiniMind's cosine
    #[serde(default)]
    pub warmup_steps: usize,
    /// global gradient-norm clip (0: none)
    #[serde(default = "default_clip")]
    pub grad_clip: f32,
    #[serde(default = "default_wd")]
    pub weight_decay: f32,
    /// what a step's loss is the mean over (left out when `tokens`)
    #[serde(default, skip_serializing_if = "LossMean::is_tokens")]
    pub loss_mean: LossMean,
}

/// What the loss of one optimizer step averages over, when it spans several
/// micro-batches (`accumulation_steps`) or ranks.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossMean {
    /// every scored unit of the whole step (label tokens; DPO: pairs) weighs
    /// the same, so a step of k micro-batches over N ranks equals one batch
    /// of k x N x `batch_size` rows
    #[default]
    Tokens,
    /// each micro-batch's own mean, averaged over micro-batches and ranks,
    /// as MiniMind (`loss / accumulation_steps`) and PyTorch DDP do: a row
    /// weighs more in a micro-batch with fewer scored tokens
    MicroBatches,
}

impl LossMean {
    fn is_tokens(&self) -> bool {
        *self == LossMean::Tokens
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// optimizer steps between checkpoints
    #[serde(default = "default_every")]
    pub every: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { every: default_every() }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// optimizer steps between metrics lines
    #[serde(default = "one")]
    pub every: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { every: 1 }
    }
}

pub(crate) fn one() -> usize {
    1
}
fn default_seed() -> u64 {
    42
}
fn default_clip() -> f32 {
    1.0
}
fn default_wd() -> f32 {
    0.01
}
fn is_fp32(p: &crate::model::Precision) -> bool {
    *p == crate::model::Precision::Fp32
}

fn default_every() -> usize {
    100
}

impl TrainConfig {
    pub fn load(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        TrainConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    /// Parse and validate config text.
    pub fn parse(text: &str) -> Result<TrainConfig> {
        let c: TrainConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        c.validate()?;
        Ok(c)
    }

    /// Check every field on its own: whole numbers at least 1 and not
    /// absurdly large, real numbers finite and in range. What depends on
    /// the model or the data is checked by [`Self::check_against`].
    pub fn validate(&self) -> Result<()> {
        let o = &self.optim;
        let count = |key: &str, v: usize, max: usize| -> Result<()> {
            if v == 0 || v > max {
                bail!("`{key}` must be between 1 and {max}, got {v}");
            }
            Ok(())
        };
        let real = |key: &str, v: f32, lo: f32, hi: f32, lo_open: bool| -> Result<()> {
            let above = if lo_open { v > lo } else { v >= lo };
            if !(v.is_finite() && above && v <= hi) {
                let open = if lo_open { "(" } else { "[" };
                bail!("`{key}` must be a finite number in {open}{lo}, {hi}], got {v}");
            }
            Ok(())
        };
        count("optim.batch_size", o.batch_size, 1 << 16)?;
        count("optim.accumulation_steps", o.accumulation_steps, 1 << 20)?;
        count("optim.epochs", o.epochs, 1 << 20)?;
        if let Some(m) = o.max_steps {
            count("optim.max_steps", m, 1 << 40)?;
        }
        if o.warmup_steps > 1 << 40 {
            bail!("`optim.warmup_steps` must be at most {}, got {}", 1u64 << 40, o.warmup_steps);
        }
        real("optim.learning_rate", o.learning_rate, 0.0, f32::MAX, true)?;
        // (0: no clipping)
        real("optim.grad_clip", o.grad_clip, 0.0, f32::MAX, false)?;
        real("optim.weight_decay", o.weight_decay, 0.0, 1.0, false)?;
        if self.data.max_seq_len < 2 || self.data.max_seq_len > 1 << 20 {
            bail!("`data.max_seq_len` must be between 2 and {}, got {}", 1 << 20, self.data.max_seq_len);
        }
        count("checkpoint.every", self.checkpoint.every, 1 << 40)?;
        count("log.every", self.log.every, 1 << 40)?;
        if matches!(self.stage, StageName::Lora | StageName::Dpo) && self.weights.is_none() {
            bail!("stage `{:?}` starts from trained weights: set `weights`", self.stage);
        }
        if self.stage != StageName::Lora && self.lora.is_some() {
            bail!("a `[lora]` table is only used with `stage = \"lora\"`");
        }
        if let Some(l) = &self.lora {
            count("lora.rank", l.rank, 1 << 16)?;
            if let Some(a) = l.alpha {
                if !(a.is_finite() && a > 0.0) {
                    bail!("`lora.alpha` must be a finite number above 0, got {a}");
                }
            }
        }
        real("dpo.beta", self.dpo.beta, 0.0, 1e4, true)?;
        Ok(())
    }

    /// Check what depends on the model and the data: the sequence length
    /// against the model's context, the memory a step needs against the
    /// machine's, and the accumulation against the batches there are.
    /// `ranks`: the processes of a data-parallel run, each taking
    /// `batch_size` rows of every micro-step.
    pub fn check_against(&self, def: &ModelDef, records: usize, ranks: usize) -> Result<()> {
        let (seq, o) = (self.data.max_seq_len, &self.optim);
        if seq > def.max_position_embeddings {
            bail!(
                "`data.max_seq_len` ({seq}) exceeds the context of model `{}` ({} positions, max_position_embeddings)",
                def.name,
                def.max_position_embeddings
            );
        }
        // DPO runs two rows (chosen, rejected) through two models per pair
        let rows = if self.stage == StageName::Dpo { 4 } else { 1 } * o.batch_size;
        let need = crate::model::memory::step_bytes(def, rows, seq);
        if let Some(have) = crate::model::memory::physical_memory() {
            if need > have {
                bail!(
                    "a step of {} x {seq} tokens needs about {:.1} GB of memory for model `{}`, more than this machine's {:.1} GB: \
                     lower `optim.batch_size` or `data.max_seq_len` (and raise `optim.accumulation_steps`)",
                    o.batch_size,
                    need as f64 / 1e9,
                    def.name,
                    have as f64 / 1e9
                );
            }
        }
        let batches = (records.div_ceil(o.batch_size * ranks) as u64).saturating_mul(o.epochs as u64);
        if o.accumulation_steps as u64 > batches {
            let of = if ranks > 1 { format!(" x {ranks} ranks") } else { String::new() };
            bail!(
                "`optim.accumulation_steps` ({}) exceeds the {batches} batches of the whole run ({records} records in batches of {}{of}, {} epochs): \
                 no optimizer step would ever complete",
                o.accumulation_steps,
                o.batch_size,
                o.epochs
            );
        }
        Ok(())
    }

    /// The graph transform this config trains with.
    pub fn stage(&self) -> crate::train::graph::Stage {
        use crate::train::graph::Stage;
        match self.stage {
            StageName::Pretrain | StageName::Sft => Stage::LanguageModel,
            StageName::Lora => Stage::Lora(self.lora.clone().unwrap_or_default()),
            StageName::Dpo => Stage::Dpo { beta: self.dpo.beta },
        }
    }

    /// What must not change between a checkpoint and its resumption for
    /// the loss trajectory to continue exactly (everything but the step limit).
    pub fn fingerprint(&self) -> String {
        let mut c = self.clone();
        c.optim.max_steps = None;
        c.log = LogConfig::default();
        c.checkpoint = CheckpointConfig::default();
        serde_json::to_string(&c).expect("config serialises")
    }
}
