//! Choosing the next token from logits: repetition penalty, temperature,
//! top-k and top-p (nucleus); temperature 0 is greedy (first maximum wins,
//! as `torch.argmax`).

use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// keep the k most likely tokens (0: all)
    pub top_k: usize,
    /// keep the smallest set whose probability reaches p (1.0: all)
    pub top_p: f32,
    /// > 1 discourages tokens already seen (transformers' rule)
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0) || !self.temperature.is_finite() {
            return Err(format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty > 0.0) || !self.repetition_penalty.is_finite() {
            return Err(format!("repetition_penalty must be > 0, got {}", self.repetition_penalty));
        }
        Ok(())
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    scratch: Vec<(f64, u32)>,
}

/// `ln sum exp(row)` in f64, shifted by the row's maximum so nothing overflows.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler { params, rng, scratch: vec![] }
    }

    /// Pick a token; `seen` are the ids the repetition penalty applies to.
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> u32 {
        let p = &self.params;
        let mut logits = logits.to_vec();
        if p.repetition_penalty != 1.0 {
            let mut done = vec![false; logits.len()];
            for &t in seen {
                let t = t as usize;
                if t < logits.len() && !done[t] {
                    done[t] = true;
                    let l = &mut logits[t];
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(&logits);
        }
        // softmax(l / T) as exp((l - max) / T): every exponent is <= 0, so
        // no temperature, however small, overflows (a NaN logit counts as
        // the least likely)
        let max = logits.iter().copied().filter(|l| !l.is_nan()).fold(f32::NEG_INFINITY, f32::max);
        let t = p.temperature as f64;
        let s = &mut self.scratch;
        s.clear();
        s.extend(logits.iter().enumerate().map(|(i, &l)| {
            let z = if l.is_nan() || max == f32::NEG_INFINITY { f64::NEG_INFINITY } else { (l as f64 - max as f64) / t };
            (if z.is_nan() { 0.0 } else { z }, i as u32)
        }));
        s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        if p.top_k > 0 {
            s.truncate(p.top_k);
        }
        let mut total = 0.0;
        for e in s.iter_mut() {
            e.0 = e.0.exp();
            total += e.0;
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = s.len();
            for (i, e) in s.iter().enumerate() {
                acc += e.0 / total;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            s.truncate(keep);
            total = s.iter().map(|e| e.0).sum();
        }
        let mut r = self.rng.f64() * total;
        for e in s.iter() {
            r -= e.0;
            if r <= 0.0 {
                return e.1;
            }
        }
        s[0].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_top_p_and_penalty() {
        let logits = [1.0, 3.0, 2.0, 3.0];
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&logits, &[]), 1, "first maximum wins");
        assert_eq!(s.sample(&logits, &[1]), 1, "penalty 1.0 changes nothing");
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..Default::default() });
        assert_eq!(s.sample(&logits, &[1, 3]), 2);
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 1, seed: 7, ..Default::default() });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 5.0, 4.9], &[]), 1);
        }
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.5, seed: 7, ..Default::default() });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 5.0, 1.0], &[]), 1);
        }
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, seed: 1, ..Default::default() });
        let picks: std::collections::HashSet<u32> = (0..200).map(|_| s.sample(&[0.0, 0.1, 0.2], &[])).collect();
        assert_eq!(picks.len(), 3, "full sampling reaches every token");
    }

    #[test]
    fn any_positive_temperature_is_stable() {
        let logits = [1.0, 3.0, 2.9, -1.0, f32::NAN];
        for t in [1e-40f32, f32::MIN_POSITIVE, 1e-30, 1e-6, 0.01] {
            let mut s = Sampler::new(SamplingParams { temperature: t, seed: 3, ..Default::default() });
            for _ in 0..50 {
                assert_eq!(s.sample(&logits, &[]), 1, "temperature {t} must pick the most likely token");
            }
        }
        // exact ties at a tiny temperature are shared, and a huge logit gap is no problem
        let mut s = Sampler::new(SamplingParams { temperature: 1e-40, seed: 5, ..Default::default() });
        let picks: std::collections::HashSet<u32> = (0..100).map(|_| s.sample(&[5.0, 5.0, -3e38], &[])).collect();
        assert_eq!(picks, [0, 1].into_iter().collect());
        let mut s = Sampler::new(SamplingParams { temperature: 2.0, top_p: 1e-30, seed: 5, ..Default::default() });
        assert_eq!(s.sample(&[3e38, -3e38, 0.0], &[]), 0);
    }
}
