//! Using a model: export to / import from transformers (checked against the
//! fixture tools/reference/check_export.py wrote from transformers), bundled
//! executables, the terminal chat, and scoring.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lumind::compilers::Fusion;
use lumind::export::{export, import};
use lumind::model::builder::ForwardOptions;
use lumind::model::params::param_specs;
use lumind::model::weights::Tensors;
use lumind::model::{ModelDef, Weights};
use lumind::session::Session;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lumind(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lumind"));
    c.args(args).current_dir(root()).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::piped());
    run(c, stdin)
}

fn run(mut c: Command, stdin: Option<&str>) -> (bool, String, String) {
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn export_matches_transformers_and_imports_back() {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/export/manifest.json")).unwrap()).unwrap();
    for f in m["fixtures"].as_array().unwrap() {
        let def = ModelDef::load(root().join(f["model"].as_str().unwrap())).unwrap();
        let w = Weights::load(&def, &root().join(f["weights"].as_str().unwrap())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        export(&def, &w, None, dir.path()).unwrap();
        // the same config.json transformers loaded
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(config, f["config"], "{}: config.json changed since the fixture", def.name);
        // import it back: same parameters, same weights
        let (_, def2, w2) = import(dir.path(), &def.name).unwrap();
        assert_eq!(param_specs(&def2), param_specs(&def), "{}", def.name);
        assert_eq!(w2, w);
        // and the imported model gives transformers' logits
        let tokens: Vec<u32> = f["tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let mut s = Session::new(&def2, w2, ForwardOptions::full(16), Fusion::Full).unwrap();
        let got = s.run(&tokens, 1, 0).unwrap().data;
        let want = Tensors::load(&root().join(f["hf_logits"].as_str().unwrap())).unwrap().get("logits").unwrap().1.clone();
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-4, "{}: lumind vs transformers logits differ by {diff}", def.name);
        if def.is_moe() {
            assert!(dir.path().join("modeling_lumind_moe.py").exists() && config["auto_map"].is_object());
        }
    }
}

#[test]
fn import_reads_minimind_configs() {
    // a MiniMind-style config.json (MiniMindForCausalLM names, no intermediate size)
    let dir = tempfile::tempdir().unwrap();
    let def = ModelDef::load(root().join("models/tiny-moe.toml")).unwrap();
    let w = Weights::load(&def, &root().join("tests/fixtures/oracle/tiny-moe.safetensors")).unwrap();
    w.save(&dir.path().join("model.safetensors")).unwrap();
    let cfg = serde_json::json!({"architectures": ["MiniMindForCausalLM"], "model_type": "minimind", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
        "max_position_embeddings": 256, "intermediate_size": 96, "use_moe": true, "n_routed_experts": 4, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "norm_topk_prob": true, "moe_intermediate_size": 48, "moe_layers": [1], "flash_attn": true});
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let (toml, def2, w2) = import(dir.path(), "mm").unwrap();
    assert_eq!(param_specs(&def2), param_specs(&def), "{toml}");
    assert_eq!(w2, w);
    // what lumind cannot represent exactly is refused, naming the key
    for (key, value, want) in [
        ("hidden_size", serde_json::json!(64.7), "`hidden_size` must be a whole number, got 64.7"),
        ("num_key_value_heads", serde_json::json!(-2), "`num_key_value_heads` must be a whole number"),
        ("rope_theta", serde_json::json!("1e6"), "`rope_theta` must be a finite number, got \"1e6\""),
        ("rope_scaling", serde_json::json!({"type": "dynamic", "factor": 2.0}), "`rope_scaling` is of type `dynamic`"),
        ("tie_word_embeddings", serde_json::json!("yes"), "`tie_word_embeddings` must be true or false"),
    ] {
        let mut c = cfg.clone();
        c[key] = value;
        std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
        let e = format!("{:#}", import(dir.path(), "mm").unwrap_err());
        assert!(e.contains(want) && e.contains("config.json"), "{key}: {e}");
    }
    // a name with control characters still makes a definition that parses
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let (toml, def3, _) = import(dir.path(), "bad\u{1b}[31mname\u{7}").unwrap();
    assert_eq!(def3.name, "bad\u{1b}[31mname\u{7}");
    assert_eq!(ModelDef::parse(&toml).unwrap().name, def3.name);
    // no weights: a clear error
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = import(dir.path(), "mm").unwrap_err().to_string();
    assert!(e.contains("no model.safetensors"), "{e}");
}

fn tiny_weights(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.safetensors");
    let (ok, _, err) = lumind(&["init", "--model", "models/tiny.toml", "--seed", "5", "--out", p.to_str().unwrap()], None);
    assert!(ok, "{err}");
    p
}

#[test]
fn terminal_chat_and_bundled_executable() {
    let dir = tempfile::tempdir().unwrap();
    let w = tiny_weights(dir.path());
    let script = "Hello there\n/system You are terse.\nAnd again?\n/reset\n/bogus\nLast one\n/quit\n";
    let (ok, out, err) = lumind(
        &["chat", "--model", "models/tiny.toml", "--weights", w.to_str().unwrap(), "--max-new-tokens", "8", "--seed", "1"],
        Some(script),
    );
    assert!(ok, "{err}");
    assert_eq!(err.matches("tokens/s").count(), 3, "three replies: {err}");
    assert!(err.contains("system prompt set") && err.contains("conversation cleared") && err.contains("unknown command /bogus"), "{err}");
    assert!(out.lines().count() >= 3, "{out}");

    // one executable with everything inside, run from an empty directory
    let exe = dir.path().join("tiny-chat");
    let (ok, _, err) =
        lumind(&["bundle", "--model", "models/tiny.toml", "--weights", w.to_str().unwrap(), "--out", exe.to_str().unwrap()], None);
    assert!(ok, "{err}");
    let empty = tempfile::tempdir().unwrap();
    let mut c = Command::new(&exe);
    c.args(["chat", "--max-new-tokens", "4"]).current_dir(empty.path());
    let (ok, _, err) = run(c, Some("Hi\n/quit\n"));
    assert!(ok && err.contains("chatting with `tiny`") && err.contains("tokens/s"), "{err}");
    let mut c = Command::new(&exe);
    c.args(["chat"]).current_dir(empty.path());
    let (ok, _, err) = run(c, Some("/quit\n"));
    assert!(ok && err.contains("fp32)"), "{err}");
    // a bundle of q8 weights stays q8 (a third of the bytes) and chats at q8
    let exe8 = dir.path().join("tiny-chat-q8");
    let (ok, _, err) = lumind(
        &["bundle", "--model", "models/tiny.toml", "--weights", w.to_str().unwrap(), "--precision", "q8", "--out", exe8.to_str().unwrap()],
        None,
    );
    assert!(ok && err.contains("q8"), "{err}");
    let payload =
        |p: &Path| std::fs::metadata(p).unwrap().len() as f64 - std::fs::metadata(env!("CARGO_BIN_EXE_lumind")).unwrap().len() as f64;
    assert!(payload(&exe8) < 0.5 * payload(&exe), "q8 payload {} against {}", payload(&exe8), payload(&exe));
    let mut c = Command::new(&exe8);
    c.args(["chat", "--max-new-tokens", "4"]).current_dir(empty.path());
    let (ok, _, err) = run(c, Some("Hi\n/quit\n"));
    assert!(ok && err.contains("tokens of context, q8)"), "{err}");
    // without a bundle, chat needs files
    let (ok, _, err) = lumind(&["chat"], Some("/quit\n"));
    assert!(!ok && err.contains("--model and --weights"), "{err}");

    // a damaged bundle says so: a byte appended, a weight byte flipped,
    // lengths that wrap around
    let bytes = std::fs::read(&exe).unwrap();
    let damaged = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        let p = dir.path().join(name);
        std::fs::write(&p, &b).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut c = Command::new(&p);
        c.args(["chat"]).current_dir(empty.path());
        let (ok, _, err) = run(c, Some("/quit\n"));
        assert!(!ok, "{name}: {err}");
        err
    };
    let e = damaged("appended", &|b| b.push(0));
    assert!(e.contains("the bundle is damaged: 1 bytes were added after its end"), "{e}");
    let e = damaged("flipped", &|b| {
        let at = b.len() - 4096;
        b[at] ^= 0x10;
    });
    assert!(e.contains("does not match its checksum"), "{e}");
    let e = damaged("wrapped", &|b| {
        let n = b.len();
        b[n - 32..n - 24].copy_from_slice(&u64::MAX.to_le_bytes());
    });
    assert!(e.contains("the lengths in its trailer do not add up") && !e.contains("panicked"), "{e}");
    // parts that could never run are refused when bundling
    let bad = dir.path().join("tok");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("tokenizer.json"), "{}").unwrap();
    let (ok, _, err) = lumind(
        &[
            "bundle",
            "--model",
            "models/tiny.toml",
            "--weights",
            w.to_str().unwrap(),
            "--tokenizer",
            bad.to_str().unwrap(),
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ],
        None,
    );
    assert!(!ok && err.contains("tokenizer.json is not a tokenizer"), "{err}");
    assert!(!dir.path().join("x").exists());
}

#[test]
fn scoring_choice_and_perplexity() {
    let dir = tempfile::tempdir().unwrap();
    let w = tiny_weights(dir.path());
    let w = w.to_str().unwrap();
    let (ok, out, err) = lumind(&["eval", "choice", "--model", "models/tiny.toml", "--weights", w, "--data", "data/ceval"], None);
    assert!(ok, "{err}");
    assert!(out.contains("arithmetic") && out.contains("chinese_poetry") && out.contains("shakespeare"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("total") && l.contains(" 60 ")), "{out}");
    let bad = dir.path().join("bad_val.csv");
    std::fs::write(&bad, "id,question,A,B,C,D,answer\n0,q,a,b,c,d,E\n").unwrap();
    let (ok, _, err) = lumind(&["eval", "choice", "--model", "models/tiny.toml", "--weights", w, "--data", bad.to_str().unwrap()], None);
    assert!(!ok && err.contains("bad_val.csv:2") && err.contains("not A, B, C or D"), "{err}");
    let (ok, out, err) =
        lumind(&["eval", "ppl", "--model", "models/tiny.toml", "--weights", w, "--data", "data/pretrain_eval.jsonl", "--limit", "5"], None);
    assert!(ok, "{err}");
    // `fp32 perplexity X (...)`
    let ppl: f64 = out.split_whitespace().skip_while(|w| *w != "perplexity").nth(1).unwrap().parse().unwrap();
    // random weights: about as perplexed as a uniform guess over 6400 tokens
    assert!(ppl > 1000.0 && ppl < 100000.0, "{out}");
}

#[test]
fn scoring_chat_answers_against_references() {
    use lumind::eval::chat::{read_chat_cases, ChatScorer};
    use lumind::generate::Generator;
    use lumind::tokenizer::Tokenizer;
    let def = ModelDef::load(root().join("models/tiny-chat.toml")).unwrap();
    let opts = ForwardOptions { last_only: false, ..ForwardOptions::generation(256) };
    let session = Session::new(&def, Weights::init(&def, 3, None), opts, Fusion::Full).unwrap();
    let mut scorer = ChatScorer::new(Generator::new(session), Tokenizer::default_minimind(), 12).unwrap();
    let mut cases = read_chat_cases(&root().join("data/sft_eval.jsonl"), Some(2)).unwrap();
    assert_eq!(cases.len(), 2);
    let first = scorer.score(&cases[0], None).unwrap();
    assert!(!first.exact && first.tokens > 0);
    // random weights: the reference costs about ln(6400) = 8.76 nats a token
    let nll = -first.log_prob / first.tokens as f64;
    assert!(nll > 7.0 && nll < 11.0, "{nll}");
    // the model's own greedy answer as the reference: an exact match, and
    // (greedy) no less likely per token than the real reference
    cases[1].reference = first.answer.clone();
    cases[1].messages = cases[0].messages.clone();
    let own = scorer.score(&cases[1], None).unwrap();
    assert_eq!(own.answer, first.answer);
    assert!(own.exact && own.contains);
    let own_nll = -own.log_prob / own.tokens as f64;
    assert!(own_nll < nll, "{own_nll} vs {nll}");
    let expect = first.answer.chars().last().unwrap().to_string();
    assert!(scorer.score(&cases[0], Some(&expect)).unwrap().contains);
    assert!(!scorer.score(&cases[0], Some("not in any answer")).unwrap().contains);
    // a conversation without a final assistant reply is named
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"conversations\": [{\"role\": \"assistant\", \"content\": \"hi\"}, {\"role\": \"user\", \"content\": \"q\"}]}\n",
    )
    .unwrap();
    let err = read_chat_cases(&bad, None).err().unwrap().to_string();
    assert!(err.contains("bad.jsonl:1") && err.contains("does not end with an assistant reply"), "{err}");
}

#[test]
fn scoring_preference_pairs_against_a_reference() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("chat.safetensors");
    let (ok, _, err) = lumind(&["init", "--model", "models/tiny-chat.toml", "--seed", "4", "--out", w.to_str().unwrap()], None);
    assert!(ok, "{err}");
    let w = w.to_str().unwrap();
    let args = ["eval", "pairs", "--model", "models/tiny-chat.toml", "--weights", w, "--data", "data/dpo_eval.jsonl", "--limit", "6"];
    let (ok, out, err) = lumind(&args, None);
    assert!(ok, "{err}");
    assert!(out.contains("6 pairs") && out.contains("policy prefers chosen") && !out.contains("reward accuracy"), "{out}");
    // against itself every margin ties with the reference's
    let (ok, out, err) = lumind(&[&args[..], &["--reference", w]].concat(), None);
    assert!(ok, "{err}");
    assert!(out.contains("reward accuracy") && out.contains("  0.0%") && out.contains("6 ties"), "{out}");
}
