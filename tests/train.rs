//! Training end to end through the `lumind` binary: the loss falls, a run
//! killed mid-way resumes onto exactly the trajectory of an uninterrupted
//! run, Ctrl-C checkpoints and exits cleanly, a NaN loss stops the run and
//! keeps the last good checkpoint, bad data lines are reported.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lumind::train::metrics::{read, Metrics};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A config for the tiny model on the shipped corpus, written into `dir`.
fn config(dir: &Path, extra_optim: &str, every: usize) -> PathBuf {
    let text = format!(
        r#"model = "{root}/models/tiny.toml"
out = "{out}"
seed = 7
[data]
train = "{root}/data/pretrain.jsonl"
max_seq_len = 64
[optim]
learning_rate = 3e-3
batch_size = 4
{extra_optim}
[checkpoint]
every = {every}
"#,
        root = root().display(),
        out = dir.join("run").display()
    );
    let p = dir.join("job.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn lumind(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lumind"));
    c.args(args).current_dir(root());
    c
}

fn losses(m: &[Metrics]) -> Vec<(u64, f32)> {
    m.iter().map(|x| (x.step, x.loss)).collect()
}

#[test]
fn loss_falls_and_resume_is_exact() {
    // uninterrupted
    let a = tempfile::tempdir().unwrap();
    let cfg = config(a.path(), "max_steps = 24", 8);
    let st = lumind(&["train", "--config", cfg.to_str().unwrap()]).status().unwrap();
    assert!(st.success());
    let full = read(&a.path().join("run")).unwrap();
    assert_eq!(full.len(), 24);
    let first: f32 = full[..4].iter().map(|m| m.loss).sum::<f32>() / 4.0;
    let last: f32 = full[20..].iter().map(|m| m.loss).sum::<f32>() / 4.0;
    assert!(last < first - 0.5, "loss should fall: {first} -> {last}");
    assert!(a.path().join("run/loss.svg").exists() && a.path().join("run/model.safetensors").exists());

    // killed (abort, no cleanup) after step 13, two steps past the last
    // checkpoint at 8... and at 16 never reached; then resumed
    let b = tempfile::tempdir().unwrap();
    let cfg = config(b.path(), "max_steps = 24", 8);
    let st = lumind(&["train", "--config", cfg.to_str().unwrap()])
        .env("LUMIND_TEST_ABORT_AFTER_STEP", "13")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success(), "the run should have died");
    assert_eq!(read(&b.path().join("run")).unwrap().len(), 13);
    let st = lumind(&["train", "--config", cfg.to_str().unwrap(), "--resume"]).status().unwrap();
    assert!(st.success());
    let resumed = read(&b.path().join("run")).unwrap();
    assert_eq!(losses(&resumed), losses(&full), "resumed trajectory must equal the uninterrupted one");
    let wa = std::fs::read(a.path().join("run/model.safetensors")).unwrap();
    let wb = std::fs::read(b.path().join("run/model.safetensors")).unwrap();
    assert!(wa == wb, "final weights must be identical");

    // starting over an existing run needs --resume; a changed config refuses to resume
    let out = lumind(&["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --resume"));
    let changed = std::fs::read_to_string(&cfg).unwrap().replace("learning_rate = 3e-3", "learning_rate = 1e-3");
    std::fs::write(&cfg, changed).unwrap();
    let out = lumind(&["train", "--config", cfg.to_str().unwrap(), "--resume"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("different config"));
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), "max_steps = 100000", 1000);
    let child = lumind(&["train", "--config", cfg.to_str().unwrap()]).stderr(Stdio::piped()).spawn().unwrap();
    let run = d.path().join("run");
    let t = Instant::now();
    while read(&run).map(|m| m.len()).unwrap_or(0) < 3 {
        assert!(t.elapsed() < Duration::from_secs(120), "training did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "Ctrl-C should exit cleanly: {err}");
    assert!(err.contains("checkpoint saved"), "{err}");
    let steps = read(&run).unwrap().len();
    assert!(run.join("checkpoint.safetensors").exists());
    // and the run continues from there
    let st = lumind(&["train", "--config", cfg.to_str().unwrap(), "--resume", "--max-steps", &(steps + 2).to_string()]).status().unwrap();
    assert!(st.success());
    assert_eq!(read(&run).unwrap().len(), steps + 2);
}

#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), "max_steps = 10", 1);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("learning_rate = 3e-3", "learning_rate = 1e30\ngrad_clip = 0.0");
    std::fs::write(&cfg, text).unwrap();
    let out = lumind(&["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(" is NaN at step") || err.contains(" is inf at step"), "{err}");
    assert!(err.contains("The last good checkpoint (step"), "{err}");
    assert!(d.path().join("run/checkpoint.safetensors").exists());
}

#[test]
fn bad_lines_are_reported_with_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data.jsonl");
    std::fs::write(&data, "{\"text\": \"hello there\"}\nnot json\n{\"txt\": 1}\n{\"text\": \"general kenobi\"}\n").unwrap();
    let cfg = config(d.path(), "max_steps = 2", 10);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(&format!("{}/data/pretrain.jsonl", root().display()), data.to_str().unwrap());
    std::fs::write(&cfg, &text).unwrap();
    let out = lumind(&["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("data.jsonl:2: not valid JSON") && err.contains("data.jsonl:3: no field `text`"), "{err}");
    std::fs::write(&cfg, text.replace("[optim]", "on_bad_line = \"fail\"\n[optim]").replace("[data]\n", "[data]\n")).unwrap();
    let fixed = std::fs::read_to_string(&cfg).unwrap();
    // move on_bad_line into [data]
    let fixed =
        fixed.replace("on_bad_line = \"fail\"\n[optim]", "[optim]").replace("max_seq_len = 64", "max_seq_len = 64\non_bad_line = \"fail\"");
    std::fs::write(&cfg, fixed).unwrap();
    std::fs::remove_dir_all(d.path().join("run")).unwrap();
    let out = lumind(&["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("data.jsonl:2: not valid JSON"), "{err}");
}

#[test]
fn tokenizer_training_gives_minimind_special_tokens() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("tok");
    let st = lumind(&["tokenizer", "train", "--input", "data/pretrain_eval.jsonl", "--vocab-size", "400", "--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let tok = lumind::tokenizer::Tokenizer::load(&out).unwrap();
    assert_eq!((tok.pad, tok.bos, tok.eos), (0, 1, 2));
    assert_eq!(tok.vocab_size(), 400);
    let text = "Shall I compare thee to a summer's day? 春风不相识";
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>").unwrap();
    assert_eq!((ids[0], *ids.last().unwrap()), (1, 2), "special tokens are single ids");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(cfg["chat_template"].as_str().unwrap().contains("<|im_start|>"));
}
