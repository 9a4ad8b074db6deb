//! Mixed-precision training (`precision = "bf16"` in a training config):
//! matrix products in bf16 where the CPU has AVX512-BF16, everything else
//! (weights, gradients, AdamW's state, norms, softmax, the loss,
//! checkpoints) in f32. A 200-step pretraining run tracks the fp32 run on
//! the same batches, and resuming it is exact.

mod common;

use std::path::Path;
use std::process::Command;

use common::root;
use lumind::compilers::kernels::bf16_gemm;

/// Train the tiny model on the shipped corpus into `dir/run` for `steps`
/// steps (checkpointing every 20) in `precision`, or resume it, or die
/// (abort) after step `abort_after`; the loss of every step logged.
fn train(dir: &Path, precision: &str, steps: usize, resume: bool, abort_after: Option<usize>) -> Vec<f64> {
    let cfg = dir.join("job.toml");
    let text = format!(
        "model = \"{root}/models/tiny.toml\"\nout = \"{out}\"\nseed = 3\nprecision = \"{precision}\"\n\
         [data]\ntrain = \"{root}/data/pretrain.jsonl\"\nmax_seq_len = 128\n\
         [optim]\nlearning_rate = 3e-3\nbatch_size = 8\nmax_steps = {steps}\nwarmup_steps = 10\n[checkpoint]\nevery = 20\n",
        root = root().display(),
        out = dir.join("run").display()
    );
    std::fs::write(&cfg, text).unwrap();
    let mut args = vec!["train", "--config", cfg.to_str().unwrap()];
    if resume {
        args.push("--resume");
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lumind"));
    if let Some(n) = abort_after {
        cmd.env("LUMIND_TEST_ABORT_AFTER_STEP", n.to_string());
    }
    let out = cmd.args(&args).output().unwrap();
    assert_eq!(out.status.success(), abort_after.is_none(), "training in {precision}: {}", String::from_utf8_lossy(&out.stderr));
    let metrics = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect()
}

#[test]
fn bf16_pretraining_tracks_fp32_and_resumes_exactly() {
    let in_bf16 = bf16_gemm::available();
    eprintln!(
        "mixed precision: products in {}",
        if in_bf16 { "bf16 (AVX512-BF16)" } else { "f32 (no AVX512-BF16 on this CPU: bf16 runs fp32's products)" }
    );
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fp32 = train(a.path(), "fp32", 200, false, None);
    let bf16 = train(b.path(), "bf16", 200, false, None);
    assert_eq!((fp32.len(), bf16.len()), (200, 200));
    // after the warm-up (10 steps), every step's loss within 1% of fp32's
    // on the same batch (measured: at most 0.34% on Zen 4)
    let worst = (10..200).map(|i| ((bf16[i] - fp32[i]) / fp32[i]).abs()).fold(0f64, f64::max);
    eprintln!(
        "bf16 against fp32 over 200 steps: loss {:.4} -> {:.4} vs {:.4} -> {:.4}, worst step {:.3}%",
        bf16[0],
        bf16[199],
        fp32[0],
        fp32[199],
        100.0 * worst
    );
    assert!(worst < 0.01, "bf16 loss strays {:.3}% from fp32's", 100.0 * worst);
    assert!(fp32[199] < 0.8 * fp32[0], "fp32 did not learn: {} -> {}", fp32[0], fp32[199]);
    if in_bf16 {
        assert!(bf16 != fp32, "bf16 training gave fp32's losses bit for bit: its products did not run in bf16");
    }
    // checkpoints are f32: a run killed after step 47 (its last checkpoint
    // at 40) and resumed follows the uninterrupted one bit for bit
    let c = tempfile::tempdir().unwrap();
    assert_eq!(train(c.path(), "bf16", 200, false, Some(47)).len(), 47);
    let resumed = train(c.path(), "bf16", 200, true, None);
    assert_eq!(resumed.len(), 200);
    for i in 0..200 {
        assert_eq!(resumed[i].to_bits(), bf16[i].to_bits(), "step {i}: resumed {} vs straight {}", resumed[i], bf16[i]);
    }
}

#[test]
fn q8_training_is_refused_naming_the_precision() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("job.toml");
    let text = format!(
        "model = \"{root}/models/tiny.toml\"\nout = \"{out}\"\nprecision = \"q8\"\n[data]\ntrain = \"{root}/data/pretrain.jsonl\"\nmax_seq_len = 64\n\
         [optim]\nlearning_rate = 3e-3\nbatch_size = 2\nmax_steps = 2\n",
        root = root().display(),
        out = d.path().join("run").display()
    );
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lumind")).args(["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("precision q8 is for inference"), "{err}");
    assert!(!d.path().join("run/checkpoint.safetensors").exists());
}
