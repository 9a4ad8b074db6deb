//! Measurements shared by `lumind bench`, `lumind profile` and the criterion
//! benches: prefill and decode speed of a compiled model, a training step,
//! and this machine's memory read bandwidth (the bound on decoding).

use std::time::{Duration, Instant};

use anyhow::Result;
use lumind_compilers::optim::AdamWConfig;
use lumind_compilers::{Backend, Fusion};

use crate::model::builder::ForwardOptions;
use crate::model::params::count_params;
use crate::model::{ModelDef, Precision, Weights};
use crate::sampling::argmax;
use crate::session::Session;
use crate::slots::Slots;
use crate::train::graph::Update;
use crate::train::{Batch, TrainCompile, TrainSession};

/// Token ids that look like text to nobody but stay inside the vocabulary.
pub fn synthetic_tokens(n: usize, vocab: usize, seed: usize) -> Vec<u32> {
    (0..n).map(|i| (3 + (i * 7919 + seed * 104729) % (vocab - 3)) as u32).collect()
}

/// Median of `reps` timings of `f`.
pub fn median(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    v.sort();
    Ok(v[v.len() / 2])
}

/// Bytes of weights a decode step reads (f32).
pub fn weight_bytes(def: &ModelDef) -> f64 {
    4.0 * count_params(def).active as f64
}

/// Bytes of weights a decoded token reads when the params named in
/// `packed` are stored as `precision` says and the rest f32.
pub fn weight_bytes_in(def: &ModelDef, precision: Precision, packed: &[String]) -> f64 {
    let Some(dtype) = precision.weight_dtype() else { return weight_bytes(def) };
    let values = crate::model::params::param_specs(def)
        .iter()
        .filter(|p| packed.contains(&p.name) && p.routed_expert.is_none())
        .map(|p| p.shape.iter().product::<usize>() as f64)
        .sum::<f64>();
    // (bytes per value in the packed type, from a whole Q8_0 block's worth)
    let per = lumind_compilers::kernels::packed::bytes_for(dtype, 32) as f64 / 32.0;
    weight_bytes(def) - values * (4.0 - per)
}

/// FLOPs of a forward pass over `n` tokens with `past` cached, logits for
/// the last position only (matmuls and attention; elementwise work is
/// negligible beside them).
pub fn forward_flops(def: &ModelDef, n: usize, past: usize) -> f64 {
    use crate::model::params::{param_specs, Component};
    let head = (def.vocab_size * def.hidden_size) as f64;
    let body = count_params(def).active as f64
        - param_specs(def)
            .iter()
            .filter(|s| matches!(s.component, Component::Embedding | Component::LmHead))
            .map(|s| s.numel())
            .sum::<usize>() as f64;
    // attention: q k^T and p v per layer, each 2 * heads * head_dim per (query, key)
    let keys = (past as f64 + (past + n) as f64) / 2.0 + 0.5;
    let attn = 4.0 * (def.num_hidden_layers * def.num_attention_heads * def.head_dim) as f64 * keys;
    2.0 * body * n as f64 + 2.0 * head + attn * n as f64
}

/// Streaming read bandwidth in bytes/s (sums over 256 MiB): of one thread,
/// and of all worker threads together, each summing its own part.
pub fn read_bandwidth() -> (f64, f64) {
    let n: usize = 64 << 20;
    let data: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let threads = rayon::current_num_threads();
    let part = n.div_ceil(threads);
    let time = |all: bool| {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let sink: f32 = if all {
                rayon::broadcast(|c| {
                    lumind_compilers::kernels::reduce::sum(&data[(c.index() * part).min(n)..((c.index() + 1) * part).min(n)])
                })
                .iter()
                .sum()
            } else {
                lumind_compilers::kernels::reduce::sum(&data)
            };
            std::hint::black_box(sink);
            best = best.min(t.elapsed().as_secs_f64());
        }
        (n * 4) as f64 / best
    };
    (time(false), time(true))
}

/// The cost of handing work to every thread of the pool and waiting for
/// all of them: the median time of an empty `rayon::broadcast`, right after
/// another one, as a decoding step's ~120 kernels follow each other
/// (rayon's idle workers spin briefly, then sleep).
pub fn handoff() -> Duration {
    let mut v: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            rayon::broadcast(|c| std::hint::black_box(c.index()));
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

/// fp32 multiply-add throughput of all worker threads together, in FLOP/s,
/// on the widest FMA units the CPU has, and which (`AVX-512` or `AVX2`):
/// every thread runs twelve independent chains of 16-lane (AVX-512F) or
/// 8-lane (AVX2 and FMA) multiply-adds. None without FMA. With the FLOPs
/// of a token, a bound on prefill and training speed, as the read
/// bandwidth is for decoding.
pub fn fma_peak() -> Option<(f64, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        const ITERS: usize = 4 << 20;
        let (lanes, isa): (usize, &'static str) = if is_x86_feature_detected!("avx512f") {
            (16, "AVX-512")
        } else if lumind_compilers::kernels::simd::avx2() {
            (8, "AVX2")
        } else {
            return None;
        };
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            // SAFETY: the CPU has the instructions each form uses
            let sink: f32 = rayon::broadcast(|_| unsafe {
                if lanes == 16 {
                    fma_chains_512(ITERS)
                } else {
                    fma_chains(ITERS)
                }
            })
            .iter()
            .sum();
            std::hint::black_box(sink);
            best = best.min(t.elapsed().as_secs_f64());
        }
        Some(((rayon::current_num_threads() * ITERS * 12 * lanes * 2) as f64 / best, isa))
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc.iter().fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x)));
    lanes.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains_512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x)))
}

/// A generation session (KV cache, last-position logits) with random weights.
pub fn generation_session(device: Backend, def: &ModelDef, fusion: Fusion, positions: usize) -> Result<Session> {
    generation_session_in(device, def, fusion, Precision::Fp32, positions)
}

/// [`generation_session`] with weights stored in `precision`.
pub fn generation_session_in(device: Backend, def: &ModelDef, fusion: Fusion, precision: Precision, positions: usize) -> Result<Session> {
    Session::on(device, def, Weights::random(def, 0, None)?, ForwardOptions::generation(positions).with_precision(precision), fusion)
}

/// The longest a benchmark waits for `--fusion search` to decide its
/// kernels' ways before it times them anyway.
pub const SEARCH_LIMIT: Duration = Duration::from_secs(120);

/// A warm-up: runs `f` once, and again while kernels it ran are still
/// searching for their way (`--fusion search`), up to [`SEARCH_LIMIT`];
/// returns how long that took. With a warm search cache, or another
/// strategy, that is one run.
pub fn warm_up(mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let t = Instant::now();
    f()?;
    while lumind_compilers::search::global().pending() > 0 && t.elapsed() < SEARCH_LIMIT {
        f()?;
    }
    Ok(t.elapsed())
}

/// A rate, and how long its warm-up (and search) took.
pub struct Rate {
    pub tokens_per_s: f64,
    pub warm_up: Duration,
}

/// Prefill `n` tokens into an empty cache.
pub fn prefill(s: &mut Session, n: usize, reps: usize) -> Result<Rate> {
    let toks = synthetic_tokens(n, s.def.vocab_size, 1);
    let mut run = || {
        let l = s.run(&toks, 1, 0)?;
        s.recycle(l);
        Ok(())
    };
    let warm_up = warm_up(&mut run)?;
    let t = median(reps, run)?;
    Ok(Rate { tokens_per_s: n as f64 / t.as_secs_f64(), warm_up })
}

/// Decode `n` tokens one by one after a one-token prompt.
pub fn decode(s: &mut Session, n: usize, reps: usize) -> Result<Rate> {
    let toks = synthetic_tokens(n + 1, s.def.vocab_size, 2);
    let mut run = || {
        let l = s.run(&toks[..1], 1, 0)?;
        s.recycle(l);
        for i in 1..=n {
            let l = s.run(&toks[i..i + 1], 1, i)?;
            s.recycle(l);
        }
        Ok(())
    };
    let warm_up = warm_up(&mut run)?;
    let t = median(reps, run)?;
    Ok(Rate { tokens_per_s: n as f64 / t.as_secs_f64(), warm_up })
}

/// A session decoding up to `slots` sequences together (random weights).
pub fn batched_session(
    device: Backend,
    def: &ModelDef,
    fusion: Fusion,
    precision: Precision,
    positions: usize,
    slots: usize,
) -> Result<Slots> {
    let opts = ForwardOptions::batched(positions, slots).with_precision(precision);
    Ok(Slots::new(Session::on(device, def, Weights::random(def, 0, None)?, opts, fusion)?))
}

/// Greedy tokens of `n` decode steps for each of `prompts`, decoded
/// together in slots `0..prompts.len()` (the timed part), and the time.
fn decode_together(slots: &mut Slots, prompts: &[Vec<u32>], n: usize) -> Result<(Vec<Vec<u32>>, Duration)> {
    let mut out: Vec<Vec<u32>> = vec![];
    for (i, p) in prompts.iter().enumerate() {
        slots.clear(i);
        out.push(vec![argmax(&slots.prefill(i, p)?)]);
    }
    let t = Instant::now();
    for _ in 1..n {
        let rows: Vec<(usize, u32)> = out.iter().enumerate().map(|(i, o)| (i, *o.last().unwrap())).collect();
        for (o, l) in out.iter_mut().zip(slots.decode(&rows)?) {
            o.push(argmax(&l));
        }
    }
    Ok((out, t.elapsed()))
}

/// Decoding `streams` sequences at once, against one alone.
pub struct Streams {
    pub streams: usize,
    /// aggregate tokens/s (median of the rounds)
    pub tokens_per_s: f64,
    /// against one sequence decoded alone in the same rounds (median of
    /// the rounds' ratios: the host's load changes between rounds, not
    /// within one)
    pub vs_one: f64,
    /// every sequence's greedy tokens are those it gets alone
    pub same_as_alone: bool,
}

/// Decode `n` tokens for each of `streams` sequences at once (short prompts
/// of their own), in `rounds` rounds, each also timing one sequence alone.
pub fn decode_streams(slots: &mut Slots, streams: usize, n: usize, rounds: usize) -> Result<Streams> {
    let vocab = slots.session.def.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..streams).map(|i| synthetic_tokens(1 + i % 5, vocab, 10 + i)).collect();
    let (mut rates, mut ratios, mut together) = (vec![], vec![], vec![]);
    for _ in 0..rounds.max(1) {
        let (_, alone) = decode_together(slots, &prompts[..1], n)?;
        let (out, t) = decode_together(slots, &prompts, n)?;
        rates.push((streams * (n - 1)) as f64 / t.as_secs_f64());
        ratios.push(alone.as_secs_f64() * streams as f64 / t.as_secs_f64());
        together = out;
    }
    let mut same = true;
    for (i, p) in prompts.iter().enumerate() {
        let (alone, _) = decode_together(slots, std::slice::from_ref(p), n)?;
        same &= alone[0] == together[i];
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(Streams { streams, tokens_per_s: median(&mut rates), vs_one: median(&mut ratios), same_as_alone: same })
}

/// A pretraining session on random weights and a synthetic `batch` x `seq`
/// batch, for timing steps.
pub fn train_setup(device: Backend, def: &ModelDef, how: TrainCompile, batch: usize, seq: usize) -> Result<(TrainSession, Batch)> {
    let s = TrainSession::on(
        device,
        def,
        Weights::random(def, 0, None)?,
        seq,
        crate::train::graph::Stage::LanguageModel,
        Update::AdamW(AdamWConfig::default()),
        how,
    )?;
    let rows: Vec<(Vec<u32>, Vec<i64>)> = (0..batch)
        .map(|r| {
            let ids = synthetic_tokens(seq, def.vocab_size, r + 3);
            let labels = ids.iter().map(|&x| x as i64).collect();
            (ids, labels)
        })
        .collect();
    Ok((s, Batch::from_labels(&rows)))
}

/// One pretraining step (forward, backward, AdamW) on `batch` x `seq`
/// tokens.
pub fn train_step(device: Backend, def: &ModelDef, how: TrainCompile, batch: usize, seq: usize, reps: usize) -> Result<Rate> {
    let (mut s, b) = train_setup(device, def, how, batch, seq)?;
    let mut step = 0;
    let mut run = || {
        step += 1;
        s.step(&b, 1e-4, step, true, 1.0).map(|_| ())
    };
    let warm_up = warm_up(&mut run)?;
    let t = median(reps, run)?;
    Ok(Rate { tokens_per_s: (batch * seq) as f64 / t.as_secs_f64(), warm_up })
}
