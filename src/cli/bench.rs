//! `lumind bench`: a llama-bench-style table per fusion strategy.

use super::args::{one_of, DeviceArgs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use lumind_compilers::{Backend, Fusion};
use serde_json::json;

use crate::bench::{
    batched_session, decode, decode_streams, fma_peak, forward_flops, generation_session_in, handoff, prefill, read_bandwidth, train_step,
    weight_bytes, weight_bytes_in,
};
use crate::model::params::{count_params, human};
use crate::model::{ModelDef, Precision};
use crate::slots::MAX_PARALLEL;
use crate::train::TrainCompile;

#[derive(clap::Args)]
pub struct Args {
    /// Model definition (random weights are used)
    #[arg(long)]
    model: PathBuf,
    /// Strategies to compare, comma-separated
    #[arg(long, default_value = "none,generic,full", value_delimiter = ',', value_parser = one_of::<Fusion>("fusion strategy"))]
    fusion: Vec<Fusion>,
    /// Weight precisions to compare, comma-separated (fp32, bf16, q8); a training step runs in fp32 and bf16 (mixed precision)
    #[arg(long, default_value = "fp32", value_delimiter = ',', value_parser = one_of::<Precision>("precision"))]
    precision: Vec<Precision>,
    /// Prefill lengths (ppN)
    #[arg(long, default_value = "64,256", value_delimiter = ',')]
    pp: Vec<usize>,
    /// Decoded tokens (tgN)
    #[arg(long, default_value_t = 128)]
    tg: usize,
    /// Also decode tgN tokens for each of N sequences at once (continuous
    /// batching, as `serve --parallel N` does), e.g. 1,4,8: aggregate
    /// tokens/s, and the ratio to one sequence timed in the same rounds
    #[arg(long, value_delimiter = ',')]
    streams: Vec<usize>,
    /// Also time a training step on BATCHxSEQ tokens, e.g. 4x256
    #[arg(long)]
    train: Option<String>,
    /// Repetitions per measurement (the median is reported)
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    on: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    let def = ModelDef::load(&a.model)?;
    let threads = rayon::current_num_threads();
    let (bw, bw_all) = read_bandwidth();
    let handoff = handoff();
    let bytes = weight_bytes(&def);
    let bound = bw_all / bytes;
    // prefill bound per length: FMA peak / FLOPs per token
    let peak = if a.on.device == Backend::Cpu { fma_peak() } else { None };
    let pp_bound = |n: usize| peak.map(|(p, _)| p / (forward_flops(&def, n, 0) / n as f64));
    let train = match &a.train {
        Some(s) => {
            let (b, t) = s.split_once('x').ok_or_else(|| anyhow::anyhow!("--train expects BATCHxSEQ, e.g. 4x256"))?;
            Some((b.parse::<usize>()?, t.parse::<usize>()?))
        }
        None => None,
    };
    if !a.json {
        let th = if threads == 1 { "1 thread".to_string() } else { format!("{threads} threads") };
        println!(
            "model {} ({} params, {:.1} MB of f32 weights read per decoded token), {th}",
            def.name,
            human(count_params(&def).total),
            bytes / 1e6
        );
        let all = if threads == 1 { String::new() } else { format!(", {:.1} GB/s ({th})", bw_all / 1e9) };
        println!("memory read bandwidth: {:.1} GB/s (1 thread){all} -> decode bound {bound:.1} tokens/s", bw / 1e9);
        if let (Some((p, isa)), Some(&n)) = (peak, a.pp.iter().max()) {
            println!("fp32 FMA peak ({th}, {isa}): {:.1} GFLOP/s -> prefill bound {:.1} tokens/s at pp{n}", p / 1e9, pp_bound(n).unwrap());
        }
        if threads > 1 {
            println!("thread hand-off: {:.1} us per parallel call of {th} (median of 2000)", handoff.as_secs_f64() * 1e6);
        }
        println!();
        println!(
            "| {:<8} | {:<9} | {:<10} | {:>11} | {:>9} | {:>8} | {:>10} |",
            "fusion", "precision", "test", "tokens/s", "GFLOP/s", "GB/s", "compile ms"
        );
        println!("|{:-<10}|{:-<11}|{:-<12}|{:-<13}|{:-<11}|{:-<10}|{:-<12}|", "", "", "", "", "", "", "");
    }
    let mut rows = vec![];
    let mut stream_notes = vec![];
    let mut warm_ups = vec![];
    let positions = a.pp.iter().copied().max().unwrap_or(1).max(a.tg + 1);
    for (&precision, &fusion) in a.precision.iter().flat_map(|p| a.fusion.iter().map(move |f| (p, f))) {
        let mut s = generation_session_in(a.on.device, &def, fusion, precision, positions)?;
        let compile_ms = s.compile_time.as_secs_f64() * 1e3;
        let bytes = weight_bytes_in(&def, precision, &s.packed);
        let mut row = |test: String, tps: f64, gflops: f64, gbs: f64, warm_up: Duration| {
            if !a.json {
                println!(
                    "| {:<8} | {:<9} | {:<10} | {:>11.1} | {:>9.1} | {:>8.1} | {:>10.1} |",
                    fusion.name(),
                    precision.name(),
                    test,
                    tps,
                    gflops,
                    gbs,
                    compile_ms
                );
            }
            if fusion == Fusion::Search {
                warm_ups.push(format!("{test} {:.1} s", warm_up.as_secs_f64()));
            }
            rows.push(json!({"fusion": fusion.name(), "precision": precision.name(), "test": test, "tokens_per_s": tps, "gflops": gflops,
                "gbs": gbs, "compile_ms": compile_ms, "warm_up_s": warm_up.as_secs_f64()}));
        };
        for &n in &a.pp {
            let r = prefill(&mut s, n, a.reps)?;
            let tps = r.tokens_per_s;
            row(format!("pp{n}"), tps, tps * forward_flops(&def, n, 0) / n as f64 / 1e9, 0.0, r.warm_up);
        }
        if a.tg > 0 {
            let r = decode(&mut s, a.tg, a.reps.min(3))?;
            let tps = r.tokens_per_s;
            row(format!("tg{}", a.tg), tps, tps * forward_flops(&def, 1, a.tg / 2) / 1e9, tps * bytes / 1e9, r.warm_up);
        }
        if let Some(&most) = a.streams.iter().max() {
            if most == 0 || most > MAX_PARALLEL {
                anyhow::bail!("--streams takes 1 to {MAX_PARALLEL} sequences");
            }
            let mut slots = batched_session(a.on.device, &def, fusion, precision, a.tg.max(2) + 8, most)?;
            for &n in &a.streams {
                let r = decode_streams(&mut slots, n, a.tg.max(2), a.reps)?;
                row(format!("tg{} x{n}", a.tg), r.tokens_per_s, 0.0, r.tokens_per_s / n as f64 * bytes / 1e9, Duration::ZERO);
                stream_notes
                    .push(json!({"fusion": fusion.name(), "precision": precision.name(), "streams": n, "tokens_per_s": r.tokens_per_s,
                    "vs_one_stream": r.vs_one, "greedy_same_as_alone": r.same_as_alone}));
            }
        }
        if let Some((b, seq)) = train.filter(|_| precision != Precision::Q8) {
            let r = train_step(a.on.device, &def, TrainCompile { fusion, precision }, b, seq, a.reps.min(3))?;
            let tps = r.tokens_per_s;
            row(format!("train{b}x{seq}"), tps, tps * 3.0 * forward_flops(&def, seq, 0) / seq as f64 / 1e9, 0.0, r.warm_up);
        }
    }
    if a.json {
        let out = json!({
            "model": def.name,
            "threads": threads,
            "read_bandwidth_gbs": bw / 1e9,
            "read_bandwidth_all_threads_gbs": bw_all / 1e9,
            "weight_mb": bytes / 1e6,
            "decode_bound_tokens_per_s": bound,
            "fma_peak_gflops": peak.map(|(p, _)| p / 1e9),
            "fma_peak_isa": peak.map(|(_, isa)| isa),
            "handoff_us": handoff.as_secs_f64() * 1e6,
            "prefill_bound_tokens_per_s": a.pp.iter().map(|&n| (format!("pp{n}"), json!(pp_bound(n)))).collect::<serde_json::Map<_, _>>(),
            "results": rows,
            "streams": stream_notes,
            "search": search_note(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("\ntg GB/s = weight bytes per token x tokens/s; the decode bound assumes every weight is read once per token at the bandwidth of all threads.");
        for n in &stream_notes {
            println!(
                "{} streams ({}): {:.1} tokens/s in all, {:.2}x one stream (median of {} rounds); each stream's greedy tokens {} as alone",
                n["streams"],
                n["fusion"].as_str().unwrap_or(""),
                n["tokens_per_s"].as_f64().unwrap_or(0.0),
                n["vs_one_stream"].as_f64().unwrap_or(0.0),
                a.reps,
                if n["greedy_same_as_alone"] == true { "the same" } else { "NOT the same" }
            );
        }
        if peak.is_some() {
            println!("The prefill bound is the FMA peak over the FLOPs of a token (matmuls and attention): no fp32 kernel runs faster.");
        }
        if a.fusion.contains(&Fusion::Search) {
            let n = search_note();
            println!(
                "search: warm-ups (searching where the cache had no choice yet) {}; {} calls timed; {} choices in {}",
                warm_ups.join(", "),
                n["calls_timed"],
                n["choices"],
                n["cache"].as_str().unwrap_or("memory (no cache directory)")
            );
        }
    }
    Ok(())
}

/// What `--fusion search` did in this process: calls timed, the choices
/// this machine has, and where they are kept.
fn search_note() -> serde_json::Value {
    let t = lumind_compilers::search::global();
    json!({"calls_timed": t.measured_calls, "choices": t.choices().len(), "cache": t.file().map(|f| f.display().to_string())})
}
