//! `lumind chat`: an interactive terminal chat.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::args::SamplingArgs;
use super::model_source::ModelSource;
use crate::chat_template::{ChatTemplate, Message, Role};
use crate::conversation::Conversation;
use crate::generate::{Finish, Generator};
use crate::model::builder::ForwardOptions;
use crate::sampling::Sampler;
use crate::session::Session;
use crate::tokenizer::TextStream;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelSource,
    /// Tokenizer directory (default: the built-in MiniMind tokenizer)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// System prompt
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Context length (tokens); default: the model's, at most 2048
    #[arg(long)]
    pub context: Option<usize>,
}

const HELP: &str = "commands: /reset clears the conversation, /system TEXT sets the system prompt, /quit leaves; Ctrl-C stops a reply";

pub fn run(a: Args) -> Result<()> {
    let loaded = a.model.load(a.tokenizer.as_deref())?;
    let (def, tok) = (loaded.def, loaded.tokenizer);
    let template = ChatTemplate::for_tokenizer(&tok)?;
    let context = a.context.unwrap_or(def.max_position_embeddings.min(2048)).min(def.max_position_embeddings);
    let mut gen = Generator::new(Session::on(
        loaded.device,
        &def,
        loaded.weights,
        ForwardOptions::generation(context).with_precision(loaded.precision),
        loaded.fusion,
    )?);
    let params = a.sampling.params()?;
    let stop_reply = Arc::new(AtomicBool::new(false));
    let flag = stop_reply.clone();
    let in_reply = Arc::new(AtomicBool::new(false));
    let replying = in_reply.clone();
    let _ = ctrlc::set_handler(move || {
        if replying.load(Ordering::SeqCst) {
            flag.store(true, Ordering::SeqCst);
        } else {
            eprint!("\n(use /quit to leave)\n> ");
            let _ = std::io::stderr().flush();
        }
    });
    let mut conv = Conversation::new(a.system.clone());
    let mut sampler = Sampler::new(params);
    eprintln!("chatting with `{}` ({context} tokens of context, {}). {HELP}", def.name, loaded.precision);
    let stdin = std::io::stdin();
    // piped input is echoed, so a transcript reads like the terminal session
    let echo = !stdin.is_terminal();
    let mut line = String::new();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let input = line.trim_end_matches(['\n', '\r']);
        if echo {
            eprintln!("{input}");
        }
        match input.trim() {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                conv.turns.clear();
                gen.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            "/help" => {
                eprintln!("{HELP}");
                continue;
            }
            s if s.starts_with("/system") => {
                let text = s["/system".len()..].trim();
                conv.system = (!text.is_empty()).then(|| text.to_string());
                conv.turns.clear();
                eprintln!("(system prompt {}; conversation cleared)", if text.is_empty() { "removed" } else { "set" });
                continue;
            }
            s if s.starts_with('/') => {
                eprintln!("unknown command {s}; {HELP}");
                continue;
            }
            _ => {}
        }
        conv.turns.push(Message::new(Role::User, input));
        let (prompt, dropped) = match conv.prompt(&template, &tok, context, a.sampling.max_new_tokens.min(context / 2)) {
            Ok(p) => p,
            Err(e) => {
                conv.turns.pop();
                eprintln!("error: {e:#}");
                continue;
            }
        };
        if dropped > 0 {
            eprintln!("(dropped the {dropped} oldest messages to fit the context)");
        }
        let max_new = a.sampling.max_new_tokens.min(context - prompt.len());
        let mut stream = TextStream::default();
        let mut reply = String::new();
        stop_reply.store(false, Ordering::SeqCst);
        in_reply.store(true, Ordering::SeqCst);
        let t = Instant::now();
        let result = gen.generate(&prompt, max_new, &[tok.eos], &mut sampler, |id| {
            if let Ok(piece) = stream.push(&tok, id) {
                print!("{piece}");
                let _ = std::io::stdout().flush();
                reply.push_str(&piece);
            }
            !stop_reply.load(Ordering::SeqCst)
        });
        in_reply.store(false, Ordering::SeqCst);
        let secs = t.elapsed().as_secs_f64();
        match result {
            Ok((out, finish)) => {
                println!();
                let note = match finish {
                    Finish::Cancelled => ", stopped",
                    Finish::Length => ", hit the token limit",
                    Finish::Stop => "",
                };
                eprintln!("[{} tokens, {:.1} tokens/s{note}]", out.len(), out.len() as f64 / secs.max(1e-9));
                conv.turns.push(Message::new(Role::Assistant, &reply));
            }
            Err(e) => {
                conv.turns.pop();
                eprintln!("error: {e:#}");
            }
        }
    }
}
