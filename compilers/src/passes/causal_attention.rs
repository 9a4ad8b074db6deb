//! Causal attention fusion (CPU, full): attention over a whole sequence, as
//! the model builder writes it in primops, becomes one [`CausalAttention`]
//! kernel. Per layer, with `q [b, H, s, D]`, `k` and `v [b, KV, s, D]` and
//! `G = H / KV` query heads per kv head:
//!
//! ```text
//! qr = rope(q) as [b, KV, G, s, D]          kr = rope(k) broadcast over G
//! scores = sum_D(qr kr) * scale + mask      mask[i, j] = (i < j) * MASKED
//! p      = exp(scores - max) / sum(exp(scores - max))
//! out    = sum_t(p v)                       [b, KV, G, s, D] = [b, H, s, D]
//! ```
//!
//! where `exp(x)` is `exp2(x * log2 e)`, both products are luminal's
//! broadcast multiply and sum, and the mask compares two `Iota`s. The match
//! is exact: every view between the nodes, the constants, the mask and the
//! rotary embedding of q and k (through [`super::rope::match_rope`]) are
//! checked, and the inner nodes must be read by the pattern only, so
//! anything else (attention over a KV cache, a sliding window) is left
//! alone.
//!
//! The kernel owns a backward rule, so a training graph runs this pass
//! before autograd ([`CausalAttentionFusion::rewrite`] through
//! `GraphBuilder::rewrite`), and the backward pass is one
//! `CausalAttentionGrad` per layer rather than the `s x s` primops.
//! Inference graphs meet it in the pipeline, before `RopeFusion`.

use luminal::prelude::{move_outgoing_edge, move_references, Compiler, Graph, NodeIndex, ShapeTracker, ToIdsMut};
use petgraph::Direction;

use super::rope::{match_rope, Source};
use crate::kernel::{kernel_of, KernelOp};
use crate::kernels::binary::BinaryOp;
use crate::kernels::causal_attention::CausalAttention;
use crate::kernels::constant::Constant;
use crate::kernels::iota::Iota;
use crate::kernels::reduce::ReduceOp;
use crate::kernels::row_program::MASKED_AT;
use crate::kernels::unary::UnaryOp;
use crate::primop::Primop;
use crate::shape::{d, dims_eq, is_broadcast, is_plain, logical_dims, mul, shapes_eq, Dim};
use crate::tensor::{GraphBuilder, Replacement};

#[derive(Debug, Default)]
pub struct CausalAttentionFusion;

/// One attention block ending in the `SumReduce` node `out`.
pub struct Match {
    pub out: NodeIndex,
    kernel: CausalAttention,
    /// q, k, v (un-rotated), cos, sin
    inputs: [Source; 5],
    /// the output's dims, `[b, H, s, D]`
    pub dims: Vec<Dim>,
    /// every node the kernel replaces
    nodes: Vec<NodeIndex>,
    /// constants and the mask, removed when nothing else reads them
    leftovers: Vec<NodeIndex>,
}

/// `st` without its broadcast axis `axis` of size `size`: the view it was
/// expanded from.
fn unexpand(st: &ShapeTracker, axis: usize, size: &Dim) -> Option<ShapeTracker> {
    if axis >= st.len() || !is_broadcast(st, axis) || !dims_eq(&logical_dims(st)[axis], size) {
        return None;
    }
    let mut s = *st;
    s.remove_dim(axis);
    Some(s)
}

/// The view with logical axes `a` and `b` swapped.
fn swapped(st: &ShapeTracker, a: usize, b: usize) -> ShapeTracker {
    let mut axes: Vec<usize> = (0..st.len()).collect();
    axes.swap(a, b);
    let mut s = *st;
    s.permute(&axes);
    s
}

/// A plain view of exactly these dims?
fn plain(st: &ShapeTracker, dims: &[Dim]) -> bool {
    let have = logical_dims(st);
    is_plain(st) && have.len() == dims.len() && have.iter().zip(dims).all(|(a, b)| dims_eq(a, b))
}

struct Matcher<'a> {
    g: &'a Graph,
    /// the pattern's nodes so far, root first
    nodes: Vec<NodeIndex>,
    /// nodes it reads that others may share
    leftovers: Vec<NodeIndex>,
}

impl Matcher<'_> {
    /// The sources of `n` if it is `want`.
    fn sources(&self, n: NodeIndex, want: Primop) -> Option<Vec<Source>> {
        (Primop::at(self.g, n)? == want).then(|| self.g.get_sources(n))
    }

    /// `n` is `want`: it joins the pattern; its sources.
    fn node(&mut self, n: NodeIndex, want: Primop) -> Option<Vec<Source>> {
        let s = self.sources(n, want)?;
        self.nodes.push(n);
        Some(s)
    }

    fn binary(&mut self, n: NodeIndex, want: BinaryOp) -> Option<[Source; 2]> {
        let s = self.node(n, Primop::Binary(want))?;
        Some([s[0], s[1]])
    }

    fn unary(&mut self, n: NodeIndex, want: UnaryOp) -> Option<Source> {
        Some(self.node(n, Primop::Unary(want))?[0])
    }

    fn reduce(&mut self, n: NodeIndex, want: ReduceOp, axis: usize) -> Option<Source> {
        Some(self.node(n, Primop::Reduce(want, axis))?[0])
    }

    /// A scalar constant (read through a broadcast).
    fn constant(&mut self, s: &Source) -> Option<f32> {
        let Primop::Constant(Constant::Float(v)) = Primop::at(self.g, s.0)? else { return None };
        self.leftovers.push(s.0);
        Some(v)
    }

    /// `a * c` for a constant `c` (the builder's `scale`): `a` and `c`.
    fn scaled(&mut self, n: NodeIndex) -> Option<(Source, f32)> {
        let [a, c] = self.binary(n, BinaryOp::Mul)?;
        Some((a, self.constant(&c)?))
    }

    /// A shared node: read by the pattern, kept unless nothing else reads it.
    fn shared(&mut self, n: NodeIndex, want: BinaryOp) -> Option<[Source; 2]> {
        let s = self.sources(n, Primop::Binary(want))?;
        self.leftovers.push(n);
        Some([s[0], s[1]])
    }

    /// `Iota { len, offset: 0 }` read as `[len]` broadcast along `axis` of a
    /// `[len, len]` square.
    fn iota(&mut self, s: &Source, axis: usize, len: &Dim) -> Option<()> {
        let k = kernel_of(self.g.graph.node_weight(s.0)?.as_ref())?.get::<Iota>()?;
        let st = unexpand(&s.2, axis, len)?;
        (dims_eq(&k.len, len) && dims_eq(&k.offset, &d(0)) && plain(&st, &[*len])).then_some(())?;
        self.leftovers.push(s.0);
        Some(())
    }

    /// The additive causal mask `(i < j) * MASKED` of an `[s, s]` square
    /// (shared by the layers), broadcast over `[b, KV, G]`.
    fn causal_mask(&mut self, m: &Source, scores: &[Dim]) -> Option<()> {
        let s = scores[3];
        let mut st = m.2;
        for axis in [2, 1, 0] {
            st = unexpand(&st, axis, &scores[axis])?;
        }
        let [lt, c] = self.shared(m.0, BinaryOp::Mul)?;
        let masked = self.constant(&c)?;
        let [i, j] = self.shared(lt.0, BinaryOp::LessThan)?;
        (plain(&st, &[s, s]) && masked <= MASKED_AT && plain(&lt.2, &[s, s])).then_some(())?;
        self.iota(&i, 1, &s)?;
        self.iota(&j, 0, &s)
    }

    /// `rope(x)` read as the plain `want` dims: x (un-rotated), cos, sin.
    fn rope(&mut self, n: NodeIndex, st: &ShapeTracker, want: &[Dim]) -> Option<(Source, Source, Source)> {
        plain(st, want).then_some(())?;
        let m = match_rope(self.g, n)?;
        self.nodes.extend(&m.nodes);
        self.leftovers.push(m.minus_one);
        Some((m.x, m.cos, m.sin))
    }

    /// Every inner node is read by the pattern only, and kept by nothing.
    fn closed(&self) -> bool {
        self.nodes[1..].iter().all(|&n| {
            !self.g.no_delete.contains(&n)
                && !self.g.to_retrieve.contains(&n)
                && self.g.graph.neighbors_directed(n, Direction::Outgoing).all(|c| self.nodes.contains(&c))
        })
    }
}

/// The attention block ending in `out`, if it is one.
fn match_attention(g: &Graph, out: NodeIndex) -> Option<Match> {
    let mut m = Matcher { g, nodes: vec![], leftovers: vec![] };
    // out = sum_t(p v): [b, KV, G, s, D, t] -> [b, KV, G, s, D]
    let pv = m.reduce(out, ReduceOp::Sum, 5)?;
    let dims = logical_dims(&pv.2);
    if dims.len() != 6 || !is_plain(&pv.2) {
        return None;
    }
    let (b, kv, groups, s, hd, t) = (dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]);
    let scores = [b, kv, groups, s, t];
    let [p, v] = m.binary(pv.0, BinaryOp::Mul)?;
    // v [b, KV, t, D], transposed and broadcast over G and s
    let v_view = unexpand(&swapped(&unexpand(&v.2, 3, &s)?, 3, 4), 2, &groups)?;

    // p = e / sum_t(e) broadcast over D, e = exp2(z * log2 e)
    plain(&unexpand(&p.2, 4, &hd)?, &scores).then_some(())?;
    let [e, r] = m.binary(p.0, BinaryOp::Mul)?;
    let sum = m.unary(r.0, UnaryOp::Recip)?;
    let e_again = m.reduce(sum.0, ReduceOp::Sum, 4)?;
    let exp_of = m.unary(e.0, UnaryOp::Exp2)?;
    let (z, log2e) = m.scaled(exp_of.0)?;
    let one_exp = e_again.0 == e.0 && [&e.2, &e_again.2, &z.2].into_iter().all(|st| plain(st, &scores));
    // (a unary op maps its buffer and passes the view on: both sides of
    // the Recip read the sums broadcast over t)
    let broadcast_sum = [&sum.2, &r.2].into_iter().all(|st| unexpand(st, 4, &t).is_some_and(|st| plain(&st, &scores[..4])));
    if !one_exp || !broadcast_sum || log2e != std::f32::consts::LOG2_E {
        return None;
    }

    // z = x - max_t(x)
    let [x, neg_max] = m.binary(z.0, BinaryOp::Add)?;
    let (max, minus_one) = m.scaled(neg_max.0)?;
    let x_again = m.reduce(max.0, ReduceOp::Max, 4)?;
    let stable = x_again.0 == x.0 && [&x.2, &x_again.2, &neg_max.2].into_iter().all(|st| plain(st, &scores));
    if !stable || minus_one != -1.0 || !plain(&unexpand(&max.2, 4, &t)?, &scores[..4]) {
        return None;
    }

    // x = sum_D(qr kr) * scale + mask
    let [scaled, mask] = m.binary(x.0, BinaryOp::Add)?;
    let (qk, scale) = m.scaled(scaled.0)?;
    m.causal_mask(&mask, &scores)?;
    let qk_products = m.reduce(qk.0, ReduceOp::Sum, 5)?;
    if !plain(&scaled.2, &scores) || !plain(&qk.2, &scores) || !plain(&qk_products.2, &[b, kv, groups, s, t, hd]) {
        return None;
    }
    let [q, k] = m.binary(qk_products.0, BinaryOp::Mul)?;
    // qr [b, KV, G, s, D] broadcast over t; kr [b, KV, t, D] over G and s
    let (q, cos, sin) = m.rope(q.0, &unexpand(&q.2, 4, &t)?, &[b, kv, groups, s, hd])?;
    let (k, k_cos, k_sin) = m.rope(k.0, &unexpand(&unexpand(&k.2, 3, &s)?, 2, &groups)?, &[b, kv, t, hd])?;

    let heads = mul(kv, groups);
    let same_tables = (cos.0, cos.1, cos.2) == (k_cos.0, k_cos.1, k_cos.2) && (sin.0, sin.1, sin.2) == (k_sin.0, k_sin.1, k_sin.2);
    // (the products read rope's outputs as plain buffers: their layout must
    // be [b, heads, s, D], not merely hold as many values)
    let layouts = shapes_eq(&logical_dims(&q.2), &[b, heads, s, hd]) && shapes_eq(&logical_dims(&k.2), &[b, kv, t, hd]);
    if !same_tables || !layouts || !dims_eq(&s, &t) || v_view.is_padded() || logical_dims(&cos.2).len() != 2 || !m.closed() {
        return None;
    }
    Some(Match {
        out,
        kernel: CausalAttention { groups: groups.to_usize()?, scale },
        inputs: [q, k, (v.0, v.1, v_view), cos, sin],
        dims: vec![b, heads, s, hd],
        nodes: m.nodes,
        leftovers: m.leftovers,
    })
}

/// Remove `n` if nothing reads or keeps it, then its sources likewise
/// (never a graph input).
fn remove_if_dead(g: &mut Graph, n: NodeIndex) {
    let dead = g.graph.contains_node(n)
        && g.graph.edges_directed(n, Direction::Outgoing).next().is_none()
        && !g.no_delete.contains(&n)
        && !g.to_retrieve.contains(&n)
        && Primop::at(g, n) != Some(Primop::Input);
    if dead {
        let sources: Vec<NodeIndex> = g.graph.neighbors_directed(n, Direction::Incoming).collect();
        g.graph.remove_node(n);
        for s in sources {
            remove_if_dead(g, s);
        }
    }
}

impl CausalAttentionFusion {
    /// Every attention block of the graph.
    pub fn find(g: &Graph) -> Vec<Match> {
        let reductions = g.graph.node_indices().filter(|&n| Primop::at(g, n) == Some(Primop::Reduce(ReduceOp::Sum, 5)));
        reductions.collect::<Vec<_>>().into_iter().filter_map(|n| match_attention(g, n)).collect()
    }

    /// Replace every attention block by one kernel; returns the matches and
    /// each one's new node. All the new nodes are added before any node is
    /// removed, so none reuses the index of a replaced node.
    pub fn rewrite<T: ToIdsMut>(g: &mut Graph, mut remap: T) -> Vec<(Match, NodeIndex)> {
        let found = Self::find(g);
        let mut fused = vec![];
        for m in found {
            let mut new = g.add_op(KernelOp::new(m.kernel.clone()));
            for (n, o, st) in m.inputs {
                new = new.input(n, o, st);
            }
            let new = new.finish();
            move_outgoing_edge(m.out, new, &mut g.graph);
            move_references(&mut remap, &mut g.no_delete, &mut g.to_retrieve, m.out, new);
            fused.push((m, new));
        }
        for (m, _) in &fused {
            for &n in &m.nodes {
                g.graph.remove_node(n);
            }
        }
        for (m, _) in &fused {
            for &n in &m.leftovers {
                remove_if_dead(g, n);
            }
        }
        fused
    }
}

/// Fuse the attention of a graph being built, before autograd runs on it;
/// returns how many blocks became kernels.
pub fn fuse_before_autograd(b: &GraphBuilder) -> usize {
    b.rewrite(|g, outputs| {
        let mut ids: Vec<&mut NodeIndex> = outputs.iter_mut().collect();
        let fused = CausalAttentionFusion::rewrite(g, &mut ids);
        fused.into_iter().map(|(m, new)| Replacement { old: m.out, new, dims: m.dims }).collect()
    })
}

impl Compiler for CausalAttentionFusion {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, remap: T) {
        Self::rewrite(graph, remap);
    }
}
