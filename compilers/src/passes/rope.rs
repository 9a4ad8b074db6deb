//! RoPE fusion (CPU): the rotary embedding as the model builder writes it,
//! `x cos + rotate_half(x) sin` with `rotate_half(x) = concat(-x2, x1)`,
//! becomes one [`Rope`] kernel. In primops that is
//!
//! ```text
//! hi  = x[.., D/2..] * -1        lo = contiguous(x[.., ..D/2])
//! rot = pad(hi, 0, D/2) + pad(lo, D/2, 0)
//! out = x * cos + rot * sin      (cos, sin broadcast over the heads)
//! ```
//!
//! whose rows are `D` values long (32 in minimind): as row programs the
//! per-row cost outweighs the arithmetic. Matches exactly that shape (every
//! inner node read once, views checked), so anything else is left alone.
//! Runs before row fusion.

use luminal::prelude::{move_outgoing_edge, move_references, Compiler, Graph, NodeIndex, ShapeTracker, ToIdsMut};
use petgraph::Direction;

use crate::kernel::KernelOp;
use crate::kernels::binary::BinaryOp;
use crate::kernels::constant::Constant;
use crate::kernels::rope::Rope;
use crate::primop::Primop;
use crate::shape::{is_broadcast, is_plain};

#[derive(Debug, Default)]
pub struct RopeFusion;

pub(crate) type Source = (NodeIndex, u8, ShapeTracker);

fn is(g: &Graph, n: NodeIndex, want: BinaryOp) -> bool {
    g.graph.node_weight(n).and_then(|w| Primop::of(w.as_ref())) == Some(Primop::Binary(want))
}

/// Read by one node only, and not an output or kept node.
fn inner(g: &Graph, n: NodeIndex) -> bool {
    g.graph.edges_directed(n, Direction::Outgoing).count() == 1 && !g.no_delete.contains(&n) && !g.to_retrieve.contains(&n)
}

/// `x`'s view `v` with its last axis sliced to `[start, end)`?
fn sliced(v: &ShapeTracker, s: &ShapeTracker, (start, end): (usize, usize)) -> bool {
    let p = v.indexes[v.len() - 1];
    let mut want = *v;
    want.slices[p] = (start.into(), end.into());
    *s == want
}

/// The plain view `v` padded on its last axis by `(lo, hi)`?
fn padded(s: &ShapeTracker, (lo, hi): (usize, usize)) -> bool {
    let mut plain = *s;
    let p = s.indexes[s.len() - 1];
    let (a, b) = plain.padding[p];
    plain.padding[p] = (0.into(), 0.into());
    a.to_usize() == Some(lo) && b.to_usize() == Some(hi) && is_plain(&plain)
}

/// A rotary table `[s, D]` or `[b, s, D]` broadcast to `[b, heads, s, D]`:
/// the table's own view.
fn table(t: &Source) -> Option<Source> {
    let (n, o, mut st) = *t;
    if st.len() != 4 || !is_broadcast(&st, 1) || is_broadcast(&st, 2) || is_broadcast(&st, 3) {
        return None;
    }
    st.remove_dim(1);
    if is_broadcast(&st, 0) {
        st.remove_dim(0);
    }
    Some((n, o, st))
}

/// The nodes of one rotary embedding ending in the `Add` node `out`.
pub(crate) struct Match {
    pub x: Source,
    /// the tables as `[s, D]` or `[b, s, D]` views
    pub cos: Source,
    pub sin: Source,
    /// every node the kernel replaces (`out` first)
    pub nodes: Vec<NodeIndex>,
    /// the constant -1
    pub minus_one: NodeIndex,
}

pub(crate) fn match_rope(g: &Graph, out: NodeIndex) -> Option<Match> {
    let binary = |n: NodeIndex, want: BinaryOp| -> Option<[Source; 2]> {
        if !is(g, n, want) {
            return None;
        }
        let s = g.get_sources(n);
        Some([s[0], s[1]])
    };
    let [(m_cos, _, e_cos), (m_sin, _, e_sin)] = binary(out, BinaryOp::Add)?;
    let [x, cos] = binary(m_cos, BinaryOp::Mul)?;
    let [(rot, _, e_rot), sin] = binary(m_sin, BinaryOp::Mul)?;
    let [(hi, _, e_hi), (lo, _, e_lo)] = binary(rot, BinaryOp::Add)?;
    let [x_hi, minus_one] = binary(hi, BinaryOp::Mul)?;
    let lo_op = g.graph.node_weight(lo)?;
    if !(is_plain(&e_cos) && is_plain(&e_sin) && is_plain(&e_rot)) || Primop::of(lo_op.as_ref()) != Some(Primop::Contiguous) {
        return None;
    }
    if ![m_cos, m_sin, rot, hi, lo].into_iter().all(|n| inner(g, n)) {
        return None;
    }
    let x_lo = g.get_sources(lo)[0];
    let v = x.2;
    let d = v.dims[v.indexes[v.len() - 1]].to_usize()?;
    let p = v.indexes[v.len() - 1];
    let whole = v.slices[p].0.to_usize() == Some(0) && v.slices[p].1.to_usize().is_none_or(|e| e >= d);
    let negated = g.graph.node_weight(minus_one.0).and_then(|w| Primop::of(w.as_ref())) == Some(Primop::Constant(Constant::Float(-1.0)));
    let same_x = x_hi.0 == x.0 && x_lo.0 == x.0 && x_hi.1 == x.1 && x_lo.1 == x.1;
    let half = d / 2;
    if v.len() != 4 || d % 2 != 0 || v.is_padded() || !whole || !negated || !same_x {
        return None;
    }
    if !(sliced(&v, &x_hi.2, (half, d)) && sliced(&v, &x_lo.2, (0, half)) && padded(&e_hi, (0, half)) && padded(&e_lo, (half, 0))) {
        return None;
    }
    let (cos, sin) = (table(&cos)?, table(&sin)?);
    Some(Match { x, cos, sin, nodes: vec![out, m_cos, m_sin, rot, hi, lo], minus_one: minus_one.0 })
}

impl Compiler for RopeFusion {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        let adds: Vec<NodeIndex> = graph.graph.node_indices().filter(|&n| is(graph, n, BinaryOp::Add)).collect();
        for out in adds {
            if !graph.graph.contains_node(out) {
                continue;
            }
            let Some(m) = match_rope(graph, out) else { continue };
            let new = graph
                .add_op(KernelOp::new(Rope))
                .input(m.x.0, m.x.1, m.x.2)
                .input(m.cos.0, m.cos.1, m.cos.2)
                .input(m.sin.0, m.sin.1, m.sin.2)
                .finish();
            move_outgoing_edge(out, new, &mut graph.graph);
            move_references(&mut remap, &mut graph.no_delete, &mut graph.to_retrieve, out, new);
            for n in m.nodes {
                graph.graph.remove_node(n);
            }
            // the -1 of the negation, unless something else reads it
            if graph.graph.edges_directed(m.minus_one, Direction::Outgoing).count() == 0 && !graph.no_delete.contains(&m.minus_one) {
                graph.graph.remove_node(m.minus_one);
            }
        }
    }
}
