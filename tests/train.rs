//! Training end to end through the `lumind` binary: the loss falls, a run
//! killed mid-way resumes onto exactly the trajectory of an uninterrupted
//! run, Ctrl-C checkpoints and exits with 130 (and resumes exactly, even in
//! the middle of gradient accumulation), a NaN loss stops the run and keeps
//! the last good checkpoint, bad data lines are reported, absurd settings
//! are refused before step 1, and a run directory holds one run at a time.

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
    assert_eq!(out.status.code(), Some(130), "Ctrl-C saves, then exits with 130: {err}");
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
    std::fs::write(&cfg, text.replace("[optim]", "on_bad_line = \"fail\"\n[optim]")).unwrap();
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

/// `config` with the data file and extra `[data]` lines replaced.
fn with_data(cfg: &Path, data: &Path, extra_data: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let text = text
        .replace(&format!("{}/data/pretrain.jsonl", root().display()), data.to_str().unwrap())
        .replace("max_seq_len = 64", &format!("max_seq_len = 64\n{extra_data}"));
    std::fs::write(cfg, text).unwrap();
}

#[test]
fn invalid_utf8_is_a_bad_line_for_training_and_the_tokenizer() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data.jsonl");
    let mut bytes = b"{\"text\": \"hello there\"}\n{\"text\": \"bad \xff byte\"}\n".to_vec();
    for i in 0..10 {
        bytes.extend_from_slice(format!("{{\"text\": \"line number {i} of the corpus\"}}\n").as_bytes());
    }
    std::fs::write(&data, &bytes).unwrap();
    let cfg = config(d.path(), "epochs = 2", 10);
    with_data(&cfg, &data, "");
    let out = lumind(&["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("data.jsonl:2: not valid UTF-8") && err.contains("skipped"), "{err}");
    assert_eq!(read(&d.path().join("run")).unwrap().len(), 6, "every step ran, over every record (2 epochs of 3 batches)");
    // under "fail" the run stops before step 1
    std::fs::remove_dir_all(d.path().join("run")).unwrap();
    with_data(&cfg, &data, "on_bad_line = \"fail\"");
    let out = lumind(&["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("data.jsonl:2: not valid UTF-8"), "{err}");
    assert!(!d.path().join("run/metrics.jsonl").exists());
    // and the tokenizer trainer skips it too
    let tok = d.path().join("tok");
    let out = lumind(&["tokenizer", "train", "--input", data.to_str().unwrap(), "--vocab-size", "300", "--out", tok.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("data.jsonl:2: not valid UTF-8"), "{err}");
}

/// An SFT config for the tiny chat model on `data`.
fn sft_config(dir: &Path, data: &Path, max_seq_len: usize, optim: &str) -> PathBuf {
    let text = format!(
        "stage = \"sft\"\nmodel = \"{root}/models/tiny-chat.toml\"\nout = \"{out}\"\n[data]\ntrain = \"{data}\"\nmax_seq_len = {max_seq_len}\n[optim]\nlearning_rate = 1e-3\n{optim}\n",
        root = root().display(),
        out = dir.join("run").display(),
        data = data.display()
    );
    let p = dir.join("sft.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn sft_records_with_nothing_to_score_are_skipped_and_never_nan() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("sft.jsonl");
    let long = serde_json::json!({"conversations": [{"role": "user", "content": "why ".repeat(200)}, {"role": "assistant", "content": "because"}]});
    let short = serde_json::json!({"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]});
    std::fs::write(&data, format!("{long}\n{long}\n{short}\n{long}\n")).unwrap();
    // batches of one: some hold only a record whose prompt fills max_seq_len
    let cfg = sft_config(d.path(), &data, 48, "batch_size = 1\nepochs = 2");
    let out = lumind(&["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("sft.jsonl:1: no assistant token is left within max_seq_len (48); the record is skipped"), "{err}");
    assert!(err.contains("3 records had no assistant token"), "{err}");
    let m = read(&d.path().join("run")).unwrap();
    assert_eq!(m.len(), 8);
    assert!(m.iter().all(|x| x.loss.is_finite()), "{:?}", losses(&m));
    assert!(m.iter().any(|x| x.loss == 0.0) && m.iter().any(|x| x.loss > 1.0), "{:?}", losses(&m));
}

#[test]
fn a_torn_metrics_line_does_not_block_resume() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), "max_steps = 4", 2);
    let st = lumind(&["train", "--config", cfg.to_str().unwrap(), "--max-steps", "3"]).stderr(Stdio::null()).status().unwrap();
    assert!(st.success());
    let run = d.path().join("run");
    // as a full disk leaves it: half a row, no newline
    let mut text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.push_str("{\"step\": 4, \"micro_st");
    std::fs::write(run.join("metrics.jsonl"), text).unwrap();
    // and a temp file of a killed writer
    std::fs::write(run.join(".checkpoint.safetensors.tmp4194305"), b"partial").unwrap();
    let out = lumind(&["train", "--config", cfg.to_str().unwrap(), "--resume"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("metrics.jsonl:4: the last line is cut short"), "{err}");
    assert!(err.contains("removed 1 temporary files"), "{err}");
    assert!(!run.join(".checkpoint.safetensors.tmp4194305").exists());
    assert_eq!(read(&run).unwrap().iter().map(|m| m.step).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    // a bad line before the last is an error that names the file and line
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().replacen("{", "{oops", 1);
    std::fs::write(run.join("metrics.jsonl"), text).unwrap();
    let out = lumind(&["train", "--config", cfg.to_str().unwrap(), "--resume", "--max-steps", "5"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("metrics.jsonl:1: not a metrics row"), "{err}");
}

#[test]
fn one_run_per_directory() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), "max_steps = 100000", 1000);
    let mut first = lumind(&["train", "--config", cfg.to_str().unwrap()]).stderr(Stdio::null()).spawn().unwrap();
    let run = d.path().join("run");
    let t = Instant::now();
    while read(&run).map(|m| m.len()).unwrap_or(0) < 1 {
        assert!(t.elapsed() < Duration::from_secs(120), "training did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = lumind(&["train", "--config", cfg.to_str().unwrap(), "--resume"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("in use by another run (process {}", first.id())), "{err}");
    Command::new("kill").args(["-INT", &first.id().to_string()]).status().unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(130));
    // once it has ended, the directory is free
    let st = lumind(&["train", "--config", cfg.to_str().unwrap(), "--resume", "--max-steps", "2"]).stderr(Stdio::null()).status().unwrap();
    assert!(st.success() || read(&run).unwrap().len() >= 2);
}

#[test]
fn ctrl_c_in_the_middle_of_accumulation_resumes_exactly() {
    let a = tempfile::tempdir().unwrap();
    let cfg = config(a.path(), "max_steps = 4\naccumulation_steps = 4", 100);
    assert!(lumind(&["train", "--config", cfg.to_str().unwrap()]).stderr(Stdio::null()).status().unwrap().success());
    let full = read(&a.path().join("run")).unwrap();
    let b = tempfile::tempdir().unwrap();
    let cfg = config(b.path(), "max_steps = 4\naccumulation_steps = 4", 100);
    // as if Ctrl-C came during micro-step 6: the second optimizer step is half done
    let out = lumind(&["train", "--config", cfg.to_str().unwrap()]).env("LUMIND_TEST_INTERRUPT_AT_MICRO_STEP", "6").output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("micro-step 6"));
    assert!(lumind(&["train", "--config", cfg.to_str().unwrap(), "--resume"]).stderr(Stdio::null()).status().unwrap().success());
    let resumed = read(&b.path().join("run")).unwrap();
    let exact = |m: &[Metrics]| m.iter().map(|x| (x.step, x.loss.to_bits(), x.grad_norm.to_bits(), x.tokens)).collect::<Vec<_>>();
    assert_eq!(exact(&resumed), exact(&full), "the logged steps after resume must equal the uninterrupted run's");
    let wa = std::fs::read(a.path().join("run/model.safetensors")).unwrap();
    assert!(wa == std::fs::read(b.path().join("run/model.safetensors")).unwrap());
}

#[test]
fn absurd_settings_are_refused_before_step_one() {
    let d = tempfile::tempdir().unwrap();
    for (optim, data, want) in [
        ("accumulation_steps = 100000000000", "", "`optim.accumulation_steps` must be between 1 and"),
        ("accumulation_steps = 100000", "", "exceeds the"),
        ("grad_clip = nan", "", "`optim.grad_clip` must be a finite number"),
        ("grad_clip = -1.0", "", "`optim.grad_clip`"),
        ("learning_rate_unused = 1", "", "unknown field"),
        ("weight_decay = inf", "", "`optim.weight_decay`"),
        ("", "max_seq_len = 100000000", "`data.max_seq_len` must be between 2 and"),
        ("", "max_seq_len = 4096", "exceeds the context of model `tiny`"),
        ("", "max_seq_len = 2048\nbatch_size_placeholder", "GB of memory"),
    ] {
        let cfg = config(d.path(), optim, 10);
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text = if data.is_empty() { text } else { text.replace("max_seq_len = 64", data) };
        let text = if data.contains("placeholder") {
            text.replace("\nbatch_size_placeholder", "").replace("batch_size = 4", "batch_size = 60000")
        } else {
            text
        };
        std::fs::write(&cfg, text).unwrap();
        let out = lumind(&["train", "--config", cfg.to_str().unwrap()]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{optim} {data}: {err}");
        assert!(!d.path().join("run/metrics.jsonl").exists(), "{optim} {data}: a step ran");
    }
}

/// Run a command to its end; its peak resident memory in bytes.
#[allow(clippy::zombie_processes)] // (wait4 reaps it, with its resource usage)
fn peak_memory(mut c: Command) -> (bool, u64, String) {
    let child = c.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut err = child.stderr.unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).unwrap();
        s
    });
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, usage.ru_maxrss as u64 * 1024, reader.join().unwrap())
}

#[test]
fn a_10_mb_record_costs_what_max_seq_len_tokens_do() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data.jsonl");
    let mut text = serde_json::json!({"text": "all work and no play makes jack a dull boy ".repeat(250_000)}).to_string();
    text.push('\n');
    for i in 0..8 {
        text.push_str(&format!("{{\"text\": \"a short line, number {i}\"}}\n"));
    }
    std::fs::write(&data, text).unwrap();
    let cfg = config(d.path(), "max_steps = 3", 10);
    with_data(&cfg, &data, "");
    let (ok, peak, err) = peak_memory(lumind(&["train", "--config", cfg.to_str().unwrap()]));
    assert!(ok, "{err}");
    // (tokenizing the whole 10 MB record took about 1.5 GB)
    assert!(peak < 400 << 20, "training on a 10 MB record peaked at {} MB", peak >> 20);
}
