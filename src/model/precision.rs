//! How a session stores and multiplies its weights.

/// The element type of a session's matrix-product weights.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    strum::EnumString,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantNames,
    strum::VariantArray,
)]
#[strum(serialize_all = "lowercase")]
pub enum Precision {
    /// Every value f32.
    #[default]
    Fp32,
    /// The weights of matrix products quantized at load to GGUF's Q8_0
    /// (32 values per f16 scale). A few rows (decoding) multiply them as
    /// bytes against activations quantized the same way; longer prompts
    /// multiply their values in f32. The embedding table too (its lookups
    /// dequantize their rows), so a tied LM head is Q8_0; norms stay f32.
    /// Inference only, on the CPU.
    Q8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        self.into()
    }
}
