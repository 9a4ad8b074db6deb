//! Rotary embedding tables, computed on the host in f32 as transformers does
//! (inverse frequencies, then `cos/sin(position * inv_freq)` duplicated over
//! both halves of the head, times YaRN's attention factor).

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (inverse frequencies too): runs a model
    /// past its training length.
    Linear {
        factor: f64,
    },
    /// YaRN as in transformers: frequencies blended between interpolation and
    /// extrapolation by a ramp; cos/sin scaled by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
    },
}

/// Inverse frequencies (head_dim / 2 of them) and the cos/sin scale.
pub fn inv_freq(dim: usize, theta: f64, scaling: &RopeScaling) -> (Vec<f32>, f32) {
    let base = theta as f32;
    let plain: Vec<f32> = (0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32)).collect();
    match *scaling {
        RopeScaling::None => (plain, 1.0),
        RopeScaling::Linear { factor } => (plain.iter().map(|f| f / factor as f32).collect(), 1.0),
        RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor } => {
            let (d, b) = (dim as f64, theta);
            let orig = original_max_position_embeddings as f64;
            let correction = |rot: f64| (d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * b.ln());
            let low = correction(beta_fast).floor().max(0.0);
            let high = correction(beta_slow).ceil().min(d - 1.0);
            let high = if low == high { high + 0.001 } else { high };
            let f: Vec<f32> = (0..dim / 2)
                .map(|i| {
                    let pos_freq = base.powf((2 * i) as f32 / dim as f32);
                    let (extra, inter) = (1.0 / pos_freq, 1.0 / (factor as f32 * pos_freq));
                    let ramp = ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
                    let extra_factor = 1.0 - ramp;
                    inter * (1.0 - extra_factor) + extra * extra_factor
                })
                .collect();
            (f, attention_factor as f32)
        }
    }
}

/// `cos` and `sin` tables of shape [positions, head_dim], row-major.
pub fn tables(dim: usize, theta: f64, scaling: &RopeScaling, positions: usize) -> (Vec<f32>, Vec<f32>) {
    let (f, scale) = inv_freq(dim, theta, scaling);
    let half = f.len();
    let mut cos = vec![0.0; positions * dim];
    let mut sin = vec![0.0; positions * dim];
    for p in 0..positions {
        for i in 0..half {
            let a = p as f32 * f[i];
            let (s, c) = (a.sin() * scale, a.cos() * scale);
            for j in [i, i + half] {
                cos[p * dim + j] = c;
                sin[p * dim + j] = s;
            }
        }
    }
    (cos, sin)
}
