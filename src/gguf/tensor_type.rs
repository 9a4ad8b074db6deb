//! GGUF's tensor element types that lumind writes (F32, F16, BF16, Q8_0)
//! and reads (those and Q4_0), with their ids, sizes and conversions to and
//! from f32. Any other type is kept by id, so an error can name it.

use anyhow::{bail, Result};
use half::{bf16, f16};
use lumind_compilers::kernels::q8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Bf16,
    /// blocks of 32: an f16 scale and 32 i8 values
    Q8_0,
    /// blocks of 32: an f16 scale and 32 4-bit values less 8
    Q4_0,
    /// another ggml type, by id
    Other(u32),
}

/// ggml's names of the types lumind does not read, for messages.
const OTHER_NAMES: &[(u32, &str)] = &[
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
];

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            TensorType::F32 => write!(f, "F32"),
            TensorType::F16 => write!(f, "F16"),
            TensorType::Bf16 => write!(f, "BF16"),
            TensorType::Q8_0 => write!(f, "Q8_0"),
            TensorType::Q4_0 => write!(f, "Q4_0"),
            TensorType::Other(id) => match OTHER_NAMES.iter().find(|(i, _)| i == id) {
                Some((_, name)) => write!(f, "{name}"),
                None => write!(f, "ggml type {id}"),
            },
        }
    }
}

impl TensorType {
    pub fn id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q4_0 => 2,
            TensorType::Q8_0 => 8,
            TensorType::Bf16 => 30,
            TensorType::Other(id) => id,
        }
    }

    pub fn from_id(id: u32) -> TensorType {
        match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            8 => TensorType::Q8_0,
            30 => TensorType::Bf16,
            id => TensorType::Other(id),
        }
    }

    /// (values, bytes) of one block
    fn block(self) -> Result<(usize, usize)> {
        Ok(match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 | TensorType::Bf16 => (1, 2),
            TensorType::Q8_0 => (q8::BLOCK, q8::BLOCK_BYTES),
            TensorType::Q4_0 => (32, 18),
            TensorType::Other(_) => bail!("lumind reads F32, F16, BF16, Q8_0 and Q4_0 tensors, not {self}"),
        })
    }

    /// Bytes a tensor of `shape` (outermost first) takes; blocks run along
    /// the innermost dimension, which they must divide.
    pub fn bytes_for(self, shape: &[usize]) -> Result<usize> {
        let (per, bytes) = self.block()?;
        let inner = shape.last().copied().unwrap_or(1);
        if inner % per != 0 {
            bail!("{self} packs {per} values a block, which rows of {inner} do not fill");
        }
        match shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).and_then(|n| (n / per).checked_mul(bytes)) {
            Some(n) => Ok(n),
            None => bail!("{shape:?} is too large"),
        }
    }

    /// `values` (rows of the innermost dimension) in this type.
    pub fn encode(self, values: &[f32]) -> Result<Vec<u8>> {
        Ok(match self {
            TensorType::F32 => f32_bytes(values),
            TensorType::F16 => values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
            TensorType::Bf16 => values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
            TensorType::Q8_0 => {
                if !values.len().is_multiple_of(q8::BLOCK) {
                    bail!("Q8_0 packs 32 values a block, which {} values do not fill", values.len());
                }
                q8::quantize(values)
            }
            TensorType::Q4_0 | TensorType::Other(_) => bail!("lumind does not write {self} tensors"),
        })
    }

    /// The f32 values of `bytes` in this type (a whole number of blocks).
    pub fn decode(self, bytes: &[u8]) -> Result<Vec<f32>> {
        let (_, block) = self.block()?;
        if !bytes.len().is_multiple_of(block) {
            bail!("{} bytes are not whole {self} blocks", bytes.len());
        }
        Ok(match self {
            TensorType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            TensorType::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            TensorType::Bf16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            TensorType::Q8_0 => q8::dequantize(bytes),
            TensorType::Q4_0 => bytes
                .chunks_exact(18)
                .flat_map(|b| {
                    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    let q = &b[2..];
                    // the low nibbles are values 0..16, the high ones 16..32
                    let low = q.iter().map(move |x| ((x & 0x0f) as i32 - 8) as f32 * d);
                    let high = q.iter().map(move |x| ((x >> 4) as i32 - 8) as f32 * d);
                    low.chain(high).collect::<Vec<_>>()
                })
                .collect(),
            TensorType::Other(_) => unreachable!("block() refused it"),
        })
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_written_type_decodes_to_its_rounding() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 31.5) / 7.0).collect();
        for ty in [TensorType::F32, TensorType::F16, TensorType::Bf16, TensorType::Q8_0] {
            let bytes = ty.encode(&x).unwrap();
            assert_eq!(bytes.len(), ty.bytes_for(&[2, 32]).unwrap());
            let y = ty.decode(&bytes).unwrap();
            // the worst rounding each type allows: f16 and bf16 keep 11 and 8
            // significant bits; Q8_0 is within half a step of max|x| / 127
            let bound = |v: f32| match ty {
                TensorType::F32 => 0.0,
                TensorType::F16 => v.abs() / 2048.0,
                TensorType::Bf16 => v.abs() / 256.0,
                // (half a step, and the f16 scale's own rounding of up to 127 steps / 2048)
                _ => 0.6 * 4.5 / 127.0,
            };
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= bound(*a), "{ty}: {a} became {b}");
            }
        }
    }

    #[test]
    fn q4_0_decodes_its_nibbles_in_ggml_order() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = 0x9f; // value 0: 15 - 8 = 7; value 16: 9 - 8 = 1
        let y = TensorType::Q4_0.decode(&b).unwrap();
        assert_eq!((y[0], y[16], y[1]), (3.5, 0.5, -4.0));
    }

    #[test]
    fn other_types_are_named() {
        let e = TensorType::from_id(12).bytes_for(&[32]).unwrap_err().to_string();
        assert!(e.contains("Q4_K"), "{e}");
    }
}
