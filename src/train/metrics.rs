//! Metrics of a run: one JSON line per logged optimizer step in
//! `metrics.jsonl`, and `loss.svg`, a plot of the loss curve.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub step: u64,
    pub micro_step: u64,
    pub epoch: u64,
    /// the step's loss (cross-entropy + aux), a mean as `optim.loss_mean` says
    #[serde(deserialize_with = "nan_as_null")]
    pub loss: f32,
    #[serde(deserialize_with = "nan_as_null")]
    pub ce: f32,
    #[serde(deserialize_with = "nan_as_null")]
    pub aux: f32,
    pub lr: f32,
    #[serde(deserialize_with = "nan_as_null")]
    pub grad_norm: f32,
    /// over all ranks
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// processes of the data-parallel run (1: one process)
    #[serde(default = "super::config::one")]
    pub ranks: usize,
    /// seconds rank 0 spent in the step's collectives (the gradient sum,
    /// and waiting for the other ranks to reach it)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_reduce_s: Option<f64>,
    /// DPO: share of pairs the policy prefers more than the reference does
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_acc: Option<f32>,
    /// DPO: mean reward margin `beta * ((pi_c - pi_r) - (ref_c - ref_r))`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_margin: Option<f32>,
}

/// JSON has no NaN: serde_json writes it as `null`; read that back as NaN.
fn nan_as_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
}

pub fn append(out: &Path, m: &Metrics) -> Result<()> {
    let p = out.join("metrics.jsonl");
    let mut f = OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("cannot write {}", p.display()))?;
    writeln!(f, "{}", serde_json::to_string(m)?).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(())
}

/// The logged rows. A last line that does not parse is one a crash or a
/// full disk cut short: it is left out, with a warning; a bad line before
/// the last is an error naming it.
pub fn read(out: &Path) -> Result<Vec<Metrics>> {
    let p = out.join("metrics.jsonl");
    if !p.exists() {
        return Ok(vec![]);
    }
    let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<(usize, &str)> = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
    let mut rows = Vec::with_capacity(lines.len());
    for (k, &(i, l)) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(m) => rows.push(m),
            Err(_) if k + 1 == lines.len() => {
                eprintln!("warning: {}:{}: the last line is cut short (a crash or a full disk?); ignoring it", p.display(), i + 1);
            }
            Err(e) => bail!("{}:{}: not a metrics row ({e})", p.display(), i + 1),
        }
    }
    Ok(rows)
}

/// Keep only the metrics of steps a resumed run will not redo.
pub fn truncate_after(out: &Path, micro_step: u64) -> Result<()> {
    let keep: Vec<Metrics> = read(out)?.into_iter().filter(|m| m.micro_step <= micro_step).collect();
    let mut text = String::new();
    for m in &keep {
        text.push_str(&serde_json::to_string(m)?);
        text.push('\n');
    }
    crate::io::write_atomic(&out.join("metrics.jsonl"), text.as_bytes())
}

/// An SVG line plot of the loss per step (self-contained, no fonts needed
/// beyond the viewer's default).
pub fn plot(out: &Path, title: &str) -> Result<()> {
    let m = read(out)?;
    if m.is_empty() {
        return Ok(());
    }
    let (w, h, left, bottom, top, right) = (720.0, 400.0, 60.0, 40.0, 30.0, 20.0);
    let xs: Vec<f64> = m.iter().map(|x| x.step as f64).collect();
    let m: Vec<Metrics> = m.into_iter().filter(|x| x.loss.is_finite()).collect();
    if m.is_empty() {
        return Ok(());
    }
    let ys: Vec<f64> = m.iter().map(|x| x.loss as f64).collect();
    let (x0, x1) = (xs[0].min(0.0), xs[xs.len() - 1].max(1.0));
    let (mut y0, mut y1) = ys.iter().fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
    if y1 - y0 < 1e-6 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| top + (y1 - y) / (y1 - y0) * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        w / 2.0,
        xml(title)
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        s += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.3}</text>\n",
            w - right,
            py(y),
            py(y),
            left - 6.0,
            py(y) + 4.0,
            y
        );
        let x = x0 + (x1 - x0) * i as f64 / 4.0;
        s += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{:.0}</text>\n", px(x), h - bottom + 16.0, x);
    }
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">optimizer step</text>\n", w / 2.0, h - 6.0);
    s += &format!("<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">loss</text>\n", h / 2.0, h / 2.0);
    let pts: Vec<String> = xs.iter().zip(&ys).map(|(&x, &y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
    s += &format!("<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>\n</svg>\n", pts.join(" "));
    crate::io::write_atomic(&out.join("loss.svg"), s.as_bytes())
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
