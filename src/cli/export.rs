//! `lumind export`, `lumind import`, `lumind bundle`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::args::{one_of, ModelArgs};
use crate::bundle::{write, Manifest};
use crate::export::{export, import};
use crate::gguf::{self, OutType};
use crate::model::params::{count_params, human};
use crate::model::Precision;
use crate::tokenizer::{Tokenizer, DEFAULT_TOKENIZER_CONFIG, DEFAULT_TOKENIZER_JSON};

/// What `lumind export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::EnumString, strum::VariantNames)]
#[strum(serialize_all = "lowercase")]
pub enum Format {
    /// a transformers directory
    Hf,
    /// one llama.cpp file
    Gguf,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokenizer directory to ship (default: the built-in MiniMind tokenizer)
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// What to write: a transformers directory (hf), or one GGUF file that llama.cpp and ollama run (gguf)
    #[arg(long, default_value = "hf", value_parser = one_of::<Format>("format"))]
    format: Format,
    /// The GGUF file's matrix type (norms stay f32)
    #[arg(long, value_parser = one_of::<OutType>("GGUF tensor type"))]
    outtype: Option<OutType>,
    /// Output directory (hf) or file (gguf)
    #[arg(long)]
    out: PathBuf,
}

pub fn run_export(mut a: ExportArgs) -> Result<()> {
    let (def, w) = a.model.load()?;
    match a.format {
        Format::Hf => {
            if a.outtype.is_some() {
                bail!("--outtype is for --format gguf; a transformers export is f32");
            }
            export(&def, &w, a.tokenizer.as_deref(), &a.out)?;
            eprintln!("exported `{}` ({}) to {}", def.name, def.architecture(), a.out.display());
        }
        Format::Gguf => {
            let outtype = a.outtype.unwrap_or(OutType::F32);
            let tok = Tokenizer::load_or_default(a.tokenizer.as_deref())?;
            let g = gguf::to_gguf(&def, &w, &tok, outtype).with_context(|| format!("exporting `{}` to GGUF", def.name))?;
            gguf::write(&g, &a.out)?;
            let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
            eprintln!("exported `{}` to {} (GGUF, {outtype}, {:.1} MB)", def.name, a.out.display(), size as f64 / 1e6);
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// A transformers directory (config.json + model.safetensors), or a GGUF file of a dense llama or qwen3 model
    #[arg(long)]
    from: PathBuf,
    /// The model definition to write (.toml)
    #[arg(long)]
    out_model: PathBuf,
    /// The weights to write (.safetensors)
    #[arg(long)]
    out_weights: PathBuf,
    /// Where to write the tokenizer a GGUF file carries (tokenizer.json, tokenizer_config.json)
    #[arg(long)]
    out_tokenizer: Option<PathBuf>,
    /// Model name in the definition (default: the directory's or file's name)
    #[arg(long)]
    name: Option<String>,
}

pub fn run_import(a: ImportArgs) -> Result<()> {
    let stem =
        || a.from.canonicalize().ok().and_then(|p| p.file_stem().map(|n| n.to_string_lossy().into_owned())).unwrap_or("imported".into());
    let (toml, def, w) = if a.from.is_dir() {
        if a.out_tokenizer.is_some() {
            bail!("--out-tokenizer is for GGUF files; a transformers directory's tokenizer files can be used as they are");
        }
        import(&a.from, &a.name.clone().unwrap_or_else(stem))?
    } else {
        let g = gguf::read(&a.from)?;
        let name = a.name.clone().or_else(|| g.get("general.name").and_then(|v| v.as_str()).map(String::from)).unwrap_or_else(stem);
        let imported = gguf::from_gguf(&g, &name).with_context(|| format!("{}", a.from.display()))?;
        match (&a.out_tokenizer, imported.tokenizer) {
            (Some(dir), Ok((json, config))) => {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                crate::io::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
                crate::io::write_atomic(&dir.join("tokenizer_config.json"), config.as_bytes())?;
                eprintln!("wrote its tokenizer to {}", dir.display());
            }
            (Some(_), Err(e)) => bail!("{}: {e:#}", a.from.display()),
            (None, Ok(_)) => eprintln!("(the file carries a tokenizer: --out-tokenizer DIR writes it)"),
            (None, Err(e)) => eprintln!("(its tokenizer cannot be rebuilt: {e:#})"),
        }
        (imported.toml, imported.def, imported.weights)
    };
    crate::io::write_atomic(&a.out_model, toml.as_bytes())?;
    w.save(&a.out_weights)?;
    eprintln!(
        "imported `{}` ({} parameters): {} + {}",
        def.name,
        human(count_params(&def).total),
        a.out_model.display(),
        a.out_weights.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct BundleArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokenizer directory to carry (default: the built-in MiniMind tokenizer)
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The executable to write
    #[arg(long)]
    out: PathBuf,
}

pub fn run_bundle(mut a: BundleArgs) -> Result<()> {
    let (def, w) = a.model.load()?;
    let (tokenizer_json, tokenizer_config) = match &a.tokenizer {
        Some(d) => (
            std::fs::read_to_string(d.join("tokenizer.json")).with_context(|| format!("reading {}", d.join("tokenizer.json").display()))?,
            std::fs::read_to_string(d.join("tokenizer_config.json")).unwrap_or_else(|_| "{}".into()),
        ),
        None => (String::from_utf8(DEFAULT_TOKENIZER_JSON.to_vec())?, DEFAULT_TOKENIZER_CONFIG.to_string()),
    };
    let model_toml = std::fs::read_to_string(&a.model.model)?;
    let manifest = Manifest { model_toml, tokenizer_json, tokenizer_config };
    // (weights packed as bf16 or q8 stay packed: the bundle runs at that precision)
    let precision = a.model.compile.precision();
    let weights = match precision {
        Precision::Fp32 => w.0.to_bytes(Default::default())?,
        p => crate::packed_weights::to_bytes(&w, p)?,
    };
    write(&std::env::current_exe()?, &manifest, &weights, &a.out)?;
    eprintln!("wrote {} (`{}`, {precision}): run `{} chat` or `{} serve`", a.out.display(), def.name, a.out.display(), a.out.display());
    Ok(())
}
