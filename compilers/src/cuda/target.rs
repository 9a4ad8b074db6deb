//! A [`Device`] as a [`Target`]: every step of the plan lowered to generated
//! CUDA C ([`super::codegen`]) or cuBLAS when the executor is built; a run
//! queues each step's launches and their `meta` words, and
//! [`Target::flush`] sends the words once and launches everything in order.
//! Weights and state are uploaded once and stay on the device.

use super::codegen::{lower, matmul_naive, matmul_naive_meta, module_source, DeviceKernel};
use super::device::{BufId, Device, DeviceError, Product, Sgemm};
use super::source::Launch;
use crate::kernels::matmul::MatMul;
use crate::plan::Plan;
use crate::step_stats::StepStats;
use crate::target::{Buf, DType, StepCall, Target};
use crate::tensor::BuiltGraph;
use crate::view::View;

enum Call {
    Launch { entry: String, launch: Launch, meta_at: usize, bufs: Vec<BufId> },
    Zero(BufId, usize),
    Sgemm(Sgemm, [BufId; 3]),
}

/// A device operation and the step it belongs to.
struct Cmd {
    step: usize,
    op: Call,
}

pub struct DeviceTarget {
    device: Box<dyn Device>,
    /// per step of the plan
    kernels: Vec<DeviceKernel>,
    naive_matmul: String,
    /// what the steps of this run queued
    meta: Vec<i64>,
    cmds: Vec<Cmd>,
}

/// The CUDA C module of a compiled graph: what a device target would
/// compile and load (no device needed).
pub fn graph_source(built: BuiltGraph) -> Result<String, DeviceError> {
    Ok(module_source(&lower_steps(&Plan::new(built))?))
}

fn lower_steps(plan: &Plan) -> Result<Vec<DeviceKernel>, DeviceError> {
    plan.steps.iter().map(|s| lower(&s.kernel).map_err(|e| DeviceError(format!("{e} (step {})", s.node.index())))).collect()
}

impl DeviceTarget {
    /// Generate the kernels of `plan` and load them on `device`.
    pub(crate) fn new(plan: &Plan, mut device: Box<dyn Device>) -> Result<DeviceTarget, DeviceError> {
        let kernels = lower_steps(plan)?;
        device.load(&module_source(&kernels))?;
        Ok(DeviceTarget { device, kernels, naive_matmul: matmul_naive().0, meta: vec![], cmds: vec![] })
    }

    fn launch(&mut self, step: usize, entry: &str, m: Option<(Vec<i64>, Launch)>, bufs: Vec<BufId>) {
        if let Some((words, launch)) = m {
            self.cmds.push(Cmd { step, op: Call::Launch { entry: entry.into(), launch, meta_at: self.meta.len(), bufs } });
            self.meta.extend(words);
        }
    }

    /// cuBLAS when the views are plain strided matrices, one call per outer
    /// batch combination; else the generic kernel.
    fn queue_matmul(&mut self, si: usize, mm: &MatMul, views: &[View], out_shapes: &[Vec<usize>], bufs: Vec<BufId>) {
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
                    self.cmds.push(Cmd { step: si, op: Call::Sgemm(call, [bufs[1], bufs[2], bufs[0]]) });
                }
                return;
            }
        }
        let m = matmul_naive_meta(mm.axis, views, out_shapes);
        let entry = self.naive_matmul.clone();
        self.launch(si, &entry, m, bufs);
    }
}

impl Target for DeviceTarget {
    fn name(&self) -> String {
        self.device.name()
    }

    fn alloc(&mut self, len: usize, dtype: DType) -> Result<Buf, DeviceError> {
        let cap = len.max(1);
        Ok(Buf { id: self.device.alloc(cap)?, len, cap, dtype })
    }

    fn adopt(&mut self, data: Vec<f32>) -> Result<Buf, DeviceError> {
        let b = self.alloc(data.len(), DType::F32)?;
        self.device.upload(b.id, &data)?;
        Ok(b)
    }

    fn free(&mut self, b: Buf) {
        self.device.free(b.id);
    }

    fn upload(&mut self, b: Buf, data: &[f32]) -> Result<(), DeviceError> {
        self.device.upload(b.id, data)
    }

    fn download(&self, b: Buf) -> Result<Vec<f32>, DeviceError> {
        self.device.download(b.id, b.len)
    }

    fn take(&mut self, b: Buf) -> Result<(Vec<f32>, Option<Buf>), DeviceError> {
        Ok((self.device.download(b.id, b.len)?, Some(b)))
    }

    fn step(&mut self, c: &StepCall, _: Option<&mut StepStats>) -> Result<(), DeviceError> {
        let bufs: Vec<BufId> = c.outs.iter().chain(c.ins).map(|b| b.id).collect();
        match &self.kernels[c.index] {
            k @ DeviceKernel::Source { entry, .. } => {
                let cuda = k.cuda().expect("a generated function's kernel has a device form");
                let m = cuda.meta(c.views, c.out_shapes, c.dims).map_err(|e| DeviceError(format!("step {}: {e}", c.index)))?;
                if cuda.zeroes_output() {
                    self.cmds.push(Cmd { step: c.index, op: Call::Zero(c.outs[0].id, c.outs[0].len) });
                }
                let entry = entry.clone();
                self.launch(c.index, &entry, m, bufs);
            }
            DeviceKernel::MatMul(mm) => {
                let mm = mm.clone();
                self.queue_matmul(c.index, &mm, c.views, c.out_shapes, bufs);
            }
        }
        Ok(())
    }

    fn flush(&mut self, mut stats: Option<&mut [StepStats]>) -> Result<(), DeviceError> {
        let meta = std::mem::take(&mut self.meta);
        let cmds = std::mem::take(&mut self.cmds);
        self.device.set_meta(&meta)?;
        for c in cmds {
            let t = std::time::Instant::now();
            match c.op {
                Call::Launch { entry, launch, meta_at, bufs } => self.device.launch(&entry, launch, meta_at, &bufs)?,
                Call::Zero(b, n) => self.device.zero(b, n)?,
                Call::Sgemm(call, [a, b, c]) => self.device.sgemm(&call, a, b, c)?,
            }
            if let Some(p) = stats.as_deref_mut() {
                // timing a step means waiting for it
                self.device.sync()?;
                p[c.step].time += t.elapsed();
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DeviceError> {
        self.device.sync()
    }
}
