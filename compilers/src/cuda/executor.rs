//! Runs a compiled graph on a [`Device`]: the same plan as the CPU executor
//! (steps, slots, in-place outputs, when each temporary is free), with
//! buffers on the device. Weights and state are uploaded once and stay
//! there; a run uploads its data inputs and one block of `meta` words,
//! queues every step, and downloads only the named outputs.

use std::sync::Arc;
use std::time::Instant;

use luminal::prelude::Graph;

use super::codegen::{lower, matmul_naive, module_source, DeviceKernel, DeviceOp, Launch};
use super::device::{BufId, Device, DeviceError, Product};
use crate::kernels::matmul::MatMul;
use crate::plan::{pool_fits, Outputs, Plan};
use crate::run::{Run, StepStats};
use crate::run_error::RunError;
use crate::tensor::{BuiltGraph, InputKind};
use crate::view::{DimValues, View};

/// A device buffer and how many values it holds.
#[derive(Clone, Copy, Debug)]
struct Buf {
    id: BufId,
    len: usize,
    cap: usize,
}

enum Call {
    Launch { entry: String, launch: Launch, meta_at: usize, bufs: Vec<BufId> },
    Zero(BufId, usize),
    Sgemm(super::device::Sgemm, [BufId; 3]),
}

/// The buffer of a slot: stored (params, buffers, state) or of this run.
fn buffer_of(store: &[Option<Buf>], temps: &[Option<Buf>], slot: usize) -> Buf {
    store[slot].or(temps[slot]).expect("a step's input has no buffer")
}

/// A device operation and the step it belongs to.
struct Cmd {
    step: usize,
    op: Call,
}

pub struct DeviceExecutor {
    plan: Plan,
    kernels: Vec<DeviceKernel>,
    naive_matmul: String,
    device: Box<dyn Device>,
    store: Vec<Option<Buf>>,
    temps: Vec<Option<Buf>>,
    pool: Vec<Buf>,
    stack: Vec<i32>,
    pub profile: Option<Vec<StepStats>>,
}

/// The CUDA C module of a compiled graph: what the device executor would
/// compile and load (no device needed).
pub fn graph_source(built: BuiltGraph) -> Result<String, DeviceError> {
    Ok(module_source(&lower_steps(&Plan::new(built))?))
}

fn lower_steps(plan: &Plan) -> Result<Vec<DeviceKernel>, DeviceError> {
    plan.steps.iter().map(|s| lower(&s.kernel).map_err(|e| DeviceError(format!("{e} (step {})", s.node.index())))).collect()
}

impl DeviceExecutor {
    /// Plan a compiled graph, generate its kernels and load them on `device`.
    pub fn new(built: BuiltGraph, mut device: Box<dyn Device>) -> Result<DeviceExecutor, DeviceError> {
        let plan = Plan::new(built);
        let kernels = lower_steps(&plan)?;
        device.load(&module_source(&kernels))?;
        let n = plan.n_slots;
        Ok(DeviceExecutor {
            plan,
            kernels,
            naive_matmul: matmul_naive().0,
            device,
            store: vec![None; n],
            temps: vec![None; n],
            pool: vec![],
            stack: vec![],
            profile: None,
        })
    }

    /// The generated CUDA C of every kernel, as one module.
    pub fn source(&self) -> String {
        module_source(&self.kernels)
    }

    fn take(&mut self, len: usize) -> Result<Buf, DeviceError> {
        let best = self.pool.iter().enumerate().filter(|(_, b)| pool_fits(b.cap, len)).min_by_key(|(_, b)| b.cap);
        match best.map(|(i, _)| i) {
            Some(i) => {
                let mut b = self.pool.swap_remove(i);
                b.len = len;
                Ok(b)
            }
            None => Ok(Buf { id: self.device.alloc(len.max(1))?, len, cap: len.max(1) }),
        }
    }

    fn data_of(&self, slot: usize) -> Buf {
        buffer_of(&self.store, &self.temps, slot)
    }

    /// Plan every step's buffers, meta words and commands.
    fn queue(
        &mut self,
        steps: &mut [crate::plan::Step],
        dims: &DimValues,
        meta: &mut Vec<i64>,
        cmds: &mut Vec<Cmd>,
    ) -> Result<(), DeviceError> {
        for (si, step) in steps.iter_mut().enumerate() {
            let views: Vec<View> = step.inputs.iter_mut().map(|e| e.view(dims, &mut self.stack)).collect();
            let out_shapes = step.kernel.output_shapes(&views, dims);
            let ins: Vec<Buf> = step.inputs.iter().map(|e| self.data_of(e.slot)).collect();
            for (v, b) in views.iter().zip(&ins) {
                if v.phys_len > b.len && v.numel() > 0 {
                    return Err(DeviceError(format!(
                        "{}: a view needs {} values of a buffer of {}",
                        step.kernel.name(),
                        v.phys_len,
                        b.len
                    )));
                }
            }
            let mut outs = vec![];
            for (o, s) in out_shapes.iter().enumerate() {
                let len: usize = s.iter().product();
                let b = match step.inplace.iter().find(|x| x.0 == o) {
                    Some(&(_, i)) => ins[i],
                    None => {
                        let b = self.take(len)?;
                        self.temps[step.outputs[o]] = Some(b);
                        b
                    }
                };
                outs.push(b);
            }
            let bufs: Vec<BufId> = outs.iter().chain(&ins).map(|b| b.id).collect();
            match &self.kernels[si] {
                DeviceKernel::Source { entry, kind, .. } => {
                    let m = kind.meta(&views, &out_shapes, dims).map_err(|e| DeviceError(format!("step {}: {e}", step.node.index())))?;
                    if let DeviceOp::ScatterAdd(_) = kind {
                        cmds.push(Cmd { step: si, op: Call::Zero(outs[0].id, outs[0].len) });
                    }
                    if let Some((words, launch)) = m {
                        cmds.push(Cmd { step: si, op: Call::Launch { entry: entry.clone(), launch, meta_at: meta.len(), bufs } });
                        meta.extend(words);
                    }
                }
                DeviceKernel::MatMul(mm) => self.queue_matmul(si, mm, &views, &out_shapes, dims, &bufs, meta, cmds)?,
            }
            if let Some(p) = self.profile.as_mut() {
                let c = step.kernel.cost(&views, &out_shapes);
                p[si].cost.flops += c.flops;
                p[si].cost.bytes += c.bytes;
            }
            for &slot in &step.release {
                if let Some(b) = self.temps[slot].take() {
                    self.pool.push(b);
                }
            }
        }
        Ok(())
    }

    /// cuBLAS when the views are plain strided matrices, one call per outer
    /// batch combination; else the generic kernel.
    #[allow(clippy::too_many_arguments)]
    fn queue_matmul(
        &self,
        si: usize,
        mm: &MatMul,
        views: &[View],
        out_shapes: &[Vec<usize>],
        dims: &DimValues,
        bufs: &[BufId],
        meta: &mut Vec<i64>,
        cmds: &mut Vec<Cmd>,
    ) -> Result<(), DeviceError> {
        let (a, b) = (&views[0], &views[1]);
        if !a.padded && !b.padded {
            let p = mm.plan(a, b);
            let product = Product {
                m: p.m,
                n: p.n,
                k: p.k,
                x: (a.offset, p.row.0, p.inner.0),
                y: (b.offset, p.col.1, p.inner.1),
                c: (0, p.out_row, p.out_col),
            };
            let (outer, last) = match p.loops.split_last() {
                Some((l, rest)) => (rest.to_vec(), Some(*l)),
                None => (vec![], None),
            };
            let (batch, strides) = last.map_or((1, (0, 0, 0)), |l| (l.0, (l.1, l.2, l.3)));
            if p.k > 0 && product.sgemm(batch, strides).is_some() {
                let combos: usize = outer.iter().map(|l| l.0).product();
                for combo in 0..combos {
                    let (mut rest, mut shift) = (combo, (0isize, 0isize, 0isize));
                    for &(size, sa, sb, so) in outer.iter().rev() {
                        let i = (rest % size) as isize;
                        rest /= size;
                        shift = (shift.0 + i * sa, shift.1 + i * sb, shift.2 + i * so);
                    }
                    let at = Product {
                        x: (product.x.0 + shift.0, product.x.1, product.x.2),
                        y: (product.y.0 + shift.1, product.y.1, product.y.2),
                        c: (shift.2, product.c.1, product.c.2),
                        ..product
                    };
                    let call = at.sgemm(batch, strides).expect("same layout as the first batch");
                    cmds.push(Cmd { step: si, op: Call::Sgemm(call, [bufs[1], bufs[2], bufs[0]]) });
                }
                return Ok(());
            }
        }
        if let Some((words, launch)) = DeviceOp::MatMulNaive(mm.axis).meta(views, out_shapes, dims).map_err(DeviceError)? {
            cmds.push(Cmd {
                step: si,
                op: Call::Launch { entry: self.naive_matmul.clone(), launch, meta_at: meta.len(), bufs: bufs.to_vec() },
            });
            meta.extend(words);
        }
        Ok(())
    }

    /// Steps and the kernel each runs on the device, for inspection.
    pub fn kernels(&self) -> Vec<(String, Arc<dyn crate::kernel::Kernel>)> {
        self.plan
            .steps
            .iter()
            .zip(&self.kernels)
            .map(|(s, k)| {
                let name = match k {
                    DeviceKernel::Source { entry, .. } => entry.clone(),
                    DeviceKernel::MatMul(_) => "cublasSgemmStridedBatched".into(),
                };
                (name, s.kernel.clone())
            })
            .collect()
    }
}

impl Run for DeviceExecutor {
    fn backend_name(&self) -> String {
        self.device.name()
    }

    fn input_names(&self, kind: InputKind) -> Vec<String> {
        self.plan.input_names(kind)
    }

    fn has_input(&self, name: &str) -> bool {
        self.plan.has_input(name)
    }

    /// Set a param, buffer or state (kept on the device between runs).
    fn set(&mut self, name: &str, data: Vec<f32>) -> Result<(), RunError> {
        let i = self.plan.input_index(name)?;
        let inp = &self.plan.inputs[i];
        if let Some(n) = inp.dims.iter().map(|d| d.to_usize()).product::<Option<usize>>() {
            self.plan.check_stored(i, Some(data.len()), n)?;
        }
        let slot = inp.slot;
        if let Some(old) = self.store[slot].take() {
            self.device.free(old.id);
        }
        let id = self.device.alloc(data.len().max(1))?;
        self.device.upload(id, &data)?;
        self.store[slot] = Some(Buf { id, len: data.len(), cap: data.len().max(1) });
        Ok(())
    }

    /// Read a param, buffer or state back from the device.
    fn get(&self, name: &str) -> Option<Vec<f32>> {
        let i = self.plan.input_index(name).ok()?;
        let b = self.store[self.plan.inputs[i].slot]?;
        self.device.download(b.id, b.len).ok()
    }

    /// Drop all state (KV caches) so the next run starts from zeros.
    fn reset_state(&mut self) {
        for i in 0..self.plan.inputs.len() {
            if self.plan.inputs[i].kind == InputKind::State {
                if let Some(b) = self.store[self.plan.inputs[i].slot].take() {
                    self.device.free(b.id);
                }
            }
        }
    }

    /// Run once, as [`crate::Executor::run`].
    fn run(&mut self, data: &[(&str, &[f32])], dims: &DimValues) -> Result<Outputs, RunError> {
        let sizes = self.plan.check_run(data, dims, &mut self.stack)?;
        for (i, &want) in sizes.iter().enumerate() {
            let (slot, kind) = (self.plan.inputs[i].slot, self.plan.inputs[i].kind);
            match kind {
                InputKind::Data => {
                    let v = data.iter().find(|(n, _)| *n == self.plan.inputs[i].name).expect("checked").1;
                    let b = self.take(want)?;
                    self.device.upload(b.id, v)?;
                    self.temps[slot] = Some(b);
                }
                InputKind::State => {
                    if self.store[slot].map(|b| b.len) != Some(want) {
                        if let Some(old) = self.store[slot].take() {
                            self.device.free(old.id);
                        }
                        let id = self.device.alloc(want.max(1))?;
                        self.store[slot] = Some(Buf { id, len: want, cap: want.max(1) });
                    }
                }
                InputKind::Param | InputKind::Buffer => self.plan.check_stored(i, self.store[slot].map(|b| b.len), want)?,
            }
        }
        let mut meta: Vec<i64> = vec![];
        let mut cmds = vec![];
        let mut steps = std::mem::take(&mut self.plan.steps);
        let result = self.queue(&mut steps, dims, &mut meta, &mut cmds);
        self.plan.steps = steps;
        result?;
        self.device.set_meta(&meta)?;
        let mut last_step = usize::MAX;
        for c in cmds {
            let t = Instant::now();
            match c.op {
                Call::Launch { entry, launch, meta_at, bufs } => self.device.launch(&entry, launch, meta_at, &bufs)?,
                Call::Zero(b, n) => self.device.zero(b, n)?,
                Call::Sgemm(call, [a, b, c]) => self.device.sgemm(&call, a, b, c)?,
            }
            if let Some(p) = self.profile.as_mut() {
                // timing a step means waiting for it
                self.device.sync()?;
                let s = &mut p[c.step];
                s.time += t.elapsed();
                s.calls += (c.step != last_step) as u64;
                last_step = c.step;
            }
        }
        let (device, store, temps) = (&self.device, &self.store, &self.temps);
        let out = self.plan.gather_outputs(dims, &mut self.stack, |slot| {
            let b = buffer_of(store, temps, slot);
            device.download(b.id, b.len)
        })?;
        for slot in 0..self.temps.len() {
            if let Some(b) = self.temps[slot].take() {
                self.pool.push(b);
            }
        }
        Ok(out)
    }

    /// Time every step from now on (each waits for the device: slower).
    fn enable_profile(&mut self) {
        self.profile = Some(StepStats::zeroed(&self.plan));
    }

    fn graph(&self) -> &Graph {
        &self.plan.graph
    }

    fn sync(&mut self) -> Result<(), DeviceError> {
        self.device.sync()
    }

    fn profile(&self) -> Option<&[StepStats]> {
        self.profile.as_deref()
    }
}
