//! Self-contained executables: a copy of the `lumind` binary with the model
//! definition, weights and tokenizer appended. At start-up the binary looks
//! at its own end; when a bundle is there, `chat` and `serve` use it and need
//! no other files.
//!
//! Layout after the executable: a JSON manifest, the weights
//! (safetensors), then a 32-byte trailer: `LUMBNDL1`, the manifest length,
//! the weights length and the offset where the payload starts.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"LUMBNDL1";

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

/// Write `exe` + payload to `out` (made executable).
pub fn write(exe: &Path, manifest: &Manifest, weights: &[u8], out: &Path) -> Result<()> {
    let mut bytes = std::fs::read(exe).with_context(|| format!("cannot read {}", exe.display()))?;
    if let Some(end) = payload_start(&bytes) {
        bytes.truncate(end); // bundling a bundle: replace its payload
    }
    let start = bytes.len() as u64;
    let m = serde_json::to_vec(manifest)?;
    bytes.extend_from_slice(&m);
    bytes.extend_from_slice(weights);
    bytes.extend_from_slice(MAGIC);
    for v in [m.len() as u64, weights.len() as u64, start] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::io::write_atomic(out, &bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn trailer(bytes: &[u8]) -> Option<(u64, u64, u64)> {
    if bytes.len() < 32 || &bytes[bytes.len() - 32..bytes.len() - 24] != MAGIC {
        return None;
    }
    let n = |i: usize| u64::from_le_bytes(bytes[bytes.len() - 24 + 8 * i..][..8].try_into().unwrap());
    Some((n(0), n(1), n(2)))
}

fn payload_start(bytes: &[u8]) -> Option<usize> {
    trailer(bytes).map(|(_, _, s)| s as usize)
}

/// The bundle appended to the running executable, if any.
pub fn current() -> Result<Option<Bundle>> {
    let exe = std::env::current_exe()?;
    let mut f = std::fs::File::open(&exe)?;
    let len = f.metadata()?.len();
    if len < 32 {
        return Ok(None);
    }
    let mut t = [0u8; 32];
    f.seek(SeekFrom::End(-32))?;
    f.read_exact(&mut t)?;
    let Some((mlen, wlen, start)) = trailer(&t) else { return Ok(None) };
    if start + mlen + wlen + 32 != len {
        bail!("{}: the bundled payload is damaged", exe.display());
    }
    f.seek(SeekFrom::Start(start))?;
    let mut m = vec![0u8; mlen as usize];
    f.read_exact(&mut m)?;
    let mut weights = vec![0u8; wlen as usize];
    f.read_exact(&mut weights)?;
    let manifest = serde_json::from_slice(&m).context("the bundled manifest is damaged")?;
    Ok(Some(Bundle { manifest, weights }))
}
