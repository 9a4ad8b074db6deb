//! Inspection: what the compiler did, pass by pass.
//!
//! A [`Snapshot`] of the graph is taken after every pass: node and kernel
//! counts, op counts, which nodes the pass removed and added, which kernels
//! were fused from which primops, the graph as DOT and in the
//! `egraph-serialize` JSON format, and a laid-out SVG drawing. From the
//! snapshots come a summary table and one self-contained HTML report that
//! shows the passes side by side (no network needed to open it).

use std::collections::BTreeMap;
use std::fmt::Write;

use luminal::op::Function;
use luminal::prelude::{Graph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::kernel::kernel_of;
use crate::shape::{fmt_dims, logical_dims};

#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: NodeIndex,
    /// short op name: `MatMul`, `Add`, `SumReduce(2)`, an input's name
    pub op: String,
    pub is_input: bool,
    /// primops a fused kernel replaces
    pub fused_from: Vec<String>,
    /// (source, shape read through the edge's view)
    pub inputs: Vec<(NodeIndex, String)>,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub pass: String,
    pub nodes: Vec<NodeInfo>,
    /// nodes of this snapshot that the previous one did not have
    pub added: Vec<NodeIndex>,
    /// op names of the previous snapshot's nodes that this one lacks
    pub removed: Vec<String>,
}

/// Short name of a node's op.
pub fn op_name(graph: &Graph, n: NodeIndex) -> String {
    let op = graph.graph.node_weight(n).unwrap();
    if let Some(f) = op.as_any().downcast_ref::<Function>() {
        return f.0.clone();
    }
    if let Some(k) = kernel_of(op.as_ref()) {
        return k.0.name();
    }
    let s = format!("{op:?}");
    // luminal's Debug of a constant points at the dyn map; keep the value
    s.split(", 0x").next().unwrap_or(&s).to_string()
}

impl Snapshot {
    pub fn take(pass: &str, graph: &Graph, prev: Option<&Snapshot>) -> Snapshot {
        let order = petgraph::algo::toposort(&graph.graph, None).unwrap_or_else(|_| graph.graph.node_indices().collect());
        let nodes: Vec<NodeInfo> = order
            .iter()
            .map(|&n| {
                let w = graph.graph.node_weight(n).unwrap();
                let mut ins: Vec<(u8, NodeIndex, String)> = graph
                    .graph
                    .edges_directed(n, Direction::Incoming)
                    .filter_map(|e| e.weight().as_data().map(|(i, _, st)| (i, e.source(), fmt_dims(&logical_dims(&st)))))
                    .collect();
                ins.sort_by_key(|x| x.0);
                NodeInfo {
                    id: n,
                    op: op_name(graph, n),
                    is_input: w.as_any().is::<Function>(),
                    fused_from: kernel_of(w.as_ref()).map(|k| k.0.fused_from()).unwrap_or_default(),
                    inputs: ins.into_iter().map(|(_, s, d)| (s, d)).collect(),
                }
            })
            .collect();
        let (added, removed) = match prev {
            None => (vec![], vec![]),
            Some(p) => {
                let before: FxHashMap<NodeIndex, (&str, &[String])> =
                    p.nodes.iter().map(|x| (x.id, (x.op.as_str(), &x.fused_from[..]))).collect();
                let now: FxHashMap<NodeIndex, (&str, &[String])> =
                    nodes.iter().map(|x| (x.id, (x.op.as_str(), &x.fused_from[..]))).collect();
                // a node index reused for a different op, or a kernel a pass
                // rewrote in place, counts as both
                let same =
                    |m: &FxHashMap<NodeIndex, (&str, &[String])>, x: &NodeInfo| m.get(&x.id) == Some(&(x.op.as_str(), &x.fused_from[..]));
                let added = nodes.iter().filter(|x| !same(&before, x)).map(|x| x.id).collect();
                let removed = p.nodes.iter().filter(|x| !same(&now, x)).map(|x| x.op.clone()).collect();
                (added, removed)
            }
        };
        Snapshot { pass: pass.into(), nodes, added, removed }
    }

    /// Nodes that compute something (not graph inputs).
    pub fn kernels(&self) -> usize {
        self.nodes.iter().filter(|n| !n.is_input).count()
    }

    /// Computing nodes by op name (a reduction's axis left out).
    pub fn op_counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| !n.is_input) {
            *m.entry(n.op.split('(').next().unwrap().to_string()).or_insert(0) += 1;
        }
        m
    }

    /// Fused kernels this pass created, with what each replaced.
    pub fn fusions(&self) -> Vec<(String, Vec<String>)> {
        let added: FxHashSet<NodeIndex> = self.added.iter().copied().collect();
        self.nodes
            .iter()
            .filter(|n| added.contains(&n.id) && !n.fused_from.is_empty())
            .map(|n| (n.op.clone(), n.fused_from.clone()))
            .collect()
    }

    pub fn dot(&self) -> String {
        let mut s = String::from("digraph lumind {\n  node [shape=box, fontsize=10];\n");
        for n in &self.nodes {
            let style = if n.is_input { ", style=dashed" } else { "" };
            let _ = writeln!(s, "  n{} [label=\"{}\"{style}];", n.id.index(), esc(&n.op));
            for (src, dims) in &n.inputs {
                let _ = writeln!(s, "  n{} -> n{} [label=\"{}\"];", src.index(), n.id.index(), esc(dims));
            }
        }
        s.push_str("}\n");
        s
    }

    /// The graph as an e-graph with one node per class (`egraph-serialize`).
    pub fn egraph(&self) -> egraph_serialize::EGraph {
        let mut g = egraph_serialize::EGraph::default();
        for n in &self.nodes {
            let id = n.id.index().to_string();
            g.add_node(
                id.clone(),
                egraph_serialize::Node {
                    op: n.op.clone(),
                    children: n.inputs.iter().map(|(s, _)| s.index().to_string().into()).collect(),
                    eclass: id.into(),
                    cost: egraph_serialize::Cost::new(1.0).unwrap(),
                    subsumed: false,
                },
            );
        }
        g
    }

    /// A layered drawing: nodes in columns by depth, edges as lines.
    pub fn svg(&self) -> String {
        let mut depth: FxHashMap<NodeIndex, usize> = FxHashMap::default();
        for n in &self.nodes {
            let d = n.inputs.iter().filter_map(|(s, _)| depth.get(s)).map(|d| d + 1).max().unwrap_or(0);
            depth.insert(n.id, d);
        }
        // leaves (inputs, constants) sit just before their first reader
        let mut first_use: FxHashMap<NodeIndex, usize> = FxHashMap::default();
        for n in &self.nodes {
            for (s, _) in &n.inputs {
                let e = first_use.entry(*s).or_insert(usize::MAX);
                *e = (*e).min(depth[&n.id]);
            }
        }
        for n in self.nodes.iter().filter(|n| n.inputs.is_empty()) {
            if let Some(&u) = first_use.get(&n.id) {
                depth.insert(n.id, u.saturating_sub(1));
            }
        }
        let mut layers: BTreeMap<usize, Vec<&NodeInfo>> = BTreeMap::new();
        for n in &self.nodes {
            layers.entry(depth[&n.id]).or_default().push(n);
        }
        let (cw, rh, bw, bh) = (150.0, 26.0, 136.0, 18.0);
        let mut pos: FxHashMap<NodeIndex, (f64, f64)> = FxHashMap::default();
        for (&d, nodes) in layers.iter_mut() {
            // order a column by the mean position of each node's sources
            nodes.sort_by(|a, b| {
                let key = |n: &NodeInfo| {
                    let ys: Vec<f64> = n.inputs.iter().filter_map(|(s, _)| pos.get(s).map(|p| p.1)).collect();
                    if ys.is_empty() {
                        f64::MAX
                    } else {
                        ys.iter().sum::<f64>() / ys.len() as f64
                    }
                };
                key(a).total_cmp(&key(b))
            });
            for (i, n) in nodes.iter().enumerate() {
                pos.insert(n.id, (10.0 + d as f64 * cw, 10.0 + i as f64 * rh));
            }
        }
        let width = 20.0 + layers.len() as f64 * cw;
        let height = 20.0 + layers.values().map(|l| l.len()).max().unwrap_or(1) as f64 * rh;
        let added: FxHashSet<NodeIndex> = self.added.iter().copied().collect();
        let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"monospace\" font-size=\"9\">\n");
        for n in &self.nodes {
            let (x, y) = pos[&n.id];
            for (src, _) in &n.inputs {
                let (sx, sy) = pos[src];
                let _ = writeln!(
                    s,
                    "<line x1=\"{:.0}\" y1=\"{:.0}\" x2=\"{x:.0}\" y2=\"{:.0}\" stroke=\"#aab\" stroke-width=\"0.6\"/>",
                    sx + bw,
                    sy + bh / 2.0,
                    y + bh / 2.0
                );
            }
        }
        for n in &self.nodes {
            let (x, y) = pos[&n.id];
            let fill = if n.is_input {
                "#eef"
            } else if !n.fused_from.is_empty() {
                "#ffd9a0"
            } else if added.contains(&n.id) {
                "#d8f5d0"
            } else {
                "#fff"
            };
            let title = if n.fused_from.is_empty() { n.op.clone() } else { format!("{} <- {}", n.op, n.fused_from.join(", ")) };
            let label: String = n.op.chars().take(24).collect();
            let _ = writeln!(
                s,
                "<g><title>#{} {}</title><rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{bw}\" height=\"{bh}\" rx=\"3\" fill=\"{fill}\" stroke=\"#667\"/><text x=\"{:.0}\" y=\"{:.0}\">{}</text></g>",
                n.id.index(),
                esc(&title),
                x + 4.0,
                y + 12.0,
                esc(&label)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One line per pass: nodes, kernels, what changed.
pub fn summary_table(snaps: &[Snapshot]) -> String {
    let mut s = format!("{:<28} {:>7} {:>8} {:>8} {:>8}  {}\n", "pass", "nodes", "kernels", "removed", "added", "fused");
    for sn in snaps {
        let fused: BTreeMap<String, usize> = sn.fusions().into_iter().fold(BTreeMap::new(), |mut m, (k, _)| {
            *m.entry(k).or_insert(0) += 1;
            m
        });
        let fused: Vec<String> = fused.into_iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = writeln!(
            s,
            "{:<28} {:>7} {:>8} {:>8} {:>8}  {}",
            sn.pass,
            sn.nodes.len(),
            sn.kernels(),
            sn.removed.len(),
            sn.added.len(),
            fused.join(", ")
        );
    }
    if let Some(last) = snaps.last() {
        let counts: Vec<String> = last.op_counts().into_iter().map(|(k, n)| format!("{k} x{n}")).collect();
        let _ = writeln!(s, "\nkernels after the last pass: {}", counts.join(", "));
    }
    s
}

/// What each fused kernel replaced, deduplicated with counts.
pub fn fusion_report(snaps: &[Snapshot]) -> String {
    let mut s = String::new();
    for sn in snaps {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for (k, from) in sn.fusions() {
            *m.entry(format!("{k} <- [{}]", from.join(", "))).or_insert(0) += 1;
        }
        if !m.is_empty() {
            let _ = writeln!(s, "{}:", sn.pass);
            for (line, n) in m {
                let _ = writeln!(s, "  {n} x {line}");
            }
        }
    }
    s
}

/// One self-contained HTML page: the summary, then two panes that each show
/// the graph after a chosen pass.
pub fn html_report(title: &str, snaps: &[Snapshot]) -> String {
    let mut h = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;margin:12px}} pre{{background:#f6f6f8;padding:8px;overflow:auto}}\
         .panes{{display:flex;gap:8px}} .panes>div{{flex:1;min-width:0}} .pane{{border:1px solid #ccd;height:75vh;overflow:auto}}\
         .bar{{margin:4px 0}} .g{{display:none;transform-origin:0 0}}</style></head><body>\
         <h2>{t}</h2><pre>{sum}</pre><details><summary>what fused into what</summary><pre>{fus}</pre></details>\
         <p>Orange: fused kernels (hover for what they replace); green: nodes the pass added; blue: graph inputs.</p><div class=\"panes\">",
        t = esc(title),
        sum = esc(&summary_table(snaps)),
        fus = esc(&fusion_report(snaps)),
    );
    for pane in 0..2 {
        let _ = write!(h, "<div><div class=\"bar\"><select id=\"sel{pane}\" onchange=\"show({pane})\">");
        for (i, sn) in snaps.iter().enumerate() {
            let selected = if (pane == 0 && i == 0) || (pane == 1 && i + 1 == snaps.len()) { " selected" } else { "" };
            let _ = write!(h, "<option value=\"{i}\"{selected}>{i}: {}</option>", esc(&sn.pass));
        }
        let _ = write!(
            h,
            "</select> <button onclick=\"zoom({pane},1.25)\">+</button><button onclick=\"zoom({pane},0.8)\">-</button></div><div class=\"pane\" id=\"pane{pane}\">"
        );
        for (i, sn) in snaps.iter().enumerate() {
            let _ = write!(h, "<div class=\"g\" id=\"g{pane}_{i}\">{}</div>", sn.svg());
        }
        h.push_str("</div></div>");
    }
    h.push_str(
        "</div><script>var z=[1,1];function show(p){var v=document.getElementById('sel'+p).value;\
         document.querySelectorAll('#pane'+p+' .g').forEach(function(e){e.style.display='none'});\
         var g=document.getElementById('g'+p+'_'+v);g.style.display='block';g.style.transform='scale('+z[p]+')';}\
         function zoom(p,f){z[p]*=f;show(p);}show(0);show(1);</script></body></html>\n",
    );
    h
}
