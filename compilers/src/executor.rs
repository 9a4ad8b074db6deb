//! Runs a compiled graph, on any [`Target`]: the CPU, or a CUDA device (real
//! or emulated).
//!
//! Built once per compiled graph: the plan (a schedule of kernel steps, one
//! buffer slot per node output, and for every temporary slot the step after
//! which it is free). Per run: data inputs are copied in, views are resolved
//! (each edge keeps its last resolution and reuses it while its symbols keep
//! their values), outputs come from a pool of buffers, the target runs or
//! queues each step, and only the named outputs come back, by value, so
//! nothing from one run leaks into the next.
//!
//! Params, buffers and state live in the target between runs; state is
//! updated in place by kernels such as `KvWrite`.

use luminal::prelude::Graph;

use crate::backend::{open_device, Backend};
use crate::cpu_target::CpuTarget;
use crate::cuda::target::DeviceTarget;
use crate::cuda::DeviceError;
use crate::kernels::packed;
pub use crate::plan::Outputs;
use crate::plan::{pool_fits, ExecError, Plan, Step};
use crate::run_error::RunError;
pub use crate::step_stats::StepStats;
use crate::target::{Buf, DType, StepCall, Target};
use crate::tensor::{BuiltGraph, InputKind};
use crate::view::{DimValues, View};

pub struct Executor {
    plan: Plan,
    target: Box<dyn Target>,
    /// params, buffers and state, by slot
    store: Vec<Option<Buf>>,
    /// this run's buffers (data inputs and kernel outputs), by slot
    temps: Vec<Option<Buf>>,
    /// free buffers kept for reuse (by [`pool_fits`]), so runs of varying
    /// length reuse memory instead of allocating every time
    pool: Vec<Buf>,
    stack: Vec<i32>,
    profile: Option<Vec<StepStats>>,
}

impl Executor {
    /// Plan a compiled graph (every node an input `Function` or a kernel)
    /// to run on the CPU.
    pub fn new(built: BuiltGraph) -> Executor {
        let plan = Plan::new(built);
        Executor::with_target(plan, Box::new(CpuTarget::default()))
    }

    /// Plan a compiled graph to run on `backend` (a device backend
    /// generates and loads its kernels now).
    pub fn on(built: BuiltGraph, backend: Backend) -> Result<Executor, DeviceError> {
        if backend == Backend::Cpu {
            return Ok(Executor::new(built));
        }
        let plan = Plan::new(built);
        let target = DeviceTarget::new(&plan, open_device(backend)?)?;
        Ok(Executor::with_target(plan, Box::new(target)))
    }

    fn with_target(plan: Plan, target: Box<dyn Target>) -> Executor {
        let n = plan.n_slots;
        Executor { plan, target, store: vec![None; n], temps: vec![None; n], pool: vec![], stack: vec![], profile: None }
    }

    /// `cpu`, or the device's name
    pub fn backend_name(&self) -> String {
        self.target.name()
    }

    /// The compiled graph.
    pub fn graph(&self) -> &Graph {
        &self.plan.graph
    }

    pub fn input_names(&self, kind: InputKind) -> Vec<String> {
        self.plan.input_names(kind)
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.plan.has_input(name)
    }

    /// Set a param, buffer or state (kept between runs).
    pub fn set(&mut self, name: &str, data: Vec<f32>) -> Result<(), RunError> {
        let i = self.plan.input_index(name)?;
        let inp = &self.plan.inputs[i];
        if let Some(n) = inp.dims.iter().map(|d| d.to_usize()).product::<Option<usize>>() {
            self.plan.check_stored(i, Some(data.len()), n)?;
        }
        let slot = inp.slot;
        if let Some(old) = self.store[slot].take() {
            self.target.free(old);
        }
        let b = match inp.dtype {
            DType::F32 => self.target.adopt(data)?,
            DType::Bf16 | DType::Q8_0 => self.target.adopt_packed(inp.dtype, packed::pack(inp.dtype, &data), data.len())?,
        };
        self.store[slot] = Some(b);
        Ok(())
    }

    /// Store as `dtype` (bf16 or Q8_0), from the next [`Executor::set`] on,
    /// every param that only kernels reading packed weights read (the
    /// weights of matrix products) and that `dtype` can hold (Q8_0: whole
    /// blocks); the others stay f32. Returns the names of those stored so.
    pub fn pack_weights(&mut self, dtype: DType) -> Vec<String> {
        let mut names = vec![];
        for i in 0..self.plan.inputs.len() {
            let inp = &self.plan.inputs[i];
            let numel = inp.dims.iter().map(|d| d.to_usize()).product::<Option<usize>>();
            let readers: Vec<bool> = (self.plan.steps.iter())
                .flat_map(|s| s.inputs.iter().enumerate().filter(|(_, e)| e.slot == inp.slot).map(|(j, _)| s.kernel.reads_packed(j)))
                .collect();
            let output = self.plan.outputs.iter().any(|o| o.1 == inp.slot);
            let whole = numel.is_some_and(|n| packed::fits(dtype, n));
            if inp.kind == InputKind::Param && whole && !output && !readers.is_empty() && readers.iter().all(|&r| r) {
                names.push(inp.name.clone());
                self.plan.inputs[i].dtype = dtype;
            }
        }
        names
    }

    /// A copy of a param, buffer or state.
    pub fn get(&self, name: &str) -> Option<Vec<f32>> {
        let i = self.plan.input_index(name).ok()?;
        self.target.download(self.store[self.plan.inputs[i].slot]?).ok()
    }

    /// Drop all state (KV caches) so the next run starts from zeros.
    pub fn reset_state(&mut self) {
        for i in &self.plan.inputs {
            if i.kind == InputKind::State {
                if let Some(b) = self.store[i.slot].take() {
                    self.target.free(b);
                }
            }
        }
    }

    /// Time every step from now on (on a device each step waits for the
    /// one before: slower).
    pub fn enable_profile(&mut self) {
        self.profile = Some(StepStats::zeroed(&self.plan));
    }

    /// Time and work per step so far, if profiling.
    pub fn profile(&self) -> Option<&[StepStats]> {
        self.profile.as_deref()
    }

    /// Wait for queued device work (timing).
    pub fn sync(&mut self) -> Result<(), DeviceError> {
        self.target.sync()
    }

    /// Give an output buffer back for reuse (the CPU reuses it; a device
    /// has no use for host memory).
    pub fn recycle(&mut self, data: Vec<f32>) {
        if let Some(b) = self.target.reuse(data) {
            self.pool.push(b);
        }
    }

    /// A buffer of `len` values from the pool, or a new one.
    fn pooled(&mut self, len: usize) -> Result<Buf, DeviceError> {
        let best = self.pool.iter().enumerate().filter(|(_, b)| pool_fits(b.cap, len)).min_by_key(|(_, b)| b.cap).map(|(i, _)| i);
        match best {
            Some(i) => {
                let mut b = self.pool.swap_remove(i);
                b.len = len;
                Ok(b)
            }
            None => self.target.alloc(len, DType::F32),
        }
    }

    /// Every temporary of the run back to the pool.
    fn release_temps(&mut self) {
        for t in &mut self.temps {
            if let Some(b) = t.take() {
                self.pool.push(b);
            }
        }
    }

    /// Run once. `data` gives every `Data` input; `dims` every symbol the
    /// graph uses. Returns the named outputs with their shapes.
    pub fn run(&mut self, data: &[(&str, &[f32])], dims: &DimValues) -> Result<Outputs, RunError> {
        let sizes = self.plan.check_run(data, dims, &mut self.stack)?;
        let mut steps = std::mem::take(&mut self.plan.steps);
        let result = self.bind_inputs(data, &sizes).and_then(|_| self.run_steps(&mut steps, dims));
        self.plan.steps = steps;
        let result = result.and_then(|_| Ok(self.target.flush(self.profile.as_deref_mut())?));
        if let Err(e) = result {
            self.release_temps();
            return Err(e);
        }
        let (target, temps, store, pool) = (&mut self.target, &mut self.temps, &self.store, &mut self.pool);
        let out = self.plan.gather_outputs(dims, &mut self.stack, |slot| match temps[slot].take() {
            Some(b) => {
                let (values, kept) = target.take(b)?;
                pool.extend(kept);
                Ok::<_, RunError>(values)
            }
            None => Ok(target.download(store[slot].expect("output was not computed"))?),
        });
        self.release_temps();
        out
    }

    /// Copy the data inputs in; make room for state; check params and buffers.
    fn bind_inputs(&mut self, data: &[(&str, &[f32])], sizes: &[usize]) -> Result<(), RunError> {
        for (i, &want) in sizes.iter().enumerate() {
            let (slot, kind) = (self.plan.inputs[i].slot, self.plan.inputs[i].kind);
            match kind {
                InputKind::Data => {
                    let v = data.iter().find(|(n, _)| *n == self.plan.inputs[i].name).expect("checked").1;
                    let b = self.pooled(want)?;
                    self.temps[slot] = Some(b);
                    self.target.upload(b, v)?;
                }
                InputKind::State => {
                    if self.store[slot].map(|b| b.len) != Some(want) {
                        if let Some(old) = self.store[slot].take() {
                            self.target.free(old);
                        }
                        self.store[slot] = Some(self.target.alloc(want, DType::F32)?);
                    }
                }
                InputKind::Param | InputKind::Buffer => self.plan.check_stored(i, self.store[slot].map(|b| b.len), want)?,
            }
        }
        Ok(())
    }

    fn run_steps(&mut self, steps: &mut [Step], dims: &DimValues) -> Result<(), RunError> {
        for (si, step) in steps.iter_mut().enumerate() {
            // resolve views, reusing the last resolution while symbols hold
            let views: Vec<View> = step.inputs.iter_mut().map(|e| e.view(dims, &mut self.stack)).collect();
            let out_shapes = step.kernel.output_shapes(&views, dims);
            let ins: Vec<Buf> =
                step.inputs.iter().map(|e| self.store[e.slot].or(self.temps[e.slot]).expect("a step's input has no buffer")).collect();
            for (i, (v, b)) in views.iter().zip(&ins).enumerate() {
                if let Some(e) = v.out_of_bounds(b.len) {
                    return Err(ExecError::OutOfBounds(format!("{} (step {si}), input {i}: {e}", step.kernel.name())).into());
                }
            }
            // outputs: fresh buffers, or the in-place input's buffer
            let mut outs = Vec::with_capacity(out_shapes.len());
            for (o, s) in out_shapes.iter().enumerate() {
                let len: usize = s.iter().product();
                let b = match step.inplace.iter().find(|x| x.0 == o) {
                    Some(&(_, i)) => {
                        assert_eq!(ins[i].len, len, "{}: in-place buffer of {} for an output of {len}", step.kernel.name(), ins[i].len);
                        ins[i]
                    }
                    None => {
                        let b = self.pooled(len)?;
                        self.temps[step.outputs[o]] = Some(b);
                        b
                    }
                };
                outs.push(b);
            }
            let mut stats = self.profile.as_mut().map(|p| &mut p[si]);
            if let Some(s) = stats.as_deref_mut() {
                let c = step.kernel.cost(&views, &out_shapes);
                s.calls += 1;
                s.cost.flops += c.flops;
                s.cost.bytes += c.bytes;
            }
            let call = StepCall {
                index: si,
                kernel: step.kernel.as_ref(),
                views: &views,
                out_shapes: &out_shapes,
                ins: &ins,
                outs: &outs,
                inplace: &step.inplace,
                dims,
            };
            self.target.step(&call, stats)?;
            for &slot in &step.release {
                if let Some(b) = self.temps[slot].take() {
                    self.pool.push(b);
                }
            }
        }
        Ok(())
    }
}
