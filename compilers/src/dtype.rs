//! Element types of buffers, on its own so that the plan can name a
//! buffer's type without depending on the targets that hold it.

/// Element type of a buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DType {
    #[default]
    F32,
    /// bfloat16 ([`crate::kernels::packed`]): an f32's top 16 bits
    Bf16,
    /// GGUF's Q8_0 blocks ([`crate::kernels::q8`]); `len` counts values
    Q8_0,
}

impl DType {
    /// As GGUF and `inspect` name it.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::Q8_0 => "q8_0",
        }
    }
}
