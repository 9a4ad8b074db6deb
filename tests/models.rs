//! Every shipped definition: parses, counts as the seed's table says, builds,
//! runs a forward pass and a few decode steps with random weights.

use std::path::Path;

use lumind::compilers::Fusion;
use lumind::generate::Generator;
use lumind::model::builder::ForwardOptions;
use lumind::model::params::count_params;
use lumind::model::weights::Tensors;
use lumind::model::{ModelDef, Weights};
use lumind::sampling::{Sampler, SamplingParams};
use lumind::session::Session;

fn shipped() -> Vec<(String, ModelDef)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), ModelDef::load(&p).unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn seed_models_have_the_seed_parameter_counts() {
    // (model, seed's count, allowed relative difference): the MoE model is
    // 163.1M as defined (see models/minimind-moe.toml for why), 1.8% under 166M.
    for (name, want, tol) in [
        ("minimind-small-T", 26e6, 0.04),
        ("minimind-small", 56e6, 0.03),
        ("minimind", 218e6, 0.01),
        ("minimind-moe", 166e6, 0.02),
        ("minimind2-small", 26e6, 0.01),
        ("minimind-3", 64e6, 0.01),
    ] {
        let def = ModelDef::load(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}.toml"))).unwrap();
        let got = count_params(&def).total as f64;
        assert!((got - want).abs() / want <= tol, "{name}: {got} parameters, seed says {want}");
    }
}

#[test]
fn every_shipped_definition_runs_forward_and_decode() {
    let defs = shipped();
    assert!(defs.len() >= 10, "expected the seed's four models, MiniMind2/3 variants and tiny test models");
    for (name, def) in defs {
        let w = Weights::init(&def, 7, None);
        let tokens = [1u32, 5, 9, 2];
        let opts = ForwardOptions::full(8);
        let mut s = Session::new(&def, w.clone(), opts, Fusion::Full).unwrap();
        let l = s.run(&tokens, 1, 0).unwrap();
        assert_eq!((l.rows, l.vocab), (4, def.vocab_size), "{name}");
        assert!(l.data.iter().all(|x| x.is_finite()), "{name}: non-finite logits");
        let opts = ForwardOptions::generation(8);
        let mut g = Generator::new(Session::new(&def, w, opts, Fusion::Full).unwrap());
        let (out, _) = g.generate(&tokens, 3, &[], &mut Sampler::new(SamplingParams::default()), |_| true).unwrap();
        assert_eq!(out.len(), 3, "{name}");
    }
}

#[test]
fn weights_round_trip_and_bad_tensors_are_named() {
    let def = ModelDef::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-qwen3.toml")).unwrap();
    let w = Weights::init(&def, 3, None);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    w.save(&p).unwrap();
    assert_eq!(Weights::load(&def, &p).unwrap(), w);

    let err = |t: Tensors| Weights::check(&def, t).unwrap_err().to_string();
    let mut t = w.0.clone();
    t.0.remove("model.layers.1.self_attn.k_norm.weight");
    assert_eq!(err(t), "missing tensor `model.layers.1.self_attn.k_norm.weight` (shape [24]) for model `tiny-qwen3`");
    let mut t = w.0.clone();
    t.insert("model.layers.9.mlp.gate.weight", vec![2], vec![0.0, 0.0]);
    assert_eq!(err(t), "unexpected tensor `model.layers.9.mlp.gate.weight` (shape [2]): model `tiny-qwen3` has no such parameter");
    let mut t = w.0.clone();
    t.insert("lm_head.weight", vec![64, 128], vec![0.0; 64 * 128]);
    assert_eq!(err(t), "tensor `lm_head.weight` has shape [64, 128] but model `tiny-qwen3` needs [128, 64]");
    // non-finite values are named, from a file too
    for bad in [f32::NAN, f32::INFINITY] {
        let mut t = w.0.clone();
        t.0.get_mut("model.layers.0.mlp.up_proj.weight").unwrap().1[5] = bad;
        assert!(err(t.clone()).starts_with(&format!("tensor `model.layers.0.mlp.up_proj.weight` holds {bad} at element 5")));
        t.save(&p).unwrap();
        let e = format!("{:#}", Weights::load(&def, &p).unwrap_err());
        assert!(e.contains("w.safetensors") && e.contains("up_proj") && e.contains("element 5"), "{e}");
    }
}

#[test]
fn init_follows_the_definition_scheme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // MiniMind2 / PyTorch defaults: Linear U(-1/sqrt(in), 1/sqrt(in)), norms 1
    let def = ModelDef::load(root.join("models/tiny-llama.toml")).unwrap();
    let w = Weights::init(&def, 0, None);
    let (_, q) = w.0.get("model.layers.0.self_attn.q_proj.weight").unwrap();
    let bound = 1.0 / 64f32.sqrt();
    assert!(q.iter().all(|x| x.abs() <= bound) && q.iter().any(|x| x.abs() > 0.9 * bound));
    assert!(w.0.get("model.norm.weight").unwrap().1.iter().all(|&x| x == 1.0));
    // same seed, same weights; another seed, other weights
    assert_eq!(Weights::init(&def, 0, None), w);
    assert_ne!(Weights::init(&def, 1, None), w);
    // minimind-3 / transformers: N(0, 0.02)
    let def = ModelDef::load(root.join("models/tiny-qwen3.toml")).unwrap();
    let w = Weights::init(&def, 0, None);
    let (_, e) = w.0.get("model.embed_tokens.weight").unwrap();
    let std = (e.iter().map(|x| x * x).sum::<f32>() / e.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.002, "std {std}");
}

#[test]
fn runs_do_not_leak_into_each_other() {
    let def = ModelDef::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llama.toml")).unwrap();
    let opts = ForwardOptions::full(8);
    let mut s = Session::new(&def, Weights::init(&def, 0, None), opts, Fusion::Full).unwrap();
    let a = s.run(&[1, 2, 3], 1, 0).unwrap().data;
    let b = s.run(&[4, 5, 6, 7], 1, 0).unwrap().data;
    let a2 = s.run(&[1, 2, 3], 1, 0).unwrap().data;
    assert_eq!(a, a2);
    assert_ne!(a.len(), b.len());
    let e = s.run(&[1, 200], 1, 0).unwrap_err().to_string();
    assert_eq!(e, "token id 200 (position 1) is out of range for model `tiny-llama` (vocab_size 128)");
    let e = s.run(&[1; 9], 1, 0).unwrap_err().to_string();
    assert!(e.contains("9 tokens exceed the context of 8 positions"), "{e}");
}
