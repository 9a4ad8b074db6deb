//! Autograd against central finite differences on small graphs covering
//! every primop and view the models use. f32 throughout: tolerance 2e-2
//! relative to the gradient's scale (finite differences with h = 1e-2).

use lumind_compilers::autograd::backward;
use lumind_compilers::losses::{cross_entropy, sum_all};
use lumind_compilers::{compile, d, pipeline, DimValues, Executor, Fusion, GraphBuilder, InputKind, Tensor};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(97)) % 2000) as f32 / 1000.0 - 1.0) * 0.8).collect()
}

type Build = dyn Fn(&GraphBuilder, &[Tensor]) -> Tensor;

/// Loss value for the given input values.
fn eval(shapes: &[Vec<usize>], vals: &[Vec<f32>], f: &Build) -> f32 {
    let b = GraphBuilder::new();
    let ts: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| b.input(&format!("x{i}"), &s.iter().map(|&x| d(x)).collect::<Vec<_>>(), InputKind::Param))
        .collect();
    let loss = f(&b, &ts);
    b.output("loss", &loss);
    let mut g = b.finish().unwrap();
    compile(&mut g, &pipeline(Fusion::None), |_, _| {});
    let mut ex = Executor::new(g);
    for (i, v) in vals.iter().enumerate() {
        ex.set(&format!("x{i}"), v.clone()).unwrap();
    }
    ex.run(&[], &DimValues::default()).unwrap().take("loss").unwrap().1[0]
}

fn check(name: &str, shapes: &[Vec<usize>], f: &Build) {
    let vals: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(i, s)| data(s.iter().product(), i as u32 + 1)).collect();
    for &fusion in Fusion::all() {
        let b = GraphBuilder::new();
        let ts: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| b.input(&format!("x{i}"), &s.iter().map(|&x| d(x)).collect::<Vec<_>>(), InputKind::Param))
            .collect();
        let loss = f(&b, &ts);
        let grads = backward(&loss, &ts).unwrap();
        for (i, g) in grads.iter().enumerate() {
            b.output(&format!("g{i}"), g.as_ref().unwrap());
        }
        let mut g = b.finish().unwrap();
        compile(&mut g, &pipeline(fusion), |_, _| {});
        let mut ex = Executor::new(g);
        for (i, v) in vals.iter().enumerate() {
            ex.set(&format!("x{i}"), v.clone()).unwrap();
        }
        let mut out = ex.run(&[], &DimValues::default()).unwrap();
        for i in 0..shapes.len() {
            let (_, got) = out.take(&format!("g{i}")).unwrap();
            let h = 1e-2;
            let num: Vec<f32> = (0..vals[i].len())
                .map(|j| {
                    let (mut p, mut m) = (vals.clone(), vals.clone());
                    p[i][j] += h;
                    m[i][j] -= h;
                    (eval(shapes, &p, f) - eval(shapes, &m, f)) / (2.0 * h)
                })
                .collect();
            let scale = num.iter().fold(1e-3f32, |a, x| a.max(x.abs()));
            for j in 0..num.len() {
                assert!(
                    (got[j] - num[j]).abs() <= 2e-2 * scale,
                    "{name} ({fusion}): d/dx{i}[{j}] = {} but finite difference {}",
                    got[j],
                    num[j]
                );
            }
        }
    }
}

#[test]
fn matmuls_batched_broadcast_and_attention_shaped() {
    check("linear", &[vec![2, 3, 4], vec![5, 4]], &|_, t| sum_all(&t[0].linear(&t[1]).square()));
    check("batched", &[vec![2, 3, 4], vec![2, 4, 3]], &|_, t| sum_all(&t[0].matmul(&t[1]).sin()));
    // grouped-query attention shape: q [1, kv, g, s, e] against k [1, kv, t, e] broadcast over g
    check("gqa", &[vec![1, 2, 2, 3, 4], vec![1, 2, 3, 4]], &|_, t| {
        let k = t[1].expand(2, d(2)).transpose(3, 4);
        sum_all(&t[0].matmul(&k).softmax(4).square())
    });
}

#[test]
fn elementwise_reductions_and_views() {
    check("rmsnorm", &[vec![3, 6], vec![6]], &|_, t| {
        let inv = t[0].square().mean(1).add_scalar(1e-5).sqrt().recip().expand(1, d(6));
        sum_all(&t[0].mul(&inv).mul(&t[1].expand_to(&[d(3), d(6)])).sin())
    });
    check("unary", &[vec![7]], &|_, t| sum_all(&t[0].exp().add(&t[0].square().add_scalar(1.0).ln()).add(&t[0].sigmoid())));
    check("rotate_half", &[vec![2, 4]], &|_, t| {
        let r = t[0].slice(1, d(2), d(4)).scale(-1.0).concat(&t[0].slice(1, d(0), d(2)), 1);
        sum_all(&r.mul(&t[0]).exp())
    });
    check("permute_reshape", &[vec![2, 3, 4]], &|_, t| sum_all(&t[0].permute(&[2, 0, 1]).reshape(&[d(4), d(6)]).softmax(1).square()));
    check("max", &[vec![3, 5]], &|_, t| sum_all(&t[0].max(1).square()));
}

#[test]
fn gather_and_cross_entropy() {
    // embedding lookup with a repeated id, then a tied head: both paths into one gradient
    check("tied embedding", &[vec![6, 4]], &|b, t| {
        let ids = b.iota(d(3), d(1)).modulo(&b.constant(3.0).expand_to(&[d(3)])); // [1, 2, 0]
        let ids = ids.concat(&b.constant(2.0).expand_to(&[d(1)]), 0); // [1, 2, 0, 2]
        let x = ids.gather(&t[0]); // [4, 4]
        let logits = x.linear(&t[0]); // [4, 6]
        let targets = b.iota(d(4), d(0)).concat(&b.constant(-100.0).expand_to(&[d(1)]), 0).slice(0, d(1), d(5)); // [1, 2, 3, -100]
        cross_entropy(&logits, &targets)
    });
}
