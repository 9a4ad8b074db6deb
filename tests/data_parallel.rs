//! Data-parallel training without MPI: `LUMIND_TEST_THREAD_RANKS=N` runs N
//! ranks as threads of one `lumind train`, over the same `AllReduce` node
//! and trainer code that MPI ranks use (tests/mpi.rs runs them under
//! `mpirun`).
//!
//! - N ranks of batch b follow one process of batch N x b: every logged
//!   loss within 1e-5 relative, gradient norms within 1e-3 relative, final
//!   weights within 1e-4 absolute (float summation order is all that
//!   differs, and Adam amplifies it in its smallest gradients; measured over
//!   30 steps: loss 6e-7, norms 1.1e-4). Pretraining, DPO, and an epoch whose last batch
//!   leaves a rank with no rows.
//! - Gradient accumulation of k micro-batches equals one batch k times as
//!   large, to the same tolerance; `loss_mean = "micro_batches"`
//!   (MiniMind's mean of means) measurably does not.
//! - Ctrl-C under two ranks saves once; resuming with two ranks continues
//!   the trajectory exactly; resuming with one is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use lumind::model::weights::Tensors;
use lumind::train::metrics::{read, Metrics};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lumind(ranks: usize) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lumind"));
    c.current_dir(root()).arg("--threads").arg("1");
    if ranks > 1 {
        c.env("LUMIND_TEST_THREAD_RANKS", ranks.to_string());
    }
    c
}

/// A pretraining config for the tiny model, written into `dir/NAME.toml`.
fn pretrain(dir: &Path, name: &str, data: &Path, optim: &str) -> PathBuf {
    let text = format!(
        "model = \"{root}/models/tiny.toml\"\nout = \"{out}\"\nseed = 7\n[data]\ntrain = \"{data}\"\nmax_seq_len = 64\n\
         [optim]\nlearning_rate = 3e-3\n{optim}\n[checkpoint]\nevery = 4\n",
        root = root().display(),
        out = dir.join(name).display(),
        data = data.display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn train(ranks: usize, cfg: &Path, extra: &[&str]) -> Vec<Metrics> {
    let out = lumind(ranks).arg("train").arg("--config").arg(cfg).args(extra).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{} ranks, {}: {err}", ranks, cfg.display());
    read(&cfg.with_extension("")).unwrap()
}

/// Worst relative difference of the losses step by step, after checking
/// the runs log the same steps.
fn worst(a: &[Metrics], b: &[Metrics]) -> f32 {
    assert_eq!(a.iter().map(|m| m.step).collect::<Vec<_>>(), b.iter().map(|m| m.step).collect::<Vec<_>>());
    a.iter().zip(b).map(|(x, y)| (x.loss - y.loss).abs() / x.loss.abs()).fold(0.0, f32::max)
}

fn assert_follows(one: &[Metrics], many: &[Metrics], what: &str) {
    let w = worst(one, many);
    println!("{what}: worst relative loss difference {w:.2e} over {} steps", one.len());
    assert!(w <= 1e-5, "{what}: losses differ by {w:.2e} relative");
    for (x, y) in one.iter().zip(many) {
        assert!(
            (x.grad_norm - y.grad_norm).abs() <= 1e-3 * x.grad_norm.abs(),
            "{what}: step {} norms {} vs {}",
            x.step,
            x.grad_norm,
            y.grad_norm
        );
    }
}

fn assert_same_weights(a: &Path, b: &Path) {
    let (a, b) = (Tensors::load(&a.join("model.safetensors")).unwrap(), Tensors::load(&b.join("model.safetensors")).unwrap());
    let mut worst = 0f32;
    for (name, (shape, x)) in &a.0 {
        let (s, y) = &b.0[name];
        assert_eq!(shape, s, "{name}");
        worst = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(worst, f32::max);
    }
    println!("final weights: worst absolute difference {worst:.2e}");
    assert!(worst <= 1e-4, "final weights differ by {worst}");
}

#[test]
fn two_ranks_follow_one_process_of_twice_the_batch() {
    let d = tempfile::tempdir().unwrap();
    let data = root().join("data/pretrain.jsonl");
    let one = train(1, &pretrain(d.path(), "one", &data, "batch_size = 4\nmax_steps = 30"), &[]);
    let two = train(2, &pretrain(d.path(), "two", &data, "batch_size = 2\nmax_steps = 30"), &[]);
    assert_eq!(two.len(), 30);
    assert!(two.iter().all(|m| m.ranks == 2) && one.iter().all(|m| m.ranks == 1));
    assert_follows(&one, &two, "pretrain, 2 ranks x 2 rows vs 1 x 4");
    assert_same_weights(&d.path().join("one"), &d.path().join("two"));
}

#[test]
fn accumulation_equals_one_larger_batch() {
    let d = tempfile::tempdir().unwrap();
    let data = root().join("data/pretrain.jsonl");
    let big = train(1, &pretrain(d.path(), "big", &data, "batch_size = 4\nmax_steps = 12"), &[]);
    let acc = train(1, &pretrain(d.path(), "acc", &data, "batch_size = 2\naccumulation_steps = 2\nmax_steps = 12"), &[]);
    assert_follows(&big, &acc, "batch 2 x 2 accumulation steps vs batch 4");
    // two ranks, each accumulating two micro-batches of two: one batch of 8
    let big8 = train(1, &pretrain(d.path(), "big8", &data, "batch_size = 8\nmax_steps = 6"), &[]);
    let both = train(2, &pretrain(d.path(), "both", &data, "batch_size = 2\naccumulation_steps = 2\nmax_steps = 6"), &[]);
    assert_follows(&big8, &both, "2 ranks x 2 accumulation steps x 2 rows vs 1 x 8");
    // MiniMind's mean of micro-batch means weighs rows unequally
    let means = train(
        1,
        &pretrain(d.path(), "means", &data, "batch_size = 2\naccumulation_steps = 2\nmax_steps = 12\nloss_mean = \"micro_batches\""),
        &[],
    );
    let w = worst(&big, &means);
    println!("loss_mean = micro_batches vs batch 4: {w:.2e}");
    assert!(w > 1e-4, "the mean of means should differ from one batch on rows of varied length, got {w:.2e}");
}

#[test]
fn a_rank_left_without_rows_at_an_epoch_end_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    // 10 records: each epoch is a batch of 8, then 2, which two ranks of 4
    // split as 2 and none
    let text = std::fs::read_to_string(root().join("data/pretrain.jsonl")).unwrap();
    let data = d.path().join("ten.jsonl");
    std::fs::write(&data, text.lines().take(10).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let one = train(1, &pretrain(d.path(), "one", &data, "batch_size = 8\nepochs = 3"), &[]);
    let two = train(2, &pretrain(d.path(), "two", &data, "batch_size = 4\nepochs = 3"), &[]);
    assert_eq!(one.len(), 6);
    assert_follows(&one, &two, "epoch tails, 2 ranks x 4 vs 1 x 8");
}

#[test]
fn dpo_pairs_split_across_ranks() {
    let d = tempfile::tempdir().unwrap();
    let weights = d.path().join("init.safetensors");
    let model = root().join("models/tiny-chat.toml");
    let st = lumind(1).args(["init", "--model"]).arg(&model).arg("--out").arg(&weights).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let cfg = |name: &str, batch: usize| {
        let text = format!(
            "stage = \"dpo\"\nmodel = \"{}\"\nweights = \"{}\"\nout = \"{}\"\n[data]\ntrain = \"{}\"\nmax_seq_len = 96\n\
             [optim]\nlearning_rate = 1e-3\nbatch_size = {batch}\nmax_steps = 5\n",
            model.display(),
            weights.display(),
            d.path().join(name).display(),
            root().join("data/dpo.jsonl").display()
        );
        let p = d.path().join(format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    };
    let one = train(1, &cfg("one", 2), &[]);
    let two = train(2, &cfg("two", 1), &[]);
    assert_follows(&one, &two, "DPO, 2 ranks x 1 pair vs 1 x 2");
    for (x, y) in one.iter().zip(&two) {
        assert!((x.reward_margin.unwrap() - y.reward_margin.unwrap()).abs() <= 1e-5, "step {}: reward margins differ", x.step);
    }
}

#[test]
fn ctrl_c_under_two_ranks_resumes_exactly() {
    let d = tempfile::tempdir().unwrap();
    let data = root().join("data/pretrain.jsonl");
    let full = train(2, &pretrain(d.path(), "full", &data, "batch_size = 2\nmax_steps = 12"), &[]);
    let cfg = pretrain(d.path(), "cut", &data, "batch_size = 2\nmax_steps = 12");
    let out = lumind(2).arg("train").arg("--config").arg(&cfg).env("LUMIND_TEST_INTERRUPT_AT_MICRO_STEP", "7").output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("interrupted at step 7").count(), 1, "rank 0 alone reports it: {err}");
    assert_eq!(read(&d.path().join("cut")).unwrap().len(), 7);
    // one process cannot take over a two-rank run
    let out = lumind(1).arg("train").arg("--config").arg(&cfg).arg("--resume").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("written by a run of 2 rank(s), this one has 1"), "{err}");
    let resumed = train(2, &cfg, &["--resume"]);
    let bits = |m: &[Metrics]| m.iter().map(|x| (x.step, x.loss.to_bits(), x.grad_norm.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&resumed), bits(&full), "the resumed two-rank run must equal the uninterrupted one");
}
