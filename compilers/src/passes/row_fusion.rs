//! Row fusion: groups of elementwise primops and reductions over the last
//! axis become one [`RowProgram`] kernel each.
//!
//! A group has a row shape `[outer..., R]`. Its members are elementwise ops
//! producing rows (or one value per row) and sum/max reductions over the
//! last axis; inside the group values flow through plain edges, or from a
//! per-row value broadcast back along the row. Inputs from outside the group
//! may be read through any view (permute, broadcast, slice, pad). Nodes join
//! the group of one of their producers in topological order, unless that
//! would make the group depend on itself through an outside node.
//!
//! This covers RMSNorm (`sum(x*x)`, `rsqrt`, `x * inv * w`), softmax with its
//! mask, SiLU * up, RoPE, residual additions and the cross-entropy pieces.

use luminal::op;
use luminal::prelude::symbolic::Expression;
use luminal::prelude::{Compiler, Dependency, Graph, NodeIndex, ShapeTracker, ToIdsMut};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::kernel::KernelOp;
use crate::kernels::binary::BinaryOp;
use crate::kernels::constant::Constant;
use crate::kernels::reduce::ReduceOp;
use crate::kernels::row_program::{Instr, RowOp, RowProgram};
use crate::kernels::unary::UnaryOp;
use crate::primop::Primop;
use crate::shape::{is_broadcast, is_plain, logical_dims, shapes_eq, without_broadcast, Dim};

#[derive(Debug, Default)]
pub struct RowFusion;

#[derive(Clone, Copy, Debug, PartialEq)]
enum RowKind {
    Binary(BinaryOp),
    Unary(UnaryOp),
    Reduce(ReduceOp, usize),
    Contiguous,
}

fn row_kind_of(o: &dyn op::Operator) -> Option<RowKind> {
    Some(match Primop::of(o)? {
        Primop::Binary(b) => RowKind::Binary(b),
        Primop::Unary(u) => RowKind::Unary(u),
        Primop::Reduce(r, axis) => RowKind::Reduce(r, axis),
        Primop::Contiguous => RowKind::Contiguous,
        Primop::Input | Primop::Constant(_) => return None,
    })
}

/// A scalar constant that can be copied into any group.
fn constant_of(o: &dyn op::Operator) -> Option<RowOp> {
    match Primop::of(o)? {
        Primop::Constant(Constant::Float(v)) => Some(RowOp::Const(v)),
        Primop::Constant(Constant::Dim(e)) => Some(RowOp::Dim(e)),
        _ => None,
    }
}

struct Group {
    outer: Vec<Dim>,
    r: Dim,
    members: Vec<NodeIndex>,
    /// member -> produces rows (true) or one value per row
    row: FxHashMap<NodeIndex, bool>,
}

/// The tracker minus a broadcast last dim, if it has one.
fn without_broadcast_last(st: &ShapeTracker) -> Option<ShapeTracker> {
    let n = st.len();
    if n == 0 || !is_broadcast(st, n - 1) {
        return None;
    }
    let mut s = *st;
    s.remove_dim(n - 1);
    Some(s)
}

struct Candidate {
    kind: RowKind,
    /// (source, tracker) per input, in order
    inputs: Vec<(NodeIndex, ShapeTracker)>,
    /// logical dims of the output
    dims: Vec<Dim>,
}

impl Compiler for RowFusion {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        let pinned: FxHashSet<NodeIndex> = remap.to_ids_mut().into_iter().map(|x| *x).collect();
        let order = petgraph::algo::toposort(&graph.graph, None).expect("graph has a cycle");
        // describe candidate nodes
        let mut nodes: FxHashMap<NodeIndex, Candidate> = FxHashMap::default();
        for &n in &order {
            let Some(kind) = row_kind_of(graph.graph.node_weight(n).unwrap().as_ref()) else {
                continue;
            };
            if pinned.contains(&n) || graph.no_delete.contains(&n) || graph.to_retrieve.contains(&n) {
                continue;
            }
            let inputs: Vec<(NodeIndex, ShapeTracker)> = graph.get_sources(n).into_iter().map(|(s, _, st)| (s, st)).collect();
            let in_dims = logical_dims(&inputs[0].1);
            let dims = match kind {
                RowKind::Reduce(_, ax) => {
                    if ax + 1 != in_dims.len() {
                        continue; // only reductions over the last axis are row reductions
                    }
                    in_dims[..ax].to_vec()
                }
                // luminal's unary ops map their input's buffer and pass the view
                // on to their readers: the node is the buffer's shape, so only
                // broadcasts may sit on its input edge
                RowKind::Unary(_) => {
                    let real = without_broadcast(&inputs[0].1);
                    if !is_plain(&real) {
                        continue;
                    }
                    logical_dims(&real)
                }
                _ => in_dims,
            };
            if dims.is_empty() && !matches!(kind, RowKind::Reduce(..)) {
                continue;
            }
            nodes.insert(n, Candidate { kind, inputs, dims });
        }
        // assign groups in topological order
        let mut groups: Vec<Group> = vec![];
        let mut group_of: FxHashMap<NodeIndex, usize> = FxHashMap::default();
        for &n in &order {
            if let Some(node) = nodes.get(&n) {
                let mut joined = None;
                for (p, st) in &node.inputs {
                    let Some(&g) = group_of.get(p) else { continue };
                    let Some(row) = fits(node, groups[g].row[p], st, &groups[g]) else {
                        continue;
                    };
                    // every edge from the group must fit the same way...
                    let edges_fit = node
                        .inputs
                        .iter()
                        .all(|(q, qst)| group_of.get(q) != Some(&g) || fits(node, groups[g].row[q], qst, &groups[g]) == Some(row));
                    // ...and joining must not make the group depend on itself
                    // through an outside node
                    let cycle =
                        node.inputs.iter().any(|(q, _)| group_of.get(q) != Some(&g) && depends_on(graph, *q, g, &group_of, &groups));
                    if edges_fit && !cycle {
                        joined = Some((g, row));
                        break;
                    }
                }
                let (g, row) = joined.unwrap_or_else(|| {
                    let g = groups.len();
                    let (outer, r, row) = match node.kind {
                        RowKind::Reduce(..) => {
                            let in_dims = logical_dims(&node.inputs[0].1);
                            (node.dims.clone(), in_dims[in_dims.len() - 1], false)
                        }
                        _ => (node.dims[..node.dims.len() - 1].to_vec(), node.dims[node.dims.len() - 1], true),
                    };
                    groups.push(Group { outer, r, members: vec![], row: FxHashMap::default() });
                    (g, row)
                });
                groups[g].members.push(n);
                groups[g].row.insert(n, row);
                group_of.insert(n, g);
            }
        }
        // emit a kernel for every group worth one
        for g in groups.iter().filter(|g| g.members.len() >= 2) {
            emit(graph, g, &nodes);
        }
        // constants no longer read by anyone
        let dead: Vec<NodeIndex> = graph
            .graph
            .node_indices()
            .filter(|&n| {
                is_const(graph, n) && !graph.no_delete.contains(&n) && graph.graph.edges_directed(n, Direction::Outgoing).next().is_none()
            })
            .collect();
        for n in dead {
            graph.graph.remove_node(n);
        }
    }
}

/// Does `n` depend on a member of group `g`? A group becomes one kernel, so
/// reading any member means depending on every member's inputs: groups are
/// walked as wholes (a per-node ancestor set goes stale when a group gains
/// members after it was taken).
fn depends_on(graph: &Graph, n: NodeIndex, g: usize, group_of: &FxHashMap<NodeIndex, usize>, groups: &[Group]) -> bool {
    let mut seen: FxHashSet<NodeIndex> = FxHashSet::default();
    let mut seen_groups: FxHashSet<usize> = FxHashSet::default();
    let mut stack = vec![n];
    while let Some(x) = stack.pop() {
        if !seen.insert(x) {
            continue;
        }
        match group_of.get(&x) {
            Some(&h) if h == g => return true,
            Some(&h) => {
                if seen_groups.insert(h) {
                    stack.extend(groups[h].members.iter().flat_map(|&m| graph.graph.neighbors_directed(m, Direction::Incoming)));
                }
            }
            None => stack.extend(graph.graph.neighbors_directed(x, Direction::Incoming)),
        }
    }
    false
}

/// Can `node` join group `g` through an edge (tracker `st`) from a member that
/// produces rows (`p_row`)? Returns whether the node then produces rows.
fn fits(node: &Candidate, p_row: bool, st: &ShapeTracker, g: &Group) -> Option<bool> {
    let row_dims: Vec<Dim> = g.outer.iter().copied().chain(std::iter::once(g.r)).collect();
    match node.kind {
        RowKind::Reduce(..) => (p_row && is_plain(st) && shapes_eq(&logical_dims(st), &row_dims)).then_some(false),
        RowKind::Contiguous => None,
        // (its input edge holds no more than broadcasts: checked when described)
        RowKind::Unary(_) if shapes_eq(&node.dims, &row_dims) => p_row.then_some(true),
        RowKind::Unary(_) if shapes_eq(&node.dims, &g.outer) => (!p_row).then_some(false),
        RowKind::Unary(_) => None,
        _ if shapes_eq(&node.dims, &row_dims) => {
            let ok = if p_row { is_plain(st) } else { without_broadcast_last(st).is_some_and(|s| is_plain(&s)) };
            ok.then_some(true)
        }
        _ if shapes_eq(&node.dims, &g.outer) => (!p_row && is_plain(st)).then_some(false),
        _ => None,
    }
}

fn is_const(graph: &Graph, n: NodeIndex) -> bool {
    constant_of(graph.graph.node_weight(n).unwrap().as_ref()).is_some()
}

fn emit(graph: &mut Graph, g: &Group, nodes: &FxHashMap<NodeIndex, Candidate>) {
    let members: FxHashSet<NodeIndex> = g.members.iter().copied().collect();
    let mut instrs: Vec<Instr> = vec![];
    let mut instr_of: FxHashMap<NodeIndex, usize> = FxHashMap::default();
    // inputs: (source, output, tracker, row) -> kernel input index
    let mut leaves: Vec<(NodeIndex, u8, ShapeTracker, bool)> = vec![];
    let mut leaf_instr: FxHashMap<usize, usize> = FxHashMap::default();
    let mut consts: FxHashMap<NodeIndex, usize> = FxHashMap::default();
    let mut from = vec![];
    for &m in &g.members {
        let node = &nodes[&m];
        let row = g.row[&m];
        from.push(format!("{:?}", graph.graph.node_weight(m).unwrap()));
        let srcs = graph.get_sources(m);
        let unary = matches!(node.kind, RowKind::Unary(_));
        let mut operand = |i: usize, want_row: bool, instrs: &mut Vec<Instr>| -> usize {
            let (src, out, st) = srcs[i];
            // a unary op maps its input's buffer: read it without the broadcasts
            let st = if unary { without_broadcast(&st) } else { st };
            if members.contains(&src) {
                return instr_of[&src];
            }
            if is_const(graph, src) {
                return *consts.entry(src).or_insert_with(|| {
                    let op = constant_of(graph.graph.node_weight(src).unwrap().as_ref()).unwrap();
                    instrs.push(Instr { op, row: false });
                    instrs.len() - 1
                });
            }
            let key = (src, out, st, want_row);
            let li = match leaves.iter().position(|l| *l == key) {
                Some(i) => i,
                None => {
                    leaves.push(key);
                    leaves.len() - 1
                }
            };
            *leaf_instr.entry(li).or_insert_with(|| {
                instrs.push(Instr { op: RowOp::Input(li), row: want_row });
                instrs.len() - 1
            })
        };
        let op = match node.kind {
            RowKind::Binary(b) => {
                let a = operand(0, row, &mut instrs);
                let c = operand(1, row, &mut instrs);
                RowOp::Binary(b, a, c)
            }
            RowKind::Unary(u) => RowOp::Unary(u, operand(0, row, &mut instrs)),
            RowKind::Reduce(r, _) => RowOp::Reduce(r, operand(0, true, &mut instrs)),
            RowKind::Contiguous => {
                // the copy is the read of its input through its view
                let i = operand(0, row, &mut instrs);
                instr_of.insert(m, i);
                continue;
            }
        };
        instrs.push(Instr { op, row });
        instr_of.insert(m, instrs.len() - 1);
    }
    // outputs: members read from outside the group
    // (reader, input slot, view) of each read from outside
    type Reads = Vec<(NodeIndex, u8, ShapeTracker)>;
    let mut outs: Vec<(NodeIndex, Reads)> = vec![];
    for &m in &g.members {
        let ext: Reads = graph
            .graph
            .edges_directed(m, Direction::Outgoing)
            .filter_map(|e| e.weight().as_data().map(|(i, _, st)| (e.target(), i, st)))
            .filter(|(t, _, _)| !members.contains(t))
            .collect();
        if !ext.is_empty() {
            outs.push((m, ext));
        }
    }
    let kernel = RowProgram {
        instrs,
        input_row: leaves.iter().map(|l| l.3).collect(),
        outputs: outs.iter().map(|(m, _)| instr_of[m]).collect(),
        outer: g.outer.iter().map(|d| Expression::from(*d)).collect(),
        row_len: g.r,
        from,
        guard: None,
    };
    let mut new = graph.add_op(KernelOp::new(kernel));
    for (src, out, st, _) in &leaves {
        new = new.input(*src, *out, *st);
    }
    let id = new.finish();
    for (k, (_, ext)) in outs.iter().enumerate() {
        for (target, input_order, shape) in ext {
            graph.graph.add_edge(id, *target, Dependency::Data { input_order: *input_order, output_order: k as u8, shape: *shape });
        }
    }
    for m in &g.members {
        graph.graph.remove_node(*m);
    }
}
