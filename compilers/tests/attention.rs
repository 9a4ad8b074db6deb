//! The causal attention kernels (forward and their backward rule) against the
//! same attention written in primops, as the model builder writes it (rotary
//! embedding included): outputs and the gradients of q, k and v, over
//! several query blocks (one of them partial) and grouped-query heads; the
//! fusion pass that puts the kernels in place of those primops, and leaves
//! masks that are not causal alone; and the rotary embedding kernel of
//! generation against its primops.

use lumind_compilers::autograd::backward;
use lumind_compilers::inspect::Snapshot;
use lumind_compilers::kernels::causal_attention::CausalAttention;
use lumind_compilers::kernels::rope::Rope;
use lumind_compilers::losses::sum_all;
use lumind_compilers::passes::causal_attention::fuse_before_autograd;
use lumind_compilers::{compile, d, pipeline, DimValues, Executor, Fusion, GraphBuilder, InputKind, Tensor};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(97)) % 2000) as f32 / 1000.0 - 1.0) * 1.5).collect()
}

/// `x cos + rotate_half(x) sin` over the last axis of `[b, heads, s, D]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let dims = x.dims();
    let (half, full) = (d(x.dim(3).to_usize().unwrap() / 2), x.dim(3));
    let rotated = x.slice(3, half, full).scale(-1.0).concat(&x.slice(3, d(0), half), 3);
    x.mul(&cos.expand_to(&dims)) + rotated.mul(&sin.expand_to(&dims))
}

/// The mask of [`primops`]: `(i + offset < j) * value`.
#[derive(Clone, Copy, Debug)]
struct Mask {
    offset: usize,
    value: f32,
}

const CAUSAL: Mask = Mask { offset: 0, value: -1e30 };

/// `softmax(rope(q) rope(k)^T * scale + mask) v` in primops, as the model
/// builder writes it; GQA by expanding k, v.
fn primops(b: &GraphBuilder, [q, k, v, cos, sin]: [&Tensor; 5], groups: usize, scale: f32, m: Mask) -> Tensor {
    let (q, k) = (rope(q, cos, sin), rope(k, cos, sin));
    let [bs, h, s, hd] = [q.dim(0), q.dim(1), q.dim(2), q.dim(3)];
    let kv = k.dim(1);
    let q5 = q.reshape(&[bs, kv, d(groups), s, hd]);
    let (k5, v5) = (k.expand(2, d(groups)), v.expand(2, d(groups)));
    let scores = q5.matmul(&k5.transpose(3, 4)).scale(scale);
    let mask = b.iota(s, d(m.offset)).expand(1, s).lt(&b.iota(s, d(0)).expand(0, s)).scale(m.value);
    let probs = (scores.clone() + mask.expand_to(&scores.dims())).softmax(4);
    probs.matmul(&v5).reshape(&[bs, h, s, hd])
}

/// How [`run`] builds attention.
#[derive(Clone, Copy, Debug)]
enum Build {
    /// the `CausalAttention` kernel, by hand
    Kernel,
    /// primops with this mask
    Primops(Mask),
    /// primops, then `CausalAttentionFusion` before autograd, as training does
    FusedBeforeAutograd(Mask),
}

/// (output, dq, dk, dv) of `sum(attention(q, k, v) * w)`; `vals` holds q,
/// k, v, w, cos, sin. Also the kernels of the compiled graph.
fn run(how: Build, fusion: Fusion, shape: [usize; 5], vals: &[Vec<f32>; 6]) -> (Vec<Vec<f32>>, std::collections::BTreeMap<String, usize>) {
    let [bs, kv, groups, s, hd] = shape;
    let scale = 1.0 / (hd as f32).sqrt();
    let b = GraphBuilder::new();
    let qkv = |name: &str, heads: usize| b.input(name, &[d(bs), d(heads), d(s), d(hd)], InputKind::Param);
    let (q, k, v) = (qkv("q", kv * groups), qkv("k", kv), qkv("v", kv));
    let w = b.input("w", &[d(bs), d(kv * groups), d(s), d(hd)], InputKind::Data);
    let cos = b.input("cos", &[d(s), d(hd)], InputKind::Data);
    let sin = b.input("sin", &[d(s), d(hd)], InputKind::Data);
    // the builder hands the kernel permuted views: do the same with q
    let qt = q.permute(&[0, 2, 1, 3]).contiguous().permute(&[0, 2, 1, 3]);
    let out = match how {
        Build::Kernel => b.kernel(CausalAttention { groups, scale }, &[&qt, &k, &v, &cos, &sin], &qt.dims()),
        Build::Primops(m) | Build::FusedBeforeAutograd(m) => primops(&b, [&qt, &k, &v, &cos, &sin], groups, scale, m),
    };
    let loss = sum_all(&out.mul(&w));
    b.output("out", &out);
    if let Build::FusedBeforeAutograd(_) = how {
        // (`out` names a replaced node from here on: only the graph's output follows it)
        fuse_before_autograd(&b);
    }
    let grads = backward(&loss, &[q.clone(), k.clone(), v.clone()]).unwrap();
    for (name, g) in ["dq", "dk", "dv"].iter().zip(&grads) {
        b.output(name, g.as_ref().unwrap());
    }
    let mut g = b.finish().unwrap();
    compile(&mut g, &pipeline(fusion), |_, _| {});
    let kernels = Snapshot::take("final", &g.graph, None).op_counts();
    let mut ex = Executor::new(g);
    for (name, v) in ["q", "k", "v"].iter().zip(vals) {
        ex.set(name, v.clone()).unwrap();
    }
    let data = [("w", vals[3].as_slice()), ("cos", vals[4].as_slice()), ("sin", vals[5].as_slice())];
    let mut res = ex.run(&data, &DimValues::default()).unwrap();
    (["out", "dq", "dk", "dv"].iter().map(|n| res.take(n).unwrap().1).collect(), kernels)
}

/// Largest difference between two result sets, relative to `want`'s scale.
fn check(label: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    for (name, (g, w)) in ["out", "dq", "dk", "dv"].iter().zip(got.iter().zip(want)) {
        assert_eq!(g.len(), w.len(), "{name}");
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // same math in another order: f32 rounding only
        assert!(worst <= 1e-5 * scale.max(1.0), "{label} {name}: max diff {worst} (scale {scale})");
    }
}

#[test]
fn causal_attention_kernels_match_primops() {
    // 150 positions: blocks of 64, 64 and 22 query rows; 3 query heads per kv head
    let shape = [2, 2, 3, 150, 8];
    let [bs, kv, groups, s, hd] = shape;
    let q = data(bs * kv * groups * s * hd, 1);
    let k = data(bs * kv * s * hd, 2);
    let v = data(bs * kv * s * hd, 3);
    let w = data(bs * kv * groups * s * hd, 4);
    // arbitrary tables (not real rotations), so no symmetry of theirs hides a mistake
    let (cos, sin) = (data(s * hd, 5), data(s * hd, 6));
    let vals = [q, k, v, w, cos, sin];
    let (want, kernels) = run(Build::Primops(CAUSAL), Fusion::None, shape, &vals);
    assert!(!kernels.contains_key("CausalAttention"), "{kernels:?}");
    for &fusion in Fusion::all() {
        let (got, _) = run(Build::Kernel, fusion, shape, &vals);
        check(&format!("{fusion:?}"), &got, &want);
    }
}

/// `CausalAttentionFusion`, run before autograd as training runs it, turns
/// the primops into the kernel and its backward rule with the same results;
/// a mask that is not exactly causal is left to the primops.
#[test]
fn the_attention_fusion_pass_replaces_exactly_causal_attention() {
    let shape = [2, 2, 2, 70, 8];
    let [bs, kv, groups, s, hd] = shape;
    let vals = [
        data(bs * kv * groups * s * hd, 11),
        data(bs * kv * s * hd, 12),
        data(bs * kv * s * hd, 13),
        data(bs * kv * groups * s * hd, 14),
        data(s * hd, 15),
        data(s * hd, 16),
    ];
    let (want, _) = run(Build::Primops(CAUSAL), Fusion::None, shape, &vals);
    let (got, kernels) = run(Build::FusedBeforeAutograd(CAUSAL), Fusion::Full, shape, &vals);
    assert_eq!((kernels.get("CausalAttention"), kernels.get("CausalAttentionGrad")), (Some(&1), Some(&1)), "{kernels:?}");
    check("fused before autograd", &got, &want);
    // a query that sees one key ahead, and a soft mask: not causal attention
    for mask in [Mask { offset: 1, value: -1e30 }, Mask { value: -1.0, ..CAUSAL }] {
        let (want, _) = run(Build::Primops(mask), Fusion::None, shape, &vals);
        for how in [Build::FusedBeforeAutograd(mask), Build::Primops(mask)] {
            let (got, kernels) = run(how, Fusion::Full, shape, &vals);
            assert!(!kernels.contains_key("CausalAttention"), "{how:?}: {kernels:?}");
            check(&format!("{how:?}"), &got, &want);
        }
    }
}

#[test]
fn rope_kernel_matches_primops() {
    // q as generation hands it over: [b, heads, s, D] permuted from the
    // projection's [b, s, heads, D]; the tables a slice of a longer table
    // (positions past..past + s), as with a KV cache
    let ([bs, h, s, hd], past, rows) = ([2, 3, 5, 8], 4, 12);
    let (xs, cs, ss) = (data(bs * s * h * hd, 7), data(rows * hd, 8), data(rows * hd, 9));
    let run = |fused: bool| {
        let b = GraphBuilder::new();
        let x = b.input("x", &[d(bs), d(s), d(h), d(hd)], InputKind::Data).permute(&[0, 2, 1, 3]);
        let table = |name: &str| b.input(name, &[d(rows), d(hd)], InputKind::Data).slice(0, d(past), d(past + s));
        let (cos, sin) = (table("cos"), table("sin"));
        let out = if fused { b.kernel(Rope, &[&x, &cos, &sin], &x.dims()) } else { rope(&x, &cos, &sin) };
        b.output("out", &out);
        let mut g = b.finish().unwrap();
        compile(&mut g, &pipeline(Fusion::Full), |_, _| {});
        let mut ex = Executor::new(g);
        let mut res = ex.run(&[("x", &xs), ("cos", &cs), ("sin", &ss)], &DimValues::default()).unwrap();
        res.take("out").unwrap().1
    };
    let (got, want) = (run(true), run(false));
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    // the same products and sums: at most an f32 rounding apart
    assert!(worst <= 1e-6 * 8.0, "max diff {worst}");
}
