//! How a session stores and multiplies its weights.

use lumind_compilers::DType;

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
    serde::Serialize,
    serde::Deserialize,
)]
#[strum(serialize_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Every value f32.
    #[default]
    Fp32,
    /// The weights of matrix products and the embedding rounded at load to
    /// bfloat16 (f32's top half, to nearest even), so decoding reads half
    /// the bytes; a few rows (decoding) widen them back and compute in f32,
    /// prompts multiply in bf16 (activations rounded too, sums in f32)
    /// where the CPU has AVX512-BF16, else in f32. Norms stay f32. On the
    /// CPU. In a training config: mixed precision (products in bf16,
    /// everything else f32; `TrainCompile`).
    Bf16,
    /// The weights of matrix products quantized at load to GGUF's Q8_0
    /// (32 values per f16 scale). A few rows (decoding) multiply them as
    /// bytes against activations quantized the same way; longer prompts
    /// multiply their values rounded to bf16 where the CPU has
    /// AVX512-BF16, else in f32. The embedding table too (its lookups
    /// dequantize their rows), so a tied LM head is Q8_0; norms stay f32.
    /// Inference only, on the CPU.
    Q8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// How its weights are stored: `None` for f32.
    pub fn weight_dtype(self) -> Option<DType> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(DType::Bf16),
            Precision::Q8 => Some(DType::Q8_0),
        }
    }
}
