//! `--precision bf16` and `q8`: matrix-product weights stored as bf16 or
//! GGUF's Q8_0 at load. Prompts multiply in bf16 where the CPU has
//! AVX512-BF16 (activations rounded to bf16 too), else their values in f32;
//! decoding widens bf16 to f32 as it reads, and multiplies Q8_0 bytes
//! against activations quantized per block. Both stay close to fp32, and
//! bf16 decoding is exactly fp32 on the rounded weights.

use std::path::Path;

use lumind::compilers::Fusion;
use lumind::model::builder::ForwardOptions;
use lumind::model::{ModelDef, Precision, Weights};
use lumind::session::Session;

fn model(name: &str) -> (ModelDef, Weights) {
    let def = ModelDef::load(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}.toml"))).unwrap();
    let w = Weights::init(&def, 5, Some(0.2));
    (def, w)
}

/// |a - b| / |b| over a whole logits row.
fn relative(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n).sqrt()
}

#[test]
fn q8_logits_stay_close_to_fp32() {
    for name in ["tiny", "tiny-qwen3"] {
        let (def, w) = model(name);
        let prompt: Vec<u32> = (0..40).map(|i| 1 + (i * 37 % (def.vocab_size - 1)) as u32).collect();
        let run = |precision: Precision, fusion: Fusion| {
            let mut s = Session::new(&def, w.clone(), ForwardOptions::generation(64).with_precision(precision), fusion).unwrap();
            let prefill = s.run(&prompt, 1, 0).unwrap().last().to_vec();
            let decode = s.run(&[7], 1, prompt.len()).unwrap().last().to_vec();
            (prefill, decode, s.packed)
        };
        let (p32, d32, none) = run(Precision::Fp32, Fusion::Full);
        assert!(none.is_empty());
        for fusion in [Fusion::Full, Fusion::Search, Fusion::None] {
            let (p8, d8, quantized) = run(Precision::Q8, fusion);
            // every projection of every layer is Q8_0, and the tied embedding
            // (the LM head; its lookups dequantize their rows); the norms are not
            let projections = quantized.iter().filter(|n| n.ends_with("proj.weight")).count();
            assert_eq!(projections, 7 * def.num_hidden_layers, "{name} {fusion}: {quantized:?}");
            assert!(quantized.iter().any(|n| n.contains("embed_tokens")), "{quantized:?}");
            assert!(quantized.iter().all(|n| !n.contains("norm")), "{quantized:?}");
            // Q8_0 rounds each weight by up to half of 1/127 of its block's
            // largest (about 0.7% of the weights' spread, for random normal
            // ones); through two layers of seven projections (and, decoding,
            // activations rounded the same way) these random models' logits
            // move by 2.5-3.5% of their size: 6% is the bound. (Fidelity on
            // a trained model is perplexity's to show.)
            let (ep, ed) = (relative(&p8, &p32), relative(&d8, &d32));
            eprintln!("{name} {fusion}: q8 against fp32, relative error: prefill {ep:.4}, decode {ed:.4}");
            assert!(ep < 0.06 && ed < 0.06, "{name} {fusion}: prefill {ep}, decode {ed}");
            assert!(ed > 0.0, "decoding under q8 gave fp32's logits: the weights were not quantized");
        }
    }
}

#[test]
fn bf16_is_fp32_on_weights_rounded_to_bf16() {
    for name in ["tiny", "tiny-qwen3"] {
        let (def, w) = model(name);
        let prompt: Vec<u32> = (0..40).map(|i| 1 + (i * 37 % (def.vocab_size - 1)) as u32).collect();
        // a prompt, a token after it, and a one-token prompt (a GEMV from
        // an empty cache)
        let run = |w: Weights, precision: Precision, fusion: Fusion| {
            let mut s = Session::new(&def, w, ForwardOptions::generation(64).with_precision(precision), fusion).unwrap();
            let prefill = s.run(&prompt, 1, 0).unwrap().last().to_vec();
            let decode = s.run(&[7], 1, prompt.len()).unwrap().last().to_vec();
            let single = s.run(&[7], 1, 0).unwrap().last().to_vec();
            (prefill, decode, single, s.packed)
        };
        let bf16_products = lumind::compilers::kernels::bf16_gemm::available();
        eprintln!("bf16 prompts multiply in {}", if bf16_products { "bf16 (AVX512-BF16)" } else { "f32 (no AVX512-BF16 here)" });
        let (p32, d32, _, _) = run(w.clone(), Precision::Fp32, Fusion::Full);
        for fusion in [Fusion::Full, Fusion::Search, Fusion::None] {
            let (p16, d16, s16, packed) = run(w.clone(), Precision::Bf16, fusion);
            let projections = packed.iter().filter(|n| n.ends_with("proj.weight")).count();
            assert_eq!(projections, 7 * def.num_hidden_layers, "{name} {fusion}: {packed:?}");
            assert!(packed.iter().any(|n| n.contains("embed_tokens")) && packed.iter().all(|n| !n.contains("norm")), "{packed:?}");
            // the same session in fp32, given the packed weights already
            // rounded to bf16: a GEMV widens bf16 exactly and then does
            // f32's arithmetic, so its logits agree bit for bit; so do a
            // prompt's, where prompts multiply in f32
            let mut rounded = w.clone();
            for n in &packed {
                let (shape, v) = rounded.0.get(n).unwrap().clone();
                rounded.0.insert(n.as_str(), shape, v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect());
            }
            let (pr, dr, sr, _) = run(rounded, Precision::Fp32, fusion);
            let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same(&s16, &sr), "{name} {fusion}: bf16 one-token prompt differs");
            if bf16_products {
                // bf16 products round the activations too (2^-9 relative at
                // most): the logits move by 0.2-0.9% of their size here, and
                // the token after the prompt reads the keys it cached
                let (ep, ed) = (relative(&p16, &pr), relative(&d16, &dr));
                eprintln!("{name} {fusion}: bf16 products against f32 ones on the rounded weights: prefill {ep:.5}, decode {ed:.5}");
                assert!(ep < 0.015 && ed < 0.015 && ep > 0.0, "{name} {fusion}: prefill {ep}, decode {ed}");
            } else {
                assert!(same(&p16, &pr), "{name} {fusion}: bf16 prefill differs");
                assert!(same(&d16, &dr), "{name} {fusion}: bf16 decode differs");
            }
            // bf16 keeps 8 bits of mantissa (a relative rounding of at most
            // 2^-9); these random models' logits move by 0.4-0.9% of their size
            // (up to 1.15% where prompts multiply in bf16): 1.5% bounds it
            let (ep, ed) = (relative(&p16, &p32), relative(&d16, &d32));
            eprintln!("{name} {fusion}: bf16 against fp32, relative error: prefill {ep:.5}, decode {ed:.5}");
            assert!(ep < 0.015 && ed < 0.015 && ed > 0.0, "{name} {fusion}: prefill {ep}, decode {ed}");
        }
    }
}

#[test]
fn q8_is_refused_where_it_does_not_run() {
    let (def, w) = model("tiny");
    let opts = ForwardOptions::generation(16).with_precision(Precision::Q8);
    let e = Session::on(lumind::compilers::Backend::Emulated, &def, w, opts, Fusion::Full).err().expect("q8 on a device");
    assert!(format!("{e:#}").contains("q8 runs on the CPU only"), "{e:#}");
}
