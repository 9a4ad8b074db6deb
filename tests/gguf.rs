//! GGUF export and import (`lumind export --format gguf`, `lumind import
//! --from X.gguf`): a model goes out in every type and comes back with its
//! definition, its weights (as exactly as the type keeps them) and its
//! tokenizer; llama.cpp's own reader (the `gguf` Python package) agrees;
//! what lumind cannot express is refused by name.

mod common;

use std::path::Path;
use std::process::Command;

use common::{root, run};
use half::{bf16, f16};
use lumind::gguf::file::{Tensor, Value};
use lumind::gguf::{from_gguf, to_gguf, Gguf, OutType};
use lumind::model::rope::RopeScaling;
use lumind::model::{ModelDef, Weights};
use lumind::tokenizer::Tokenizer;
use lumind_compilers::kernels::q8;

/// A test model with the MiniMind tokenizer's 6400 tokens, so that it
/// exports with its tokenizer: a llama (tied, GQA), a llama with YaRN, and
/// a qwen3 (q/k norms, head_dim 24 != 64 / 4, an untied head).
fn model(name: &str) -> (ModelDef, Weights) {
    let text = std::fs::read_to_string(root().join(format!("models/{name}.toml"))).unwrap();
    let def = ModelDef::parse(&text.replace("vocab_size = 128", "vocab_size = 6400")).unwrap();
    let w = Weights::init(&def, 11, Some(0.2));
    (def, w)
}

const MODELS: [&str; 3] = ["tiny", "tiny-llama-yarn", "tiny-qwen3"];

/// What a value becomes in each type: the type's own rounding (Q8_0
/// rounds by blocks of a row).
fn rounded(out: OutType, shape: &[usize], data: &[f32]) -> Vec<f32> {
    if shape.len() == 1 {
        return data.to_vec(); // norms stay f32
    }
    match out {
        OutType::F32 => data.to_vec(),
        OutType::F16 => data.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
        OutType::Bf16 => data.iter().map(|v| bf16::from_f32(*v).to_f32()).collect(),
        OutType::Q8_0 => q8::dequantize(&q8::quantize(data)),
    }
}

#[test]
fn a_model_comes_back_from_gguf_in_every_type() {
    let tok = Tokenizer::default_minimind();
    for name in MODELS {
        let (def, w) = model(name);
        for out in [OutType::F32, OutType::F16, OutType::Bf16, OutType::Q8_0] {
            let bytes = to_gguf(&def, &w, &tok, out).unwrap().to_bytes().unwrap();
            let back = from_gguf(&Gguf::from_bytes(&bytes).unwrap(), &def.name).unwrap();
            // the definition: everything that shapes the graph
            let mut expected =
                ModelDef { description: String::new(), init: back.def.init, initializer_range: back.def.initializer_range, ..def.clone() };
            // (GGUF keeps its reals in f32: YaRN's attention factor comes back
            // as the f32 the kernels use anyway)
            if let RopeScaling::Yarn { attention_factor, .. } = &mut expected.rope_scaling {
                *attention_factor = (*attention_factor as f32).to_string().parse().unwrap();
            }
            assert_eq!(back.def, expected, "{name} {out}:\n{}", back.toml);
            // the weights: bit for bit what the type keeps (the llama rows
            // paired on the way out are put back)
            assert_eq!(back.weights.0 .0.len(), w.0 .0.len());
            for (n, (shape, data)) in &w.0 .0 {
                let got = &back.weights.0 .0[n];
                assert_eq!(&got.0, shape, "{name} {out} {n}");
                assert!(got.1 == rounded(out, shape, data), "{name} {out}: `{n}` is not what {out} keeps of it");
            }
            // the tokenizer: the same tokens for text, special tokens and
            // the chat template
            let (json, config) = back.tokenizer.as_ref().unwrap();
            let t2 =
                Tokenizer::from_parts(tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap(), serde_json::from_str(config).unwrap())
                    .unwrap();
            let text = "<|im_start|>user\nHello, 世界! 1+1=2 \t  spaces<|im_end|>\n";
            assert_eq!(t2.encode(text).unwrap(), tok.encode(text).unwrap());
            assert_eq!((t2.bos, t2.eos, t2.pad), (tok.bos, tok.eos, tok.pad));
            assert_eq!(t2.config["chat_template"], tok.config["chat_template"]);
        }
        eprintln!("{name}: f32, f16, bf16 and q8_0 round trips exact to their types");
    }
}

#[test]
fn weights_read_from_gguf_must_fit_the_definition() {
    let tok = Tokenizer::default_minimind();
    let (def, w) = model("tiny");
    let g = to_gguf(&def, &w, &tok, OutType::Q8_0).unwrap();
    let same = lumind::gguf::model::weights_for(&def, &g).unwrap();
    assert_eq!(same.0 .0.len(), w.0 .0.len());
    let (other, _) = model("tiny-llama-yarn");
    let e = format!("{:#}", lumind::gguf::model::weights_for(&other, &g).unwrap_err());
    assert!(e.contains("differs from `tiny-llama-yarn` in `layers`"), "{e}");
}

/// A valid file, changed by `f`, must be refused with a message holding `says`.
fn refused(f: impl Fn(&mut Gguf), says: &str) {
    let (def, w) = model("tiny");
    let mut g = to_gguf(&def, &w, &Tokenizer::default_minimind(), OutType::F32).unwrap();
    f(&mut g);
    let g = Gguf::from_bytes(&g.to_bytes().unwrap()).unwrap();
    let e = match from_gguf(&g, "x") {
        Ok(_) => panic!("a file that should hold `{says}` was imported"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains(says), "expected `{says}` in: {e}");
}

fn set(g: &mut Gguf, key: &str, v: Value) {
    match g.metadata.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = v,
        None => g.metadata.push((key.into(), v)),
    }
}

#[test]
fn what_lumind_cannot_express_is_refused_by_name() {
    refused(|g| set(g, "general.architecture", Value::Str("gpt2".into())), "`gpt2`");
    refused(|g| set(g, "llama.rope.dimension_count", Value::U32(8)), "RoPE turns 8");
    refused(|g| set(g, "llama.rope.scaling.type", Value::Str("longrope".into())), "`longrope`");
    refused(|g| set(g, "llama.expert_count", Value::U32(8)), "mixture-of-experts");
    refused(|g| g.tensors.retain(|t| t.name != "blk.1.ffn_up.weight"), "`blk.1.ffn_up.weight`");
    refused(
        |g| {
            g.tensors.push(Tensor {
                name: "blk.0.attn_q.bias".into(),
                shape: vec![64],
                ty: lumind::gguf::tensor_type::TensorType::F32,
                data: vec![0; 256],
            })
        },
        "`blk.0.attn_q.bias` is a bias",
    );
    // a tensor of a type lumind does not read: patch the type of one in a file
    let (def, w) = model("tiny");
    let mut bytes = to_gguf(&def, &w, &Tokenizer::default_minimind(), OutType::F32).unwrap().to_bytes().unwrap();
    let name = b"blk.0.ffn_down.weight";
    let at = bytes.windows(name.len()).position(|x| x == name).unwrap() + name.len() + 4 + 2 * 8;
    bytes[at..at + 4].copy_from_slice(&12u32.to_le_bytes()); // Q4_K
    let e = format!("{:#}", Gguf::from_bytes(&bytes).unwrap_err());
    assert!(e.contains("`blk.0.ffn_down.weight`") && e.contains("Q4_K"), "{e}");
    // and a MoE model does not go out at all
    let text = std::fs::read_to_string(root().join("models/tiny-moe.toml")).unwrap();
    let moe = ModelDef::parse(&text.replace("vocab_size = 128", "vocab_size = 6400")).unwrap();
    let e = to_gguf(&moe, &Weights::init(&moe, 1, None), &Tokenizer::default_minimind(), OutType::F32).unwrap_err().to_string();
    assert!(e.contains("mixture-of-experts"), "{e}");
}

/// The `gguf` package (llama.cpp's reader), from LUMIND_GGUF_PYTHONPATH or
/// the Python path; CI installs it and sets LUMIND_REQUIRE_GGUF=1, so there
/// this check cannot be skipped.
fn gguf_python() -> Option<Command> {
    let mut c = Command::new("python3");
    if let Ok(p) = std::env::var("LUMIND_GGUF_PYTHONPATH") {
        c.env("PYTHONPATH", p);
    }
    let found = Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .status()
        .is_ok_and(|s| s.success());
    let required = std::env::var("LUMIND_REQUIRE_GGUF").is_ok_and(|v| v == "1");
    assert!(found || !required, "LUMIND_REQUIRE_GGUF=1 but python3 cannot import gguf (LUMIND_GGUF_PYTHONPATH?)");
    found.then_some(c)
}

#[test]
fn llama_cpps_reader_reads_the_export() {
    let Some(_) = gguf_python() else {
        eprintln!("SKIPPED the `gguf` package check: python3 cannot import gguf (pip install gguf, or LUMIND_GGUF_PYTHONPATH)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_lumind");
    for name in ["tiny", "tiny-qwen3"] {
        let (_, w) = model(name);
        let (m, st) = (dir.path().join(format!("{name}.toml")), dir.path().join(format!("{name}.safetensors")));
        let text = std::fs::read_to_string(root().join(format!("models/{name}.toml"))).unwrap();
        std::fs::write(&m, text.replace("vocab_size = 128", "vocab_size = 6400")).unwrap();
        w.save(&st).unwrap();
        for out in ["f32", "f16", "bf16", "q8_0"] {
            let file = dir.path().join(format!("{name}-{out}.gguf"));
            let p = |p: &Path| p.to_str().unwrap().to_string();
            run(Command::new(bin).args([
                "export",
                "--model",
                &p(&m),
                "--weights",
                &p(&st),
                "--format",
                "gguf",
                "--outtype",
                out,
                "--out",
                &p(&file),
            ]));
            let said = run(gguf_python().unwrap().arg(root().join("tools/reference/check_gguf.py")).arg(&file).arg(&st));
            eprint!("{said}");
            assert!(said.contains("all match"), "{said}");
        }
    }
}

#[test]
fn the_cli_exports_imports_and_generates_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_lumind");
    let (_, w) = model("tiny");
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let text = std::fs::read_to_string(root().join("models/tiny.toml")).unwrap();
    std::fs::write(p("tiny.toml"), text.replace("vocab_size = 128", "vocab_size = 6400")).unwrap();
    w.save(Path::new(&p("tiny.safetensors"))).unwrap();
    run(Command::new(bin).args([
        "export",
        "--model",
        &p("tiny.toml"),
        "--weights",
        &p("tiny.safetensors"),
        "--format",
        "gguf",
        "--out",
        &p("tiny.gguf"),
    ]));
    let said = run(Command::new(bin).args([
        "import",
        "--from",
        &p("tiny.gguf"),
        "--out-model",
        &p("back.toml"),
        "--out-weights",
        &p("back.safetensors"),
        "--out-tokenizer",
        &p("tok"),
    ]));
    assert!(said.contains("wrote its tokenizer"), "{said}");
    let generate = |model: &str, weights: &str, tokenizer: Option<&str>| {
        let mut c = Command::new(bin);
        c.args([
            "generate",
            "--model",
            model,
            "--weights",
            weights,
            "--prompt",
            "Once upon a time",
            "--max-new-tokens",
            "12",
            "--temperature",
            "0",
        ]);
        c.args(["--ignore-eos", "--json"]);
        if let Some(t) = tokenizer {
            c.args(["--tokenizer", t]);
        }
        let out = run(&mut c);
        out.lines().find(|l| l.starts_with('{')).unwrap().to_string()
    };
    let original = generate(&p("tiny.toml"), &p("tiny.safetensors"), None);
    assert_eq!(generate(&p("back.toml"), &p("back.safetensors"), Some(&p("tok"))), original);
    // and every command reads the GGUF file itself as weights
    assert_eq!(generate(&p("tiny.toml"), &p("tiny.gguf"), None), original);
    // a file that is not GGUF, nor a directory, is named
    std::fs::write(p("junk.gguf"), b"GGUF\x03\0\0\0\xff").unwrap();
    let out = Command::new(bin)
        .args(["import", "--from", &p("junk.gguf"), "--out-model", &p("j.toml"), "--out-weights", &p("j.st")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("junk.gguf") && err.contains("the file ends"), "{err}");
}
