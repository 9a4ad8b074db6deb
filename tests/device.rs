//! The CUDA backend on machines without a GPU: the generated kernel sources
//! for every tiny model and job are deterministic, hold the fused kernels
//! the CPU compiler made, and (where NVRTC loads; CI installs it) compile to
//! PTX for Hopper. That the kernels compute the right numbers is checked by
//! tests/oracle.rs and tests/oracle_train.rs, which run every backend,
//! including `emulated` (these sources compiled for the CPU).

use std::path::Path;

use lumind::cli::job::{build_job_graph, Job};
use lumind::compilers::cuda::codegen::kernels;
use lumind::compilers::cuda::graph_source;
use lumind::compilers::passes::pipeline_for;
use lumind::compilers::{compile, Backend, Fusion};
use lumind::model::ModelDef;

const MODELS: [&str; 4] = ["tiny-llama", "tiny-qwen3", "tiny-moe", "tiny-moe3"];

fn source(model: &str, job: Job, fusion: Fusion) -> String {
    let def = ModelDef::load(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{model}.toml"))).unwrap();
    let (mut built, _) = build_job_graph(&def, job, None, false, 1).unwrap();
    compile(&mut built, &pipeline_for(fusion, Backend::Cuda), |_, _| {});
    graph_source(built).unwrap()
}

fn entries(src: &str) -> Vec<&str> {
    kernels(src).map(|(name, _)| name).collect()
}

#[test]
fn kernel_sources_are_deterministic_and_well_formed() {
    for model in MODELS {
        for job in [Job::Forward, Job::Decode, Job::Train] {
            for &fusion in Fusion::all() {
                let src = source(model, job, fusion);
                assert_eq!(src, source(model, job, fusion), "{model} {job} {fusion}: sources differ between builds");
                let names = entries(&src);
                let mut unique = names.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(unique.len(), names.len(), "{model} {job} {fusion}: a kernel is defined twice");
                assert_eq!(src.matches('{').count(), src.matches('}').count(), "{model} {job} {fusion}: unbalanced braces");
                let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
                assert!(has("gather_") && has("matmul_naive_"), "{model} {job} {fusion}: {names:?}");
                match (fusion, job) {
                    (f, Job::Train) if f.fuses() => assert!(has("rowfused_") && has("adamw_") && has("scatter_add_"), "{model}: {names:?}"),
                    (f, _) if f.fuses() => assert!(has("rowfused_") && has("attention_"), "{model} {job}: {names:?}"),
                    (_, _) => assert!(!has("rowfused_") && !has("attention_"), "{model} {job} {fusion}: fused kernels without fusion"),
                }
                if job == Job::Decode {
                    assert!(has("kv_write_"), "{model}: decoding writes the KV cache");
                }
            }
        }
    }
}

/// Where a libnvrtc can be loaded, every module compiles for sm_90. CI sets
/// LUMIND_REQUIRE_NVRTC=1 after installing NVRTC, so this cannot pass
/// vacuously there.
#[cfg(feature = "cuda")]
#[test]
fn kernel_sources_compile_to_ptx_with_nvrtc() {
    use lumind::compilers::cuda::driver::{compile_ptx, nvrtc_present};
    let required = std::env::var("LUMIND_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    if !nvrtc_present() {
        assert!(!required, "LUMIND_REQUIRE_NVRTC=1 but libnvrtc cannot be loaded (LD_LIBRARY_PATH?)");
        eprintln!("libnvrtc is not loadable here: PTX compilation not checked");
        return;
    }
    let mut compiled = 0;
    for model in MODELS {
        for job in [Job::Forward, Job::Decode, Job::Train] {
            for fusion in [Fusion::None, Fusion::Full] {
                let ptx = compile_ptx(&source(model, job, fusion), "sm_90").unwrap_or_else(|e| panic!("{model} {job} {fusion}: {e}"));
                assert!(ptx.contains(".target sm_90") && ptx.contains(".entry"), "{model} {job} {fusion}: not PTX for sm_90");
                compiled += 1;
            }
        }
    }
    eprintln!("{compiled} modules compiled to PTX for sm_90");
}

fn lumind(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lumind")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

#[test]
fn device_flag_selects_the_backend_and_names_what_cuda_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    assert!(lumind(&["init", "--model", "models/tiny-qwen3.toml", "--seed", "2", "--out", w.to_str().unwrap()]).status.success());
    let generate = |device: &str| {
        let args = ["generate", "--model", "models/tiny-qwen3.toml", "--weights", w.to_str().unwrap(), "--tokens", "1,7,9"];
        lumind(&[&args[..], &["--max-new-tokens", "6", "--json", "--device", device]].concat())
    };
    let (cpu, emulated) = (generate("cpu"), generate("emulated"));
    assert!(cpu.status.success() && emulated.status.success(), "{}", String::from_utf8_lossy(&emulated.stderr));
    let tokens = |o: &std::process::Output| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["tokens"].clone();
    assert_eq!(tokens(&cpu).as_array().map(|t| t.len()), Some(6));
    assert_eq!(tokens(&cpu), tokens(&emulated), "greedy tokens differ between the CPU kernels and the emulated CUDA kernels");
    #[cfg(feature = "cuda")]
    if lumind::compilers::cuda::driver::check_libraries().is_err() {
        let out = generate("cuda");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("--device cuda needs") && err.contains("libcuda.so"), "{err}");
    }
    let out = generate("tpu");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown device `tpu`"));
}

/// Sessions on several threads share one emulator library: each must see
/// only its own launches (the shim's grid and shared memory are per thread).
#[test]
fn emulated_sessions_on_several_threads_agree() {
    use lumind::model::builder::ForwardOptions;
    use lumind::model::Weights;
    use lumind::session::Session;
    let def = ModelDef::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-llama.toml")).unwrap();
    let tokens: Vec<u32> = (0..24).map(|i| (i * 37 % 120) as u32).collect();
    let run = |def: &ModelDef| {
        let mut s = Session::on(Backend::Emulated, def, Weights::init(def, 9, None), ForwardOptions::full(32), Fusion::Full).unwrap();
        (0..5).map(|_| s.run(&tokens, 1, 0).unwrap().data).collect::<Vec<_>>()
    };
    let want = run(&def)[0].clone();
    let results: Vec<Vec<Vec<f32>>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4).map(|_| sc.spawn(|| run(&def))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results.iter().flatten() {
        assert_eq!(r, &want, "a run on one thread was disturbed by another");
    }
}
