//! GGUF, llama.cpp's model file: the container ([`file`]), its tensor types
//! ([`tensor_type`]), a tokenizer as its metadata ([`vocab`]), and a dense
//! model as llama.cpp's `llama` or `qwen3` architecture ([`model`]).

pub mod file;
pub mod model;
pub mod tensor_type;
pub mod vocab;

use std::path::Path;

use anyhow::{Context, Result};

pub use file::Gguf;
pub use model::{from_gguf, to_gguf, Imported, OutType};

/// Whether `path` is a GGUF file (by its first bytes).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

/// Read and parse a GGUF file.
pub fn read(path: &Path) -> Result<Gguf> {
    let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    // (the file, then its tensors as f32: up to eight times a Q4_0 file)
    crate::model::memory::check_fits(&format!("reading {}", path.display()), 9 * size)?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Gguf::from_bytes(&bytes).with_context(|| format!("{}", path.display()))
}

/// Write a GGUF file atomically.
pub fn write(g: &Gguf, path: &Path) -> Result<()> {
    crate::io::write_atomic(path, &g.to_bytes()?)
}
