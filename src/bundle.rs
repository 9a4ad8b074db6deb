//! Self-contained executables: a copy of the `lumind` binary with the model
//! definition, weights and tokenizer appended. At start-up the binary looks
//! at its own end; when a bundle is there, `chat` and `serve` use it and need
//! no other files.
//!
//! Layout after the executable: a JSON manifest, the weights
//! (safetensors), then a 40-byte trailer: `LUMBNDL2`, the manifest length,
//! the weights length, the offset where the payload starts and a checksum of
//! the payload (all little-endian u64). Every part is checked when bundling,
//! and the lengths and the checksum at start-up, so a damaged bundle says so.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::weights::Tensors;
use crate::model::{ModelDef, Weights};
use crate::tokenizer::Tokenizer;

const MAGIC: &[u8; 8] = b"LUMBNDL2";
const TRAILER: u64 = 40;
/// The first layout (32-byte trailer, no checksum): only recognised, so
/// that bundling such a bundle replaces its payload.
const MAGIC_V1: &[u8; 8] = b"LUMBNDL1";

#[derive(Serialize, Deserialize)]
pub struct Manifest {
    pub model_toml: String,
    pub tokenizer_json: String,
    pub tokenizer_config: String,
}

pub struct Bundle {
    pub manifest: Manifest,
    pub weights: Vec<u8>,
}

impl Manifest {
    /// The definition and tokenizer it carries, each checked.
    pub fn parts(&self) -> Result<(ModelDef, Tokenizer)> {
        let def = ModelDef::parse(&self.model_toml).context("the bundled model definition")?;
        let inner = tokenizers::Tokenizer::from_bytes(self.tokenizer_json.as_bytes())
            .map_err(|e| anyhow::anyhow!("the bundled tokenizer.json is not a tokenizer: {e}"))?;
        let cfg: serde_json::Value = serde_json::from_str(&self.tokenizer_config).context("the bundled tokenizer_config.json")?;
        let tok = Tokenizer::from_parts(inner, cfg).context("the bundled tokenizer")?;
        if tok.vocab_size() > def.vocab_size {
            bail!("the bundled tokenizer has {} tokens but model `{}` only {} (vocab_size)", tok.vocab_size(), def.name, def.vocab_size);
        }
        Ok((def, tok))
    }
}

impl Bundle {
    /// Everything the bundle carries, checked against each other.
    pub fn open(&self) -> Result<(ModelDef, Weights, Tokenizer)> {
        let (def, tok) = self.manifest.parts()?;
        let t = Tensors::from_bytes(&self.weights).context("the bundled weights")?;
        let w = Weights::check(&def, t).context("the bundled weights")?;
        Ok((def, w, tok))
    }

    /// The precision its weights were packed in (`lumind quantize`), which
    /// the bundled commands run at unless told otherwise.
    pub fn precision(&self) -> Result<Option<crate::model::Precision>> {
        crate::packed_weights::precision_in(&self.weights).context("the bundled weights")
    }
}

/// FNV-1a over 8-byte words: cheap, and any flipped byte changes it.
fn checksum(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        let words = p.chunks_exact(8);
        let tail = words.remainder();
        for w in words {
            h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x0000_0100_0000_01b3);
        }
        for &b in tail {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h = (h ^ p.len() as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Write `exe` + payload to `out` (made executable), after checking that
/// the bundle would run: the definition parses, the tokenizer loads and
/// fits its vocabulary, the weights are the model's.
pub fn write(exe: &Path, manifest: &Manifest, weights: &[u8], out: &Path) -> Result<()> {
    let (def, _) = manifest.parts()?;
    Weights::check(&def, Tensors::from_bytes(weights).context("the weights to bundle")?).context("the weights to bundle")?;
    let mut bytes = std::fs::read(exe).with_context(|| format!("cannot read {}", exe.display()))?;
    if let Some(end) = payload_start(&bytes) {
        bytes.truncate(end); // bundling a bundle: replace its payload
    }
    let start = bytes.len() as u64;
    let m = serde_json::to_vec(manifest)?;
    bytes.extend_from_slice(&m);
    bytes.extend_from_slice(weights);
    bytes.extend_from_slice(MAGIC);
    for v in [m.len() as u64, weights.len() as u64, start, checksum(&[&m, weights])] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::io::write_atomic(out, &bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", out.display()))?;
    }
    Ok(())
}

/// The trailer ending at `end` of `bytes`: (manifest length, weights
/// length, payload start, checksum), if its lengths add up to `end`.
fn trailer_at(bytes: &[u8], end: usize, file_end: u64) -> Option<(u64, u64, u64, u64)> {
    let t = bytes.get(end.checked_sub(TRAILER as usize)?..end)?;
    if &t[..8] != MAGIC {
        return None;
    }
    let n = |i: usize| u64::from_le_bytes(t[8 + 8 * i..][..8].try_into().unwrap());
    let (m, w, start, sum) = (n(0), n(1), n(2), n(3));
    let total = start.checked_add(m)?.checked_add(w)?.checked_add(TRAILER)?;
    (total == file_end).then_some((m, w, start, sum))
}

fn payload_start(bytes: &[u8]) -> Option<usize> {
    let len = bytes.len() as u64;
    if let Some((_, _, start, _)) = trailer_at(bytes, bytes.len(), len) {
        return Some(start as usize);
    }
    // a bundle of the first layout
    let t = bytes.get(bytes.len().checked_sub(32)?..)?;
    let n = |i: usize| u64::from_le_bytes(t[8 + 8 * i..][..8].try_into().unwrap());
    let total = n(2).checked_add(n(0))?.checked_add(n(1))?.checked_add(32)?;
    (&t[..8] == MAGIC_V1 && total == len).then_some(n(2) as usize)
}

/// The bundle appended to the running executable, if any.
pub fn current() -> Result<Option<Bundle>> {
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    read(&exe)
}

/// The bundle appended to the executable `exe`, if any.
pub fn read(exe: &Path) -> Result<Option<Bundle>> {
    let mut f = std::fs::File::open(exe).with_context(|| format!("cannot read {}", exe.display()))?;
    let len = f.metadata().with_context(|| format!("cannot read {}", exe.display()))?.len();
    // the end of the file: the trailer, or one a few bytes before it
    let tail_len = len.min(1 << 20);
    let mut tail = vec![0u8; tail_len as usize];
    f.seek(SeekFrom::End(-(tail_len as i64)))
        .and_then(|_| f.read_exact(&mut tail))
        .with_context(|| format!("cannot read {}", exe.display()))?;
    let Some((mlen, wlen, start, sum)) = trailer_at(&tail, tail.len(), len) else {
        if tail.len() >= TRAILER as usize && &tail[tail.len() - TRAILER as usize..][..8] == MAGIC {
            bail!("{}: the bundle is damaged: the lengths in its trailer do not add up to the file", exe.display());
        }
        // (a trailer that would end earlier: bytes were added after the bundle)
        let base = len - tail_len;
        let found = (TRAILER as usize..tail.len()).rev().find(|&end| trailer_at(&tail, end, base + end as u64).is_some());
        if let Some(end) = found {
            bail!("{}: the bundle is damaged: {} bytes were added after its end", exe.display(), tail.len() - end);
        }
        return Ok(None);
    };
    crate::model::memory::check_fits(&format!("the bundle of {}", exe.display()), mlen + wlen)?;
    f.seek(SeekFrom::Start(start)).with_context(|| format!("cannot read {}", exe.display()))?;
    let mut m = vec![0u8; mlen as usize];
    let mut weights = vec![0u8; wlen as usize];
    f.read_exact(&mut m).and_then(|_| f.read_exact(&mut weights)).with_context(|| format!("cannot read {}", exe.display()))?;
    if checksum(&[&m, &weights]) != sum {
        bail!("{}: the bundle is damaged: its payload does not match its checksum (the file changed after bundling)", exe.display());
    }
    let manifest = serde_json::from_slice(&m).with_context(|| format!("{}: the bundled manifest is damaged", exe.display()))?;
    Ok(Some(Bundle { manifest, weights }))
}
