//! `lumind serve`: the OpenAI-compatible server and web chat page.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::model_source::ModelSource;
use crate::chat_template::ChatTemplate;
use crate::model::builder::ForwardOptions;
use crate::server::listen::Limits;
use crate::server::worker::Worker;
use crate::server::{serve, App};
use crate::session::Session;
use crate::slots::{Slots, MAX_PARALLEL};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelSource,
    /// Tokenizer directory (default: the built-in MiniMind tokenizer)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Address to listen on (loopback unless told otherwise)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, default_value_t = 8998)]
    pub port: u16,
    /// Context length (tokens); default: the model's, at most 2048
    #[arg(long)]
    pub context: Option<usize>,
    /// Requests decoded together (slots of the KV cache, each of `--context` tokens)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=MAX_PARALLEL as i64))]
    pub parallel: u16,
    /// Requests that may wait for a slot; more get 503
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` on every /v1 request
    #[arg(long, env = "LUMIND_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seconds a connection gets to send a request's head, from when it
    /// opens or its previous response ends (also the keep-alive idle limit)
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds a request gets to send its body
    #[arg(long, default_value_t = 30.0)]
    pub body_timeout: f64,
    /// Seconds requests in flight get to finish after SIGTERM or Ctrl-C
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_grace: f64,
}

pub fn run(a: Args) -> Result<()> {
    let secs = |name: &str, v: f64| {
        if v.is_finite() && v > 0.0 && v <= 86400.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(anyhow::anyhow!("--{name} must be between 0 and 86400 seconds, got {v}"))
        }
    };
    let limits = Limits {
        header: secs("header-timeout", a.header_timeout)?,
        body: secs("body-timeout", a.body_timeout)?,
        grace: secs("shutdown-grace", a.shutdown_grace)?,
    };
    if a.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        anyhow::bail!("--api-key (or LUMIND_API_KEY) is empty");
    }
    let loaded = a.model.load(a.tokenizer.as_deref())?;
    let def = loaded.def.clone();
    let context = a.context.unwrap_or(def.max_position_embeddings.min(2048)).min(def.max_position_embeddings);
    if context < 2 {
        anyhow::bail!("--context must be at least 2 tokens");
    }
    let tok = Arc::new(loaded.tokenizer);
    let template = ChatTemplate::for_tokenizer(&tok)?;
    let (weights, fusion, precision, device, d) = (loaded.weights, loaded.fusion, loaded.precision, loaded.device, def.clone());
    let parallel = a.parallel as usize;
    let worker = Worker::start(
        move || {
            Ok(Slots::new(Session::on(device, &d, weights, ForwardOptions::batched(context, parallel).with_precision(precision), fusion)?))
        },
        tok.clone(),
        a.queue,
    )?;
    let app = App { model_id: def.name.clone(), context, tok, template, worker, api_key: a.api_key, limits };
    serve(app, SocketAddr::new(a.host, a.port))
}
