//! The generation worker: one thread owns the compiled model and decodes
//! up to `parallel` requests together, each in its own slot of the KV cache
//! (continuous batching). A request joins between two decode steps, once its
//! prompt is prefilled (a chunk at a time, between steps, so the others
//! keep going), and leaves when it finishes. Each step samples every
//! request with its own settings.
//!
//! Nothing here waits on a client: text goes to each request's bounded
//! channel without blocking. A client that stops reading until its channel
//! is full is dropped and its generation stopped; one that disconnects
//! closes the channel, which stops it too. Waiting requests sit in a bounded
//! queue, so memory stays bounded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::mpsc::Sender;

use crate::sampling::{Sampler, SamplingParams};
use crate::slots::Slots;
use crate::tokenizer::{TextStream, Tokenizer};

/// Events a request's channel holds before its client counts as gone
/// (about this many tokens unread).
pub const EVENTS: usize = 256;

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
    /// bounded, [`EVENTS`] long
    pub events: Sender<Event>,
}

pub struct Worker {
    tx: SyncSender<Job>,
    /// requests waiting for a slot
    pub queued: Arc<AtomicUsize>,
    /// requests in a slot
    pub active: Arc<AtomicUsize>,
    /// the queue's length
    pub capacity: usize,
    /// slots: requests decoded together
    pub parallel: usize,
}

impl Worker {
    /// Start the worker; `make` builds the slots on the worker thread (a
    /// compiled graph stays on the thread that built it).
    pub fn start(make: impl FnOnce() -> Result<Slots> + Send + 'static, tok: Arc<Tokenizer>, capacity: usize) -> Result<Worker> {
        let (tx, rx) = sync_channel::<Job>(capacity);
        let (ready_tx, ready_rx) = sync_channel::<Result<usize, String>>(1);
        let queued = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let (q, a) = (queued.clone(), active.clone());
        std::thread::Builder::new().name("lumind-generate".into()).spawn(move || {
            let slots = match make() {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(s.len()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return;
                }
            };
            Batcher { slots, tok, live: vec![], queued: q, active: a }.run(rx);
        })?;
        let parallel =
            ready_rx.recv().map_err(|_| anyhow::anyhow!("the generation worker died while starting"))?.map_err(anyhow::Error::msg)?;
        Ok(Worker { tx, queued, active, capacity, parallel })
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

/// A request in a slot.
struct Live {
    job: Job,
    slot: usize,
    sampler: Sampler,
    /// the prompt and the reply so far (what the repetition penalty sees)
    seen: Vec<u32>,
    stream: TextStream,
    text: String,
    /// bytes of `text` sent
    sent: usize,
    /// the token to feed at the next decode step; None while prefilling
    next: Option<u32>,
    finished: bool,
}

impl Live {
    fn new(job: Job, slot: usize) -> Live {
        let sampler = Sampler::new(job.sampling.clone());
        let seen = job.prompt.clone();
        Live { job, slot, sampler, seen, stream: TextStream::default(), text: String::new(), sent: 0, next: None, finished: false }
    }

    fn completion_tokens(&self) -> usize {
        self.seen.len() - self.job.prompt.len()
    }

    /// Send an event unless the client is gone or too far behind (keeping
    /// room in the channel for the last event); false when dropped.
    fn send(&mut self, ev: Event, last: bool) -> bool {
        let room = self.job.events.capacity();
        if self.job.events.is_closed() || room == 0 || (!last && room <= 1) {
            if !self.job.events.is_closed() {
                eprintln!("dropping a request whose client stopped reading ({EVENTS} events unread)");
            }
            self.finished = true;
            return false;
        }
        let _ = self.job.events.try_send(ev);
        true
    }

    fn finish(&mut self, reason: &'static str) {
        if self.sent < self.text.len() {
            let rest = self.text[self.sent..].to_string();
            if !self.send(Event::Text(rest), false) {
                return;
            }
        }
        let done = Event::Done { finish_reason: reason, prompt_tokens: self.job.prompt.len(), completion_tokens: self.completion_tokens() };
        self.send(done, true);
        self.finished = true;
    }

    fn fail(&mut self, e: &anyhow::Error) {
        self.send(Event::Error(format!("{e:#}")), true);
        self.finished = true;
    }

    /// Sample the next token from `logits` and stream what it adds.
    fn take(&mut self, logits: &[f32], tok: &Tokenizer, context: usize) {
        let t = self.sampler.sample(logits, &self.seen);
        if t == tok.eos {
            return self.finish("stop");
        }
        self.seen.push(t);
        self.text.push_str(&self.stream.push(tok, t).unwrap_or_default());
        // (a stop sequence can only complete in text not yet sent: partial
        // matches are held back)
        let found = self.job.stop.iter().filter_map(|s| self.text.find(s.as_str())).min();
        let upto = match found {
            Some(p) => p,
            None => self.text.len() - pending_stop(&self.text, &self.job.stop),
        };
        if upto > self.sent {
            let piece = self.text[self.sent..upto].to_string();
            if !self.send(Event::Text(piece), false) {
                return;
            }
            self.sent = upto;
        }
        if found.is_some() {
            self.text.truncate(upto);
            return self.finish("stop");
        }
        // (a sequence never outgrows the context: the last token is not fed back)
        if self.completion_tokens() >= self.job.max_tokens || self.seen.len() >= context {
            return self.finish("length");
        }
        self.next = Some(t);
    }
}

/// Run `f`, turning a panic (a bug, never an input) into an error, so the
/// requests it served fail and the worker goes on serving the others.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let what = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("a panic");
            Err(anyhow::anyhow!("internal error while generating: {what}"))
        }
    }
}

struct Batcher {
    slots: Slots,
    tok: Arc<Tokenizer>,
    live: Vec<Live>,
    queued: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
}

impl Batcher {
    fn run(mut self, rx: Receiver<Job>) {
        loop {
            // take waiting requests into free slots (wait for one when idle)
            while self.live.len() < self.slots.len() {
                let job = if self.live.is_empty() {
                    match rx.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(j) => j,
                        Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                    }
                };
                self.queued.fetch_sub(1, Ordering::SeqCst);
                if job.events.is_closed() {
                    continue; // its client left while it waited
                }
                let slot = self.slots.pick(&job.prompt, |s| !self.live.iter().any(|l| l.slot == s)).expect("a slot is free");
                self.live.push(Live::new(job, slot));
            }
            self.active.store(self.live.len(), Ordering::SeqCst);
            self.prefill();
            self.decode();
            // a finished or abandoned request leaves its slot
            self.live.retain(|l| !l.finished && !l.job.events.is_closed());
            self.active.store(self.live.len(), Ordering::SeqCst);
        }
    }

    /// One prompt chunk, for the longest-waiting request still prefilling.
    fn prefill(&mut self) {
        let context = self.slots.context();
        let Some(l) = self.live.iter_mut().find(|l| l.next.is_none() && !l.finished) else { return };
        match guarded(|| self.slots.prefill_chunk(l.slot, &l.job.prompt)) {
            Ok(Some(logits)) => l.take(&logits, &self.tok, context),
            Ok(None) => {}
            Err(e) => {
                self.slots.clear(l.slot);
                l.fail(&e);
            }
        }
    }

    /// One decode step for every request with a token to feed.
    fn decode(&mut self) {
        let context = self.slots.context();
        let rows: Vec<(usize, u32)> = self.live.iter().filter(|l| !l.finished).filter_map(|l| Some((l.slot, l.next?))).collect();
        if rows.is_empty() {
            return;
        }
        match guarded(|| self.slots.decode(&rows)) {
            Ok(logits) => {
                let mut logits = logits.into_iter();
                for l in self.live.iter_mut().filter(|l| !l.finished && l.next.is_some()) {
                    l.next = None;
                    l.take(&logits.next().expect("a row per request"), &self.tok, context);
                }
            }
            Err(e) => {
                for l in self.live.iter_mut().filter(|l| !l.finished && l.next.is_some()) {
                    self.slots.clear(l.slot);
                    l.fail(&e);
                }
            }
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
