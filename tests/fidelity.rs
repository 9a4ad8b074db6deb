//! Fidelity of `--precision bf16` and `q8` on a trained model: the tiny
//! model pretrained here on the shipped corpus for a few hundred steps,
//! scored on the held-out texts (`data/pretrain_eval.jsonl`) against fp32:
//! perplexity, the per-token KL divergence, and greedy continuations.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::root;
use lumind::compilers::Fusion;
use lumind::eval::agreement::{greedy_agreement, prompts_from};
use lumind::eval::perplexity;
use lumind::model::builder::ForwardOptions;
use lumind::model::{ModelDef, Precision, Weights};
use lumind::session::Session;
use lumind::tokenizer::Tokenizer;

/// The tiny model pretrained for `steps` steps, its weights in `dir`.
fn pretrained(dir: &Path, steps: usize) -> PathBuf {
    let cfg = dir.join("job.toml");
    let text = format!(
        "model = \"{root}/models/tiny.toml\"\nout = \"{out}\"\nseed = 3\n[data]\ntrain = \"{root}/data/pretrain.jsonl\"\nmax_seq_len = 128\n\
         [optim]\nlearning_rate = 3e-3\nbatch_size = 8\nmax_steps = {steps}\n[checkpoint]\nevery = {steps}\n",
        root = root().display(),
        out = dir.join("run").display()
    );
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lumind")).args(["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "training failed: {}", String::from_utf8_lossy(&out.stderr));
    dir.join("run/model.safetensors")
}

#[test]
fn bf16_and_q8_stay_faithful_to_fp32_on_a_trained_model() {
    let dir = tempfile::tempdir().unwrap();
    let def = ModelDef::load(root().join("models/tiny.toml")).unwrap();
    let w = Weights::load(&def, &pretrained(dir.path(), 200)).unwrap();
    let tok = Tokenizer::default_minimind();
    let held_out = root().join("data/pretrain_eval.jsonl");
    let session = |p: Precision, opts: ForwardOptions| Session::new(&def, w.clone(), opts.with_precision(p), Fusion::Full).unwrap();
    let bar = indicatif::ProgressBar::hidden();
    let prompts = prompts_from(&tok, &held_out, 16, 16).unwrap();
    assert_eq!(prompts.len(), 16);
    // (tolerance on perplexity, on the mean KL per token, and the fewest of
    // 16 greedy continuations that must agree on all 32 tokens)
    for (p, ppl_tol, kl_tol, whole) in [(Precision::Bf16, 0.005, 1e-3, 14), (Precision::Q8, 0.015, 1e-2, 10)] {
        let (mut s, mut r) = (session(p, ForwardOptions::full(256)), session(Precision::Fp32, ForwardOptions::full(256)));
        let got = perplexity(&mut s, Some(&mut r), &tok, &held_out, 256, None, &bar).unwrap();
        let (nll32, d) = got.reference.clone().unwrap();
        let rel = (got.nll - nll32) / got.tokens as f64; // ln(ppl / ppl_fp32)
        let opts = ForwardOptions::generation(48);
        let g = greedy_agreement(&mut session(p, opts), &mut session(Precision::Fp32, opts), &prompts, 32).unwrap();
        eprintln!(
            "{p} against fp32 on {} held-out tokens: perplexity {:.3} vs {:.3} ({:+.4}%), mean KL {:.2e}, same top {:.2}%; \
             greedy: {}/{} agree on all 32 tokens, mean agreeing start {:.1}",
            got.tokens,
            got.value(),
            (nll32 / got.tokens as f64).exp(),
            100.0 * rel.exp_m1(),
            d.mean_kl(),
            d.same_top_percent(),
            g.whole,
            g.prompts,
            g.mean_leading()
        );
        assert!(rel.exp_m1().abs() < ppl_tol, "{p}: perplexity off by {:.4}%", 100.0 * rel.exp_m1());
        assert!(d.mean_kl() < kl_tol && d.mean_kl() > 0.0, "{p}: mean KL {}", d.mean_kl());
        assert!(g.whole >= whole, "{p}: only {}/{} greedy continuations agree", g.whole, g.prompts);
    }
}
