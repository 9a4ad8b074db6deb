//! Continuous batching: sequences decoded together, joining and leaving
//! between steps, each get exactly the tokens (and, under full fusion on
//! the CPU, the logits bit for bit) that they get alone.

use std::path::Path;

use lumind::compilers::Fusion;
use lumind::generate::Generator;
use lumind::model::builder::ForwardOptions;
use lumind::model::{ModelDef, Weights};
use lumind::rng::Rng;
use lumind::sampling::{argmax, Sampler, SamplingParams};
use lumind::session::Session;
use lumind::slots::Slots;

fn model(name: &str) -> (ModelDef, Weights) {
    let def = ModelDef::load(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}.toml"))).unwrap();
    // (std 0.2: greedy decoding changes token every step, so a wrong row shows)
    let w = Weights::init(&def, 5, Some(0.2));
    (def, w)
}

/// Prompts of different lengths, one crossing a prefill chunk.
fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(11);
    [3usize, 17, 1, 40, 9, 300, 26, 5].iter().map(|&n| (0..n).map(|_| 1 + rng.below(vocab - 1) as u32).collect()).collect()
}

const NEW: usize = 24;

/// Greedy tokens after `prompt` with the one-sequence generator.
fn alone(def: &ModelDef, w: &Weights, prompt: &[u32], fusion: Fusion) -> Vec<u32> {
    let mut g = Generator::new(Session::new(def, w.clone(), ForwardOptions::generation(400), fusion).unwrap());
    g.generate(prompt, NEW, &[], &mut Sampler::new(SamplingParams::default()), |_| true).unwrap().0
}

/// Request `i` joins at step `2 i` and asks for `NEW - 2 i` tokens, so the
/// batch grows, shrinks and has holes; returns each one's greedy tokens and
/// the logits of its first decoded step.
fn together(slots: &mut Slots, prompts: &[Vec<u32>]) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let n = prompts.len();
    let want: Vec<usize> = (0..n).map(|i| NEW - 2 * i).collect();
    let mut out: Vec<Vec<u32>> = vec![vec![]; n];
    let mut first_logits = vec![vec![]; n];
    // slot of each request: reversed, so the rows of a step are not in request order
    let slot = |i: usize| n - 1 - i;
    let mut step = 0;
    while (0..n).any(|i| out[i].len() < want[i]) {
        if step % 2 == 0 && step / 2 < n {
            let i = step / 2;
            let l = slots.prefill(slot(i), &prompts[i]).unwrap();
            out[i].push(argmax(&l));
        }
        let rows: Vec<(usize, u32)> =
            (0..n).filter(|&i| !out[i].is_empty() && out[i].len() < want[i]).map(|i| (slot(i), *out[i].last().unwrap())).collect();
        if !rows.is_empty() {
            let logits = slots.decode(&rows).unwrap();
            for (&(s, _), l) in rows.iter().zip(logits) {
                let i = n - 1 - s;
                if first_logits[i].is_empty() {
                    first_logits[i] = l.clone();
                }
                out[i].push(argmax(&l));
            }
        }
        step += 1;
    }
    (out, first_logits)
}

#[test]
fn a_sequence_decodes_the_same_in_a_batch_as_alone() {
    for name in ["tiny", "tiny-moe", "tiny-qwen3"] {
        let (def, w) = model(name);
        let ps = prompts(def.vocab_size);
        let mut slots = Slots::new(Session::new(&def, w.clone(), ForwardOptions::batched(400, ps.len()), Fusion::Full).unwrap());
        let (got, logits) = together(&mut slots, &ps);
        for (i, p) in ps.iter().enumerate() {
            let want = alone(&def, &w, p, Fusion::Full);
            assert_eq!(got[i], want[..got[i].len()], "{name}: request {i} (prompt of {}) decoded in a batch", p.len());
            // the logits of its first step, alone in the batch session: bit for bit
            let mut solo = Slots::new(Session::new(&def, w.clone(), ForwardOptions::batched(400, ps.len()), Fusion::Full).unwrap());
            let l = solo.prefill(i, p).unwrap();
            let l = solo.decode(&[(i, argmax(&l))]).unwrap().remove(0);
            assert!(l.iter().zip(&logits[i]).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: request {i}'s logits differ in a batch");
        }
    }
}

#[test]
fn other_strategies_batch_within_rounding() {
    // only full fusion skips the masked keys of shorter rows; the others
    // add their zeros, which can change the last bits
    let (def, w) = model("tiny");
    let ps = prompts(def.vocab_size);
    for fusion in [Fusion::None, Fusion::Generic] {
        let mut slots = Slots::new(Session::new(&def, w.clone(), ForwardOptions::batched(400, ps.len()), fusion).unwrap());
        let firsts: Vec<u32> = ps.iter().enumerate().map(|(i, p)| argmax(&slots.prefill(i, p).unwrap())).collect();
        let rows: Vec<(usize, u32)> = firsts.iter().enumerate().map(|(i, &t)| (i, t)).collect();
        let batched = slots.decode(&rows).unwrap();
        for (i, p) in ps.iter().enumerate() {
            let mut solo = Slots::new(Session::new(&def, w.clone(), ForwardOptions::batched(400, 1), fusion).unwrap());
            let l = solo.prefill(0, p).unwrap();
            assert_eq!(argmax(&l), firsts[i]);
            let l = solo.decode(&[(0, firsts[i])]).unwrap().remove(0);
            let worst = l.iter().zip(&batched[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "{fusion}: request {i} differs by {worst} in a batch");
        }
    }
}

#[test]
fn slots_reject_what_does_not_fit() {
    let (def, w) = model("tiny");
    let mut slots = Slots::new(Session::new(&def, w, ForwardOptions::batched(16, 2), Fusion::Full).unwrap());
    let e = slots.prefill(0, &[1; 17]).unwrap_err().to_string();
    assert!(e.contains("17 tokens") && e.contains("16"), "{e}");
    let l = slots.prefill(1, &[1; 16]).unwrap();
    let e = slots.decode(&[(1, argmax(&l))]).unwrap_err().to_string();
    assert!(e.contains("slot 1 is full"), "{e}");
    let e = slots.decode(&[(0, 3), (0, 4)]).unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
    let e = slots.session.run_rows(&[1, 2], 1, &[0, 0]).unwrap_err().to_string();
    assert!(e.contains("cache rows 1..3 exceed the 2"), "{e}");
}

#[test]
fn q8_weights_decode_the_same_in_a_batch_as_alone() {
    use lumind::model::Precision;
    let (def, w) = model("tiny");
    let ps = prompts(def.vocab_size);
    let opts = ForwardOptions::batched(400, ps.len()).with_precision(Precision::Q8);
    let mut slots = Slots::new(Session::new(&def, w.clone(), opts, Fusion::Full).unwrap());
    let (_, logits) = together(&mut slots, &ps);
    for (i, p) in ps.iter().enumerate() {
        let mut solo = Slots::new(Session::new(&def, w.clone(), opts, Fusion::Full).unwrap());
        let l = solo.prefill(i, p).unwrap();
        let l = solo.decode(&[(i, argmax(&l))]).unwrap().remove(0);
        assert!(l.iter().zip(&logits[i]).all(|(a, b)| a.to_bits() == b.to_bits()), "request {i}'s logits differ in a batch under q8");
    }
}
