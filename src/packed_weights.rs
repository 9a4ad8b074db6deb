//! Weights files with their matrices stored packed (`lumind quantize`):
//! safetensors whose rank-2 tensors are bf16 (safetensors' own `BF16`, so
//! other tools read them) or GGUF's Q8_0 blocks (a `U8` tensor of the
//! blocks' bytes, its shape in the header). The header's `lumind.precision`
//! says which, and every command reads such a file: the values come back
//! exactly as the packed type holds them, and a session at that precision
//! packs them again to the same bits.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use lumind_compilers::kernels::packed;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::model::weights::q8_shape_key;
use crate::model::{ModelDef, Precision, Weights};

/// The header key naming the file's precision.
pub const PRECISION_KEY: &str = "lumind.precision";

/// Whether `quantize` packs a tensor: a matrix (the norms, vectors, stay
/// f32) that the type can hold.
fn packs(shape: &[usize], precision: Precision) -> bool {
    let numel = shape.iter().product();
    shape.len() == 2 && precision.weight_dtype().is_some_and(|d| packed::fits(d, numel))
}

/// `weights` as a safetensors file at `precision` (bf16 or q8).
pub fn to_bytes(weights: &Weights, precision: Precision) -> Result<Vec<u8>> {
    let Some(dtype) = precision.weight_dtype() else { bail!("quantize writes bf16 or q8, not {precision}") };
    let mut meta = HashMap::from([(PRECISION_KEY.to_string(), precision.to_string()), ("format".into(), "pt".into())]);
    let mut raw = vec![];
    for (name, (shape, data)) in &weights.0 .0 {
        if !packs(shape, precision) {
            raw.push((name.as_str(), Dtype::F32, shape.clone(), data.iter().flat_map(|v| v.to_le_bytes()).collect()));
        } else if precision == Precision::Bf16 {
            raw.push((name.as_str(), Dtype::BF16, shape.clone(), packed::pack(dtype, data)));
        } else {
            let bytes = packed::pack(dtype, data);
            meta.insert(q8_shape_key(name), shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","));
            raw.push((name.as_str(), Dtype::U8, vec![bytes.len()], bytes));
        }
    }
    let views: Vec<(&str, TensorView)> =
        raw.iter().map(|(n, t, s, b)| Ok((*n, TensorView::new(*t, s.clone(), b)?))).collect::<Result<_, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, Some(meta))?)
}

/// The precision a weights file was quantized to (`None`: f32 or
/// whatever other tools wrote).
pub fn stored_precision(path: &Path) -> Result<Option<Precision>> {
    if crate::gguf::is_gguf(path) {
        return Ok(None);
    }
    // (the header only: its length, then its JSON)
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        return Ok(None);
    }
    let len = u64::from_le_bytes(len);
    let mut header = vec![];
    f.take(len.min(100 << 20)).read_to_end(&mut header)?;
    precision_in_header(&header).with_context(|| format!("{}", path.display()))
}

/// The precision a command runs `path` at: the one `asked` for, else the
/// one the file was packed in (`None`: fp32).
pub fn precision_for(asked: Option<Precision>, path: &Path) -> Result<Option<Precision>> {
    match asked {
        Some(p) => Ok(Some(p)),
        None => stored_precision(path),
    }
}

/// [`stored_precision`] of a safetensors file's bytes.
pub fn precision_in(bytes: &[u8]) -> Result<Option<Precision>> {
    let Some(len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize) else { return Ok(None) };
    precision_in_header(bytes.get(8..8usize.saturating_add(len)).unwrap_or_default())
}

/// The precision a safetensors header (its JSON) names, if any.
fn precision_in_header(header: &[u8]) -> Result<Option<Precision>> {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(header) else { return Ok(None) };
    let Some(p) = json.get("__metadata__").and_then(|m| m.get(PRECISION_KEY)) else { return Ok(None) };
    let p = p.as_str().unwrap_or_default();
    let known = p.parse::<Precision>();
    Ok(Some(known.map_err(|_| anyhow::anyhow!("`{PRECISION_KEY}` is `{p}`, not a precision lumind knows"))?))
}

/// Write `weights` of `def` quantized to `precision`, atomically; returns
/// how many tensors were packed.
pub fn write(def: &ModelDef, weights: &Weights, precision: Precision, path: &Path) -> Result<usize> {
    let n = weights.0 .0.values().filter(|(s, _)| packs(s, precision)).count();
    if n == 0 {
        bail!("model `{}` has no matrix that {precision} can hold", def.name);
    }
    crate::io::write_atomic(path, &to_bytes(weights, precision)?)?;
    Ok(n)
}
