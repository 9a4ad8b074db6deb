//! Kernel benches: the same small graphs compiled under every fusion
//! strategy (criterion reports each; `none` is the per-primop baseline).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lumind::compilers::{compile, d, pipeline, DimValues, Executor, Fusion, GraphBuilder, InputKind, Tensor};

fn data(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5).collect()
}

/// Compile `f` over inputs of the given shapes; returns a runner.
fn graph(shapes: &[Vec<usize>], fusion: Fusion, f: impl Fn(&[Tensor]) -> Tensor) -> impl FnMut() {
    let b = GraphBuilder::new();
    let ts: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| b.input(&format!("x{i}"), &s.iter().map(|&x| d(x)).collect::<Vec<_>>(), InputKind::Param))
        .collect();
    b.output("y", &f(&ts));
    let mut built = b.finish().unwrap();
    compile(&mut built, &pipeline(fusion), |_, _| {});
    let mut ex = Executor::new(built);
    for (i, s) in shapes.iter().enumerate() {
        ex.set(&format!("x{i}"), data(s.iter().product())).unwrap();
    }
    move || {
        let mut out = ex.run(&[], &DimValues::default()).unwrap();
        let (_, y) = out.take("y").unwrap();
        ex.recycle(y);
    }
}

fn kernels(c: &mut Criterion) {
    type Build = fn(&[Tensor]) -> Tensor;
    let cases: Vec<(&str, Vec<Vec<usize>>, Build)> = vec![
        ("linear 256x512 @ 512x1408", vec![vec![256, 512], vec![1408, 512]], |t| t[0].linear(&t[1])),
        ("softmax 16x256x256", vec![vec![16, 256, 256]], |t| t[0].softmax(2)),
        ("rmsnorm 256x512", vec![vec![256, 512], vec![512]], |t| {
            let inv = t[0].square().mean(1).add_scalar(1e-5).sqrt().recip().expand(1, d(512));
            t[0].mul(&inv).mul(&t[1].expand_to(&[d(256), d(512)]))
        }),
        ("silu*up 256x1408", vec![vec![256, 1408], vec![256, 1408]], |t| t[0].silu().mul(&t[1])),
        ("gated mlp 256x512 (hidden 1408)", vec![vec![256, 512], vec![1408, 512], vec![1408, 512], vec![512, 1408]], |t| {
            t[0].linear(&t[1]).silu().mul(&t[0].linear(&t[2])).linear(&t[3])
        }),
        ("attention 16 heads 256x256x32", vec![vec![16, 256, 32], vec![16, 256, 32], vec![16, 256, 32]], |t| {
            t[0].matmul(&t[1].transpose(1, 2)).scale(0.17).softmax(2).matmul(&t[2])
        }),
    ];
    for (name, shapes, f) in cases {
        let mut g = c.benchmark_group(name);
        g.sample_size(20);
        for &fusion in Fusion::all() {
            let mut run = graph(&shapes, fusion, f);
            g.bench_function(BenchmarkId::from_parameter(fusion), |b| b.iter(&mut run));
        }
        g.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
