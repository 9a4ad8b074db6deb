//! Logits and greedy tokens against transformers / PyTorch fixtures
//! (tests/fixtures/oracle, written by tools/reference/make_fixtures.py).
//!
//! Tolerance: logits agree within 1e-4 absolute (f32; the fixtures' logits
//! are at most ~7 in magnitude). Greedy tokens must match exactly; the
//! fixtures were chosen so every step's top-2 gap exceeds 1e-3.
//!
//! Every test runs on each backend of `LUMIND_TEST_BACKENDS` (default
//! `cpu,emulated`: our CPU kernels, and the generated CUDA kernels under the
//! CPU emulation; `tools/device_check.sh` adds `cuda` on a GPU).

use std::path::Path;

use lumind::compilers::{Backend, Fusion};
use lumind::generate::Generator;
use lumind::model::builder::ForwardOptions;
use lumind::model::weights::Tensors;
use lumind::model::{ModelDef, Weights};
use lumind::sampling::{argmax, Sampler, SamplingParams};
use lumind::session::Session;

const TOL: f32 = 1e-4;

struct Fixture {
    model: String,
    def: ModelDef,
    weights: Weights,
    tokens: Vec<u32>,
    prompt: Vec<u32>,
    greedy: Vec<u32>,
    logits: Vec<f32>,
}

fn fixtures() -> Vec<Fixture> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tests/fixtures/oracle/manifest.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    m["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let def = ModelDef::load(root.join(f["model"].as_str().unwrap())).unwrap();
            let weights = Weights::load(&def, &root.join(f["weights"].as_str().unwrap())).unwrap();
            let logits = Tensors::load(&root.join(f["logits"].as_str().unwrap())).unwrap().get("logits").unwrap().1.clone();
            Fixture {
                model: def.name.clone(),
                def,
                weights,
                tokens: ids(&f["tokens"]),
                prompt: ids(&f["prompt"]),
                greedy: ids(&f["greedy"]),
                logits,
            }
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn backends() -> Vec<Backend> {
    std::env::var("LUMIND_TEST_BACKENDS").unwrap_or("cpu,emulated".into()).split(',').map(|b| b.trim().parse().unwrap()).collect()
}

fn session(f: &Fixture, kv_cache: bool, fusion: Fusion, backend: Backend) -> Session {
    let opts = ForwardOptions { kv_cache, ..ForwardOptions::full(64) };
    Session::on(backend, &f.def, f.weights.clone(), opts, fusion).unwrap()
}

#[test]
fn logits_match_transformers_under_every_fusion_strategy() {
    for backend in backends() {
        for f in fixtures() {
            for &fusion in Fusion::all() {
                let mut s = session(&f, false, fusion, backend);
                let l = s.run(&f.tokens, 1, 0).unwrap();
                let d = max_diff(&l.data, &f.logits);
                eprintln!("{} ({fusion}, {backend}): max |logits - oracle| = {d:e}", f.model);
                assert!(d <= TOL, "{} ({fusion}, {backend}): max |logits - oracle| = {d:e}", f.model);
            }
        }
    }
}

#[test]
fn kv_cache_logits_match_full_forward() {
    // prefill the prompt, then feed one token at a time: every row must match
    for backend in backends() {
        for f in fixtures() {
            let mut s = session(&f, true, Fusion::Full, backend);
            let v = f.def.vocab_size;
            let l = s.run(&f.prompt, 1, 0).unwrap();
            let n = f.prompt.len();
            assert!(max_diff(&l.data, &f.logits[..n * v]) <= TOL, "{} ({backend}): prefill", f.model);
            for i in n..f.tokens.len() {
                let l = s.run(&f.tokens[i..i + 1], 1, i).unwrap();
                let d = max_diff(&l.data, &f.logits[i * v..(i + 1) * v]);
                assert!(d <= TOL, "{} ({backend}): decode step at position {i}: {d:e}", f.model);
            }
        }
    }
}

#[test]
fn greedy_tokens_match_with_and_without_cache() {
    for backend in backends() {
        for f in fixtures() {
            // with the KV cache
            let opts = ForwardOptions::generation(64);
            let mut g = Generator::new(Session::on(backend, &f.def, f.weights.clone(), opts, Fusion::Full).unwrap());
            let mut sampler = Sampler::new(SamplingParams::default());
            let (out, _) = g.generate(&f.prompt, f.greedy.len(), &[], &mut sampler, |_| true).unwrap();
            assert_eq!(out, f.greedy, "{} ({backend}): greedy with KV cache", f.model);
            // without: recompute the whole sequence every step
            let mut s = session(&f, false, Fusion::Generic, backend);
            let mut seq = f.prompt.clone();
            for _ in 0..f.greedy.len() {
                let l = s.run(&seq, 1, 0).unwrap();
                seq.push(argmax(l.last()));
            }
            assert_eq!(&seq[f.prompt.len()..], f.greedy.as_slice(), "{} ({backend}): greedy without cache", f.model);
        }
    }
}

#[test]
fn batched_rows_match_single_sequences() {
    let f = &fixtures()[0];
    for backend in backends() {
        let mut s = session(f, false, Fusion::Full, backend);
        let (a, b) = (&f.tokens[..6], &f.tokens[6..12]);
        let both = s.run(&[a, b].concat(), 2, 0).unwrap();
        let la = s.run(a, 1, 0).unwrap();
        let lb = s.run(b, 1, 0).unwrap();
        let v = f.def.vocab_size;
        assert!(max_diff(&both.data[..6 * v], &la.data) <= 1e-5, "{backend}");
        assert!(max_diff(&both.data[6 * v..], &lb.data) <= 1e-5, "{backend}");
    }
}
