//! A runtime-shaped lazy tensor over luminal's `Graph`.
//!
//! Luminal's typed `GraphTensor<S>` encodes shapes in Rust types, which fights
//! dimensions read from a TOML file. A [`Tensor`] here is a node id plus a
//! `ShapeTracker` built from runtime sizes; every op adds luminal primops with
//! `add_op(..).input(..).finish()` and checks shapes as it goes.
//!
//! Shape errors do not panic: the builder records the first one (naming the
//! scope, the op and both shapes), later ops carry on harmlessly, and
//! [`GraphBuilder::finish`] returns the error. Model code stays plain
//! arithmetic: `(x * w).sum(2)`.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use luminal::op;
use luminal::prelude::symbolic::Expression;
use luminal::prelude::{Graph, NodeIndex, ShapeTracker};
use rustc_hash::FxHashMap;

use crate::kernel::{Kernel, KernelOp};
use crate::kernels::{gather::Gather, iota::Iota, topk::TopKMask};
use crate::shape::{self, add, d, dims_eq, fmt_dims, is_plain, logical_dims, Dim};

/// What an input node of a graph holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A trainable weight, set once and kept between runs.
    Param,
    /// A fixed buffer (RoPE tables), set once.
    Buffer,
    /// Given anew for every run (token ids, labels).
    Data,
    /// Kept between runs and updated in place by the graph (KV cache).
    State,
}

#[derive(Clone, Debug)]
pub struct InputDecl {
    pub name: String,
    pub node: NodeIndex,
    pub dims: Vec<Dim>,
    pub kind: InputKind,
}

#[derive(Clone, Debug)]
pub struct OutputDecl {
    pub name: String,
    pub node: NodeIndex,
    pub dims: Vec<Dim>,
}

/// A graph ready to compile: the luminal graph plus its named inputs and outputs.
pub struct BuiltGraph {
    pub graph: Graph,
    pub inputs: Vec<InputDecl>,
    pub outputs: Vec<OutputDecl>,
    /// Where each node was built (`model.layers.3.self_attn`), for inspection.
    pub scopes: FxHashMap<NodeIndex, String>,
}

/// A node a graph rewrite added in place of another ([`GraphBuilder::rewrite`]).
pub struct Replacement {
    pub old: NodeIndex,
    pub new: NodeIndex,
    /// the new node's output dims, row-major
    pub dims: Vec<Dim>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShapeError(pub String);

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ShapeError {}

#[derive(Default)]
struct Inner {
    graph: Graph,
    error: Option<String>,
    scope: Vec<String>,
    inputs: Vec<InputDecl>,
    outputs: Vec<OutputDecl>,
    scopes: FxHashMap<NodeIndex, String>,
    /// dims of each node's output buffer (row-major), for autograd
    buf_dims: FxHashMap<NodeIndex, Vec<Dim>>,
    /// nodes gradients do not flow through (`detach`)
    stop_grad: rustc_hash::FxHashSet<NodeIndex>,
}

/// Builds one graph; tensors made from it share it.
#[derive(Clone, Default)]
pub struct GraphBuilder {
    cx: Rc<RefCell<Inner>>,
}

/// Pops a scope when dropped.
pub struct ScopeGuard {
    cx: Rc<RefCell<Inner>>,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        self.cx.borrow_mut().scope.pop();
    }
}

#[derive(Clone)]
pub struct Tensor {
    pub id: NodeIndex,
    pub shape: ShapeTracker,
    cx: Rc<RefCell<Inner>>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {})", self.id, fmt_dims(&self.dims()))
    }
}

impl GraphBuilder {
    pub fn new() -> GraphBuilder {
        GraphBuilder::default()
    }

    /// Name the part of the model being built; errors and dumps mention it.
    pub fn scope(&self, name: impl Into<String>) -> ScopeGuard {
        self.cx.borrow_mut().scope.push(name.into());
        ScopeGuard { cx: self.cx.clone() }
    }

    /// Declare a named input of the given shape.
    pub fn input(&self, name: &str, dims: &[Dim], kind: InputKind) -> Tensor {
        let mut cx = self.cx.borrow_mut();
        let label = name.to_string();
        let node = cx.graph.add_op(op::Function(label, Box::new(|_| panic!("graph inputs are set by lumind's executor")))).finish();
        cx.inputs.push(InputDecl { name: name.into(), node, dims: dims.to_vec(), kind });
        drop(cx);
        self.wrap(node, ShapeTracker::new(dims))
    }

    /// A scalar constant (rank 0); `expand` it to use it.
    pub fn constant(&self, v: f32) -> Tensor {
        let mut cx = self.cx.borrow_mut();
        let dyn_map = &cx.graph.dyn_map as *const _;
        let node = cx.graph.add_op(op::Constant(op::ConstantValue::Float(v), dyn_map)).finish();
        drop(cx);
        self.wrap(node, ShapeTracker::new(&[]))
    }

    /// `[offset, offset + len)` as a rank-1 tensor.
    pub fn iota(&self, len: Dim, offset: Dim) -> Tensor {
        self.kernel(Iota { len, offset }, &[], &[len])
    }

    /// Add a node running one of our kernels, with an output of shape `out`.
    pub fn kernel<K: Kernel>(&self, k: K, inputs: &[&Tensor], out: &[Dim]) -> Tensor {
        let mut cx = self.cx.borrow_mut();
        let mut new = cx.graph.add_op(KernelOp::new(k));
        for t in inputs {
            new = new.input(t.id, 0, t.shape);
        }
        let node = new.finish();
        drop(cx);
        self.wrap(node, ShapeTracker::new(out))
    }

    /// Mark a tensor as a named output (made contiguous so it can be read as is).
    pub fn output(&self, name: &str, t: &Tensor) {
        let t = t.contiguous();
        let dims = t.dims();
        let mut cx = self.cx.borrow_mut();
        cx.graph.no_delete.insert(t.id);
        cx.graph.to_retrieve.insert(t.id);
        cx.outputs.push(OutputDecl { name: name.into(), node: t.id, dims });
    }

    /// Make everything that reads `from` (but `except`) read `to` instead;
    /// outputs naming `from` follow. For graph transforms such as LoRA.
    pub fn redirect_consumers(&self, from: NodeIndex, to: NodeIndex, except: NodeIndex) {
        use petgraph::visit::EdgeRef;
        let mut cx = self.cx.borrow_mut();
        let edges: Vec<_> = cx
            .graph
            .graph
            .edges_directed(from, petgraph::Direction::Outgoing)
            .filter(|e| e.target() != except)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (id, target, w) in edges {
            cx.graph.graph.remove_edge(id);
            cx.graph.graph.add_edge(to, target, w);
        }
        for o in cx.outputs.iter_mut().filter(|o| o.node == from) {
            o.node = to;
        }
        if cx.graph.to_retrieve.remove(&from) {
            cx.graph.to_retrieve.insert(to);
            cx.graph.no_delete.insert(to);
        }
    }

    /// Rewrite the graph being built (a fusion whose kernel autograd must
    /// see). `f` gets the graph and its output nodes to remap, adds every new
    /// node before it removes any (so no new node takes a removed one's
    /// index), and names each new node with the one it replaces and its
    /// output dims; the builder's records of removed nodes go, and new
    /// nodes take the replaced node's scope.
    pub fn rewrite(&self, f: impl FnOnce(&mut Graph, &mut Vec<NodeIndex>) -> Vec<Replacement>) -> usize {
        let mut cx = self.cx.borrow_mut();
        let mut outputs: Vec<NodeIndex> = cx.outputs.iter().map(|o| o.node).collect();
        let replaced = f(&mut cx.graph, &mut outputs);
        let cx = &mut *cx;
        for (o, n) in cx.outputs.iter_mut().zip(outputs) {
            o.node = n;
        }
        for r in &replaced {
            if let Some(scope) = cx.scopes.get(&r.old).cloned() {
                cx.scopes.insert(r.new, scope);
            }
            cx.buf_dims.insert(r.new, r.dims.clone());
        }
        let graph = &cx.graph.graph;
        cx.scopes.retain(|n, _| graph.contains_node(*n));
        cx.buf_dims.retain(|n, _| graph.contains_node(*n));
        cx.stop_grad.retain(|n| graph.contains_node(*n));
        replaced.len()
    }

    /// Keep a node that nothing reads (an in-place update) through compilation.
    pub fn keep(&self, t: &Tensor) {
        self.cx.borrow_mut().graph.no_delete.insert(t.id);
    }

    /// Record a shape error (the first one wins) and return false.
    pub fn fail(&self, msg: String) -> bool {
        let mut cx = self.cx.borrow_mut();
        if cx.error.is_none() {
            let scope = cx.scope.join(".");
            cx.error = Some(if scope.is_empty() { msg } else { format!("{scope}: {msg}") });
        }
        false
    }

    /// Run `f` on the graph being built (for graph transforms such as autograd).
    pub fn with_graph<R>(&self, f: impl FnOnce(&Graph) -> R) -> R {
        f(&self.cx.borrow().graph)
    }

    /// Dims of a node's output buffer, row-major.
    pub fn buf_dims(&self, id: NodeIndex) -> Vec<Dim> {
        self.cx.borrow().buf_dims.get(&id).cloned().unwrap_or_else(|| panic!("node {id:?} has no recorded buffer dims"))
    }

    /// The whole output buffer of a node as a contiguous tensor.
    pub fn buffer(&self, id: NodeIndex) -> Tensor {
        let dims = self.buf_dims(id);
        Tensor { id, shape: ShapeTracker::new(&dims), cx: self.cx.clone() }
    }

    /// A tensor reading node `id` through `shape`.
    pub fn view(&self, id: NodeIndex, shape: ShapeTracker) -> Tensor {
        Tensor { id, shape, cx: self.cx.clone() }
    }

    pub fn is_stop_grad(&self, id: NodeIndex) -> bool {
        self.cx.borrow().stop_grad.contains(&id)
    }

    /// The declared input of that name.
    pub fn find_input(&self, name: &str) -> Option<Tensor> {
        let cx = self.cx.borrow();
        let i = cx.inputs.iter().find(|i| i.name == name)?;
        let st = ShapeTracker::new(&i.dims);
        Some(Tensor { id: i.node, shape: st, cx: self.cx.clone() })
    }

    /// Finish building: the graph, or the first shape error.
    pub fn finish(self) -> Result<BuiltGraph, ShapeError> {
        let mut cx = self.cx.borrow_mut();
        if let Some(e) = cx.error.take() {
            return Err(ShapeError(e));
        }
        Ok(BuiltGraph {
            graph: std::mem::take(&mut cx.graph),
            inputs: std::mem::take(&mut cx.inputs),
            outputs: std::mem::take(&mut cx.outputs),
            scopes: std::mem::take(&mut cx.scopes),
        })
    }

    fn wrap(&self, id: NodeIndex, shape: ShapeTracker) -> Tensor {
        let mut cx = self.cx.borrow_mut();
        // a new node's buffer: the tracker's physical (non-broadcast) dims
        let phys: Vec<Dim> = (0..shape.len()).filter(|&i| !shape.fake[i]).map(|i| shape.dims[i]).collect();
        cx.buf_dims.entry(id).or_insert(phys);
        if !cx.scope.is_empty() {
            let s = cx.scope.join(".");
            cx.scopes.entry(id).or_insert(s);
        }
        drop(cx);
        Tensor { id, shape, cx: self.cx.clone() }
    }
}

impl Tensor {
    pub fn builder(&self) -> GraphBuilder {
        GraphBuilder { cx: self.cx.clone() }
    }

    /// Logical shape.
    pub fn dims(&self) -> Vec<Dim> {
        logical_dims(&self.shape)
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn dim(&self, axis: usize) -> Dim {
        self.dims()[axis]
    }

    fn fail(&self, msg: String) -> bool {
        self.builder().fail(msg)
    }

    fn check_axis(&self, op: &str, axis: usize) -> bool {
        axis < self.rank() || self.fail(format!("{op}: axis {axis} out of range for shape {}", fmt_dims(&self.dims())))
    }

    fn node<O: op::Operator + 'static>(&self, o: O, inputs: &[&Tensor], out: ShapeTracker) -> Tensor {
        let mut cx = self.cx.borrow_mut();
        let mut new = cx.graph.add_op(o);
        for t in inputs {
            new = new.input(t.id, 0, t.shape);
        }
        let id = new.finish();
        drop(cx);
        self.builder().wrap(id, out)
    }

    // ---------- elementwise ----------

    fn binary<O: op::Operator + 'static>(&self, o: O, name: &str, rhs: &Tensor) -> Tensor {
        let (a, b) = (self.dims(), rhs.dims());
        if !shape::shapes_eq(&a, &b) {
            self.fail(format!("{name}: shapes {} and {} differ", fmt_dims(&a), fmt_dims(&b)));
            return self.clone();
        }
        self.node(o, &[self, rhs], ShapeTracker::new(&a))
    }

    fn unary<O: op::Operator + 'static>(&self, o: O) -> Tensor {
        // luminal semantics: the op maps the buffer, the view passes through
        self.node(o, &[self], self.shape)
    }

    pub fn add(&self, rhs: &Tensor) -> Tensor {
        self.binary(op::Add, "Add", rhs)
    }
    pub fn mul(&self, rhs: &Tensor) -> Tensor {
        self.binary(op::Mul, "Mul", rhs)
    }
    pub fn sub(&self, rhs: &Tensor) -> Tensor {
        self.add(&rhs.scale(-1.0))
    }
    pub fn div(&self, rhs: &Tensor) -> Tensor {
        self.mul(&rhs.recip())
    }
    /// 1.0 where `self < rhs`, else 0.0 (not differentiable).
    pub fn lt(&self, rhs: &Tensor) -> Tensor {
        self.binary(op::LessThan, "LessThan", rhs)
    }
    pub fn modulo(&self, rhs: &Tensor) -> Tensor {
        self.binary(op::Mod, "Mod", rhs)
    }

    /// A scalar broadcast to this tensor's shape.
    pub fn full_like(&self, v: f32) -> Tensor {
        self.builder().constant(v).expand_to(&self.dims())
    }
    pub fn scale(&self, v: f32) -> Tensor {
        self.mul(&self.full_like(v))
    }
    pub fn add_scalar(&self, v: f32) -> Tensor {
        self.add(&self.full_like(v))
    }

    pub fn exp2(&self) -> Tensor {
        self.unary(op::Exp2)
    }
    pub fn log2(&self) -> Tensor {
        self.unary(op::Log2)
    }
    pub fn sin(&self) -> Tensor {
        self.unary(op::Sin)
    }
    pub fn sqrt(&self) -> Tensor {
        self.unary(op::Sqrt)
    }
    pub fn recip(&self) -> Tensor {
        self.unary(op::Recip)
    }
    pub fn exp(&self) -> Tensor {
        self.scale(std::f32::consts::LOG2_E).exp2()
    }
    pub fn ln(&self) -> Tensor {
        self.log2().scale(std::f32::consts::LN_2)
    }
    pub fn square(&self) -> Tensor {
        self.mul(self)
    }
    pub fn sigmoid(&self) -> Tensor {
        self.scale(-1.0).exp().add_scalar(1.0).recip()
    }
    pub fn silu(&self) -> Tensor {
        self.mul(&self.sigmoid())
    }

    // ---------- reductions ----------

    pub fn sum(&self, axis: usize) -> Tensor {
        self.reduce(op::SumReduce(axis), "SumReduce", axis)
    }
    pub fn max(&self, axis: usize) -> Tensor {
        self.reduce(op::MaxReduce(axis), "MaxReduce", axis)
    }
    pub fn mean(&self, axis: usize) -> Tensor {
        if !self.check_axis("mean", axis) {
            return self.clone();
        }
        let n = self.dim(axis);
        let s = self.sum(axis);
        match n.to_usize() {
            Some(n) => s.scale(1.0 / n as f32),
            None => s.div(&dim_constant(&self.builder(), n).expand_to(&s.dims())),
        }
    }

    fn reduce<O: op::Operator + 'static>(&self, o: O, name: &str, axis: usize) -> Tensor {
        if !self.check_axis(name, axis) {
            return self.clone();
        }
        let mut dims = self.dims();
        dims.remove(axis);
        self.node(o, &[self], ShapeTracker::new(&dims))
    }

    /// The same values with no gradient flowing back through this node.
    pub fn detach(&self) -> Tensor {
        self.cx.borrow_mut().stop_grad.insert(self.id);
        self.clone()
    }

    /// Softmax over `axis`, stabilised by the row max (which softmax does not
    /// depend on, so no gradient flows through it).
    pub fn softmax(&self, axis: usize) -> Tensor {
        let dims = self.dims();
        let m = self.max(axis).detach().expand(axis, dims[axis]);
        let e = self.sub(&m).exp();
        let s = e.sum(axis).expand(axis, dims[axis]);
        e.div(&s)
    }

    /// log(softmax(x)) over `axis`, computed as `x - max - log(sum(exp(x - max)))`.
    pub fn log_softmax(&self, axis: usize) -> Tensor {
        let dims = self.dims();
        let m = self.max(axis).detach().expand(axis, dims[axis]);
        let z = self.sub(&m);
        let lse = z.exp().sum(axis).ln().expand(axis, dims[axis]);
        z.sub(&lse)
    }

    // ---------- views ----------

    pub fn permute(&self, axes: &[usize]) -> Tensor {
        let mut sorted = axes.to_vec();
        sorted.sort();
        if sorted != (0..self.rank()).collect::<Vec<_>>() {
            self.fail(format!("permute: {axes:?} is not a permutation of the axes of {}", fmt_dims(&self.dims())));
            return self.clone();
        }
        let mut t = self.clone();
        t.shape.permute(axes);
        t
    }

    pub fn transpose(&self, a: usize, b: usize) -> Tensor {
        if !self.check_axis("transpose", a.max(b)) {
            return self.clone();
        }
        let mut axes: Vec<usize> = (0..self.rank()).collect();
        axes.swap(a, b);
        self.permute(&axes)
    }

    /// Insert a broadcast (stride 0) dim of size `size` at `axis`.
    pub fn expand(&self, axis: usize, size: Dim) -> Tensor {
        if axis > self.rank() || self.rank() >= crate::view::MAX_RANK {
            self.fail(format!("expand: cannot add axis {axis} to {}", fmt_dims(&self.dims())));
            return self.clone();
        }
        let mut t = self.clone();
        t.shape.expand(axis, size);
        t
    }

    /// Broadcast to `dims` by adding leading dims (numpy's right alignment,
    /// without stretching size-1 dims).
    pub fn expand_to(&self, dims: &[Dim]) -> Tensor {
        let have = self.dims();
        if have.len() > dims.len() || !shape::shapes_eq(&have, &dims[dims.len() - have.len()..]) {
            self.fail(format!("expand: cannot broadcast {} to {}", fmt_dims(&have), fmt_dims(dims)));
            return self.clone();
        }
        let mut t = self.clone();
        for (i, dim) in dims[..dims.len() - have.len()].iter().enumerate() {
            t = t.expand(i, *dim);
        }
        t
    }

    /// Copy into a plain row-major buffer if the view is not one already.
    pub fn contiguous(&self) -> Tensor {
        if is_plain(&self.shape) {
            return self.clone();
        }
        let dims = self.dims();
        self.node(op::Contiguous, &[self], ShapeTracker::new(&dims))
    }

    pub fn reshape(&self, dims: &[Dim]) -> Tensor {
        let have = self.dims();
        if !dims_eq(&shape::product(&have), &shape::product(dims)) {
            self.fail(format!("reshape: {} has a different element count than {}", fmt_dims(&have), fmt_dims(dims)));
            return self.clone();
        }
        let mut t = self.contiguous();
        t.shape = ShapeTracker::new(dims);
        t
    }

    /// Elements `[start, end)` of `axis`.
    pub fn slice(&self, axis: usize, start: Dim, end: Dim) -> Tensor {
        if !self.check_axis("slice", axis) {
            return self.clone();
        }
        let size = self.dim(axis);
        if let (Some(s), Some(e), Some(n)) = (start.to_usize(), end.to_usize(), size.to_usize()) {
            if s > e || e > n {
                self.fail(format!("slice: [{s}, {e}) out of range for axis {axis} of {}", fmt_dims(&self.dims())));
                return self.clone();
            }
        }
        let mut t = self.clone();
        let p = t.shape.indexes[axis];
        if t.shape.padding[p] != (d(0), d(0)) {
            t = t.contiguous();
        }
        let p = t.shape.indexes[axis];
        let (s0, s1) = t.shape.slices[p];
        t.shape.slices[p] =
            if s0.to_usize() == Some(0) && shape::is_unbounded(&s1) { (start, end) } else { (add(s0, start), add(s0, end)) };
        t
    }

    /// Add `lo` zeros before and `hi` after along `axis`.
    pub fn pad(&self, axis: usize, lo: Dim, hi: Dim) -> Tensor {
        if !self.check_axis("pad", axis) {
            return self.clone();
        }
        let mut t = self.clone();
        let p = t.shape.indexes[axis];
        let (s0, s1) = t.shape.slices[p];
        if s0.to_usize() != Some(0) || !shape::is_unbounded(&s1) {
            t = t.contiguous();
        }
        let p = t.shape.indexes[axis];
        let (p0, p1) = t.shape.padding[p];
        t.shape.padding[p] = (add(p0, lo), add(p1, hi));
        t
    }

    /// Join along `axis` (pad both, then add).
    pub fn concat(&self, rhs: &Tensor, axis: usize) -> Tensor {
        let (a, b) = (self.dims(), rhs.dims());
        let same_rest = a.len() == b.len() && (0..a.len()).all(|i| i == axis || dims_eq(&a[i], &b[i]));
        if !same_rest || !self.check_axis("concat", axis) {
            self.fail(format!("concat on axis {axis}: shapes {} and {} do not fit", fmt_dims(&a), fmt_dims(&b)));
            return self.clone();
        }
        self.pad(axis, d(0), b[axis]).add(&rhs.pad(axis, a[axis], d(0)))
    }

    // ---------- contractions and lookups ----------

    /// `[..., M, K] x [..., K, N] -> [..., M, N]`; a rank-2 right side is
    /// broadcast over the left side's batch dims. Built as luminal does
    /// (broadcast `Mul` + `SumReduce`); the compiler turns it into a matmul.
    pub fn matmul(&self, rhs: &Tensor) -> Tensor {
        let (a, b) = (self.dims(), rhs.dims());
        let r = a.len();
        let fail = |why: &str| {
            self.fail(format!("matmul: {} x {}: {why}", fmt_dims(&a), fmt_dims(&b)));
            self.clone()
        };
        if r < 2 || b.len() < 2 || b.len() > r {
            return fail("needs rank >= 2 on both sides");
        }
        if !dims_eq(&a[r - 1], &b[b.len() - 2]) {
            return fail("inner dimensions differ");
        }
        let rhs = if b.len() < r { rhs.expand_to(&[&a[..r - 2], &b[..]].concat()) } else { rhs.clone() };
        if !shape::shapes_eq(&a[..r - 2], &rhs.dims()[..r - 2]) {
            return fail("batch dimensions differ");
        }
        let (m, n) = (a[r - 2], b[b.len() - 1]);
        let lhs = self.expand(r - 1, n); // [..., M, N, K]
        let rhs = rhs.transpose(r - 2, r - 1).expand(r - 2, m); // [..., M, N, K]
        lhs.mul(&rhs).sum(r)
    }

    /// `x @ w.T` for a weight stored as `[out, in]` (Hugging Face's layout).
    pub fn linear(&self, w: &Tensor) -> Tensor {
        self.matmul(&w.transpose(0, 1))
    }

    /// Rows of `table` ([V, D]) picked by these ids: shape `[..., D]`.
    pub fn gather(&self, table: &Tensor) -> Tensor {
        let t = table.dims();
        if t.len() != 2 {
            self.fail(format!("gather: table must be [rows, dim], got {}", fmt_dims(&t)));
            return self.clone();
        }
        let mut out = self.dims();
        out.push(t[1]);
        self.builder().kernel(Gather, &[table, self], &out)
    }

    /// 1.0 at the k largest entries of each row (last axis), else 0.0.
    pub fn topk_mask(&self, k: usize) -> Tensor {
        self.builder().kernel(TopKMask { k }, &[self], &self.dims())
    }
}

/// Scalar expression constant (e.g. a token count), broadcast later.
pub fn dim_constant(b: &GraphBuilder, e: Expression) -> Tensor {
    let mut c = b.cx.borrow_mut();
    let dyn_map = &c.graph.dyn_map as *const _;
    let id = c.graph.add_op(op::Constant(op::ConstantValue::Expression(e.into()), dyn_map)).finish();
    drop(c);
    b.wrap(id, ShapeTracker::new(&[]))
}

macro_rules! ops {
    ($tr:ident, $m:ident, $f:ident) => {
        impl std::ops::$tr<&Tensor> for &Tensor {
            type Output = Tensor;
            fn $m(self, rhs: &Tensor) -> Tensor {
                Tensor::$f(self, rhs)
            }
        }
        impl std::ops::$tr<Tensor> for Tensor {
            type Output = Tensor;
            fn $m(self, rhs: Tensor) -> Tensor {
                Tensor::$f(&self, &rhs)
            }
        }
        impl std::ops::$tr<&Tensor> for Tensor {
            type Output = Tensor;
            fn $m(self, rhs: &Tensor) -> Tensor {
                Tensor::$f(&self, rhs)
            }
        }
        impl std::ops::$tr<Tensor> for &Tensor {
            type Output = Tensor;
            fn $m(self, rhs: Tensor) -> Tensor {
                Tensor::$f(self, &rhs)
            }
        }
    };
}
ops!(Add, add, add);
ops!(Sub, sub, sub);
ops!(Mul, mul, mul);
ops!(Div, div, div);

impl std::ops::Mul<f32> for &Tensor {
    type Output = Tensor;
    fn mul(self, v: f32) -> Tensor {
        self.scale(v)
    }
}
impl std::ops::Mul<f32> for Tensor {
    type Output = Tensor;
    fn mul(self, v: f32) -> Tensor {
        self.scale(v)
    }
}
impl std::ops::Add<f32> for &Tensor {
    type Output = Tensor;
    fn add(self, v: f32) -> Tensor {
        self.add_scalar(v)
    }
}
impl std::ops::Add<f32> for Tensor {
    type Output = Tensor;
    fn add(self, v: f32) -> Tensor {
        self.add_scalar(v)
    }
}
impl std::ops::Neg for &Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        self.scale(-1.0)
    }
}
impl std::ops::Neg for Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        self.scale(-1.0)
    }
}
