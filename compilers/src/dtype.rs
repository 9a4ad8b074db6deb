//! Element types of buffers, on its own so that the plan can name a
//! buffer's type without depending on the targets that hold it.

/// Element type of a buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DType {
    #[default]
    F32,
    /// GGUF's Q8_0 blocks ([`crate::kernels::q8`]); `len` counts values
    Q8_0,
}
