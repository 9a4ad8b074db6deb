//! The kernel interface our executor runs, and the luminal `Operator` that
//! carries a kernel inside a luminal graph.
//!
//! Every node of a compiled graph is either an input (`luminal::op::Function`)
//! or a [`KernelOp`]. Passes replace luminal primops and patterns of them by
//! kernels; the executor resolves each input's view, sizes the outputs with
//! [`Kernel::output_shapes`] and calls [`Kernel::run`].

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use luminal::op::{InputTensor, Operator};
use luminal::prelude::{ShapeTracker, Tensor};

use crate::cuda::source::CudaKernel;
use crate::kernels::packed::Packed;
use crate::view::{DimValues, View};

/// One input of a kernel: the producer's buffer and how to read it.
#[derive(Clone, Copy)]
pub struct Arg<'a> {
    pub data: &'a [f32],
    pub view: View,
    /// The input as packed weights, bf16 or Q8_0 (then `data` is empty):
    /// only for an input the kernel [reads packed](Kernel::reads_packed).
    pub packed: Option<Packed<'a>>,
}

impl<'a> Arg<'a> {
    /// An f32 input.
    pub fn f32(data: &'a [f32], view: View) -> Arg<'a> {
        Arg { data, view, packed: None }
    }
}

/// Work done by one kernel call, for profiles.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub flops: f64,
    pub bytes: f64,
}

pub trait Kernel: Debug + Send + Sync + KernelEq + 'static {
    /// Short name shown in profiles and graph dumps (e.g. `MatMul`, `Add`).
    fn name(&self) -> String;
    /// Shapes of the outputs for inputs seen through these views.
    fn output_shapes(&self, inputs: &[View], dims: &DimValues) -> Vec<Vec<usize>>;
    /// Compute the outputs. Outputs are sized per `output_shapes`; an output
    /// listed in `inplace` arrives holding its input's data and the matching
    /// `inputs[i].data` is empty.
    fn run(&self, inputs: &[Arg], outputs: &mut [&mut [f32]], dims: &DimValues);
    /// Whether input `input` may arrive as packed weights (`Arg::packed`):
    /// the executor stores a param so (`Executor::pack_weights`) only when
    /// every kernel that reads it says yes.
    fn reads_packed(&self, _input: usize) -> bool {
        false
    }
    /// `(output, input)` pairs whose output is the input's buffer, updated in place.
    fn inplace(&self) -> Vec<(usize, usize)> {
        vec![]
    }
    /// Estimated work for one call, for profiles.
    fn cost(&self, inputs: &[View], outputs: &[Vec<usize>]) -> Cost {
        let bytes = inputs.iter().map(|v| v.numel()).sum::<usize>() + outputs.iter().map(|o| o.iter().product::<usize>()).sum::<usize>();
        Cost { flops: 0.0, bytes: 4.0 * bytes as f64 }
    }
    /// Kernels fused from several primops say which (for inspection).
    fn fused_from(&self) -> Vec<String> {
        vec![]
    }
    /// How autograd differentiates this kernel, for the kernels that enter
    /// a graph before autograd runs.
    fn grad_rule(&self) -> GradRule {
        GradRule::None
    }
    /// The kernel as CUDA C, for the device backends; None: it has none
    /// (matrix products go to cuBLAS instead).
    fn cuda(&self) -> Option<&dyn CudaKernel> {
        None
    }
}

/// The backward rule a kernel declares as its own ([`Kernel::grad_rule`]);
/// `autograd` implements each.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GradRule {
    /// none: differentiating through the kernel is an error
    None,
    /// piecewise constant (indices, masks): no gradient flows through it
    Zero,
    /// a row lookup: the table's gradient scatter-adds the output's
    Gather,
    /// causal attention: its gradient is one `CausalAttentionGrad` kernel
    CausalAttention { groups: usize, scale: f32 },
}

/// Equality between kernel trait objects, so luminal's CSE can merge equal nodes.
pub trait KernelEq {
    fn as_any(&self) -> &dyn Any;
    fn eq_kernel(&self, other: &dyn Kernel) -> bool;
}

impl<K: PartialEq + 'static> KernelEq for K {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn eq_kernel(&self, other: &dyn Kernel) -> bool {
        other.as_any().downcast_ref::<K>() == Some(self)
    }
}

/// A kernel as a node of a luminal graph.
#[derive(Clone)]
pub struct KernelOp(pub Arc<dyn Kernel>);

impl KernelOp {
    pub fn new<K: Kernel>(k: K) -> KernelOp {
        KernelOp(Arc::new(k))
    }
    /// The kernel as its concrete type, if it is one.
    pub fn get<K: Kernel>(&self) -> Option<&K> {
        self.0.as_any().downcast_ref::<K>()
    }
}

impl Debug for KernelOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl PartialEq for KernelOp {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_kernel(other.0.as_ref())
    }
}

impl Operator for KernelOp {
    /// Kernels run in lumind's executor, which hands them resolved views and
    /// pooled buffers; luminal's `Graph::execute` is not a way to run them.
    fn process(&mut self, _: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        unreachable!("kernel {} runs in lumind's executor, not luminal's Graph::execute", self.0.name())
    }
}

/// The kernel of a graph node, if the node is a kernel.
pub fn kernel_of(op: &dyn Operator) -> Option<&KernelOp> {
    op.as_any().downcast_ref::<KernelOp>()
}
