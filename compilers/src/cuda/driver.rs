//! The device on an NVIDIA GPU, through `cudarc`: the driver API, NVRTC
//! (the module compiled for the GPU's own architecture, once per graph) and
//! cuBLAS, all loaded at run time, so lumind builds and runs without CUDA
//! and says so when asked for a GPU it cannot reach.
//!
//! One stream carries everything in order; buffers are `CudaSlice`s whose
//! raw pointers are passed to kernels (event tracking is off: with one
//! stream there is nothing to track). `LUMIND_CUDA_TF32=1` lets cuBLAS use
//! TF32 tensor cores for the matmuls (about 1e-3 relative error).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use super::codegen::kernels;
use super::device::{BufId, Device, DeviceError, DeviceResult, Sgemm};
use super::source::Launch;

pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    arch: String,
    module: Option<Arc<CudaModule>>,
    functions: HashMap<String, CudaFunction>,
    bufs: Vec<Option<CudaSlice<f32>>>,
    free: Vec<BufId>,
    meta: Option<CudaSlice<i64>>,
}

fn err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> DeviceError + '_ {
    move |e| DeviceError(format!("CUDA: {what}: {e:?}"))
}

/// Whether this machine can run CUDA, and if not, why.
pub fn check_libraries() -> DeviceResult<()> {
    // SAFETY: these only try to open the shared libraries
    let (driver, nvrtc, cublas) =
        unsafe { (cudarc::driver::sys::is_culib_present(), cudarc::nvrtc::sys::is_culib_present(), blas_sys::is_culib_present()) };
    let missing: Vec<&str> =
        [(driver, "the NVIDIA driver (libcuda.so)"), (nvrtc, "NVRTC (libnvrtc.so)"), (cublas, "cuBLAS (libcublas.so)")]
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, name)| *name)
            .collect();
    if !missing.is_empty() {
        return Err(DeviceError(format!(
            "--device cuda needs {}, which cannot be loaded on this machine (install them or add their directory to LD_LIBRARY_PATH; --device cpu runs without them)",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Whether a libnvrtc can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compile CUDA C to PTX for `arch` (e.g. `sm_90`) with NVRTC; each
/// distinct module once per process.
pub fn compile_ptx(source: &str, arch: &str) -> DeviceResult<String> {
    static CACHE: Mutex<Option<HashMap<(String, String), String>>> = Mutex::new(None);
    let key = (source.to_string(), arch.to_string());
    if let Some(ptx) = CACHE.lock().unwrap().as_ref().and_then(|c| c.get(&key)) {
        return Ok(ptx.clone());
    }
    let ptx = nvrtc_compile(source, arch)?;
    CACHE.lock().unwrap().get_or_insert_with(HashMap::new).insert(key, ptx.clone());
    Ok(ptx)
}

fn nvrtc_compile(source: &str, arch: &str) -> DeviceResult<String> {
    if !nvrtc_present() {
        return Err(DeviceError("NVRTC (libnvrtc.so) cannot be loaded on this machine".into()));
    }
    let arch: &'static str = Box::leak(arch.to_string().into_boxed_str());
    // 177: a helper of the prelude that this module's kernels do not use
    let opts = CompileOptions {
        arch: Some(arch),
        name: Some("lumind_kernels.cu".into()),
        options: vec!["--diag-suppress=177".into()],
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(source, opts).map_err(|e| DeviceError(format!("NVRTC rejected the generated kernels: {e:?}")))?;
    Ok(ptx.to_src())
}

impl Cuda {
    /// The GPU of this ordinal.
    pub fn open(ordinal: usize) -> DeviceResult<Cuda> {
        check_libraries()?;
        let count = CudaContext::device_count().map_err(err("counting devices"))?;
        if count <= ordinal as i32 {
            return Err(DeviceError(format!("--device cuda: the driver sees {count} GPUs, so GPU {ordinal} does not exist")));
        }
        let ctx = CudaContext::new(ordinal).map_err(err("creating a context"))?;
        // SAFETY: one stream orders every operation of this device
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| DeviceError(format!("cuBLAS: {e:?}")))?;
        if std::env::var("LUMIND_CUDA_TF32").is_ok_and(|v| v == "1") {
            // SAFETY: a valid handle
            unsafe { blas_sys::cublasSetMathMode(*blas.handle(), blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH) }
                .result()
                .map_err(|e| DeviceError(format!("cuBLAS: {e:?}")))?;
        }
        let (major, minor) = ctx.compute_capability().map_err(err("reading the compute capability"))?;
        Ok(Cuda {
            ctx,
            stream,
            blas,
            arch: format!("sm_{major}{minor}"),
            module: None,
            functions: HashMap::new(),
            bufs: vec![],
            free: vec![],
            meta: None,
        })
    }

    fn buf(&self, b: BufId) -> &CudaSlice<f32> {
        self.bufs[b].as_ref().expect("a live buffer")
    }

    fn ptr(&self, b: BufId) -> u64 {
        let (p, _sync) = self.buf(b).device_ptr(&self.stream);
        p
    }
}

impl Device for Cuda {
    fn name(&self) -> String {
        format!("{} ({})", self.ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into()), self.arch)
    }

    fn load(&mut self, source: &str) -> DeviceResult<()> {
        let ptx = compile_ptx(source, &self.arch)?;
        let module = self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(err("loading the module"))?;
        self.functions.clear();
        for (name, _) in kernels(source) {
            let f = module.load_function(name).map_err(err("finding a kernel"))?;
            self.functions.insert(name.to_string(), f);
        }
        self.module = Some(module);
        Ok(())
    }

    fn alloc(&mut self, len: usize) -> DeviceResult<BufId> {
        let s = self.stream.alloc_zeros::<f32>(len).map_err(err("allocating memory"))?;
        match self.free.pop() {
            Some(b) => {
                self.bufs[b] = Some(s);
                Ok(b)
            }
            None => {
                self.bufs.push(Some(s));
                Ok(self.bufs.len() - 1)
            }
        }
    }

    fn free(&mut self, b: BufId) {
        self.bufs[b] = None;
        self.free.push(b);
    }

    fn upload(&mut self, b: BufId, data: &[f32]) -> DeviceResult<()> {
        let dst = self.bufs[b].as_mut().expect("a live buffer");
        self.stream.memcpy_htod(data, &mut dst.slice_mut(..data.len())).map_err(err("copying to the GPU"))
    }

    fn download(&self, b: BufId, len: usize) -> DeviceResult<Vec<f32>> {
        let v = self.stream.clone_dtoh(&self.buf(b).slice(..len)).map_err(err("copying from the GPU"))?;
        self.stream.synchronize().map_err(err("waiting for the GPU"))?;
        Ok(v)
    }

    fn zero(&mut self, b: BufId, len: usize) -> DeviceResult<()> {
        let dst = self.bufs[b].as_mut().expect("a live buffer");
        self.stream.memset_zeros(&mut dst.slice_mut(..len)).map_err(err("zeroing memory"))
    }

    fn set_meta(&mut self, words: &[i64]) -> DeviceResult<()> {
        if self.meta.as_ref().is_none_or(|m| m.len() < words.len()) {
            self.meta = Some(self.stream.alloc_zeros::<i64>(words.len().next_power_of_two().max(1024)).map_err(err("allocating memory"))?);
        }
        let m = self.meta.as_mut().expect("just allocated");
        self.stream.memcpy_htod(words, &mut m.slice_mut(..words.len())).map_err(err("copying to the GPU"))
    }

    fn launch(&mut self, entry: &str, launch: Launch, meta_at: usize, bufs: &[BufId]) -> DeviceResult<()> {
        let f = self.functions.get(entry).ok_or_else(|| DeviceError(format!("kernel `{entry}` is not in the module")))?;
        let meta = self.meta.as_ref().ok_or_else(|| DeviceError("no meta words set".into()))?;
        let (base, _sync) = meta.device_ptr(&self.stream);
        let mut args: Vec<u64> = vec![base + 8 * meta_at as u64];
        args.extend(bufs.iter().map(|&b| self.ptr(b)));
        let cfg = LaunchConfig { grid_dim: (launch.grid, 1, 1), block_dim: (launch.block, 1, 1), shared_mem_bytes: launch.shared };
        let mut builder = self.stream.launch_builder(f);
        for a in &args {
            builder.arg(a);
        }
        // SAFETY: the arguments match the kernel's (meta, outputs, inputs)
        // signature and the executor sized every buffer for its views
        unsafe { builder.launch(cfg) }.map(|_| ()).map_err(err("launching a kernel"))
    }

    fn sgemm(&mut self, call: &Sgemm, x: BufId, y: BufId, c: BufId) -> DeviceResult<()> {
        let (a, b) = call.operands(x, y);
        let op = |t: bool| if t { blas_sys::cublasOperation_t::CUBLAS_OP_T } else { blas_sys::cublasOperation_t::CUBLAS_OP_N };
        let (alpha, beta) = (1f32, 0f32);
        let (pa, pb, pc) = (self.ptr(a) + 4 * call.a_off as u64, self.ptr(b) + 4 * call.b_off as u64, self.ptr(c) + 4 * call.c_off as u64);
        let int = |v: usize| i32::try_from(v).map_err(|_| DeviceError(format!("SGEMM size {v} exceeds cuBLAS's 32-bit sizes")));
        // SAFETY: the pointers address buffers the executor sized for this product
        unsafe {
            blas::sgemm_strided_batched(
                *self.blas.handle(),
                op(call.trans_a),
                op(call.trans_b),
                int(call.m)?,
                int(call.n)?,
                int(call.k)?,
                &alpha,
                pa as *const f32,
                int(call.lda)?,
                call.stride_a as i64,
                pb as *const f32,
                int(call.ldb)?,
                call.stride_b as i64,
                &beta,
                pc as *mut f32,
                int(call.ldc)?,
                call.stride_c as i64,
                int(call.batch)?,
            )
        }
        .map_err(|e| DeviceError(format!("cuBLAS SGEMM: {e:?}")))
    }

    fn sync(&mut self) -> DeviceResult<()> {
        self.stream.synchronize().map_err(err("waiting for the GPU"))
    }
}
