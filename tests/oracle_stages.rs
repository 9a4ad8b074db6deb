//! The fine-tuning stages against PyTorch, transformers and PEFT
//! (tests/fixtures/stages, written by tools/reference/make_stage_fixtures.py):
//! the SFT mask, loss and gradients; LoRA adapter gradients and merged
//! weights, and the adapter layout PEFT loads; the DPO loss and policy
//! gradients.
//!
//! Tolerances: token ids and labels exact; losses within 1e-5 relative;
//! gradients within 3e-5 + 1e-4 |g|; merged weights within 1e-6.

use std::path::PathBuf;

use lumind::chat_template::{ChatTemplate, Message};
use lumind::compilers::Fusion;
use lumind::data::chat::{encode_conversation, LossOn, Markers};
use lumind::lora::{load_adapter, merge_adapter, peft_names, save_adapter};
use lumind::model::weights::Tensors;
use lumind::model::{ModelDef, Weights};
use lumind::tokenizer::Tokenizer;
use lumind::train::graph::{LoraConfig, Stage, Update};
use lumind::train::{Batch, TrainSession};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/stages/manifest.json")).unwrap()).unwrap()
}

fn model(m: &Value) -> (ModelDef, Weights) {
    let def = ModelDef::load(root().join(m["model"].as_str().unwrap())).unwrap();
    let w = Weights::load(&def, &root().join(m["weights"].as_str().unwrap())).unwrap();
    (def, w)
}

fn rows(ids: &Value, labels: &Value) -> Vec<(Vec<u32>, Vec<i64>)> {
    let v = |x: &Value| x.as_array().unwrap().iter().map(|y| y.as_i64().unwrap()).collect::<Vec<i64>>();
    ids.as_array()
        .unwrap()
        .iter()
        .zip(labels.as_array().unwrap())
        .map(|(i, l)| (v(i).into_iter().map(|x| x as u32).collect(), v(l)))
        .collect()
}

fn padded(mut r: Vec<(Vec<u32>, Vec<i64>)>) -> Batch {
    let n = r.iter().map(|x| x.0.len()).max().unwrap();
    for (i, l) in r.iter_mut() {
        i.resize(n, 0);
        l.resize(n, -100);
    }
    Batch::from_labels(&r)
}

fn compare(what: &str, got: &Tensors, want: &Tensors) {
    let mut worst = 0f32;
    for (name, (shape, g)) in &got.0 {
        let (ws, w) = want.get(name).unwrap_or_else(|| panic!("{what}: no reference for {name}"));
        assert_eq!(shape, ws, "{what}: {name}");
        for (x, y) in g.iter().zip(w) {
            worst = worst.max((x - y).abs());
            assert!((x - y).abs() <= 3e-5 + 1e-4 * y.abs(), "{what}: d/d {name}: {x} vs {y}");
        }
    }
    eprintln!("{what}: worst gradient difference {worst:e}");
}

fn scalar(t: &Tensors, n: &str) -> f32 {
    t.get(n).unwrap().1[0]
}

#[test]
fn sft_mask_loss_and_gradients() {
    let m = manifest();
    let (def, w) = model(&m);
    let tok = Tokenizer::default_minimind();
    let tpl = ChatTemplate::for_tokenizer(&tok).unwrap();
    let markers = Markers::new(&tok).unwrap();
    let want_rows = rows(&m["sft"]["ids"], &m["sft"]["labels"]);
    for (conv, want) in m["sft"]["conversations"].as_array().unwrap().iter().zip(&want_rows) {
        let msgs: Vec<Message> = serde_json::from_value(conv.clone()).unwrap();
        let got = encode_conversation(&tok, &tpl, &markers, &msgs, 512, LossOn::All).unwrap();
        assert_eq!(&got, want, "token ids and assistant-only labels must match transformers' chat template + MiniMind's mask");
    }
    let want = Tensors::load(&root().join(m["sft"]["file"].as_str().unwrap())).unwrap();
    for &fusion in Fusion::all() {
        let mut s = TrainSession::new(&def, w.clone(), 128, Stage::LanguageModel, Update::OutputGrads, fusion).unwrap();
        let (loss, grads) = s.grads(&padded(want_rows.clone())).unwrap();
        assert!((loss.loss - scalar(&want, "loss")).abs() <= 1e-5 * scalar(&want, "loss"), "{} vs {}", loss.loss, scalar(&want, "loss"));
        compare(&format!("sft ({fusion})"), &grads, &want);
    }
}

#[test]
fn lora_gradients_merge_and_peft_layout() {
    let m = manifest();
    let (def, w) = model(&m);
    let l = &m["lora"];
    let cfg = LoraConfig { rank: 4, alpha: Some(8.0), targets: vec!["q_proj".into(), "o_proj".into()] };
    let dir = root().join(l["adapter"].as_str().unwrap());
    let (_, mods) = load_adapter(&dir).unwrap();
    let mut adapters = Tensors::default();
    for lumind::lora::AdapterModule { module, a: (ash, a), b: (bsh, b) } in mods {
        let (an, bn) = peft_names(&module);
        adapters.insert(an, ash, a);
        adapters.insert(bn, bsh, b);
    }
    let batch = padded(rows(&m["sft"]["ids"], &m["sft"]["labels"]));
    let want = Tensors::load(&root().join(l["grads"].as_str().unwrap())).unwrap();
    for &fusion in Fusion::all() {
        let mut s = TrainSession::new(&def, w.clone(), 128, Stage::Lora(cfg.clone()), Update::OutputGrads, fusion).unwrap();
        assert_eq!(s.trainable.len(), 8, "q_proj and o_proj of two layers, A and B each");
        s.set_trained(&adapters).unwrap();
        let (loss, grads) = s.grads(&batch).unwrap();
        assert!((loss.loss - scalar(&want, "loss")).abs() <= 1e-5 * scalar(&want, "loss"));
        assert!(grads.0.iter().filter(|(n, _)| n.contains("lora_A")).all(|(_, (_, g))| g.iter().any(|&x| x != 0.0)), "A gets a gradient");
        compare(&format!("lora ({fusion})"), &grads, &want);
    }
    // merged weights
    let merged = merge_adapter(&def, w.clone(), &dir).unwrap();
    let want = Tensors::load(&root().join(l["merged"].as_str().unwrap())).unwrap();
    for (name, (_, v)) in &want.0 {
        let got = &merged.0.get(name).unwrap().1;
        let d = got.iter().zip(v).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-6, "merged {name} differs by {d}");
    }
    // our adapter files keep the layout PEFT loaded when the fixture was made
    let tmp = tempfile::tempdir().unwrap();
    save_adapter(tmp.path(), &cfg, &adapters).unwrap();
    let rec = &l["peft_loads_lumind_adapter"];
    let ours: Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap()).unwrap();
    for key in ["peft_type", "task_type", "r", "lora_alpha", "target_modules", "bias", "fan_in_fan_out"] {
        assert_eq!(ours[key], rec["adapter_config"][key], "adapter_config.json `{key}`");
    }
    let names: Vec<String> = Tensors::load(&tmp.path().join("adapter_model.safetensors")).unwrap().0.keys().cloned().collect();
    assert_eq!(Value::from(names), rec["tensors"]);
    assert!(rec["max_abs_logits_diff"].as_f64().unwrap() < 1e-4);
}

#[test]
fn dpo_loss_margins_and_policy_gradients() {
    let m = manifest();
    let (def, w) = model(&m);
    let d = &m["dpo"];
    let reference = Weights::load(&def, &root().join(d["reference"].as_str().unwrap())).unwrap();
    let batch = Batch::from_labels(&rows(&d["ids"], &d["labels"]));
    let want = Tensors::load(&root().join(d["file"].as_str().unwrap())).unwrap();
    for &fusion in Fusion::all() {
        let mut s = TrainSession::new(&def, w.clone(), 256, Stage::Dpo { beta: 0.1 }, Update::OutputGrads, fusion).unwrap();
        s.set_reference(&reference).unwrap();
        let (loss, grads) = s.grads(&batch).unwrap();
        assert!((loss.loss - scalar(&want, "loss")).abs() <= 1e-5 * scalar(&want, "loss"), "{} vs {}", loss.loss, scalar(&want, "loss"));
        let (acc, margin) = loss.dpo.unwrap();
        let logits = &want.get("logits").unwrap().1;
        let want_acc = logits.iter().filter(|&&x| x > 0.0).count() as f32 / logits.len() as f32;
        let want_margin = logits.iter().map(|x| 0.1 * x).sum::<f32>() / logits.len() as f32;
        assert_eq!(acc, want_acc);
        assert!((margin - want_margin).abs() <= 1e-4 * want_margin.abs().max(1.0));
        compare(&format!("dpo ({fusion})"), &grads, &want);
    }
}

#[test]
fn grad_with_a_dpo_config_uses_its_reference() {
    // `lumind grad --config` runs what `lumind train` would: the configured
    // reference, not a frozen copy of the policy (whose loss is exactly ln 2)
    let m = manifest();
    let d = &m["dpo"];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.jsonl");
    let lines: Vec<String> = d["pairs"].as_array().unwrap().iter().map(|p| p.to_string()).collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let cfg = dir.path().join("dpo.toml");
    std::fs::write(
        &cfg,
        format!(
            "stage = \"dpo\"\nmodel = {:?}\nweights = {:?}\nout = {:?}\n[data]\ntrain = {:?}\nmax_seq_len = 256\n[dpo]\nbeta = 0.1\nreference = {:?}\n[optim]\nlearning_rate = 1e-4\nbatch_size = 2\n",
            root().join(m["model"].as_str().unwrap()),
            root().join(m["weights"].as_str().unwrap()),
            dir.path().join("run"),
            data,
            root().join(d["reference"].as_str().unwrap()),
        ),
    )
    .unwrap();
    let out = dir.path().join("g.safetensors");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_lumind"))
        .args(["grad", "--config", cfg.to_str().unwrap(), "--n", "2", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let got = Tensors::load(&out).unwrap();
    let want = Tensors::load(&root().join(d["file"].as_str().unwrap())).unwrap();
    let (g, w) = (scalar(&got, "loss"), scalar(&want, "loss"));
    assert!((g - w).abs() <= 1e-5 * w, "grad --config gives loss {g}, PyTorch {w} (ln 2 = {})", std::f32::consts::LN_2);
}
