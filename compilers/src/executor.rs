//! Runs a compiled graph.
//!
//! Built once per compiled graph: a schedule (topological order) of kernel
//! steps, one buffer slot per node output, and for every temporary slot the
//! step after which it is free. Per run: views are resolved (each edge keeps
//! its last resolution and reuses it while its symbols keep their values),
//! outputs come from a pool of buffers, and only the named outputs are
//! returned, by value, so nothing from one run leaks into the next.
//!
//! Params, buffers and state live in the executor between runs; state is
//! updated in place by kernels such as `KvWrite`.

use std::time::Instant;

use luminal::prelude::Graph;

use crate::kernel::Arg;
pub use crate::plan::Outputs;
use crate::plan::{pool_fits, ExecError, Plan};
use crate::run::Run;
pub use crate::run::StepStats;
use crate::run_error::RunError;
use crate::shape::fmt_dims;
use crate::tensor::{BuiltGraph, InputKind};
use crate::view::{DimValues, View};

pub struct Executor {
    plan: Plan,
    /// persistent data of params, buffers and state, by slot
    store: Vec<Option<Vec<f32>>>,
    /// per-run buffers (data inputs and kernel outputs), by slot
    temps: Vec<Option<Vec<f32>>>,
    pool: Pool,
    stack: Vec<i32>,
    pub profile: Option<Vec<StepStats>>,
}

impl Executor {
    /// Plan a compiled graph (every node an input `Function` or a kernel).
    pub fn new(built: BuiltGraph) -> Executor {
        let plan = Plan::new(built);
        let n = plan.n_slots;
        Executor { plan, store: vec![None; n], temps: vec![None; n], pool: Pool::default(), stack: vec![], profile: None }
    }

    fn take_buffer(&mut self, len: usize) -> Vec<f32> {
        self.pool.take(len)
    }
}

impl Run for Executor {
    fn backend_name(&self) -> String {
        "cpu".into()
    }

    /// The compiled graph.
    fn graph(&self) -> &Graph {
        &self.plan.graph
    }

    fn input_names(&self, kind: InputKind) -> Vec<String> {
        self.plan.input_names(kind)
    }

    fn has_input(&self, name: &str) -> bool {
        self.plan.has_input(name)
    }

    /// Set a param, buffer or state (kept between runs).
    fn set(&mut self, name: &str, data: Vec<f32>) -> Result<(), RunError> {
        let i = &self.plan.inputs[self.plan.input_index(name)?];
        if let Some(n) = i.dims.iter().map(|d| d.to_usize()).product::<Option<usize>>() {
            if n != data.len() {
                return Err(ExecError::InputSize { name: name.into(), shape: fmt_dims(&i.dims), got: data.len(), want: n }.into());
            }
        }
        let slot = i.slot;
        self.store[slot] = Some(data);
        Ok(())
    }

    /// Read a param, buffer or state.
    fn get(&self, name: &str) -> Option<Vec<f32>> {
        let i = self.plan.input_index(name).ok()?;
        self.store[self.plan.inputs[i].slot].clone()
    }

    /// Drop all state (KV caches) so the next run allocates it afresh.
    fn reset_state(&mut self) {
        for i in &self.plan.inputs {
            if i.kind == InputKind::State {
                self.store[i.slot] = None;
            }
        }
    }

    fn enable_profile(&mut self) {
        self.profile = Some(StepStats::zeroed(&self.plan));
    }

    /// Run once. `data` gives every `Data` input; `dims` every symbol the
    /// graph uses. Returns the named outputs with their shapes.
    fn run(&mut self, data: &[(&str, &[f32])], dims: &DimValues) -> Result<Outputs, RunError> {
        let sizes = self.plan.check_run(data, dims, &mut self.stack)?;
        for (idx, &want) in sizes.iter().enumerate() {
            let (slot, kind) = (self.plan.inputs[idx].slot, self.plan.inputs[idx].kind);
            match kind {
                InputKind::Data => {
                    let v = data.iter().find(|(n, _)| *n == self.plan.inputs[idx].name).expect("checked").1;
                    let mut b = self.take_buffer(want);
                    b.copy_from_slice(v);
                    self.temps[slot] = Some(b);
                }
                InputKind::State => {
                    if self.store[slot].as_ref().map(|b| b.len()) != Some(want) {
                        self.store[slot] = Some(vec![0.0; want]);
                    }
                }
                InputKind::Param | InputKind::Buffer => self.plan.check_stored(idx, self.store[slot].as_ref().map(|b| b.len()), want)?,
            }
        }
        let mut steps = std::mem::take(&mut self.plan.steps);
        for (si, step) in steps.iter_mut().enumerate() {
            // resolve views, reusing the last resolution while symbols hold
            let views: Vec<View> = step.inputs.iter_mut().map(|e| e.view(dims, &mut self.stack)).collect();
            let out_shapes = step.kernel.output_shapes(&views, dims);
            // outputs: fresh buffers, or the in-place input's buffer
            // (buffer, whether it goes back to the persistent store)
            let mut outs: Vec<(Vec<f32>, bool)> = Vec::with_capacity(out_shapes.len());
            for (o, s) in out_shapes.iter().enumerate() {
                let len: usize = s.iter().product();
                let buf = match step.inplace.iter().find(|x| x.0 == o) {
                    Some(&(_, i)) => {
                        let slot = step.inputs[i].slot;
                        let (b, stored) = match self.store[slot].take() {
                            Some(b) => (b, true),
                            None => (self.temps[slot].take().expect("in-place input missing"), false),
                        };
                        assert_eq!(b.len(), len, "{}: in-place buffer of {} for an output of {len}", step.kernel.name(), b.len());
                        (b, stored)
                    }
                    None => (self.take_buffer(len), false),
                };
                outs.push(buf);
            }
            {
                let empty: &[f32] = &[];
                let args: Vec<Arg> = step
                    .inputs
                    .iter()
                    .zip(&views)
                    .enumerate()
                    .map(|(i, (e, v))| {
                        let data = if step.inplace.iter().any(|x| x.1 == i) {
                            empty
                        } else {
                            let d = self.store[e.slot]
                                .as_deref()
                                .or(self.temps[e.slot].as_deref())
                                .unwrap_or_else(|| panic!("{}: input {i} (slot {}) has no data", step.kernel.name(), e.slot));
                            v.check_bounds(d.len(), &step.kernel.name());
                            d
                        };
                        Arg { data, view: *v }
                    })
                    .collect();
                let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|b| b.0.as_mut_slice()).collect();
                let t = self.profile.as_ref().map(|_| Instant::now());
                step.kernel.run(&args, &mut refs, dims);
                if let (Some(t), Some(p)) = (t, self.profile.as_mut()) {
                    let st = &mut p[si];
                    st.calls += 1;
                    st.time += t.elapsed();
                    let c = step.kernel.cost(&views, &out_shapes);
                    st.cost.flops += c.flops;
                    st.cost.bytes += c.bytes;
                }
            }
            for (o, (buf, stored)) in outs.into_iter().enumerate() {
                let slot = step.outputs[o];
                if stored {
                    self.store[slot] = Some(buf);
                } else {
                    self.temps[slot] = Some(buf);
                }
            }
            for &slot in &step.release {
                if let Some(b) = self.temps[slot].take() {
                    self.pool.give(b);
                }
            }
        }
        self.plan.steps = steps;
        let (temps, store) = (&mut self.temps, &self.store);
        let out = self.plan.gather_outputs(dims, &mut self.stack, |slot| {
            Ok::<_, RunError>(temps[slot].take().unwrap_or_else(|| store[slot].clone().expect("output was not computed")))
        })?;
        // data inputs are per run
        for i in &self.plan.inputs {
            if i.kind == InputKind::Data {
                if let Some(b) = self.temps[i.slot].take() {
                    self.pool.give(b);
                }
            }
        }
        Ok(out)
    }

    /// Give a buffer back to the pool (e.g. an output the caller is done with).
    fn recycle(&mut self, buf: Vec<f32>) {
        self.pool.give(buf);
    }

    fn profile(&self) -> Option<&[StepStats]> {
        self.profile.as_deref()
    }
}

/// Free buffers kept for reuse (by [`pool_fits`]), so runs of varying length
/// reuse memory instead of faulting in fresh pages every time.
#[derive(Default)]
struct Pool {
    free: Vec<Vec<f32>>,
}

impl Pool {
    fn take(&mut self, len: usize) -> Vec<f32> {
        let best =
            self.free.iter().enumerate().filter(|(_, b)| pool_fits(b.capacity(), len)).min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i);
        match best {
            Some(i) => {
                let mut b = self.free.swap_remove(i);
                // Every buffer was created zero-filled to its full capacity
                // and only ever shrunk or regrown within it, so these
                // elements are initialised; kernels overwrite them anyway.
                unsafe { b.set_len(len) };
                b
            }
            None => vec![0.0; len],
        }
    }

    fn give(&mut self, mut b: Vec<f32>) {
        if b.capacity() > b.len() {
            // keep the invariant: initialised up to capacity
            let cap = b.capacity();
            b.resize(cap, 0.0);
        }
        self.free.push(b);
    }
}
