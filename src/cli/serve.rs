//! `lumind serve`: the OpenAI-compatible server and web chat page.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

use super::model_source::ModelSource;
use crate::chat_template::ChatTemplate;
use crate::model::builder::ForwardOptions;
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
}

pub fn run(a: Args) -> Result<()> {
    let loaded = a.model.load(a.tokenizer.as_deref())?;
    let def = loaded.def.clone();
    let context = a.context.unwrap_or(def.max_position_embeddings.min(2048)).min(def.max_position_embeddings);
    let tok = Arc::new(loaded.tokenizer);
    let template = ChatTemplate::for_tokenizer(&tok)?;
    let (weights, fusion, device, d) = (loaded.weights, loaded.fusion, loaded.device, def.clone());
    let parallel = a.parallel as usize;
    let worker = Worker::start(
        move || Ok(Slots::new(Session::on(device, &d, weights, ForwardOptions::batched(context, parallel), fusion)?)),
        tok.clone(),
        a.queue,
    )?;
    let app = App { model_id: def.name.clone(), context, tok, template, worker };
    serve(app, SocketAddr::new(a.host, a.port))
}
