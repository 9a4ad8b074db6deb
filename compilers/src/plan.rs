//! The schedule of a compiled graph, as the executor runs it on any target: a topological
//! order of kernel steps, one buffer slot per node output (an in-place output
//! shares its input's slot), and for every temporary slot the step after
//! which it is free.

use std::sync::Arc;

use luminal::prelude::{Graph, NodeIndex, ShapeTracker};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use rustc_hash::FxHashMap;

use crate::dtype::DType;
use crate::kernel::{kernel_of, Kernel};
use crate::primop::Primop;
use crate::shape::{fmt_dims, Dim};
use crate::tensor::{BuiltGraph, InputKind};
use crate::view::{eval, DimValues, View};

/// Inputs that do not fit the plan: what a run refuses before it starts.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("input `{0}` was not given")]
    MissingInput(String),
    #[error("graph has no input named `{0}`")]
    UnknownInput(String),
    #[error("input `{name}` has {got} values but its shape {shape} needs {want}")]
    InputSize { name: String, shape: String, got: usize, want: usize },
    #[error("dimension `{0}` has no value for this run")]
    MissingDim(char),
    /// (a compiler bug, caught before a kernel reads past a buffer)
    #[error("{0}")]
    OutOfBounds(String),
}

pub(crate) struct InputSlot {
    pub name: String,
    pub slot: usize,
    pub kind: InputKind,
    pub dims: Vec<Dim>,
    /// how a param is stored (bf16 or Q8_0 after `Executor::pack_weights`)
    pub dtype: DType,
}

pub(crate) struct EdgeIn {
    pub slot: usize,
    pub tracker: ShapeTracker,
    pub vars: Vec<char>,
    pub memo: Option<(Vec<usize>, View)>,
}

pub(crate) struct Step {
    pub node: NodeIndex,
    pub kernel: Arc<dyn Kernel>,
    pub inputs: Vec<EdgeIn>,
    pub outputs: Vec<usize>,
    /// (output index, input index) updated in place
    pub inplace: Vec<(usize, usize)>,
    pub release: Vec<usize>,
}

impl EdgeIn {
    /// This edge's view for these dimension values, reusing the last
    /// resolution while its symbols keep their values.
    pub fn view(&mut self, dims: &DimValues, stack: &mut Vec<i32>) -> View {
        let key: Vec<usize> = self.vars.iter().map(|c| dims[c]).collect();
        match &self.memo {
            Some((k, v)) if *k == key => *v,
            _ => {
                let v = View::resolve(&self.tracker, dims, stack);
                self.memo = Some((key, v));
                v
            }
        }
    }
}

fn symbols_of(st: &ShapeTracker) -> Vec<char> {
    let mut v = vec![];
    let exprs = st.dims.iter().chain(st.padding.iter().flat_map(|(a, b)| [a, b])).chain(st.slices.iter().flat_map(|(a, b)| [a, b]));
    for e in exprs {
        for c in e.to_symbols() {
            if !v.contains(&c) {
                v.push(c);
            }
        }
    }
    v
}

/// Named outputs of a run: (name, shape, data).
#[derive(Debug, Default)]
pub struct Outputs(pub Vec<(String, Vec<usize>, Vec<f32>)>);

impl Outputs {
    pub fn get(&self, name: &str) -> Option<(&[usize], &[f32])> {
        self.0.iter().find(|o| o.0 == name).map(|o| (o.1.as_slice(), o.2.as_slice()))
    }
    pub fn take(&mut self, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let i = self.0.iter().position(|o| o.0 == name)?;
        let (_, s, d) = self.0.swap_remove(i);
        Some((s, d))
    }
}

/// Whether a pooled buffer of capacity `cap` may serve a request for `len`
/// values: any request up to its capacity, and not far below it, so runs of
/// varying length reuse memory without one small request holding a large
/// buffer. Both executors' pools follow it.
pub fn pool_fits(cap: usize, len: usize) -> bool {
    cap >= len && cap <= 4 * len + 1024
}

pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub inputs: Vec<InputSlot>,
    pub outputs: Vec<(String, usize, Vec<Dim>)>,
    pub n_slots: usize,
    /// every symbol a view uses
    pub symbols: Vec<char>,
    pub graph: Graph,
}

impl Plan {
    pub fn input_names(&self, kind: InputKind) -> Vec<String> {
        self.inputs.iter().filter(|i| i.kind == kind).map(|i| i.name.clone()).collect()
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.inputs.iter().any(|i| i.name == name)
    }

    /// The index of the input called `name`.
    pub fn input_index(&self, name: &str) -> Result<usize, ExecError> {
        self.inputs.iter().position(|i| i.name == name).ok_or_else(|| ExecError::UnknownInput(name.into()))
    }

    /// The named outputs of a run, with each slot's
    /// data from `fetch`. Two names may share a node: the later one gets a
    /// copy, so `fetch` sees each slot once.
    pub fn gather_outputs<E>(
        &self,
        dims: &DimValues,
        stack: &mut Vec<i32>,
        mut fetch: impl FnMut(usize) -> Result<Vec<f32>, E>,
    ) -> Result<Outputs, E> {
        let mut out = Outputs::default();
        for (i, (name, slot, odims)) in self.outputs.iter().enumerate() {
            let shape: Vec<usize> = odims.iter().map(|d| eval(d, dims, stack)).collect();
            let data = match self.outputs[..i].iter().position(|o| o.1 == *slot) {
                Some(j) => out.0[j].2.clone(),
                None => fetch(*slot)?,
            };
            debug_assert_eq!(data.len(), shape.iter().product::<usize>(), "output {name}");
            out.0.push((name.clone(), shape, data));
        }
        Ok(out)
    }

    /// Check a run's dimension values and data inputs; the element count of
    /// every input, in input order.
    pub fn check_run(&self, data: &[(&str, &[f32])], dims: &DimValues, stack: &mut Vec<i32>) -> Result<Vec<usize>, ExecError> {
        for c in &self.symbols {
            if !dims.contains_key(c) {
                return Err(ExecError::MissingDim(*c));
            }
        }
        for i in &self.inputs {
            if let Some(d) = i.dims.iter().flat_map(|d| d.to_symbols()).find(|c| !dims.contains_key(c)) {
                return Err(ExecError::MissingDim(d));
            }
        }
        for (name, _) in data {
            if !self.inputs.iter().any(|i| i.name == *name && i.kind == InputKind::Data) {
                return Err(ExecError::UnknownInput(name.to_string()));
            }
        }
        let mut sizes = vec![];
        for i in &self.inputs {
            let want: usize = i.dims.iter().map(|d| eval(d, dims, stack)).product();
            if i.kind == InputKind::Data {
                let (_, v) = data.iter().find(|(n, _)| *n == i.name).ok_or(ExecError::MissingInput(i.name.clone()))?;
                if v.len() != want {
                    return Err(ExecError::InputSize { name: i.name.clone(), shape: fmt_dims(&i.dims), got: v.len(), want });
                }
            }
            sizes.push(want);
        }
        Ok(sizes)
    }

    /// The error for a param or buffer of `got` values (None: never set)
    /// where `want` are needed.
    pub fn check_stored(&self, input: usize, got: Option<usize>, want: usize) -> Result<(), ExecError> {
        let i = &self.inputs[input];
        match got {
            None => Err(ExecError::MissingInput(i.name.clone())),
            Some(got) if got != want => Err(ExecError::InputSize { name: i.name.clone(), shape: fmt_dims(&i.dims), got, want }),
            _ => Ok(()),
        }
    }

    /// Plan a compiled graph (every node an input `Function` or a kernel).
    pub fn new(built: BuiltGraph) -> Plan {
        let BuiltGraph { graph, inputs, outputs, .. } = built;
        let order = petgraph::algo::toposort(&graph.graph, None).expect("graph has a cycle");
        let mut slot_of: FxHashMap<(NodeIndex, u8), usize> = FxHashMap::default();
        let mut n_slots = 0;
        let mut new_slot = || {
            n_slots += 1;
            n_slots - 1
        };
        let mut input_slots = vec![];
        for i in &inputs {
            let s = new_slot();
            slot_of.insert((i.node, 0), s);
            input_slots.push(InputSlot { name: i.name.clone(), slot: s, kind: i.kind, dims: i.dims.clone(), dtype: DType::F32 });
        }
        let mut steps = vec![];
        let mut symbols = vec![];
        for node in order {
            let op = graph.graph.node_weight(node).unwrap();
            if Primop::of(op.as_ref()) == Some(Primop::Input) {
                assert!(slot_of.contains_key(&(node, 0)), "graph input {op:?} was not declared");
                continue;
            }
            let kernel = match kernel_of(op.as_ref()) {
                Some(k) => k.0.clone(),
                None => panic!("node {op:?} has no kernel: run the LowerToKernels pass before executing"),
            };
            let mut ins: Vec<_> = graph
                .graph
                .edges_directed(node, Direction::Incoming)
                .filter_map(|e| e.weight().as_data().map(|(i, o, st)| (i, e.source(), o, st)))
                .collect();
            ins.sort_by_key(|x| x.0);
            let inputs: Vec<EdgeIn> = ins
                .iter()
                .map(|&(_, src, out, st)| {
                    let vars = symbols_of(&st);
                    for c in &vars {
                        if !symbols.contains(c) {
                            symbols.push(*c);
                        }
                    }
                    EdgeIn { slot: slot_of[&(src, out)], tracker: st, vars, memo: None }
                })
                .collect();
            let inplace = kernel.inplace();
            let n_out = graph
                .graph
                .edges_directed(node, Direction::Outgoing)
                .filter_map(|e| e.weight().as_data().map(|d| d.1 as usize + 1))
                .max()
                .unwrap_or(1)
                .max(inplace.iter().map(|x| x.0 + 1).max().unwrap_or(0));
            let outputs: Vec<usize> = (0..n_out)
                .map(|o| match inplace.iter().find(|x| x.0 == o) {
                    Some(&(_, i)) => inputs[i].slot,
                    None => new_slot(),
                })
                .collect();
            for (o, s) in outputs.iter().enumerate() {
                slot_of.insert((node, o as u8), *s);
            }
            steps.push(Step { node, kernel, inputs, outputs, inplace, release: vec![] });
        }
        // free each temporary slot after its last reader
        let persistent: Vec<usize> = input_slots.iter().filter(|i| i.kind != InputKind::Data).map(|i| i.slot).collect();
        let out_slots: Vec<(String, usize, Vec<Dim>)> = outputs
            .iter()
            .map(|o| (o.name.clone(), *slot_of.get(&(o.node, 0)).expect("output node not in graph"), o.dims.clone()))
            .collect();
        let mut last_use: FxHashMap<usize, usize> = FxHashMap::default();
        for (i, s) in steps.iter().enumerate() {
            for e in &s.inputs {
                last_use.insert(e.slot, i);
            }
            for o in &s.outputs {
                last_use.entry(*o).or_insert(i);
            }
        }
        for (slot, step) in last_use {
            if !persistent.contains(&slot) && !out_slots.iter().any(|o| o.1 == slot) {
                steps[step].release.push(slot);
            }
        }
        Plan { steps, inputs: input_slots, outputs: out_slots, n_slots, symbols, graph }
    }
}
