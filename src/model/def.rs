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

use super::rope::{self, RopeScaling};

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

/// The `type` of a `[rope_scaling]` table.
#[derive(strum::EnumString)]
#[strum(serialize_all = "lowercase")]
enum RopeKind {
    Linear,
    Yarn,
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
    /// The rotary `cos` and `sin` tables for `positions` positions.
    pub fn rope_tables(&self, positions: usize) -> (Vec<f32>, Vec<f32>) {
        rope::tables(self.head_dim, self.rope_theta, &self.rope_scaling, positions)
    }

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

/// Upper bounds of the sizes a definition may give.
const MAX_VOCAB: usize = 1 << 24;
const MAX_WIDTH: usize = 1 << 16;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_POSITIONS: usize = 1 << 22;
const MAX_EXPERTS: usize = 1024;

/// A real number that must be finite and in `(lo, hi]`.
fn real(key: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if !(v.is_finite() && v > lo && v <= hi) {
        bail!("`{key}` must be a finite number in ({lo:e}, {hi:e}], got {v}");
    }
    Ok(())
}

impl RawModelDef {
    fn validate(self) -> Result<ModelDef> {
        // (bounds far above any MiniMind model, so that every size and count
        // derived from them fits in 64 bits)
        for (key, v, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS),
        ] {
            if v == 0 || v > max {
                bail!("`{key}` must be between 1 and {max}, got {v}");
            }
        }
        for (key, v) in
            [("num_key_value_heads", self.num_key_value_heads), ("head_dim", self.head_dim), ("intermediate_size", self.intermediate_size)]
        {
            if let Some(v) = v.filter(|&v| v > MAX_WIDTH * 16) {
                bail!("`{key}` must be at most {}, got {v}", MAX_WIDTH * 16);
            }
        }
        let heads = self.num_attention_heads;
        let kv = self.num_key_value_heads.unwrap_or(heads);
        if kv == 0 || !heads.is_multiple_of(kv) {
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
                if !self.hidden_size.is_multiple_of(heads) {
                    bail!("`hidden_size` ({}) is not divisible by `num_attention_heads` ({heads}); set `head_dim`", self.hidden_size);
                }
                self.hidden_size / heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            bail!("`head_dim` ({head_dim}) must be even and at least 2 for rotary embeddings");
        }
        let intermediate_size = match (self.intermediate_size, self.intermediate_rule) {
            (Some(_), Some(_)) => {
                bail!("give either `intermediate_size` or `intermediate_rule`, not both")
            }
            (Some(0), None) => bail!("`intermediate_size` must be at least 1"),
            (Some(n), None) => n,
            (None, rule) => rule.unwrap_or(FfnRule::Minimind2).width(self.hidden_size),
        };
        real("rms_norm_eps", self.rms_norm_eps, 0.0, 1.0)?;
        // (theta <= 1 makes every frequency at least 1 radian per position)
        real("rope_theta", self.rope_theta, 1.0, 1e12)?;
        real("initializer_range", self.initializer_range, 0.0, 10.0)?;
        let rope_scaling = match self.rope_scaling {
            None => RopeScaling::None,
            Some(r) => {
                // (a factor below 1 would squeeze positions instead of stretching them)
                if !(r.factor.is_finite() && (1.0..=1e6).contains(&r.factor)) {
                    bail!("`rope_scaling.factor` must be a finite number in [1, 1e6], got {}", r.factor);
                }
                for (k, v) in [("beta_fast", r.beta_fast), ("beta_slow", r.beta_slow), ("attention_factor", r.attention_factor)] {
                    if let Some(v) = v {
                        real(&format!("rope_scaling.{k}"), v, 0.0, 1e6)?;
                    }
                }
                if let Some(o) = r.original_max_position_embeddings.filter(|&o| o > MAX_POSITIONS) {
                    bail!("`rope_scaling.original_max_position_embeddings` must be at most {MAX_POSITIONS}, got {o}");
                }
                let kind =
                    r.kind.parse().map_err(|_| anyhow::anyhow!("`rope_scaling.type` is `{}`; expected `linear` or `yarn`", r.kind))?;
                match kind {
                    RopeKind::Linear => {
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
                    RopeKind::Yarn => {
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
                }
            }
        };
        let moe = match self.moe {
            None => None,
            Some(m) => {
                if m.n_routed_experts == 0 || m.n_routed_experts > MAX_EXPERTS {
                    bail!("`moe.n_routed_experts` must be between 1 and {MAX_EXPERTS}, got {}", m.n_routed_experts);
                }
                if m.n_shared_experts > MAX_EXPERTS {
                    bail!("`moe.n_shared_experts` must be at most {MAX_EXPERTS}, got {}", m.n_shared_experts);
                }
                if !(m.aux_loss_alpha.is_finite() && m.aux_loss_alpha >= 0.0) {
                    bail!("`moe.aux_loss_alpha` must be a finite number at least 0, got {}", m.aux_loss_alpha);
                }
                if let Some(n) = m.moe_intermediate_size.filter(|&n| n > MAX_WIDTH * 16) {
                    bail!("`moe.moe_intermediate_size` must be at most {}, got {n}", MAX_WIDTH * 16);
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
                    if n == 0 || n > MAX_WIDTH * 16 {
                        bail!("`layer[{i}].intermediate_size` must be between 1 and {}, got {n}", MAX_WIDTH * 16);
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
        let def = ModelDef {
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
        };
        let (freqs, scale) = rope::inv_freq(def.head_dim, def.rope_theta, &def.rope_scaling);
        if !(freqs.iter().all(|f| f.is_finite() && *f > 0.0) && scale.is_finite() && scale > 0.0) {
            bail!("`rope_theta` and `rope_scaling` give rotary frequencies that are not finite positive numbers");
        }
        Ok(def)
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
        // sizes that would overflow or exhaust memory, and values that are not finite
        let with = |k: &str, v: &str| {
            let text = BASE
                .lines()
                .map(|l| if l.starts_with(&format!("{k} =")) { format!("{k} = {v}") } else { l.to_string() })
                .collect::<Vec<_>>();
            let mut text = text.join("\n");
            if !text.contains(&format!("{k} =")) {
                text.push_str(&format!("\n{k} = {v}\n"));
            }
            format!("{:#}", ModelDef::parse(&text).unwrap_err())
        };
        assert!(with("vocab_size", "1099511627776").contains("`vocab_size` must be between 1 and"));
        assert!(with("num_hidden_layers", "100000000").contains("`num_hidden_layers` must be between 1 and 1024"));
        assert!(with("rope_theta", "1e-300").contains("`rope_theta` must be a finite number"));
        assert!(with("rms_norm_eps", "inf").contains("`rms_norm_eps`"));
        assert!(with("initializer_range", "inf").contains("`initializer_range`"));
        assert!(with("rope_theta", "nan").contains("`rope_theta`"));
        assert!(err("qk_norm = true\nhead_dim = 0").contains("`head_dim` (0) must be even and at least 2"));
        let yarn = "[rope_scaling]\ntype = \"yarn\"\nfactor = 2.0\noriginal_max_position_embeddings = 64\nattention_factor = nan";
        assert!(err(yarn).contains("`rope_scaling.attention_factor`"), "{}", err(yarn));
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
