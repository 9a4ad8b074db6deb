//! The `lumind` binary end to end: init, logits, generate, info, and the
//! errors users see for bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use lumind::model::weights::Tensors;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lumind(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lumind")).args(args).current_dir(root()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn ok(args: &[&str]) -> String {
    let (good, out, err) = lumind(args);
    assert!(good, "lumind {args:?} failed: {err}");
    out
}

fn fails(args: &[&str]) -> String {
    let (good, _, err) = lumind(args);
    assert!(!good, "lumind {args:?} should fail");
    err
}

#[test]
fn init_logits_generate() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let l = dir.path().join("l.safetensors");
    let (w, l) = (w.to_str().unwrap(), l.to_str().unwrap());
    ok(&["init", "--model", "models/tiny.toml", "--seed", "4", "--out", w]);
    ok(&["logits", "--model", "models/tiny.toml", "--weights", w, "--tokens", "1,2,3", "--out", l]);
    let t = Tensors::load(Path::new(l)).unwrap();
    assert_eq!(t.get("logits").unwrap().0, vec![3, 6400]);
    // greedy is deterministic, with and without the text
    let a = ok(&[
        "generate",
        "--model",
        "models/tiny.toml",
        "--weights",
        w,
        "--tokens",
        "1,2,3",
        "--max-new-tokens",
        "5",
        "--json",
        "--ignore-eos",
    ]);
    let j: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(j["tokens"].as_array().unwrap().len(), 5);
    assert!(j["text"].is_string());
    let b = ok(&[
        "generate",
        "--model",
        "models/tiny.toml",
        "--weights",
        w,
        "--tokens",
        "1,2,3",
        "--max-new-tokens",
        "5",
        "--json",
        "--ignore-eos",
        "--fusion",
        "none",
    ]);
    assert_eq!(a, b);
    let text = ok(&[
        "generate",
        "--model",
        "models/tiny.toml",
        "--weights",
        w,
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0.8",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "1",
    ]);
    assert!(!text.trim().is_empty());
}

#[test]
fn info_json_is_a_transformers_config() {
    let j: serde_json::Value = serde_json::from_str(&ok(&["info", "--model", "models/minimind-moe.toml", "--json"])).unwrap();
    assert_eq!(j["architectures"][0], "LlamaForCausalLM");
    assert_eq!(j["hidden_size"], 640);
    assert_eq!(j["num_key_value_heads"], 8);
    assert_eq!(j["intermediate_size"], 1728);
    assert_eq!(j["use_moe"], true);
    assert_eq!(j["n_routed_experts"], 4);
    assert_eq!(j["num_experts_per_tok"], 2);
    assert_eq!(j["parameters"]["total"], 163052160);
    let p = &j["parameters"];
    let sum: u64 = ["embedding", "attention", "ffn", "norm", "lm_head"].iter().map(|k| p[k].as_u64().unwrap()).sum();
    assert_eq!(sum, p["total"].as_u64().unwrap());
    assert!(p["active"].as_u64().unwrap() < sum);
    let j: serde_json::Value = serde_json::from_str(&ok(&["info", "--model", "models/minimind-3.toml", "--json"])).unwrap();
    assert_eq!(j["architectures"][0], "Qwen3ForCausalLM");
    assert!(j.get("use_moe").is_none() && j["parameters"].get("active").is_none());
    let text = ok(&["info", "--model", "models/minimind-small-T.toml"]);
    assert!(text.contains("26.88M"), "{text}");
}

#[test]
fn bad_input_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, std::fs::read_to_string(root().join("models/tiny.toml")).unwrap() + "\nnum_layers = 3\n").unwrap();
    let e = fails(&["info", "--model", bad.to_str().unwrap()]);
    assert!(e.contains("bad.toml") && e.contains("unknown field `num_layers`"), "{e}");
    let e = fails(&["logits", "--model", "models/tiny.toml", "--weights", "nope.safetensors", "--tokens", "1", "--out", "x"]);
    assert!(e.contains("nope.safetensors"), "{e}");
    let e = fails(&[
        "logits",
        "--model",
        "models/tiny-llama.toml",
        "--weights",
        "tests/fixtures/oracle/tiny-qwen3.safetensors",
        "--tokens",
        "1",
        "--out",
        "x",
    ]);
    assert!(e.contains("tiny-qwen3.safetensors") && e.contains("tensor `"), "{e}");
    let e = fails(&[
        "logits",
        "--model",
        "models/tiny-llama.toml",
        "--weights",
        "tests/fixtures/oracle/tiny-llama.safetensors",
        "--tokens",
        "1,x",
        "--out",
        "x",
    ]);
    assert!(e.contains("`x` in --tokens is not a token id"), "{e}");
    let e = fails(&[
        "generate",
        "--model",
        "models/tiny-llama.toml",
        "--weights",
        "tests/fixtures/oracle/tiny-llama.safetensors",
        "--tokens",
        "1,999",
    ]);
    assert!(e.contains("token id 999"), "{e}");
    let e = fails(&[
        "generate",
        "--model",
        "models/tiny-llama.toml",
        "--weights",
        "tests/fixtures/oracle/tiny-llama.safetensors",
        "--tokens",
        "1",
        "--top-p",
        "0",
    ]);
    assert!(e.contains("top_p"), "{e}");
    let e = fails(&["logits", "--model", "models/tiny.toml", "--weights", "w", "--tokens", "1", "--out", "x", "--fusion", "max"]);
    assert!(e.contains("unknown fusion strategy `max`"), "{e}");
}

#[test]
fn prompts_longer_than_the_context_are_refused_with_both_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let w = w.to_str().unwrap();
    ok(&["init", "--model", "models/tiny.toml", "--seed", "4", "--out", w]);
    let ids = |n: usize| vec!["5"; n].join(",");
    let e = fails(&["generate", "--model", "models/tiny.toml", "--weights", w, "--tokens", &ids(2048)]);
    assert!(e.contains("2048 tokens") && e.contains("context of 2048"), "{e}");
    let e = fails(&["logits", "--model", "models/tiny.toml", "--weights", w, "--tokens", &ids(2049), "--out", "x"]);
    assert!(e.contains("2049 ids") && e.contains("context of 2048"), "{e}");
    // one under the context: exactly one new token, so the sequence fills the context
    let out = ok(&["generate", "--model", "models/tiny.toml", "--weights", w, "--tokens", &ids(2047), "--json", "--ignore-eos"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["tokens"].as_array().unwrap().len(), 1);
}

#[test]
fn absurd_model_sizes_are_errors_not_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(root().join("models/tiny.toml")).unwrap();
    let with = |key: &str, value: &str| {
        let text: Vec<String> =
            base.lines().map(|l| if l.starts_with(&format!("{key} =")) { format!("{key} = {value}") } else { l.into() }).collect();
        let p = dir.path().join(format!("{key}.toml"));
        std::fs::write(&p, text.join("\n")).unwrap();
        p.to_str().unwrap().to_string()
    };
    let e = fails(&["info", "--model", &with("num_hidden_layers", "100000000")]);
    assert!(e.contains("`num_hidden_layers` must be between 1 and 1024, got 100000000"), "{e}");
    let e = fails(&["init", "--model", &with("vocab_size", "1099511627776"), "--out", "x"]);
    assert!(e.contains("`vocab_size` must be between 1 and"), "{e}");
    let e = fails(&["info", "--model", &with("vocab_size", "9223372036854775808")]);
    assert!(e.contains("vocab_size"), "{e}");
    // a model that is valid but whose weights cannot fit this machine
    let big = with("hidden_size", "65536");
    let text = std::fs::read_to_string(&big)
        .unwrap()
        .replace("num_hidden_layers = 2", "num_hidden_layers = 1000")
        .replace("intermediate_size = 192", "intermediate_size = 262144");
    std::fs::write(&big, text).unwrap();
    let out = dir.path().join("big.safetensors");
    let e = fails(&["init", "--model", &big, "--out", out.to_str().unwrap()]);
    assert!(e.contains("GB of memory, more than this machine's"), "{e}");
    assert!(!out.exists());
    assert!(ok(&["info", "--model", &big]).contains("1000 layers"));
}

#[test]
fn profile_refuses_the_stage_jobs_it_cannot_build() {
    for job in ["sft", "lora", "dpo"] {
        let err = fails(&["profile", "--model", "models/tiny.toml", "--job", job, "--tokens", "8", "--runs", "1"]);
        assert!(err.contains(&format!("`profile --job {job}` is not supported")), "{err}");
    }
}

/// `--fusion search` in two processes sharing a cache directory: the first
/// times the ways of every matrix product of a decode step and saves the
/// choices; the second, after a restart, finds them all and times nothing.
#[test]
fn search_times_the_ways_once_and_its_cache_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_lumind"))
            .args(["--threads", "2", "inspect", "--model", "models/tiny.toml", "--job", "decode", "--fusion", "search", "--tokens", "8"])
            .args(["--out", dir.path().join(out).to_str().unwrap()])
            .env("LUMIND_SEARCH_CACHE", dir.path().join("cache"))
            .current_dir(root())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let timed = |report: &str| -> usize {
        let s = report.split(" calls timed").next().unwrap();
        s.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no count of timed calls in {report}"))
    };
    let cold = run("a");
    // every product of the step is a GEMV here, with its way and what every way took
    let lines: Vec<&str> = cold.lines().filter(|l| l.starts_with('#') && l.contains(" MatMul ")).collect();
    assert!(lines.len() >= 7, "{cold}");
    assert!(lines.iter().all(|l| l.contains(": gemv ") && l.contains("others (us): gemv")), "{cold}");
    assert!(!cold.contains("still searching"), "{cold}");
    assert!(timed(&cold) > 0, "{cold}");
    let files: Vec<_> = std::fs::read_dir(dir.path().join("cache")).unwrap().collect();
    assert_eq!(files.len(), 1, "one cache file for this machine");
    let warm = run("b");
    assert_eq!(timed(&warm), 0, "{warm}");
    let chosen =
        |r: &str| r.lines().filter(|l| l.starts_with('#')).map(|l| l.split(" us;").next().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(chosen(&cold), chosen(&warm), "the same ways, read back");
}
