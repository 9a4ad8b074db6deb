//! Every op of the tensor API, run through every fusion strategy, against a
//! plain loop.

use lumind_compilers::{compile, d, pipeline, sym, DimValues, Executor, Fusion, GraphBuilder, InputKind, Tensor};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| (((i as u32).wrapping_mul(2654435761u32) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
}

/// Build with `f`, run under `fusion`, return output "y".
fn run(
    fusion: Fusion,
    inputs: &[(&str, Vec<usize>, Vec<f32>)],
    dims: &[(char, usize)],
    f: impl Fn(&GraphBuilder, &[Tensor]) -> Tensor,
) -> (Vec<usize>, Vec<f32>) {
    let b = GraphBuilder::new();
    let ts: Vec<Tensor> =
        inputs.iter().map(|(n, s, _)| b.input(n, &s.iter().map(|&x| d(x)).collect::<Vec<_>>(), InputKind::Data)).collect();
    let y = f(&b, &ts);
    b.output("y", &y);
    let mut built = b.finish().unwrap();
    compile(&mut built, &pipeline(fusion), |_, _| {});
    let mut ex = Executor::new(built);
    let args: Vec<(&str, &[f32])> = inputs.iter().map(|(n, _, v)| (*n, v.as_slice())).collect();
    let dims: DimValues = dims.iter().copied().collect();
    let mut out = ex.run(&args, &dims).unwrap();
    out.take("y").unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: {x} vs {y}");
    }
}

#[test]
fn matmul_batched_and_broadcast() {
    let (bt, m, k, n) = (3, 5, 7, 4);
    let a = data(bt * m * k, 1);
    let w = data(k * n, 2);
    let mut want = vec![0.0; bt * m * n];
    for b in 0..bt {
        for i in 0..m {
            for j in 0..n {
                want[(b * m + i) * n + j] = (0..k).map(|x| a[(b * m + i) * k + x] * w[x * n + j]).sum();
            }
        }
    }
    for &f in Fusion::all() {
        let (s, y) = run(f, &[("a", vec![bt, m, k], a.clone()), ("w", vec![k, n], w.clone())], &[], |_, t| t[0].matmul(&t[1]));
        assert_eq!(s, vec![bt, m, n]);
        close(&y, &want, 1e-5);
    }
}

#[test]
fn softmax_permute_slice_pad() {
    let (r, c) = (4, 6);
    let x = data(r * c, 3);
    // softmax over rows of x^T, then take columns 1..3 and pad one zero each side
    let xt: Vec<f32> = (0..c * r).map(|i| x[(i % r) * c + i / r]).collect();
    let mut sm = vec![0.0; c * r];
    for i in 0..c {
        let row = &xt[i * r..][..r];
        let m = row.iter().cloned().fold(f32::MIN, f32::max);
        let s: f32 = row.iter().map(|v| (v - m).exp()).sum();
        for j in 0..r {
            sm[i * r + j] = (row[j] - m).exp() / s;
        }
    }
    let mut want = vec![];
    for i in 0..c {
        want.push(0.0);
        want.extend_from_slice(&sm[i * r + 1..i * r + 3]);
        want.push(0.0);
    }
    for &f in Fusion::all() {
        let (s, y) =
            run(f, &[("x", vec![r, c], x.clone())], &[], |_, t| t[0].transpose(0, 1).softmax(1).slice(1, d(1), d(3)).pad(1, d(1), d(1)));
        assert_eq!(s, vec![c, 4]);
        close(&y, &want, 1e-5);
    }
}

#[test]
fn symbolic_dims_and_concat() {
    // rotate-half on [s, 4] with a symbolic s: concat(-x[:, 2:], x[:, :2])
    let x = data(3 * 4, 4);
    let mut want = vec![];
    for i in 0..3 {
        let row = &x[i * 4..][..4];
        want.extend_from_slice(&[-row[2], -row[3], row[0], row[1]]);
    }
    for &f in Fusion::all() {
        let b = GraphBuilder::new();
        let t = b.input("x", &[sym('s'), d(4)], InputKind::Data);
        let y = t.slice(1, d(2), d(4)).scale(-1.0).concat(&t.slice(1, d(0), d(2)), 1);
        b.output("y", &y);
        let mut built = b.finish().unwrap();
        compile(&mut built, &pipeline(f), |_, _| {});
        let mut ex = Executor::new(built);
        let dims: DimValues = [('s', 3)].into_iter().collect();
        let (s, y) = ex.run(&[("x", &x)], &dims).unwrap().take("y").unwrap();
        assert_eq!(s, vec![3, 4]);
        close(&y, &want, 0.0);
    }
}

#[test]
fn shape_errors_name_the_op_and_shapes() {
    let b = GraphBuilder::new();
    let _g = b.scope("layers.0.mlp");
    let x = b.input("x", &[d(2), d(3)], InputKind::Data);
    let y = b.input("y", &[d(3), d(2)], InputKind::Data);
    let _ = &x + &y;
    let e = b.finish().err().unwrap().to_string();
    assert_eq!(e, "layers.0.mlp: Add: shapes [2, 3] and [3, 2] differ");
}

#[test]
fn missing_and_bad_inputs_are_errors() {
    let b = GraphBuilder::new();
    let x = b.input("x", &[sym('s')], InputKind::Data);
    b.output("y", &x.exp());
    let mut built = b.finish().unwrap();
    compile(&mut built, &pipeline(Fusion::Full), |_, _| {});
    let mut ex = Executor::new(built);
    let dims: DimValues = [('s', 3)].into_iter().collect();
    let e = ex.run(&[("x", &[1.0, 2.0])], &dims).unwrap_err().to_string();
    assert_eq!(e, "input `x` has 2 values but its shape [s] needs 3");
    let e = ex.run(&[], &dims).unwrap_err().to_string();
    assert_eq!(e, "input `x` was not given");
    let e = ex.run(&[("x", &[1.0, 2.0])], &DimValues::default()).unwrap_err().to_string();
    assert!(e.contains("`s`"), "{e}");
}

#[test]
fn reductions_over_a_strided_axis() {
    // x [b, s, h] read as [h, b, s]: sum and max over s (stride h), then
    // over b; the kept h is contiguous, so whole runs along h are added up
    let (b, s, h) = (3, 5, 8);
    let x = data(b * s * h, 3);
    let at = |i: usize, j: usize, l: usize| x[(i * s + j) * h + l];
    let mut want_sum = vec![0.0; h * b];
    let mut want_max = vec![f32::NEG_INFINITY; h * b];
    for l in 0..h {
        for i in 0..b {
            for j in 0..s {
                want_sum[l * b + i] += at(i, j, l);
                want_max[l * b + i] = want_max[l * b + i].max(at(i, j, l));
            }
        }
    }
    for &f in Fusion::all() {
        let input = [("x", vec![b, s, h], x.clone())];
        let (shape, y) = run(f, &input, &[], |_, t| t[0].permute(&[2, 0, 1]).sum(2));
        assert_eq!(shape, vec![h, b]);
        close(&y, &want_sum, 1e-5);
        let (_, y) = run(f, &input, &[], |_, t| t[0].permute(&[2, 0, 1]).max(2));
        close(&y, &want_max, 0.0);
        let (_, y) = run(f, &input, &[], |_, t| t[0].permute(&[2, 0, 1]).sum(2).sum(1));
        close(&y, &(0..h).map(|l| (0..b).map(|i| want_sum[l * b + i]).sum::<f32>()).collect::<Vec<_>>(), 1e-5);
    }
}

/// Two row groups that each read the other's early member through an outside
/// node (a reduction over the first axis): `n` joins `x`'s group after that
/// group fed `g`, and `m` must then not join `z`'s group, or the two kernels
/// would wait on each other. (Found in the training graph once gradients
/// of broadcasts stopped being copied.)
#[test]
fn row_groups_never_depend_on_each_other() {
    let (r, c) = (3, 5);
    let (x, z) = (data(r * c, 5), data(r * c, 6));
    let colsum = |v: &[f32]| (0..c).map(|j| (0..r).map(|i| v[i * c + j]).sum::<f32>()).collect::<Vec<f32>>();
    let sq = |v: &[f32]| v.iter().map(|a| a * a).collect::<Vec<f32>>();
    let (a1, b1) = (sq(&x), sq(&z));
    let (f, g) = (colsum(&b1), colsum(&a1));
    let want: Vec<f32> = (0..r * c).map(|i| a1[i] * f[i % c] + (b1[i] + g[i % c])).collect();
    for &fu in Fusion::all() {
        let (_, y) = run(fu, &[("x", vec![r, c], x.clone()), ("z", vec![r, c], z.clone())], &[], |_, t| {
            let a1 = t[0].mul(&t[0]);
            let b1 = t[1].mul(&t[1]);
            let n = a1.mul(&b1.sum(0).expand(0, d(r)));
            let m = b1 + a1.sum(0).expand(0, d(r));
            n + m
        });
        close(&y, &want, 1e-5);
    }
}

/// A narrow product big enough to be split by columns across threads (the
/// k and v projections' path): columns 0..112 and 112..200 on two threads.
#[test]
fn matmul_split_by_columns() {
    let (m, k, n) = (96, 64, 200);
    let a = data(m * k, 7);
    let w = data(n * k, 8);
    let want: Vec<f32> = (0..m * n).map(|i| (0..k).map(|x| a[i / n * k + x] * w[i % n * k + x]).sum()).collect();
    for &f in Fusion::all() {
        let (s, y) = run(f, &[("a", vec![m, k], a.clone()), ("w", vec![n, k], w.clone())], &[], |_, t| t[0].linear(&t[1]));
        assert_eq!(s, vec![m, n]);
        close(&y, &want, 1e-5);
    }
}
