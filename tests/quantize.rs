//! `lumind quantize`: weights files with bf16 or Q8_0 matrices. They read
//! back as exactly the packed values, a session at the file's precision
//! gives the same logits as one packing the original weights at load, and
//! every command runs such a file at its precision by default.

mod common;

use std::path::Path;
use std::process::Command;

use common::{root, run};
use lumind::compilers::Fusion;
use lumind::model::builder::ForwardOptions;
use lumind::model::weights::Tensors;
use lumind::model::{ModelDef, Precision, Weights};
use lumind::packed_weights::to_bytes;
use lumind::session::Session;
use lumind_compilers::kernels::q8;

fn model(name: &str) -> (ModelDef, Weights) {
    let def = ModelDef::load(root().join(format!("models/{name}.toml"))).unwrap();
    let w = Weights::init(&def, 7, Some(0.2));
    (def, w)
}

fn logits(def: &ModelDef, w: Weights, precision: Precision) -> Vec<f32> {
    let mut s = Session::new(def, w, ForwardOptions::generation(32).with_precision(precision), Fusion::Full).unwrap();
    let prompt: Vec<u32> = (1..20).collect();
    let mut out = s.run(&prompt, 1, 0).unwrap().last().to_vec();
    out.extend(s.run(&[5], 1, prompt.len()).unwrap().last());
    out
}

#[test]
fn packed_files_read_back_as_their_values_and_run_to_the_same_bits() {
    for name in ["tiny", "tiny-qwen3"] {
        let (def, w) = model(name);
        for precision in [Precision::Bf16, Precision::Q8] {
            let bytes = to_bytes(&w, precision).unwrap();
            let back = Weights::check(&def, Tensors::from_bytes(&bytes).unwrap()).unwrap();
            for (n, (shape, v)) in &w.0 .0 {
                let (s2, got) = back.0.get(n).unwrap();
                assert_eq!(shape, s2, "{n}");
                let want: Vec<f32> = match (shape.len(), precision) {
                    (1, _) => v.clone(),
                    (_, Precision::Bf16) => v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
                    _ => q8::dequantize(&q8::quantize(v)),
                };
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} {precision}: {n}");
            }
            // packing the file's values again gives the file's bits, so the
            // session is the same whether it packs at load or reads the file
            assert_eq!(logits(&def, back, precision), logits(&def, w.clone(), precision), "{name} {precision}");
            let f32_bytes = w.0.to_bytes(Default::default()).unwrap().len();
            eprintln!("{name} {precision}: {} bytes against {f32_bytes} in f32", bytes.len());
            assert!(bytes.len() < f32_bytes * if precision == Precision::Q8 { 2 } else { 3 } / 5, "{name} {precision}");
        }
    }
}

#[test]
fn damaged_packed_files_are_refused_by_name() {
    let (def, w) = model("tiny");
    let bytes = to_bytes(&w, Precision::Q8).unwrap();
    // a Q8_0 tensor whose recorded shape does not match its bytes
    let text = String::from_utf8_lossy(&bytes).to_string();
    let key = "\"lumind.shape.model.layers.0.mlp.down_proj.weight\":\"";
    let at = text.find(key).expect("the header records the shape") + key.len();
    let mut bad = bytes.clone();
    bad[at] = if bad[at] == b'9' { b'8' } else { b'9' };
    let e = format!("{:#}", Tensors::from_bytes(&bad).and_then(|t| Weights::check(&def, t)).unwrap_err());
    assert!(e.contains("down_proj") && e.contains("Q8_0"), "{e}");
}

#[test]
fn the_cli_quantizes_and_every_command_runs_the_file_at_its_precision() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_lumind");
    let (_, w) = model("tiny");
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let m = root().join("models/tiny.toml").to_str().unwrap().to_string();
    w.save(Path::new(&p("w.safetensors"))).unwrap();
    // the logits file's bytes, and what the command said it ran at
    let logits = |weights: &str, precision: Option<&str>| {
        let mut c = Command::new(bin);
        c.args(["logits", "--model", &m, "--weights", weights, "--tokens", "1,2,3,4,5", "--out", &p("l.safetensors")]);
        if let Some(pr) = precision {
            c.args(["--precision", pr]);
        }
        let said = run(&mut c);
        (std::fs::read(p("l.safetensors")).unwrap(), said)
    };
    let (fp32, said) = logits(&p("w.safetensors"), None);
    assert!(said.contains("(fp32: 0 params packed)"), "{said}");
    for to in ["bf16", "q8"] {
        let said = run(Command::new(bin).args(["quantize", "--model", &m, "--weights", &p("w.safetensors"), "--to", to, "--out", &p(to)]));
        assert!(said.contains(&format!("matrices as {to}")), "{said}");
        let (packed, said) = logits(&p(to), None);
        assert!(said.contains(&format!("({to}: 15 params packed)")), "{to}: the file runs at {to} by default: {said}");
        assert!(packed == logits(&p("w.safetensors"), Some(to)).0, "{to}: the file gives what packing at load gives");
        assert!(packed != fp32, "{to}: the file's values are the packed ones");
        let (_, said) = logits(&p(to), Some("fp32"));
        assert!(said.contains("(fp32: 0 params packed)"), "{to}: --precision overrides the file's: {said}");
    }
    let out = Command::new(bin)
        .args(["quantize", "--model", &m, "--weights", &p("w.safetensors"), "--to", "fp32", "--out", &p("x")])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("bf16 or q8"));
}
