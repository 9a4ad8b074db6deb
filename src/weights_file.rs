//! Weights from whichever file holds them: safetensors (any float type) or
//! GGUF (F32, F16, BF16, Q8_0, Q4_0), both read into f32 for `def`.

use std::path::Path;

use anyhow::{Context, Result};

use crate::model::{ModelDef, Weights};

pub fn load(def: &ModelDef, path: &Path) -> Result<Weights> {
    if crate::gguf::is_gguf(path) {
        let g = crate::gguf::read(path)?;
        crate::gguf::model::weights_for(def, &g).with_context(|| format!("{}", path.display()))
    } else {
        Weights::load(def, path)
    }
}
