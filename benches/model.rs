//! Prefill, decode and a training step of minimind-small-T (random weights)
//! under each fusion strategy; `lumind bench` prints the same as a table
//! with ratios.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lumind::bench::{generation_session, synthetic_tokens, train_setup};
use lumind::compilers::{Backend, Fusion};
use lumind::model::ModelDef;

fn model(c: &mut Criterion) {
    let def = ModelDef::load(concat!(env!("CARGO_MANIFEST_DIR"), "/models/minimind-small-T.toml")).unwrap();
    let toks = synthetic_tokens(257, def.vocab_size, 1);
    let mut g = c.benchmark_group("minimind-small-T prefill 256");
    g.sample_size(10);
    for &fusion in Fusion::all() {
        let mut s = generation_session(Backend::Cpu, &def, fusion, 512).unwrap();
        g.bench_function(BenchmarkId::from_parameter(fusion), |b| {
            b.iter(|| {
                let l = s.run(&toks[..256], 1, 0).unwrap();
                s.recycle(l);
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("minimind-small-T decode 1 token at 256");
    g.sample_size(30);
    for &fusion in Fusion::all() {
        let mut s = generation_session(Backend::Cpu, &def, fusion, 512).unwrap();
        let l = s.run(&toks[..256], 1, 0).unwrap();
        s.recycle(l);
        g.bench_function(BenchmarkId::from_parameter(fusion), |b| {
            b.iter(|| {
                let l = s.run(&toks[256..257], 1, 256).unwrap();
                s.recycle(l);
            })
        });
    }
    g.finish();
    // forward, backward and AdamW on 2 x 128 tokens (under full fusion,
    // attention is the CausalAttention kernel and its gradient)
    let mut g = c.benchmark_group("minimind-small-T training step 2x128");
    g.sample_size(10);
    for &fusion in Fusion::all() {
        let (mut s, batch) = train_setup(Backend::Cpu, &def, fusion.into(), 2, 128).unwrap();
        let mut step = 0;
        g.bench_function(BenchmarkId::from_parameter(fusion), |b| {
            b.iter(|| {
                step += 1;
                s.step(&batch, 1e-4, step, true, 1.0).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, model);
criterion_main!(benches);
