//! Data-parallel training under `mpirun` (the `mpi` feature: `cargo test
//! --features mpi --test mpi`; needs OpenMPI's `mpirun`, which `.ci/run`
//! installs). Two ranks of one thread each, on loopback:
//!
//! - they follow one process of twice the batch: every logged loss within
//!   1e-5 relative (measured: 4e-7), gradient norms within 1e-3 (as
//!   tests/data_parallel.rs);
//! - a run killed after step 13 (checkpoints every 8) resumes under
//!   `mpirun` onto exactly the uninterrupted trajectory;
//! - SIGKILL to rank 1 ends the whole run within seconds, naming rank 1,
//!   and leaves a checkpoint that loads;
//! - Ctrl-C on `mpirun` (its SIGTERM to every rank a second later): rank 0
//!   saves once, and the resumed run equals the uninterrupted one;
//! - ranks started with different configs stop at once, saying so.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lumind::train::metrics::{read, Metrics};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config(dir: &Path, name: &str, batch: usize, steps: usize) -> PathBuf {
    let text = format!(
        "model = \"{root}/models/tiny.toml\"\nout = \"{out}\"\nseed = 7\n[data]\ntrain = \"{root}/data/pretrain.jsonl\"\nmax_seq_len = 64\n\
         [optim]\nlearning_rate = 3e-3\nbatch_size = {batch}\nmax_steps = {steps}\n[checkpoint]\nevery = 8\n",
        root = root().display(),
        out = dir.join(name).display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// `mpirun -np 2 lumind --threads 1 train --config CFG ARGS`.
fn mpirun(cfg: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    // (CI runs as root; two ranks on however many cores there are)
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c.args(["--oversubscribe", "-np", "2", env!("CARGO_BIN_EXE_lumind"), "--threads", "1", "train", "--config"]);
    c.arg(cfg).args(args).current_dir(root());
    c
}

fn single(cfg: &Path) -> Vec<Metrics> {
    let out = Command::new(env!("CARGO_BIN_EXE_lumind")).args(["--threads", "1", "train", "--config"]).arg(cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    read(&cfg.with_extension("")).unwrap()
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().expect("mpirun (OpenMPI's mpirun must be on PATH for the `mpi` feature's tests)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

fn bits(m: &[Metrics]) -> Vec<(u64, u32, u32)> {
    m.iter().map(|x| (x.step, x.loss.to_bits(), x.grad_norm.to_bits())).collect()
}

#[test]
fn two_mpi_ranks_follow_one_process_and_resume_exactly() {
    let d = tempfile::tempdir().unwrap();
    let one = single(&config(d.path(), "one", 4, 24));
    let cfg = config(d.path(), "two", 2, 24);
    let text = run_ok(mpirun(&cfg, &[]));
    assert!(text.contains("on each of 2 ranks (MPI)"), "{text}");
    let two = read(&d.path().join("two")).unwrap();
    assert_eq!(two.len(), 24);
    let mut worst = 0f32;
    for (x, y) in one.iter().zip(&two) {
        assert_eq!((x.step, y.ranks), (y.step, 2));
        worst = worst.max((x.loss - y.loss).abs() / x.loss);
        assert!((x.grad_norm - y.grad_norm).abs() <= 1e-3 * x.grad_norm, "step {}: norms {} vs {}", x.step, x.grad_norm, y.grad_norm);
    }
    println!("mpirun -np 2 x batch 2 vs 1 x 4: worst relative loss difference {worst:.2e}");
    assert!(worst <= 1e-5, "losses differ by {worst:.2e}");

    // killed without cleanup after step 13; the checkpoint of step 8 resumes
    let cfg = config(d.path(), "killed", 2, 24);
    let out = mpirun(&cfg, &[]).env("LUMIND_TEST_ABORT_AFTER_STEP", "13").stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    assert!(!out.success(), "the run should have died");
    run_ok(mpirun(&cfg, &["--resume"]));
    assert_eq!(bits(&read(&d.path().join("killed")).unwrap()), bits(&two), "resumed under mpirun, the trajectory must not change");
}

#[test]
fn ranks_started_with_different_configs_stop_at_once() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (config(d.path(), "a", 2, 4), config(d.path(), "b", 3, 4));
    // MPMD: rank 0 reads a.toml, rank 1 b.toml
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    let bin = env!("CARGO_BIN_EXE_lumind");
    c.args(["--oversubscribe", "-np", "1", bin, "train", "--config"]).arg(&a).args([":", "-np", "1", bin, "train", "--config"]).arg(&b);
    let t = Instant::now();
    let out = c.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && t.elapsed() < Duration::from_secs(60), "{text}");
    assert!(text.contains("error on rank") && text.contains("the ranks disagree on the config"), "{text}");
    assert!(!d.path().join("a/checkpoint.safetensors").exists());
}

/// The pid of the process of rank `rank` training `cfg`.
fn rank_pid(cfg: &Path, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let has = |hay: &[u8], s: &str| hay.split(|&b| b == 0).any(|w| w == s.as_bytes());
        (has(&cmd, cfg.to_str()?) && has(&env, &want) && !has(&cmd, "mpirun")).then_some(pid)
    })
}

fn wait_for_rows(out: &Path, rows: usize) {
    let t = Instant::now();
    while read(out).map_or(0, |m| m.len()) < rows {
        assert!(t.elapsed() < Duration::from_secs(120), "the run never reached {rows} steps");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_rank_ends_the_run_and_ctrl_c_saves_once() {
    let d = tempfile::tempdir().unwrap();
    // SIGKILL to rank 1 mid-run
    let cfg = config(d.path(), "kill", 2, 100_000);
    let child = mpirun(&cfg, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_rows(&d.path().join("kill"), 10);
    let pid = rank_pid(&cfg, 1).expect("rank 1 is running");
    let t = Instant::now();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("killed rank 1: mpirun exited {:?} after {:.1}s", out.status.code(), t.elapsed().as_secs_f64());
    assert!(!out.status.success() && t.elapsed() < Duration::from_secs(30), "{text}");
    assert!(text.contains("rank 1"), "mpirun names the rank that died: {text}");
    let leftovers: Vec<_> = std::fs::read_dir(d.path().join("kill")).unwrap().flatten().map(|e| e.file_name()).collect();
    if d.path().join("kill/checkpoint.safetensors").exists() {
        let st = lumind::model::weights::Tensors::load_metadata(&d.path().join("kill/checkpoint.safetensors")).unwrap();
        assert!(st.contains_key("lumind_run_state"), "{leftovers:?}");
    }

    // Ctrl-C on mpirun: every rank gets SIGTERM a second later
    let full = config(d.path(), "full", 2, 400);
    run_ok(mpirun(&full, &[]));
    let cfg = config(d.path(), "int", 2, 400);
    let child = mpirun(&cfg, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_rows(&d.path().join("int"), 20);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let saved = read(&d.path().join("int")).unwrap().len();
    println!("Ctrl-C: saved at step {saved} of 400");
    assert!(text.matches("interrupted at step").count() == 1 && saved < 400, "rank 0 saves once: {text}");
    run_ok(mpirun(&cfg, &["--resume"]));
    assert_eq!(bits(&read(&d.path().join("int")).unwrap()), bits(&read(&d.path().join("full")).unwrap()));
}
