//! The compiler shows its work: fusion happens where it should, every
//! strategy gives the same numbers (see also tests/oracle.rs), and
//! `inspect`, `profile` and `bench` run on every shipped model.

use std::path::PathBuf;
use std::process::Command;

use lumind::compilers::inspect::Snapshot;
use lumind::compilers::{compile, pipeline, Fusion, GraphBuilder};
use lumind::model::builder::{declare_inputs, forward, ForwardOptions};
use lumind::model::ModelDef;
use lumind::train::graph::{build, Stage, Update};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn final_ops(model: &str, fusion: Fusion, opts: ForwardOptions) -> std::collections::BTreeMap<String, usize> {
    let def = ModelDef::load(root().join(format!("models/{model}.toml"))).unwrap();
    let b = GraphBuilder::new();
    let inputs = declare_inputs(&b, &def);
    b.output("logits", &forward(&b, &def, &inputs, &opts).logits);
    let mut built = b.finish().unwrap();
    compile(&mut built, &pipeline(fusion), |_, _| {});
    Snapshot::take("final", &built.graph, None).op_counts()
}

#[test]
fn full_fusion_fuses_attention_mlp_and_norms() {
    for opts in [ForwardOptions::full(64), ForwardOptions::generation(64)] {
        let ops = final_ops("tiny-llama", Fusion::Full, opts);
        // (over a whole sequence it is the causal kernel, with a KV cache the
        // product chain over the cache)
        let attention = if opts.kv_cache { "Attention" } else { "CausalAttention" };
        assert_eq!(ops.get(attention), Some(&2), "one attention kernel per layer: {ops:?}");
        assert_eq!(ops.get("GatedMLP"), Some(&2), "one gated MLP kernel per layer: {ops:?}");
        assert!(ops.get("RowProgram").is_some_and(|&n| n >= 4), "{ops:?}");
        for primop in ["Exp2", "MaxReduce", "SumReduce", "Sqrt"] {
            assert!(!ops.contains_key(primop), "{primop} left unfused: {ops:?}");
        }
        // at most the last residual add, which generation reads through a
        // last-position slice, stays on its own
        assert!(ops.get("Add").copied().unwrap_or(0) <= 1, "{ops:?}");
        let none = final_ops("tiny-llama", Fusion::None, opts);
        assert!(!none.contains_key("RowProgram") && !none.contains_key("Attention"), "{none:?}");
        assert!(none.contains_key("Exp2") && none.contains_key("MatMul"));
    }
}

/// The builder writes the rotary embedding as plain primops; the
/// `RopeFusion` pass (CPU, full fusion) makes each one `Rope` kernel, and
/// the other strategies leave it to the generic kernels.
#[test]
fn the_rotary_embedding_is_fused_by_a_pass_not_by_the_builder() {
    let def = ModelDef::load(root().join("models/tiny-llama.toml")).unwrap();
    let opts = ForwardOptions::generation(64);
    let build = || {
        let b = GraphBuilder::new();
        let inputs = declare_inputs(&b, &def);
        b.output("logits", &forward(&b, &def, &inputs, &opts).logits);
        b.finish().unwrap()
    };
    let before = Snapshot::take("built", &build().graph, None).op_counts();
    assert!(!before.contains_key("Rope"), "the builder emitted a fused kernel: {before:?}");
    for (fusion, want) in [(Fusion::Full, Some(2 * def.num_hidden_layers)), (Fusion::Generic, None), (Fusion::None, None)] {
        let mut g = build();
        compile(&mut g, &pipeline(fusion), |_, _| {});
        let ops = Snapshot::take("final", &g.graph, None).op_counts();
        assert_eq!(ops.get("Rope").copied(), want, "{fusion}: q and k of every layer: {ops:?}");
    }
}

/// The builder writes attention over a whole sequence as plain primops;
/// `CausalAttentionFusion` (CPU, full fusion) makes each layer's one
/// `CausalAttention` kernel: in the pipeline for inference, and before
/// autograd for training, whose backward is then that kernel's own rule.
/// The other strategies keep the primops.
#[test]
fn causal_attention_is_fused_by_a_pass_not_by_the_builder() {
    for model in ["tiny-llama", "tiny-qwen3", "tiny-moe"] {
        let def = ModelDef::load(root().join(format!("models/{model}.toml"))).unwrap();
        let layers = def.num_hidden_layers;
        let b = GraphBuilder::new();
        let inputs = declare_inputs(&b, &def);
        b.output("logits", &forward(&b, &def, &inputs, &ForwardOptions::full(64)).logits);
        let built = Snapshot::take("built", &b.finish().unwrap().graph, None).op_counts();
        assert!(!built.contains_key("CausalAttention"), "{model}: the builder emitted a fused kernel: {built:?}");
        for (fusion, want) in [(Fusion::Full, Some(layers)), (Fusion::Generic, None), (Fusion::None, None)] {
            let ops = final_ops(model, fusion, ForwardOptions::full(64));
            assert_eq!(ops.get("CausalAttention").copied(), want, "{model} {fusion}: {ops:?}");
            if fusion == Fusion::Full {
                // the pattern's softmax and products are gone, the mask too
                for gone in ["Exp2", "MaxReduce", "LessThan", "Iota"] {
                    assert!(!ops.contains_key(gone), "{model}: {gone} left: {ops:?}");
                }
            }
        }
        // a kv cache's attention reads other keys: not this pattern
        let ops = final_ops(model, Fusion::Full, ForwardOptions::generation(64));
        assert!(!ops.contains_key("CausalAttention"), "{model} generation: {ops:?}");

        for fuse in [true, false] {
            let g = build(&def, 64, &Stage::LanguageModel, &Update::OutputGrads, fuse).unwrap();
            assert_eq!(g.fused_attention, if fuse { layers } else { 0 }, "{model}");
            let ops = Snapshot::take("built", &g.graph.graph, None).op_counts();
            let want = fuse.then_some(layers);
            assert_eq!(ops.get("CausalAttention").copied(), want, "{model} training graph: {ops:?}");
            assert_eq!(ops.get("CausalAttentionGrad").copied(), want, "{model} training graph: {ops:?}");
        }
    }
}

fn lumind(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lumind")).args(args).current_dir(root()).output().unwrap();
    assert!(out.status.success(), "lumind {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into()
}

#[test]
fn inspect_and_profile_work_on_every_shipped_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut models: Vec<PathBuf> = std::fs::read_dir(root().join("models")).unwrap().map(|e| e.unwrap().path()).collect();
    models.sort();
    for m in &models {
        let m = m.to_str().unwrap();
        let out = dir.path().join("insp");
        let table = lumind(&["inspect", "--model", m, "--out", out.to_str().unwrap()]);
        assert!(table.contains("LowerToKernels"), "{m}: {table}");
        let html = std::fs::read_to_string(out.join("report.html")).unwrap();
        assert!(html.contains("<svg") && !html.contains("http://") || html.contains("xmlns=\"http://www.w3.org/2000/svg\""), "{m}");
        assert!(!html.contains("<script src") && !html.contains("<link"), "the report must not load anything");
        let eg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("00-built.json")).unwrap()).unwrap();
        assert!(eg["nodes"].as_object().is_some_and(|n| !n.is_empty()), "{m}: egraph JSON has nodes");
        let prof = lumind(&["profile", "--model", m, "--tokens", "4", "--runs", "1", "--top", "3"]);
        assert!(prof.contains("ms/run") && prof.contains("MatMul"), "{m}: {prof}");
    }
    for job in ["decode", "train"] {
        let out = dir.path().join(job);
        lumind(&["inspect", "--model", "models/tiny-moe.toml", "--job", job, "--out", out.to_str().unwrap()]);
        lumind(&["profile", "--model", "models/tiny-moe.toml", "--job", job, "--tokens", "8", "--runs", "1"]);
    }
}

#[test]
fn bench_reports_every_strategy() {
    let json = lumind(&[
        "bench",
        "--model",
        "models/tiny.toml",
        "--fusion",
        "none,generic,full,search",
        "--precision",
        "fp32,q8",
        "--pp",
        "8",
        "--tg",
        "4",
        "--train",
        "2x8",
        "--reps",
        "1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = v["results"].as_array().unwrap();
    // search's warm-ups ran until its choices were made (a few runs at most, cold)
    assert!(v["search"]["choices"].as_u64().unwrap() > 0, "{json}");
    for f in ["none", "generic", "full", "search"] {
        for (p, t) in [("fp32", "pp8"), ("fp32", "tg4"), ("fp32", "train2x8"), ("q8", "pp8"), ("q8", "tg4")] {
            let found =
                rows.iter().any(|r| r["fusion"] == f && r["precision"] == p && r["test"] == t && r["tokens_per_s"].as_f64().unwrap() > 0.0);
            assert!(found, "{f} {p} {t}");
        }
    }
    // training runs in fp32 only
    assert!(!rows.iter().any(|r| r["precision"] == "q8" && r["test"] == "train2x8"), "{json}");
    assert!(v["decode_bound_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["read_bandwidth_all_threads_gbs"].as_f64().unwrap() > 0.0, "{json}");
    // the prefill bound (the FMA peak over a token's FLOPs) is measured where
    // the CPU has an FMA, on its widest units, and nothing ran faster than it
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        assert!(v["fma_peak_gflops"].as_f64().unwrap() > 1.0, "{json}");
        let widest = if is_x86_feature_detected!("avx512f") { "AVX-512" } else { "AVX2" };
        eprintln!("FMA peak measured with {widest}");
        assert_eq!(v["fma_peak_isa"], widest, "{json}");
        let bound = v["prefill_bound_tokens_per_s"]["pp8"].as_f64().unwrap();
        assert!(rows.iter().filter(|r| r["test"] == "pp8").all(|r| r["tokens_per_s"].as_f64().unwrap() < bound), "{json}");
    }
}

#[test]
fn masked_attention_blocks_match_the_unfused_graph() {
    // 200 tokens: several 64-row query blocks, each computing only the keys
    // its rows can see (the causal mask guards the fused softmax); with a
    // cache, a 150-token prefill then 50 more rows after it
    use lumind::model::Weights;
    use lumind::session::Session;
    let def = ModelDef::load(root().join("models/tiny-llama.toml")).unwrap();
    let weights = Weights::init(&def, 7, None);
    let tokens: Vec<u32> = (0..200).map(|i| (i * 37 % def.vocab_size) as u32).collect();
    let logits = |fusion: Fusion, kv_cache: bool| {
        let opts = ForwardOptions { kv_cache, ..ForwardOptions::full(256) };
        let mut s = Session::new(&def, weights.clone(), opts, fusion).unwrap();
        if kv_cache {
            let mut l = s.run(&tokens[..150], 1, 0).unwrap().data;
            l.extend(s.run(&tokens[150..], 1, 150).unwrap().data);
            l
        } else {
            s.run(&tokens, 1, 0).unwrap().data
        }
    };
    let reference = logits(Fusion::None, false);
    for kv_cache in [false, true] {
        let d = logits(Fusion::Full, kv_cache).iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(d <= 1e-4, "kv_cache {kv_cache}: max |full - none| = {d:e}");
    }
}

#[test]
fn gated_mlp_split_by_columns_matches_the_unfused_graph() {
    // 300 tokens through a hidden layer of 160 on two threads: the fused
    // gated MLP splits its hidden columns (and then its output columns)
    // between the threads, in two row blocks (256 + 44 rows)
    use lumind::model::Weights;
    use lumind::session::Session;
    let text = std::fs::read_to_string(root().join("models/tiny-llama.toml")).unwrap();
    let text = text
        .replace("intermediate_size = 96", "intermediate_size = 160")
        .replace("max_position_embeddings = 256", "max_position_embeddings = 512");
    let def = ModelDef::parse(&text).unwrap();
    assert_eq!(def.intermediate_size, 160);
    let weights = Weights::init(&def, 11, None);
    let tokens: Vec<u32> = (0..300).map(|i| (i * 53 % def.vocab_size) as u32).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let logits = |fusion: Fusion| {
        pool.install(|| Session::new(&def, weights.clone(), ForwardOptions::full(512), fusion).unwrap().run(&tokens, 1, 0).unwrap().data)
    };
    let reference = logits(Fusion::None);
    let d = logits(Fusion::Full).iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d <= 1e-4, "max |full - none| = {d:e}");
}
