//! `lumind export`, `lumind import`, `lumind bundle`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::args::ModelArgs;
use crate::bundle::{write, Manifest};
use crate::export::{export, import};
use crate::model::params::{count_params, human};
use crate::tokenizer::{DEFAULT_TOKENIZER_CONFIG, DEFAULT_TOKENIZER_JSON};

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokenizer directory to ship (default: the built-in MiniMind tokenizer)
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Output directory
    #[arg(long)]
    out: PathBuf,
}

pub fn run_export(a: ExportArgs) -> Result<()> {
    let (def, w) = a.model.load()?;
    export(&def, &w, a.tokenizer.as_deref(), &a.out)?;
    eprintln!("exported `{}` ({}) to {}", def.name, def.architecture(), a.out.display());
    Ok(())
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// A transformers directory (config.json + model.safetensors)
    #[arg(long)]
    from: PathBuf,
    /// The model definition to write (.toml)
    #[arg(long)]
    out_model: PathBuf,
    /// The weights to write (.safetensors)
    #[arg(long)]
    out_weights: PathBuf,
    /// Model name in the definition (default: the directory's name)
    #[arg(long)]
    name: Option<String>,
}

pub fn run_import(a: ImportArgs) -> Result<()> {
    let name = a.name.unwrap_or_else(|| {
        a.from.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or("imported".into())
    });
    let (toml, def, w) = import(&a.from, &name)?;
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

pub fn run_bundle(a: BundleArgs) -> Result<()> {
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
    write(&std::env::current_exe()?, &manifest, &w.0.to_bytes(Default::default())?, &a.out)?;
    eprintln!("wrote {} (`{}`): run `{} chat` or `{} serve`", a.out.display(), def.name, a.out.display(), a.out.display());
    Ok(())
}
