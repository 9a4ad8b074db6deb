//! A compiled model ready to run: definition + weights + a forward graph
//! compiled with one fusion strategy, and the executor holding the weights,
//! RoPE tables and (for generation) the KV cache.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lumind_compilers::passes::pipeline_for;
use lumind_compilers::passes::Pass;
use lumind_compilers::{compile, Backend, DimValues, Executor, Fusion, GraphBuilder};

use crate::graph_io::{buffer, dim, input, output};
use crate::model::builder::{declare_inputs, forward, ForwardOptions};
use crate::model::def::ModelDef;
use crate::model::memory;
use crate::model::weights::Weights;

/// Prompt tokens fed per run of the graph. Prefilling in chunks lets a
/// server decode its other sequences between them; the chunking depends
/// only on the prompt and what the slot held, never on the other slots.
pub const PREFILL_CHUNK: usize = 256;

pub struct Session {
    pub def: ModelDef,
    pub opts: ForwardOptions,
    pub fusion: Fusion,
    pub exec: Executor,
    /// Time spent building and compiling the graph.
    pub compile_time: Duration,
    /// The params stored packed (`--precision bf16` or `q8`).
    pub packed: Vec<String>,
}

/// Logits of one run: `[rows, vocab]` row-major (rows = batch x positions).
#[derive(Debug)]
pub struct Logits {
    pub rows: usize,
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl Logits {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..][..self.vocab]
    }
    pub fn last(&self) -> &[f32] {
        self.row(self.rows - 1)
    }
}

impl Session {
    /// On the CPU.
    pub fn new(def: &ModelDef, weights: Weights, opts: ForwardOptions, fusion: Fusion) -> Result<Session> {
        Session::on(Backend::Cpu, def, weights, opts, fusion)
    }

    /// On a backend (`cpu`, `cuda`, `emulated`).
    pub fn on(backend: Backend, def: &ModelDef, weights: Weights, opts: ForwardOptions, fusion: Fusion) -> Result<Session> {
        Session::with_passes(backend, def, weights, opts, fusion, &pipeline_for(fusion, backend))
    }

    /// Compile with an explicit list of passes (experiments, inspection).
    pub fn with_passes(
        backend: Backend,
        def: &ModelDef,
        weights: Weights,
        opts: ForwardOptions,
        fusion: Fusion,
        passes: &[Pass],
    ) -> Result<Session> {
        let t = Instant::now();
        if opts.max_positions == 0 || opts.slots == 0 {
            bail!("a session needs at least one position and one sequence");
        }
        let kv = if opts.kv_cache { memory::kv_cache_bytes(def, opts.slots, opts.max_positions) } else { 0 };
        // the largest run: a whole sequence, or a prompt chunk or a decode step
        let run = if opts.kv_cache && opts.last_only { PREFILL_CHUNK.max(opts.slots).min(opts.max_positions) } else { opts.max_positions };
        let need = memory::weight_bytes(def) + kv + memory::forward_bytes(def, 1, run);
        memory::check_fits(&format!("model `{}` with {} positions x {} sequences", def.name, opts.max_positions, opts.slots), need)?;
        let b = GraphBuilder::new();
        let inputs = declare_inputs(&b, def);
        let out = forward(&b, def, &inputs, &opts);
        b.output(output::LOGITS, &out.logits);
        let mut built = b.finish().with_context(|| format!("building the graph of model `{}`", def.name))?;
        compile(&mut built, passes, |_, _| {});
        let mut exec = Executor::on(built, backend).with_context(|| format!("running model `{}` on {backend}", def.name))?;
        let mut packed = vec![];
        if let Some(dtype) = opts.precision.weight_dtype() {
            if backend != Backend::Cpu {
                bail!("precision {} runs on the CPU only, not on {backend}", opts.precision);
            }
            packed = exec.pack_weights(dtype);
        }
        let compile_time = t.elapsed();
        for (name, (_, data)) in weights.into_map() {
            exec.set(&name, data)?;
        }
        let (cos, sin) = def.rope_tables(opts.max_positions);
        exec.set(buffer::ROPE_COS, cos)?;
        exec.set(buffer::ROPE_SIN, sin)?;
        Ok(Session { def: def.clone(), opts, fusion, exec, compile_time, packed })
    }

    /// Check token ids against the vocabulary.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if let Some((i, t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= self.def.vocab_size) {
            bail!("token id {t} (position {i}) is out of range for model `{}` (vocab_size {})", self.def.name, self.def.vocab_size);
        }
        Ok(())
    }

    /// Run `batch` sequences of equal length (`tokens` is batch-major). With a
    /// KV cache, `past` tokens per sequence are already cached (in cache rows
    /// `0..batch`) and the new ones are appended.
    pub fn run(&mut self, tokens: &[u32], batch: usize, past: usize) -> Result<Logits> {
        self.run_rows(tokens, 0, &vec![past; batch])
    }

    /// Run one row of new tokens (all of one length, `tokens` row-major) for
    /// each of the cache rows `first..first + past.len()`; row `r` already
    /// holds `past[r]` tokens. Without a KV cache, `past` only counts the rows.
    pub fn run_rows(&mut self, tokens: &[u32], first: usize, past: &[usize]) -> Result<Logits> {
        let batch = past.len();
        if batch == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(batch) {
            bail!("expected {batch} sequences of equal length, got {} token ids", tokens.len());
        }
        self.check_tokens(tokens)?;
        let s = tokens.len() / batch;
        let ids: Vec<f32> = tokens.iter().map(|&t| t as f32).collect();
        let mut dims: DimValues = [(dim::BATCH, batch), (dim::SEQ, s)].into_iter().collect();
        let positions: Vec<f32>;
        let mut data: Vec<(&str, &[f32])> = vec![(input::TOKENS, &ids)];
        if self.opts.kv_cache {
            if first + batch > self.opts.slots {
                bail!("cache rows {first}..{} exceed the {} this session holds", first + batch, self.opts.slots);
            }
            let longest = past.iter().max().copied().unwrap_or(0);
            if longest + s > self.opts.max_positions {
                bail!(
                    "{} tokens exceed the context of {} positions this session was built for (model `{}`)",
                    longest + s,
                    self.opts.max_positions,
                    self.def.name
                );
            }
            positions = past.iter().flat_map(|&p| (p..p + s).map(|i| i as f32)).collect();
            data.push((input::POSITIONS, &positions));
            dims.insert(dim::PAST, longest);
            dims.insert(dim::FIRST_ROW, first);
        } else if s > self.opts.max_positions {
            bail!(
                "{s} tokens exceed the context of {} positions this session was built for (model `{}`)",
                self.opts.max_positions,
                self.def.name
            );
        }
        let mut out = self.exec.run(&data, &dims)?;
        let (shape, data) = out.take(output::LOGITS).context("graph has no logits output")?;
        let vocab = *shape.last().unwrap();
        Ok(Logits { rows: data.len() / vocab, vocab, data })
    }

    /// Hand a logits buffer back for reuse.
    pub fn recycle(&mut self, l: Logits) {
        self.exec.recycle(l.data);
    }
}
