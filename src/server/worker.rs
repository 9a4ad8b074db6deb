//! The generation worker: one thread owns the compiled model and its KV
//! cache and serves queued requests one at a time (a bounded queue, so
//! memory stays bounded). Text streams back over a channel per request; when
//! the client goes away the channel closes and generation stops.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::mpsc::Sender;

use crate::generate::{Finish, Generator};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{TextStream, Tokenizer};

pub enum Event {
    /// more reply text
    Text(String),
    /// the reply is complete
    Done {
        finish_reason: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

pub struct Job {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub events: Sender<Event>,
}

pub struct Worker {
    tx: SyncSender<Job>,
    pub queued: Arc<AtomicUsize>,
    pub capacity: usize,
}

impl Worker {
    /// Start the worker; `make` builds the generator on the worker thread
    /// (a compiled graph stays on the thread that built it).
    pub fn start(make: impl FnOnce() -> Result<Generator> + Send + 'static, tok: Arc<Tokenizer>, capacity: usize) -> Result<Worker> {
        let (tx, rx) = sync_channel::<Job>(capacity);
        let (ready_tx, ready_rx) = sync_channel::<Result<(), String>>(1);
        let queued = Arc::new(AtomicUsize::new(0));
        let q = queued.clone();
        std::thread::Builder::new().name("lumind-generate".into()).spawn(move || {
            let mut gen = match make() {
                Ok(g) => {
                    let _ = ready_tx.send(Ok(()));
                    g
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return;
                }
            };
            for job in rx {
                q.fetch_sub(1, Ordering::SeqCst);
                run_job(&mut gen, &tok, job);
            }
        })?;
        ready_rx.recv().map_err(|_| anyhow::anyhow!("the generation worker died while starting"))?.map_err(anyhow::Error::msg)?;
        Ok(Worker { tx, queued, capacity })
    }

    /// Queue a job, or give it back when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err(j)
            }
        }
    }
}

/// Longest tail of `text` that is the start of some stop sequence (it must
/// be held back until we know whether the sequence completes).
fn pending_stop(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for (i, _) in text.char_indices().rev().take(s.chars().count()) {
            let tail = &text[i..];
            if s.starts_with(tail) && tail.len() < s.len() {
                best = best.max(tail.len());
            }
        }
    }
    best
}

fn run_job(gen: &mut Generator, tok: &Tokenizer, job: Job) {
    let mut sampler = Sampler::new(job.sampling.clone());
    let mut stream = TextStream::default();
    let (mut text, mut sent, mut stopped, mut gone) = (String::new(), 0usize, false, false);
    let result = gen.generate(&job.prompt, job.max_tokens, &[tok.eos], &mut sampler, |id| {
        text.push_str(&stream.push(tok, id).unwrap_or_default());
        // (a stop sequence can only complete in text not yet sent: partial
        // matches are held back)
        let found = job.stop.iter().filter_map(|s| text.find(s.as_str())).min();
        let upto = match found {
            Some(p) => {
                stopped = true;
                p
            }
            None => text.len() - pending_stop(&text, &job.stop),
        };
        if upto > sent {
            if job.events.blocking_send(Event::Text(text[sent..upto].to_string())).is_err() {
                gone = true;
                return false;
            }
            sent = upto;
        }
        !stopped
    });
    match result {
        Err(e) => {
            let _ = job.events.blocking_send(Event::Error(format!("{e:#}")));
        }
        Ok((out, finish)) => {
            if gone {
                return;
            }
            if !stopped && sent < text.len() {
                let _ = job.events.blocking_send(Event::Text(text[sent..].to_string()));
            }
            let finish_reason = if stopped || finish == Finish::Stop { "stop" } else { "length" };
            let _ = job.events.blocking_send(Event::Done { finish_reason, prompt_tokens: job.prompt.len(), completion_tokens: out.len() });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn holds_back_what_may_start_a_stop_sequence() {
        let stops = vec!["END".to_string(), "xy".to_string()];
        assert_eq!(super::pending_stop("hello E", &stops), 1);
        assert_eq!(super::pending_stop("hello EN", &stops), 2);
        assert_eq!(super::pending_stop("hello x", &stops), 1);
        assert_eq!(super::pending_stop("hello", &stops), 0);
        assert_eq!(super::pending_stop("héllo", &["ö".to_string()]), 0);
    }
}
