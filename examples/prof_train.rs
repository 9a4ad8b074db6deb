use lumind::compilers::optim::AdamWConfig;
use lumind::compilers::Fusion;
use lumind::model::{ModelDef, Weights};
use lumind::train::graph::Update;
use lumind::train::{Batch, TrainSession};
fn main() {
    let def = ModelDef::load(std::env::args().nth(1).unwrap_or("models/minimind-small-T.toml".into())).unwrap();
    let mut s = TrainSession::new(&def, Weights::init(&def, 0, None), 256, Update::AdamW(AdamWConfig::default()), Fusion::Full).unwrap();
    let rows: Vec<(Vec<u32>, Vec<i64>)> = (0..4).map(|r| { let ids: Vec<u32> = (0..256).map(|i| ((i * 31 + r * 7) % 6000 + 3) as u32).collect(); let l = ids.iter().map(|&x| x as i64).collect(); (ids, l) }).collect();
    let b = Batch::from_labels(&rows);
    s.step(&b, 1e-4, 1, true, 1.0).unwrap();
    s.exec.enable_profile();
    let t = std::time::Instant::now();
    s.step(&b, 1e-4, 2, true, 1.0).unwrap();
    let el = t.elapsed();
    println!("step {:?} => {:.0} tok/s", el, 1024.0 / el.as_secs_f64());
    let p = s.exec.profile.clone().unwrap();
    let mut by: std::collections::BTreeMap<String, (f64, u64, f64)> = Default::default();
    for st in &p { let e = by.entry(st.kernel.split('(').next().unwrap().to_string()).or_default(); e.0 += st.time.as_secs_f64(); e.1 += st.calls; e.2 += st.cost.flops; }
    let mut v: Vec<_> = by.into_iter().collect(); v.sort_by(|a, b| b.1.0.partial_cmp(&a.1.0).unwrap());
    for (k, (t, c, f)) in v { println!("  {k:20} {:8.2} ms  x{c:5}  {:.1} GFLOP/s", t * 1e3, f / t / 1e9); }
    let mut steps: Vec<_> = p.iter().filter(|s| s.kernel.starts_with("MatMul")).collect();
    steps.sort_by(|a, b| b.time.cmp(&a.time));
    for st in steps.iter().take(12) { println!("   mm {:?} {:.2} ms {:.1} GFLOP/s", st.node, st.time.as_secs_f64()*1e3, st.cost.flops / st.time.as_secs_f64() / 1e9); }
}
