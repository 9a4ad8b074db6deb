//! Training job configs (`configs/*.toml`). Paths are relative to the
//! directory `lumind train` runs in.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::jsonl::OnBadLine;
use crate::data::pretrain::PadTo;

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
    #[serde(default = "default_fusion")]
    pub fusion: String,
    pub data: DataConfig,
    pub optim: OptimConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub sft: SftConfig,
    pub lora: Option<crate::train::graph::LoraConfig>,
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
    #[serde(default = "default_clip")]
    pub grad_clip: f32,
    #[serde(default = "default_wd")]
    pub weight_decay: f32,
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

fn one() -> usize {
    1
}
fn default_seed() -> u64 {
    42
}
fn default_fusion() -> String {
    "full".into()
}
fn default_clip() -> f32 {
    1.0
}
fn default_wd() -> f32 {
    0.01
}
fn default_every() -> usize {
    100
}

impl TrainConfig {
    pub fn load(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let c: TrainConfig = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        c.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let o = &self.optim;
        if o.batch_size == 0 || o.accumulation_steps == 0 || o.epochs == 0 {
            bail!("`optim.batch_size`, `optim.accumulation_steps` and `optim.epochs` must be at least 1");
        }
        if o.max_steps == Some(0) {
            bail!("`optim.max_steps` must be at least 1");
        }
        if !(o.learning_rate > 0.0 && o.learning_rate.is_finite()) {
            bail!("`optim.learning_rate` must be positive, got {}", o.learning_rate);
        }
        if self.data.max_seq_len < 2 {
            bail!("`data.max_seq_len` must be at least 2");
        }
        if self.checkpoint.every == 0 || self.log.every == 0 {
            bail!("`checkpoint.every` and `log.every` must be at least 1");
        }
        self.fusion.parse::<lumind_compilers::Fusion>().map_err(|e| anyhow::anyhow!("`fusion`: {e}"))?;
        if matches!(self.stage, StageName::Lora | StageName::Dpo) && self.weights.is_none() {
            bail!("stage `{:?}` starts from trained weights: set `weights`", self.stage);
        }
        if self.stage != StageName::Lora && self.lora.is_some() {
            bail!("a `[lora]` table is only used with `stage = \"lora\"`");
        }
        if let Some(l) = &self.lora {
            if l.rank == 0 {
                bail!("`lora.rank` must be at least 1");
            }
        }
        if !(self.dpo.beta > 0.0) {
            bail!("`dpo.beta` must be positive");
        }
        Ok(())
    }

    /// The graph transform this config trains with.
    pub fn stage(&self) -> crate::train::graph::Stage {
        use crate::train::graph::Stage;
        match self.stage {
            StageName::Pretrain | StageName::Sft => Stage::LanguageModel,
            StageName::Lora => {
                Stage::Lora(self.lora.clone().unwrap_or(crate::train::graph::LoraConfig { rank: 8, alpha: None, targets: vec![] }))
            }
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
