//! The GGUF container (versions 2 and 3, little-endian): a header, typed
//! metadata, tensor descriptions, then each tensor's bytes at an aligned
//! offset. Reading is strict: every count, length and offset is checked
//! against the bytes that are there, so a damaged or hostile file is an
//! error naming the key or tensor at fault, never a panic or a huge
//! allocation.

use anyhow::{bail, Context, Result};

use super::tensor_type::TensorType;

const MAGIC: &[u8; 4] = b"GGUF";
/// What GGUF assumes when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: usize = 32;
/// Arrays of arrays nest no deeper than this (GGUF allows nesting; no
/// model file needs more than one level).
const MAX_DEPTH: usize = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// A whole number of any integer type (negative ones are not).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// A number; an f32 as the shortest decimal that reads back as it
    /// (`1e-5`, not 9.99999974e-6), which is what its writer meant.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => v.to_string().parse().ok(),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
}

/// One tensor: its shape outermost first (a `[rows, columns]` matrix, as
/// transformers has it; GGUF lists the dimensions the other way round), its
/// element type and its bytes in that type.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub ty: TensorType,
    pub data: Vec<u8>,
}

/// A whole GGUF file in memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gguf {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<Tensor>,
}

impl Gguf {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The file's bytes (version 3, aligned as `general.alignment` says).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let align = self.alignment()?;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            let expected = t.ty.bytes_for(&t.shape).with_context(|| format!("tensor `{}`", t.name))?;
            if expected != t.data.len() {
                bail!("tensor `{}`: {} bytes for a {:?} {} tensor, which takes {expected}", t.name, t.data.len(), t.shape, t.ty);
            }
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                out.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + t.data.len()).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            out.resize(out.len().next_multiple_of(align), 0);
        }
        Ok(out)
    }

    /// Parse a file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Gguf> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4).ok() != Some(MAGIC.as_slice()) {
            bail!("not a GGUF file (it does not start with `GGUF`)");
        }
        let version = r.u32().context("the header")?;
        if !(2..=3).contains(&version) {
            bail!("GGUF version {version}; lumind reads versions 2 and 3");
        }
        let n_tensors = r.u64().context("the header")?;
        let n_kv = r.u64().context("the header")?;
        let mut g = Gguf::default();
        for i in 0..n_kv {
            let key = r.string().with_context(|| format!("metadata key {i} of {n_kv}"))?;
            let ty = r.u32().with_context(|| format!("metadata `{key}`"))?;
            let v = r.value(ty, 0).with_context(|| format!("metadata `{key}`"))?;
            g.metadata.push((key, v));
        }
        let align = g.alignment()?;
        let mut infos = vec![];
        for i in 0..n_tensors {
            let name = r.string().with_context(|| format!("tensor {i} of {n_tensors}"))?;
            let info = r.tensor_info().with_context(|| format!("tensor `{name}`"))?;
            infos.push((name, info));
        }
        let start = r.pos.next_multiple_of(align);
        for (name, (shape, ty, offset)) in infos {
            let at = |what: String| format!("tensor `{name}`: {what}");
            if offset % align as u64 != 0 {
                bail!(at(format!("its offset {offset} is not a multiple of the alignment {align}")));
            }
            let len = ty.bytes_for(&shape).with_context(|| at(format!("shape {shape:?}")))?;
            let begin = usize::try_from(offset).ok().and_then(|o| o.checked_add(start));
            let data = begin.and_then(|b| bytes.get(b..b.checked_add(len)?));
            let Some(data) = data else {
                bail!(at(format!("its {len} bytes at offset {offset} lie past the end of the file ({} bytes)", bytes.len())));
            };
            g.tensors.push(Tensor { name, shape, ty, data: data.to_vec() });
        }
        Ok(g)
    }

    fn alignment(&self) -> Result<usize> {
        match self.get("general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a <= 1 << 20 && a % 8 == 0 => Ok(a as usize),
                _ => bail!("`general.alignment` must be a positive multiple of 8, got {v:?}"),
            },
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::Array(items) => {
            // an empty array's element type is never read; say u8
            let ty = items.first().map_or(0, Value::type_id);
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// A cursor over a file's bytes whose reads fail, rather than panic, past
/// the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            bail!("the file ends at byte {} where {n} more bytes were due", self.bytes.len());
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take gives N bytes"))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A count or length, which cannot exceed the bytes left (each item
    /// takes at least one), so a hostile count allocates nothing.
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()?;
        let left = self.bytes.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= left => Ok(n),
            _ => bail!("a length of {n} at byte {} is more than the {left} bytes left", self.pos - 8),
        }
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        let at = self.pos;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| anyhow::anyhow!("the string at byte {at} is not UTF-8"))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("a boolean is 0 or 1, not {b}"),
            },
            8 => Value::Str(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    bail!("arrays nest deeper than {MAX_DEPTH}");
                }
                let elem = self.u32()?;
                let n = self.len()?;
                let mut items = vec![];
                for i in 0..n {
                    items.push(self.value(elem, depth + 1).with_context(|| format!("element {i} of {n}"))?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            t => bail!("unknown value type {t}"),
        })
    }
    /// (shape outermost first, type, offset from the data's start)
    fn tensor_info(&mut self) -> Result<(Vec<usize>, TensorType, u64)> {
        let n_dims = self.u32()?;
        if n_dims > 4 {
            bail!("{n_dims} dimensions; GGUF tensors have at most 4");
        }
        let mut shape = vec![];
        for _ in 0..n_dims {
            let d = self.u64()?;
            shape.push(usize::try_from(d).ok().filter(|&d| d < 1 << 40).with_context(|| format!("a dimension of {d}"))?);
        }
        shape.reverse();
        let ty = TensorType::from_id(self.u32()?);
        Ok((shape, ty, self.u64()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Gguf {
        Gguf {
            metadata: vec![
                ("general.architecture".into(), Value::Str("llama".into())),
                ("llama.block_count".into(), Value::U32(2)),
                ("llama.rope.freq_base".into(), Value::F32(1e6)),
                ("tokenizer.ggml.tokens".into(), Value::Array(vec![Value::Str("a".into()), Value::Str("b".into())])),
                ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            ],
            tensors: vec![
                Tensor { name: "w".into(), shape: vec![2, 3], ty: TensorType::F32, data: (0..24).collect() },
                Tensor { name: "n".into(), shape: vec![3], ty: TensorType::F32, data: (0..12).collect() },
            ],
        }
    }

    #[test]
    fn a_file_reads_back_as_written() {
        let g = sample();
        let bytes = g.to_bytes().unwrap();
        assert_eq!(&bytes[..4], b"GGUF");
        assert_eq!(Gguf::from_bytes(&bytes).unwrap(), g);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_an_error_or_a_file() {
        let bytes = sample().to_bytes().unwrap();
        for n in 0..bytes.len() {
            // the padding after the last tensor may go; anything before it may not
            if n < bytes.len() - 20 {
                assert!(Gguf::from_bytes(&bytes[..n]).is_err(), "a file cut at byte {n} was read");
            }
        }
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let _ = Gguf::from_bytes(&b);
            }
        }
    }

    #[test]
    fn hostile_counts_are_refused_before_allocating() {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        let e = format!("{:#}", Gguf::from_bytes(&b).unwrap_err());
        assert!(e.contains("metadata key 0") && e.contains("more than"), "{e}");
    }
}
