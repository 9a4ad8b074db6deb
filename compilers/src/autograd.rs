//! Reverse-mode differentiation as a graph transform over luminal primops.
//!
//! `backward` walks the graph from a scalar loss in reverse topological order
//! and adds the gradient nodes to the same graph, so forward, loss and
//! backward become one graph that then goes through the same compiler passes
//! as inference.
//!
//! Every gradient is a contiguous tensor with the shape of its node's output
//! buffer. An edge reads a buffer through a view (permute, broadcast, slice,
//! pad, reshape); a gradient arriving through an edge is mapped back by
//! inverting the view: permute back, sum broadcast dims, slice away padding,
//! pad back what was sliced, reshape. Gradients of a node used twice add up.
//!
//! Matrix products (a broadcast `Mul` read only by a `SumReduce`) are
//! differentiated as products, `dA = G B^T`, `dB = A^T G`, on the operands'
//! real dims, so the backward pass is matmuls too and never materialises the
//! broadcast.

use luminal::op;
use luminal::prelude::{NodeIndex, ShapeTracker};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::kernel::{kernel_of, GradRule};
use crate::kernels::binary::BinaryOp;
use crate::kernels::causal_attention::CausalAttentionGrad;
use crate::kernels::gather::ScatterAdd;
use crate::kernels::matmul::{product_roles, Role};
use crate::kernels::reduce::ReduceOp;
use crate::kernels::unary::UnaryOp;
use crate::primop::Primop;
use crate::shape::{self, is_broadcast, is_unbounded, product, sub, without_broadcast, Dim};
use crate::tensor::{GraphBuilder, Tensor};

/// What a node computes, as far as differentiation cares.
#[derive(Clone, Copy, Debug, PartialEq)]
enum GradOp {
    Leaf,
    Add,
    Mul,
    NoGrad,
    Sum(usize),
    Max(usize),
    /// [`unary_grad`]
    Unary(UnaryOp),
    Contiguous,
    Gather,
    /// causal attention: its gradient is one kernel too
    Attention {
        groups: usize,
        scale: f32,
    },
}

struct GradNode {
    op: GradOp,
    /// (source, tracker) per input, in input order
    inputs: Vec<(NodeIndex, ShapeTracker)>,
    consumers: usize,
}

fn classify(o: &dyn op::Operator) -> Result<GradOp, String> {
    if let Some(p) = Primop::of(o) {
        return Ok(match p {
            Primop::Input | Primop::Constant(_) => GradOp::Leaf,
            Primop::Binary(BinaryOp::Add) => GradOp::Add,
            Primop::Binary(BinaryOp::Mul) => GradOp::Mul,
            Primop::Binary(BinaryOp::LessThan | BinaryOp::Mod) => GradOp::NoGrad,
            Primop::Reduce(ReduceOp::Sum, axis) => GradOp::Sum(axis),
            Primop::Reduce(ReduceOp::Max, axis) => GradOp::Max(axis),
            Primop::Unary(op) => GradOp::Unary(op),
            Primop::Contiguous => GradOp::Contiguous,
        });
    }
    let k = kernel_of(o).ok_or_else(|| format!("no backward rule for {o:?}"))?;
    Ok(match k.0.grad_rule() {
        GradRule::None => return Err(format!("no backward rule for kernel {}", k.0.name())),
        GradRule::Zero => GradOp::NoGrad,
        GradRule::Gather => GradOp::Gather,
        GradRule::CausalAttention { groups, scale } => GradOp::Attention { groups, scale },
    })
}

/// The gradient through `y = op(x)` from the output's gradient `g`.
fn unary_grad(op: UnaryOp, g: &Tensor, x: &Tensor, y: &Tensor) -> Tensor {
    use std::f32::consts::{FRAC_PI_2, LN_2};
    match op {
        UnaryOp::Exp2 => g.mul(y).scale(LN_2),
        UnaryOp::Log2 => g.mul(&x.recip()).scale(1.0 / LN_2),
        UnaryOp::Sin => g.mul(&x.add_scalar(FRAC_PI_2).sin()),
        UnaryOp::Sqrt => g.mul(&y.recip()).scale(0.5),
        UnaryOp::Recip => g.mul(&y.square()).scale(-1.0),
    }
}

struct Grad<'a> {
    b: &'a GraphBuilder,
}

impl Grad<'_> {
    /// Map a gradient in the logical shape of view `st` of `src` back to the
    /// shape of `src`'s buffer.
    fn undo_view(&self, g: Tensor, st: &ShapeTracker, src: NodeIndex) -> Tensor {
        let n = st.len();
        // logical axis l reads physical dim st.indexes[l]: go to physical order
        let mut perm: Vec<usize> = (0..n).collect();
        perm.sort_by_key(|&l| st.indexes[l]);
        let mut g = if perm.iter().enumerate().all(|(i, &l)| i == l) { g } else { g.permute(&perm) };
        for k in (0..n).rev() {
            let (s0, s1) = st.slices[k];
            let (p0, p1) = st.padding[k];
            let phys = st.dims[k];
            let padded = p0.to_usize() != Some(0) || p1.to_usize() != Some(0);
            let sliced = s0.to_usize() != Some(0) || !is_unbounded(&s1);
            assert!(!(padded && sliced), "a view both slices and pads one dim (the tensor API never builds one)");
            if padded {
                g = g.slice(k, p0, shape::add(p0, phys));
            }
            if st.fake[k] {
                // a broadcast dim: every copy read the same element
                g = g.sum(k);
            } else if sliced {
                let end = if is_unbounded(&s1) { phys } else { s1 };
                g = g.pad(k, s0, sub(phys, end));
            }
        }
        // already the buffer's shape: keep the view (a broadcast sum, say),
        // so the consumer reads it in place instead of a materialised copy
        let buf = self.b.buf_dims(src);
        let have = g.dims();
        if have.len() == buf.len() && have.iter().zip(&buf).all(|(a, b)| shape::dims_eq(a, b)) {
            return g;
        }
        g.reshape(&buf)
    }

    /// Gradients of `sum(a * b, axis)` for a matrix product, as matmuls.
    fn product(
        &self,
        g: &Tensor,
        a: (NodeIndex, ShapeTracker),
        b: (NodeIndex, ShapeTracker),
        axis: usize,
        roles: &[Role],
        want: [bool; 2],
    ) -> [Option<Tensor>; 2] {
        let dims = shape::logical_dims(&a.1);
        let gi = |l: usize| if l < axis { l } else { l - 1 };
        let of = |r: Role| (0..roles.len()).filter(|&l| roles[l] == r).collect::<Vec<_>>();
        let (batch, m, n) = (of(Role::Batch), of(Role::M), of(Role::N));
        let size = |ls: &[usize]| product(&ls.iter().map(|&l| dims[l]).collect::<Vec<_>>());
        let (bt, mt, nt, k) = (size(&batch), size(&m), size(&n), dims[axis]);
        // an operand viewed without broadcast dims, permuted to [batch, rows, K]
        let operand = |x: &(NodeIndex, ShapeTracker), rows: &[usize]| {
            let real = without_broadcast(&x.1);
            // real dims keep D's order; find each D axis's position among them
            let pos = |l: usize| (0..l).filter(|&j| !is_broadcast(&x.1, j)).count();
            let order: Vec<usize> = batch.iter().chain(rows).chain(std::iter::once(&axis)).map(|&l| pos(l)).collect();
            self.b.view(x.0, real).permute(&order).reshape(&[bt, size(rows), k])
        };
        // result [bt, rows, K] back to the operand's real-dim order, then to its buffer
        let back = |r: Tensor, x: &(NodeIndex, ShapeTracker), rows: &[usize]| {
            let lead: Vec<usize> = batch.iter().chain(rows).copied().collect();
            let mut shape: Vec<Dim> = lead.iter().map(|&l| dims[l]).collect();
            shape.push(k);
            let r = r.reshape(&shape);
            // axis order of r in D terms: lead..., axis; sort into D order
            let mut d_order: Vec<usize> = lead.clone();
            d_order.push(axis);
            let mut perm: Vec<usize> = (0..d_order.len()).collect();
            perm.sort_by_key(|&i| d_order[i]);
            let r = r.permute(&perm);
            self.undo_view(r, &without_broadcast(&x.1), x.0)
        };
        // G as [batch, first, second]. When G already holds those blocks in
        // order (or with the last two swapped) this is a free reshape (plus a
        // transposed view), not a copy.
        let gperm = |first: &[usize], second: &[usize], rows: Dim, cols: Dim| {
            let order: Vec<usize> = batch.iter().chain(first).chain(second).map(|&l| gi(l)).collect();
            let swapped: Vec<usize> = batch.iter().chain(second).chain(first).map(|&l| gi(l)).collect();
            let identity = |o: &[usize]| o.iter().enumerate().all(|(i, &x)| i == x);
            if identity(&swapped) && !identity(&order) {
                g.reshape(&[bt, cols, rows]).transpose(1, 2)
            } else {
                g.permute(&order).reshape(&[bt, rows, cols])
            }
        };
        let da = want[0].then(|| {
            // dA[batch, M, K] = G[batch, M, N] @ B[batch, N, K]
            let r = gperm(&m, &n, mt, nt).matmul(&operand(&b, &n));
            back(r, &a, &m)
        });
        let db = want[1].then(|| {
            // dB[batch, N, K] = G^T[batch, N, M] @ A[batch, M, K]
            let r = gperm(&n, &m, nt, mt).matmul(&operand(&a, &m));
            back(r, &b, &n)
        });
        [da, db]
    }
}

/// Add gradient nodes for `d loss / d x` for every `x` in `wrt` (graph
/// inputs); `None` where the loss does not depend on it. `loss` must hold one
/// element.
pub fn backward(loss: &Tensor, wrt: &[Tensor]) -> Result<Vec<Option<Tensor>>, String> {
    let b = loss.builder();
    // snapshot the graph as it is before gradients are added
    let (order, nodes) = b.with_graph(|g| {
        let order = petgraph::algo::toposort(&g.graph, None).map_err(|_| "graph has a cycle".to_string())?;
        let mut nodes = FxHashMap::default();
        for &n in &order {
            let mut ins: Vec<(u8, NodeIndex, ShapeTracker)> = g
                .graph
                .edges_directed(n, Direction::Incoming)
                .filter_map(|e| e.weight().as_data().map(|(i, _, st)| (i, e.source(), st)))
                .collect();
            ins.sort_by_key(|x| x.0);
            let consumers = g.graph.edges_directed(n, Direction::Outgoing).filter(|e| e.weight().as_data().is_some()).count();
            let op = classify(g.graph.node_weight(n).unwrap().as_ref())?;
            nodes.insert(n, GradNode { op, inputs: ins.into_iter().map(|(_, s, st)| (s, st)).collect(), consumers });
        }
        Ok::<_, String>((order, nodes))
    })?;
    let numel: Option<usize> = product(&b.buf_dims(loss.id)).to_usize();
    if numel != Some(1) {
        return Err(format!("the loss must be a single value, got shape {}", shape::fmt_dims(&b.buf_dims(loss.id))));
    }
    // nodes whose value depends on a wrt input (and may carry a gradient)
    let mut requires: FxHashSet<NodeIndex> = wrt.iter().map(|t| t.id).collect();
    for &n in &order {
        let node = &nodes[&n];
        if !matches!(node.op, GradOp::Leaf | GradOp::NoGrad) && !b.is_stop_grad(n) && node.inputs.iter().any(|(s, _)| requires.contains(s))
        {
            requires.insert(n);
        }
    }
    let cx = Grad { b: &b };
    let mut grads: FxHashMap<NodeIndex, Tensor> = FxHashMap::default();
    let one = b.constant(1.0).expand_to(&b.buf_dims(loss.id));
    grads.insert(loss.id, one);
    let mut done_muls: FxHashSet<NodeIndex> = FxHashSet::default();
    // gradients of a node used twice add up
    let add = |grads: &mut FxHashMap<NodeIndex, Tensor>, src: NodeIndex, g: Tensor| {
        let g = match grads.remove(&src) {
            Some(old) => old + g,
            None => g,
        };
        grads.insert(src, g);
    };
    for &n in order.iter().rev() {
        if !requires.contains(&n) || done_muls.contains(&n) {
            continue;
        }
        let Some(g) = grads.get(&n).cloned() else {
            continue;
        };
        let node = &nodes[&n];
        let needs = |i: usize| requires.contains(&node.inputs[i].0);
        let view = |i: usize| b.view(node.inputs[i].0, node.inputs[i].1);
        match node.op {
            GradOp::Leaf | GradOp::NoGrad => {}
            GradOp::Add => {
                for i in 0..2 {
                    if needs(i) {
                        let (src, st) = node.inputs[i];
                        add(&mut grads, src, cx.undo_view(g.clone(), &st, src));
                    }
                }
            }
            GradOp::Mul => {
                for i in 0..2 {
                    if needs(i) {
                        let (src, st) = node.inputs[i];
                        add(&mut grads, src, cx.undo_view(g.mul(&view(1 - i)), &st, src));
                    }
                }
            }
            GradOp::Sum(axis) => {
                let (src, st) = node.inputs[0];
                let m = &nodes[&src];
                let roles = (m.op == GradOp::Mul && m.consumers == 1 && shape::is_plain(&st))
                    .then(|| product_roles(&m.inputs[0].1, &m.inputs[1].1, axis))
                    .flatten()
                    // (the product rule needs each dim real in at least one operand)
                    .filter(|roles| !roles.contains(&Role::Both));
                match roles {
                    Some(roles) => {
                        // a matrix product: differentiate the Mul + Sum pair at once
                        done_muls.insert(src);
                        let want = [requires.contains(&m.inputs[0].0), requires.contains(&m.inputs[1].0)];
                        let [da, db] = cx.product(&g, m.inputs[0], m.inputs[1], axis, &roles, want);
                        if let Some(da) = da {
                            add(&mut grads, m.inputs[0].0, da);
                        }
                        if let Some(db) = db {
                            add(&mut grads, m.inputs[1].0, db);
                        }
                    }
                    None => {
                        let size = shape::logical_dims(&st)[axis];
                        add(&mut grads, src, cx.undo_view(g.expand(axis, size), &st, src));
                    }
                }
            }
            GradOp::Max(axis) => {
                let (src, st) = node.inputs[0];
                let size = shape::logical_dims(&st)[axis];
                let x = view(0);
                let m = b.buffer(n).expand(axis, size);
                // 1 where x equals the max: 1 - (x < m) - (m < x)
                let eq = x.lt(&m).add(&m.lt(&x)).scale(-1.0).add_scalar(1.0);
                add(&mut grads, src, cx.undo_view(g.expand(axis, size).mul(&eq), &st, src));
            }
            GradOp::Unary(op) => {
                let src = node.inputs[0].0;
                let dims = b.buf_dims(n);
                let x = b.view(src, ShapeTracker::new(&dims));
                let y = b.buffer(n);
                add(&mut grads, src, unary_grad(op, &g, &x, &y).reshape(&b.buf_dims(src)));
            }
            GradOp::Contiguous => {
                let (src, st) = node.inputs[0];
                add(&mut grads, src, cx.undo_view(g, &st, src));
            }
            GradOp::Attention { groups, scale } => {
                // one buffer [b, H + 2 KV, s, D]: dq, dk, dv along the heads
                let (q, k, v) = (view(0), view(1), view(2));
                let (heads, kv) = (q.dim(1), k.dim(1));
                let dims = [q.dim(0), shape::add(heads, shape::mul(kv, shape::d(2))), q.dim(2), q.dim(3)];
                let (cos, sin) = (view(3), view(4));
                let packed = b.kernel(CausalAttentionGrad { groups, scale }, &[&q, &k, &v, &cos, &sin, &g], &dims);
                let kv_end = shape::add(heads, kv);
                let parts = [(shape::d(0), heads), (heads, kv_end), (kv_end, dims[1])];
                for (i, (start, end)) in parts.into_iter().enumerate() {
                    if needs(i) {
                        let (src, st) = node.inputs[i];
                        add(&mut grads, src, cx.undo_view(packed.slice(1, start, end), &st, src));
                    }
                }
            }
            GradOp::Gather => {
                let (table, tst) = node.inputs[0];
                if needs(0) {
                    if !shape::is_plain(&tst) {
                        return Err("gather from a viewed table has no backward rule".into());
                    }
                    let vocab = b.buf_dims(table)[0];
                    let dims = b.buf_dims(table);
                    let dg = b.kernel(ScatterAdd { vocab }, &[&g, &view(1)], &dims);
                    add(&mut grads, table, dg);
                }
            }
        }
    }
    Ok(wrt.iter().map(|t| grads.remove(&t.id)).collect())
}
