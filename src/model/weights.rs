//! Model weights: safetensors files with Hugging Face parameter names,
//! checked against the definition (missing, unexpected and mis-shaped
//! tensors are errors that name the tensor and both shapes).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use lumind_compilers::kernels::{packed, q8};
use lumind_compilers::DType;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::def::{InitScheme, ModelDef};
use super::params::{param_specs, ParamInit};
use crate::rng::Rng;

/// A tensor as a file holds it: its shape and its values, row-major.
pub type Tensor = (Vec<usize>, Vec<f32>);

/// Tensors by name, each with its shape and f32 data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tensors(pub BTreeMap<String, Tensor>);

impl Tensors {
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        self.0.insert(name.into(), (shape, data));
    }

    pub fn get(&self, name: &str) -> Option<&(Vec<usize>, Vec<f32>)> {
        self.0.get(name)
    }

    /// Read every tensor of a safetensors file as f32 (f16, bf16 and f64 are
    /// converted).
    pub fn load(path: &Path) -> Result<Tensors> {
        let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
        // (the file's bytes, then as much again or twice as much in f32)
        super::memory::check_fits(&format!("reading {}", path.display()), 3 * size)?;
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Tensors::from_bytes(&bytes).with_context(|| format!("{}", path.display()))
    }

    /// Every tensor of a safetensors file's bytes, as f32 (Q8_0 tensors of
    /// `lumind quantize` included).
    pub fn from_bytes(bytes: &[u8]) -> Result<Tensors> {
        let st = SafeTensors::deserialize(bytes).context("not a safetensors file")?;
        let (_, header) = SafeTensors::read_metadata(bytes).context("not a safetensors file")?;
        let meta = header.metadata().clone().unwrap_or_default();
        let mut out = Tensors::default();
        for (name, view) in st.tensors() {
            let (shape, data) = match q8_tensor(&name, &view, &meta)? {
                Some(t) => t,
                None => (view.shape().to_vec(), to_f32(&view).with_context(|| format!("tensor `{name}`"))?),
            };
            out.insert(name, shape, data);
        }
        Ok(out)
    }

    /// Write all tensors as f32, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, &self.to_bytes(HashMap::new())?)
    }

    /// Write with extra header metadata (string pairs), atomically.
    pub fn save_with_metadata(&self, path: &Path, meta: HashMap<String, String>) -> Result<()> {
        crate::io::write_atomic(path, &self.to_bytes(meta)?)
    }

    /// Read a file's header metadata.
    pub fn load_metadata(path: &Path) -> Result<HashMap<String, String>> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).with_context(|| format!("{} is not a safetensors file", path.display()))?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    pub fn to_bytes(&self, mut meta: HashMap<String, String>) -> Result<Vec<u8>> {
        let raw: Vec<(&String, Vec<u8>, &Vec<usize>)> =
            self.0.iter().map(|(n, (s, d))| (n, d.iter().flat_map(|v| v.to_le_bytes()).collect(), s)).collect();
        let views: Vec<(&str, TensorView)> = raw
            .iter()
            .map(|(n, b, s)| Ok((n.as_str(), TensorView::new(Dtype::F32, s.to_vec(), b)?)))
            .collect::<Result<_, safetensors::SafeTensorError>>()?;
        meta.insert("format".into(), "pt".into());
        Ok(safetensors::serialize(views, Some(meta))?)
    }
}

/// The header key holding the shape of a Q8_0 tensor (`lumind quantize`
/// stores one as a `U8` tensor of its blocks' bytes).
pub fn q8_shape_key(name: &str) -> String {
    format!("lumind.shape.{name}")
}

/// A Q8_0 tensor's values and shape, from its header entry; `None` for a
/// tensor stored any other way.
fn q8_tensor(name: &str, view: &TensorView, meta: &HashMap<String, String>) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
    let Some(shape) = meta.get(&q8_shape_key(name)) else { return Ok(None) };
    let shape: Vec<usize> = shape
        .split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("tensor `{name}`: its shape `{shape}` in the header is not a list of sizes"))?;
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let want = numel.filter(|&n| packed::fits(DType::Q8_0, n)).map(|n| packed::bytes_for(DType::Q8_0, n));
    if view.dtype() != Dtype::U8 || Some(view.data().len()) != want {
        bail!(
            "tensor `{name}`: Q8_0 blocks of shape {shape:?} take {} bytes of U8, but it holds {} bytes of {:?}",
            want.map_or("no whole number of".into(), |w| w.to_string()),
            view.data().len(),
            view.dtype()
        );
    }
    Ok(Some((shape, q8::dequantize(view.data()))))
}

fn to_f32(v: &TensorView) -> Result<Vec<f32>> {
    let b = v.data();
    Ok(match v.dtype() {
        Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        other => bail!("dtype {other:?} is not a float type lumind reads"),
    })
}

/// The weights of one model, complete and checked against its definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights(pub Tensors);

impl Weights {
    /// Load and check a safetensors file for `def`.
    pub fn load(def: &ModelDef, path: &Path) -> Result<Weights> {
        let t = Tensors::load(path)?;
        Weights::check(def, t).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Check a set of tensors against the definition: every parameter
    /// present with its shape, nothing else. A tied model may also carry an
    /// `lm_head.weight` equal to the embedding (MiniMind's own state dicts do).
    pub fn check(def: &ModelDef, mut t: Tensors) -> Result<Weights> {
        let specs = param_specs(def);
        if def.tie_word_embeddings {
            if let Some((_, head)) = t.0.remove("lm_head.weight") {
                match t.get("model.embed_tokens.weight") {
                    Some((_, emb)) if *emb == head => {}
                    _ => bail!("tensor `lm_head.weight` differs from `model.embed_tokens.weight`, but model `{}` ties them", def.name),
                }
            }
        }
        for s in &specs {
            match t.get(&s.name) {
                None => bail!("missing tensor `{}` (shape {:?}) for model `{}`", s.name, s.shape, def.name),
                Some((shape, _)) if *shape != s.shape => {
                    bail!("tensor `{}` has shape {:?} but model `{}` needs {:?}", s.name, shape, def.name, s.shape)
                }
                _ => {}
            }
        }
        if let Some(extra) = t.0.keys().find(|k| !specs.iter().any(|s| &s.name == *k)) {
            bail!("unexpected tensor `{extra}` (shape {:?}): model `{}` has no such parameter", t.0[extra].0, def.name);
        }
        for (name, (_, data)) in &t.0 {
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                bail!("tensor `{name}` holds {} at element {i}: the weights are damaged (or training diverged)", data[i]);
            }
        }
        Ok(Weights(t))
    }

    /// [`Self::init`], refused with an error when the weights would not fit
    /// in this machine's memory (what commands call on a user's definition).
    pub fn random(def: &ModelDef, seed: u64, std: Option<f32>) -> Result<Weights> {
        super::memory::check_fits(&format!("the weights of model `{}`", def.name), super::memory::weight_bytes(def))?;
        Ok(Weights::init(def, seed, std))
    }

    /// Seeded random weights following the definition's `init` scheme.
    /// `std` overrides it with N(0, std) for every matrix (tests use 0.2 so
    /// greedy decoding changes token every step).
    pub fn init(def: &ModelDef, seed: u64, std: Option<f32>) -> Weights {
        let mut t = Tensors::default();
        for s in param_specs(def) {
            let mut rng = Rng::for_name(seed, &s.name);
            let n = s.numel();
            let data: Vec<f32> = match (s.init, std, def.init) {
                (ParamInit::Ones, _, _) => vec![1.0; n],
                (_, Some(std), _) => (0..n).map(|_| rng.normal() * std).collect(),
                (_, None, InitScheme::Normal) => (0..n).map(|_| rng.normal() * def.initializer_range as f32).collect(),
                (ParamInit::Linear { fan_in }, None, InitScheme::Pytorch) => {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    (0..n).map(|_| rng.uniform(-bound, bound)).collect()
                }
                (ParamInit::Embedding, None, InitScheme::Pytorch) => (0..n).map(|_| rng.normal()).collect(),
            };
            t.insert(s.name, s.shape, data);
        }
        Weights(t)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.0.save(path)
    }

    /// Take the tensors out by name (to move them into an executor).
    pub fn into_map(self) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        self.0 .0
    }
}
