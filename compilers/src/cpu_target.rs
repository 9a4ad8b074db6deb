//! The CPU as a [`Target`]: buffers are `Vec<f32>`s in an arena, and a step
//! runs its kernel at once over strided views of them.

use std::time::Instant;

use crate::cuda::DeviceError;
use crate::kernel::Arg;
use crate::kernels::packed::{self, Packed};
use crate::step_stats::StepStats;
use crate::target::{Buf, DType, StepCall, Target};

/// A buffer that may go to the pool is kept initialised up to its capacity,
/// so one taken from it for fewer values needs no clearing (kernels
/// overwrite them).
#[derive(Default)]
pub struct CpuTarget {
    bufs: Vec<Vec<f32>>,
    /// ids of empty arena entries
    vacant: Vec<usize>,
}

impl CpuTarget {
    /// `data` as a buffer; with `whole`, of its whole capacity (zero-filled
    /// past its values).
    fn insert(&mut self, mut data: Vec<f32>, whole: bool) -> Buf {
        let len = data.len();
        if whole {
            data.resize(data.capacity().max(1), 0.0);
        }
        let cap = data.len();
        let id = match self.vacant.pop() {
            Some(id) => {
                self.bufs[id] = data;
                id
            }
            None => {
                self.bufs.push(data);
                self.bufs.len() - 1
            }
        };
        Buf { id, len, cap, dtype: DType::F32 }
    }

    /// A packed buffer's elements.
    fn packed(&self, b: Buf) -> Packed<'_> {
        let bytes = &bytemuck::cast_slice::<f32, u8>(&self.bufs[b.id])[..packed::bytes_for(b.dtype, b.len)];
        match b.dtype {
            DType::Bf16 => Packed::Bf16(bytemuck::cast_slice(bytes)),
            _ => Packed::Q8_0(bytes),
        }
    }
}

impl Target for CpuTarget {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn alloc(&mut self, len: usize, _: DType) -> Result<Buf, DeviceError> {
        let mut b = self.insert(vec![0.0; len.max(1)], true);
        b.len = len;
        Ok(b)
    }

    fn adopt(&mut self, data: Vec<f32>) -> Result<Buf, DeviceError> {
        Ok(self.insert(data, false))
    }

    fn adopt_packed(&mut self, dtype: DType, bytes: Vec<u8>, len: usize) -> Result<Buf, DeviceError> {
        let mut words = vec![0f32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<f32, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
        Ok(Buf { len, dtype, ..self.insert(words, false) })
    }

    fn free(&mut self, b: Buf) {
        self.bufs[b.id] = vec![];
        self.vacant.push(b.id);
    }

    fn upload(&mut self, b: Buf, data: &[f32]) -> Result<(), DeviceError> {
        self.bufs[b.id][..b.len].copy_from_slice(data);
        Ok(())
    }

    fn download(&self, b: Buf) -> Result<Vec<f32>, DeviceError> {
        Ok(match b.dtype {
            DType::F32 => self.bufs[b.id][..b.len].to_vec(),
            DType::Bf16 | DType::Q8_0 => self.packed(b).values(),
        })
    }

    fn take(&mut self, b: Buf) -> Result<(Vec<f32>, Option<Buf>), DeviceError> {
        let mut data = std::mem::take(&mut self.bufs[b.id]);
        self.vacant.push(b.id);
        data.truncate(b.len);
        Ok((data, None))
    }

    fn reuse(&mut self, data: Vec<f32>) -> Option<Buf> {
        Some(self.insert(data, true))
    }

    fn step(&mut self, c: &StepCall, stats: Option<&mut StepStats>) -> Result<(), DeviceError> {
        // the outputs leave the arena while the kernel runs, so it can read
        // the inputs beside them (an in-place input's data arrives empty:
        // its output holds it)
        let mut outs: Vec<Vec<f32>> = c.outs.iter().map(|b| std::mem::take(&mut self.bufs[b.id])).collect();
        let args: Vec<Arg> = c
            .ins
            .iter()
            .zip(c.views)
            .enumerate()
            .map(|(i, (b, &view))| {
                if c.inplace.iter().any(|x| x.1 == i) {
                    Arg::f32(&[], view)
                } else if b.dtype != DType::F32 {
                    Arg { data: &[], view, packed: Some(self.packed(*b)) }
                } else {
                    Arg::f32(&self.bufs[b.id][..b.len], view)
                }
            })
            .collect();
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().zip(c.outs).map(|(v, b)| &mut v[..b.len]).collect();
        let t = stats.as_ref().map(|_| Instant::now());
        c.kernel.run(&args, &mut refs, c.dims);
        if let (Some(t), Some(s)) = (t, stats) {
            s.time += t.elapsed();
        }
        drop((args, refs));
        for (b, v) in c.outs.iter().zip(outs) {
            self.bufs[b.id] = v;
        }
        Ok(())
    }
}
