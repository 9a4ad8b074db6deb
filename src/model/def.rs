//! Declarative model definitions: `models/*.toml` parsed with serde into a
//! validated [`ModelDef`].
//!
//! Keys follow Hugging Face's `config.json` names (`hidden_size`,
//! `num_key_value_heads`, ...) so a definition reads like the config it
//! exports to. Everything is checked before any graph is built; an error names
//! the file, the key and the reason.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// How the FFN width is derived when `intermediate_size` is not given.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FfnRule {
    /// MiniMind2: `64 * ceil(int(8h/3) / 64)` (512 -> 1408, 640 -> 1728).
    Minimind2,
    /// minimind-3: `ceil(h*pi / 64) * 64` (512 -> 1664, 768 -> 2432).
    Minimind3,
}

impl FfnRule {
    pub fn width(self, hidden: usize) -> usize {
        match self {
            FfnRule::Minimind2 => 64 * (hidden * 8 / 3).div_ceil(64),
            FfnRule::Minimind3 => ((hidden as f64 * std::f64::consts::PI) / 64.0).ceil() as usize * 64,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FfnKind {
    Swiglu,
    Moe,
}

/// How weights are drawn by `lumind init`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InitScheme {
    /// PyTorch's defaults, as MiniMind2 leaves them: Linear weights
    /// U(-1/sqrt(in), 1/sqrt(in)); an untied embedding N(0, 1); norms 1.
    Pytorch,
    /// Hugging Face's `_init_weights` (minimind-3): N(0, initializer_range)
    /// for every matrix; norms 1.
    Normal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRopeScaling {
    #[serde(rename = "type")]
    kind: String,
    factor: f64,
    original_max_position_embeddings: Option<usize>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    attention_factor: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMoe {
    n_routed_experts: usize,
    #[serde(default)]
    n_shared_experts: usize,
    num_experts_per_tok: usize,
    #[serde(default = "yes")]
    norm_topk_prob: bool,
    #[serde(default = "default_aux_alpha")]
    aux_loss_alpha: f64,
    #[serde(default = "yes")]
    seq_aux: bool,
    /// expert width; defaults to the model's FFN width
    moe_intermediate_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayerOverride {
    layers: Vec<usize>,
    ffn: Option<FfnKind>,
    intermediate_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelDef {
    name: String,
    #[serde(default)]
    description: String,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    intermediate_size: Option<usize>,
    intermediate_rule: Option<FfnRule>,
    rms_norm_eps: f64,
    rope_theta: f64,
    rope_scaling: Option<RawRopeScaling>,
    max_position_embeddings: usize,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    #[serde(default)]
    qk_norm: bool,
    #[serde(default = "default_ffn")]
    ffn: FfnKind,
    moe: Option<RawMoe>,
    #[serde(default = "default_init")]
    init: InitScheme,
    #[serde(default = "default_init_std")]
    initializer_range: f64,
    #[serde(default)]
    layer: Vec<RawLayerOverride>,
}

fn yes() -> bool {
    true
}
fn default_aux_alpha() -> f64 {
    0.01
}
fn default_ffn() -> FfnKind {
    FfnKind::Swiglu
}
fn default_init() -> InitScheme {
    InitScheme::Pytorch
}
fn default_init_std() -> f64 {
    0.02
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (inverse frequencies too): runs a model
    /// past its training length.
    Linear {
        factor: f64,
    },
    /// YaRN as in transformers: frequencies blended between interpolation and
    /// extrapolation by a ramp; cos/sin scaled by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct MoeDef {
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    /// Renormalise the top-k weights to sum to 1 (for any k).
    pub norm_topk_prob: bool,
    pub aux_loss_alpha: f64,
    pub seq_aux: bool,
    pub expert_size: usize,
}

/// The FFN of one layer.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerFfn {
    Swiglu { intermediate_size: usize },
    Moe(MoeDef),
}

/// A validated model definition.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDef {
    pub name: String,
    pub description: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub qk_norm: bool,
    pub init: InitScheme,
    pub initializer_range: f64,
    /// The MoE settings, if any layer is MoE.
    pub moe: Option<MoeDef>,
    pub layers: Vec<LayerFfn>,
}

impl ModelDef {
    /// Read and validate a definition file.
    pub fn load(path: impl AsRef<Path>) -> Result<ModelDef> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read model definition {}", path.display()))?;
        ModelDef::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    /// Parse and validate definition text.
    pub fn parse(text: &str) -> Result<ModelDef> {
        let raw: RawModelDef = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        raw.validate()
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// The transformers architecture this model matches.
    pub fn architecture(&self) -> &'static str {
        if self.qk_norm {
            "Qwen3ForCausalLM"
        } else {
            "LlamaForCausalLM"
        }
    }

    pub fn is_moe(&self) -> bool {
        self.layers.iter().any(|l| matches!(l, LayerFfn::Moe(_)))
    }
}

impl RawModelDef {
    fn validate(self) -> Result<ModelDef> {
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                bail!("`{key}` must be at least 1");
            }
        }
        let heads = self.num_attention_heads;
        let kv = self.num_key_value_heads.unwrap_or(heads);
        if kv == 0 || heads % kv != 0 {
            bail!("`num_attention_heads` ({heads}) is not divisible by `num_key_value_heads` ({kv})");
        }
        let head_dim = match self.head_dim {
            Some(hd) => {
                if !self.qk_norm && hd * heads != self.hidden_size {
                    bail!(
                        "`head_dim` ({hd}) x `num_attention_heads` ({heads}) = {} but `hidden_size` is {}; \
                         Llama/MiniMind2-style models (qk_norm = false) need head_dim = hidden_size / num_attention_heads",
                        hd * heads,
                        self.hidden_size
                    );
                }
                hd
            }
            None => {
                if self.hidden_size % heads != 0 {
                    bail!("`hidden_size` ({}) is not divisible by `num_attention_heads` ({heads}); set `head_dim`", self.hidden_size);
                }
                self.hidden_size / heads
            }
        };
        if head_dim % 2 != 0 {
            bail!("`head_dim` ({head_dim}) must be even for rotary embeddings");
        }
        let intermediate_size = match (self.intermediate_size, self.intermediate_rule) {
            (Some(_), Some(_)) => {
                bail!("give either `intermediate_size` or `intermediate_rule`, not both")
            }
            (Some(0), None) => bail!("`intermediate_size` must be at least 1"),
            (Some(n), None) => n,
            (None, rule) => rule.unwrap_or(FfnRule::Minimind2).width(self.hidden_size),
        };
        if !(self.rms_norm_eps > 0.0) {
            bail!("`rms_norm_eps` must be positive, got {}", self.rms_norm_eps);
        }
        if !(self.rope_theta > 0.0) {
            bail!("`rope_theta` must be positive, got {}", self.rope_theta);
        }
        if !(self.initializer_range > 0.0) {
            bail!("`initializer_range` must be positive, got {}", self.initializer_range);
        }
        let rope_scaling = match self.rope_scaling {
            None => RopeScaling::None,
            Some(r) => {
                if !(r.factor > 0.0) {
                    bail!("`rope_scaling.factor` must be positive, got {}", r.factor);
                }
                match r.kind.as_str() {
                    "linear" => {
                        for (k, set) in [
                            ("original_max_position_embeddings", r.original_max_position_embeddings.is_some()),
                            ("beta_fast", r.beta_fast.is_some()),
                            ("beta_slow", r.beta_slow.is_some()),
                            ("attention_factor", r.attention_factor.is_some()),
                        ] {
                            if set {
                                bail!("`rope_scaling.{k}` only applies to `type = \"yarn\"`");
                            }
                        }
                        RopeScaling::Linear { factor: r.factor }
                    }
                    "yarn" => {
                        let orig = r
                            .original_max_position_embeddings
                            .context("`rope_scaling.original_max_position_embeddings` is required for `type = \"yarn\"`")?;
                        let (beta_fast, beta_slow) = (r.beta_fast.unwrap_or(32.0), r.beta_slow.unwrap_or(1.0));
                        if orig == 0 || !(beta_fast > beta_slow) {
                            bail!("`rope_scaling` needs original_max_position_embeddings > 0 and beta_fast > beta_slow");
                        }
                        // transformers' default: 0.1 ln(factor) + 1
                        let attention_factor = r.attention_factor.unwrap_or(if r.factor <= 1.0 { 1.0 } else { 0.1 * r.factor.ln() + 1.0 });
                        RopeScaling::Yarn {
                            factor: r.factor,
                            original_max_position_embeddings: orig,
                            beta_fast,
                            beta_slow,
                            attention_factor,
                        }
                    }
                    other => bail!("`rope_scaling.type` is `{other}`; expected `linear` or `yarn`"),
                }
            }
        };
        let moe = match self.moe {
            None => None,
            Some(m) => {
                if m.n_routed_experts == 0 {
                    bail!("`moe.n_routed_experts` must be at least 1");
                }
                if m.num_experts_per_tok == 0 || m.num_experts_per_tok > m.n_routed_experts {
                    bail!(
                        "`moe.num_experts_per_tok` ({}) must be between 1 and `moe.n_routed_experts` ({})",
                        m.num_experts_per_tok,
                        m.n_routed_experts
                    );
                }
                if m.moe_intermediate_size == Some(0) {
                    bail!("`moe.moe_intermediate_size` must be at least 1");
                }
                Some(MoeDef {
                    n_routed_experts: m.n_routed_experts,
                    n_shared_experts: m.n_shared_experts,
                    num_experts_per_tok: m.num_experts_per_tok,
                    norm_topk_prob: m.norm_topk_prob,
                    aux_loss_alpha: m.aux_loss_alpha,
                    seq_aux: m.seq_aux,
                    expert_size: m.moe_intermediate_size.unwrap_or(intermediate_size),
                })
            }
        };
        let mut kinds = vec![(self.ffn, intermediate_size); self.num_hidden_layers];
        for (i, o) in self.layer.iter().enumerate() {
            if o.layers.is_empty() {
                bail!("`layer[{i}].layers` is empty");
            }
            for &l in &o.layers {
                if l >= self.num_hidden_layers {
                    bail!("`layer[{i}].layers` names layer {l} but the model has {} layers", self.num_hidden_layers);
                }
                if let Some(k) = o.ffn {
                    kinds[l].0 = k;
                }
                if let Some(n) = o.intermediate_size {
                    if n == 0 {
                        bail!("`layer[{i}].intermediate_size` must be at least 1");
                    }
                    kinds[l].1 = n;
                }
            }
        }
        let any_moe = kinds.iter().any(|k| k.0 == FfnKind::Moe);
        if any_moe && moe.is_none() {
            bail!("a layer uses `ffn = \"moe\"` but there is no `[moe]` table");
        }
        if !any_moe && moe.is_some() {
            bail!("`[moe]` is given but no layer uses `ffn = \"moe\"`");
        }
        let layers = kinds
            .into_iter()
            .map(|(k, size)| match k {
                FfnKind::Swiglu => LayerFfn::Swiglu { intermediate_size: size },
                FfnKind::Moe => LayerFfn::Moe(moe.clone().unwrap()),
            })
            .collect();
        Ok(ModelDef {
            name: self.name,
            description: self.description,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            intermediate_size,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            qk_norm: self.qk_norm,
            init: self.init,
            initializer_range: self.initializer_range,
            moe,
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "t"
vocab_size = 128
hidden_size = 64
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
rms_norm_eps = 1e-5
rope_theta = 1e6
max_position_embeddings = 256
"#;

    fn err(extra: &str) -> String {
        format!("{:#}", ModelDef::parse(&format!("{BASE}{extra}")).unwrap_err())
    }

    #[test]
    fn ffn_rules() {
        assert_eq!(FfnRule::Minimind2.width(512), 1408);
        assert_eq!(FfnRule::Minimind2.width(640), 1728);
        assert_eq!(FfnRule::Minimind2.width(768), 2048);
        assert_eq!(FfnRule::Minimind3.width(512), 1664);
        assert_eq!(FfnRule::Minimind3.width(768), 2432);
        let m = ModelDef::parse(BASE).unwrap();
        assert_eq!((m.head_dim, m.intermediate_size, m.num_key_value_heads), (16, 192, 2));
    }

    #[test]
    fn bad_definitions_name_the_key() {
        assert!(err("bogus = 1").contains("unknown field `bogus`"), "{}", err("bogus = 1"));
        assert!(err("qk_norm = \"yes\"").contains("qk_norm"));
        let e = format!("{:#}", ModelDef::parse(&BASE.replace("num_key_value_heads = 2", "num_key_value_heads = 3")).unwrap_err());
        assert!(e.contains("`num_attention_heads` (4) is not divisible by `num_key_value_heads` (3)"), "{e}");
        assert!(err("head_dim = 32").contains("`head_dim` (32) x `num_attention_heads` (4) = 128"));
        let moe = "ffn = \"moe\"\n[moe]\nn_routed_experts = 2\nnum_experts_per_tok = 3\n";
        assert!(err(moe).contains("`moe.num_experts_per_tok` (3) must be between 1 and `moe.n_routed_experts` (2)"));
        assert!(err("ffn = \"moe\"").contains("no `[moe]` table"));
        assert!(err("[[layer]]\nlayers = [5]\nffn = \"moe\"").contains("`layer[0].layers` names layer 5"));
        assert!(err("[rope_scaling]\ntype = \"ntk\"\nfactor = 2.0").contains("`rope_scaling.type` is `ntk`"));
        assert!(err("intermediate_size = 96\nintermediate_rule = \"minimind3\"").contains("either"));
    }

    #[test]
    fn per_layer_overrides() {
        let m = ModelDef::parse(&format!(
            "{BASE}[moe]\nn_routed_experts = 4\nn_shared_experts = 1\nnum_experts_per_tok = 2\n[[layer]]\nlayers = [1]\nffn = \"moe\"\n"
        ))
        .unwrap();
        assert!(matches!(m.layers[0], LayerFfn::Swiglu { intermediate_size: 192 }));
        assert!(matches!(&m.layers[1], LayerFfn::Moe(d) if d.n_routed_experts == 4 && d.expert_size == 192));
    }
}
