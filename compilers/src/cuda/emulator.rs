//! The device on the CPU: the generated CUDA C compiled by the system's C++
//! compiler against a small shim (one thread per block, blocks run in turn,
//! shared memory is thread-local, atomics are plain adds), and cuBLAS's
//! SGEMM as its definition. It runs the same sources, launches and executor as a GPU,
//! so tests check the generated kernels against the CPU kernels on machines
//! without one. Slow, and meant only for that.

use std::path::PathBuf;
use std::process::Command;

use super::codegen::kernels;
use super::device::{sgemm_reference, BufId, Device, DeviceError, DeviceResult, Sgemm};
use super::source::Launch;

const SHIM: &str = r#"#include <math.h>
#include <string.h>
#include <cmath>
using std::isfinite;
struct lumind_dim3 { unsigned x, y, z; };
/* per thread: sessions on several threads may run the same library */
static thread_local lumind_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
static thread_local float* lumind_smem = 0;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static thread_local
#define __syncthreads() ((void)0)
static inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
static inline float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }
"#;

/// A kernel's trampoline (see `trampolines`): args, grid, shared memory.
type Call = unsafe extern "C" fn(*mut *mut std::ffi::c_void, u32, *mut f32);

pub struct Emulator {
    lib: Option<libloading::Library>,
    /// entry -> trampoline, valid while `lib` is loaded
    calls: std::collections::HashMap<String, Call>,
    bufs: Vec<Vec<f32>>,
    free: Vec<BufId>,
    meta: Vec<i64>,
}

impl Default for Emulator {
    fn default() -> Self {
        Emulator::new()
    }
}

impl Emulator {
    pub fn new() -> Emulator {
        Emulator { lib: None, calls: Default::default(), bufs: vec![], free: vec![], meta: vec![] }
    }
}

/// `extern "C" void lumind_call_NAME(void** args, unsigned grid, float* smem)`
/// for every kernel of `module`: runs its grid one block at a time.
fn trampolines(module: &str) -> String {
    let mut out = String::new();
    for (name, params) in kernels(module) {
        let args: Vec<String> = params
            .split(", ")
            .enumerate()
            .map(|(i, p)| {
                let ty = p.rsplit_once(' ').expect("typed parameter").0;
                format!("({ty})a[{i}]")
            })
            .collect();
        out.push_str(&format!(
            "extern \"C\" void lumind_call_{name}(void** a, unsigned grid, float* smem) {{\n  gridDim.x = grid; lumind_smem = smem;\n  for (unsigned b = 0; b < grid; ++b) {{ blockIdx.x = b; {name}({}); }}\n}}\n",
            args.join(", ")
        ));
    }
    out
}

fn compile(source: &str) -> DeviceResult<PathBuf> {
    let dir = std::env::temp_dir().join("lumind-emulator");
    std::fs::create_dir_all(&dir).map_err(|e| DeviceError(format!("cannot create {}: {e}", dir.display())))?;
    let hash = {
        use std::hash::{Hash, Hasher};
        let mut h = rustc_hash::FxHasher::default();
        source.hash(&mut h);
        h.finish()
    };
    let lib = dir.join(format!("kernels-{hash:016x}.so"));
    if lib.exists() {
        return Ok(lib);
    }
    // a name no other process or thread uses while this one builds
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let unique = format!("{}-{}", std::process::id(), BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let src = dir.join(format!("kernels-{hash:016x}-{unique}.cpp"));
    std::fs::write(&src, source).map_err(|e| DeviceError(format!("cannot write {}: {e}", src.display())))?;
    let tmp = dir.join(format!("kernels-{hash:016x}-{unique}.so"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args(["-O1", "-shared", "-fPIC", "-w", "-o"])
        .arg(&tmp)
        .arg(&src)
        .output()
        .map_err(|e| DeviceError(format!("the CPU emulation needs a C++ compiler (`{cxx}`): {e}")))?;
    let _ = std::fs::remove_file(&src);
    if !out.status.success() {
        return Err(DeviceError(format!("{cxx} rejected the generated kernels:\n{}", String::from_utf8_lossy(&out.stderr))));
    }
    std::fs::rename(&tmp, &lib).map_err(|e| DeviceError(format!("cannot move {}: {e}", tmp.display())))?;
    Ok(lib)
}

impl Device for Emulator {
    fn name(&self) -> String {
        "CPU emulation of the CUDA kernels".into()
    }

    fn load(&mut self, source: &str) -> DeviceResult<()> {
        let full = format!("{SHIM}{source}{}", trampolines(source));
        let path = compile(&full)?;
        // SAFETY: a library we just built from our own sources; it runs no
        // initialisers beyond static zeroing.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| DeviceError(format!("cannot load {}: {e}", path.display())))?;
        self.calls.clear();
        for (name, _) in kernels(source) {
            // SAFETY: every trampoline has the type `Call`
            let f: libloading::Symbol<Call> = unsafe { lib.get(format!("lumind_call_{name}").as_bytes()) }
                .map_err(|e| DeviceError(format!("kernel `{name}` is not in the module: {e}")))?;
            self.calls.insert(name.to_string(), *f);
        }
        self.lib = Some(lib);
        Ok(())
    }

    fn alloc(&mut self, len: usize) -> DeviceResult<BufId> {
        match self.free.pop() {
            Some(b) => {
                self.bufs[b] = vec![0.0; len];
                Ok(b)
            }
            None => {
                self.bufs.push(vec![0.0; len]);
                Ok(self.bufs.len() - 1)
            }
        }
    }

    fn free(&mut self, b: BufId) {
        self.bufs[b] = vec![];
        self.free.push(b);
    }

    fn upload(&mut self, b: BufId, data: &[f32]) -> DeviceResult<()> {
        self.bufs[b][..data.len()].copy_from_slice(data);
        Ok(())
    }

    fn download(&self, b: BufId, len: usize) -> DeviceResult<Vec<f32>> {
        Ok(self.bufs[b][..len].to_vec())
    }

    fn zero(&mut self, b: BufId, len: usize) -> DeviceResult<()> {
        self.bufs[b][..len].fill(0.0);
        Ok(())
    }

    fn set_meta(&mut self, words: &[i64]) -> DeviceResult<()> {
        self.meta = words.to_vec();
        Ok(())
    }

    fn launch(&mut self, entry: &str, launch: Launch, meta_at: usize, bufs: &[BufId]) -> DeviceResult<()> {
        let f = *self.calls.get(entry).ok_or_else(|| DeviceError(format!("kernel `{entry}` is not in the module")))?;
        let mut smem = vec![0f32; (launch.shared as usize).div_ceil(4)];
        let mut args: Vec<*mut std::ffi::c_void> = vec![self.meta[meta_at..].as_ptr() as *mut _];
        args.extend(bufs.iter().map(|&b| self.bufs[b].as_mut_ptr() as *mut std::ffi::c_void));
        // SAFETY: the executor sized every buffer for the views in `meta`
        unsafe { f(args.as_mut_ptr(), launch.grid, smem.as_mut_ptr()) };
        Ok(())
    }

    fn sgemm(&mut self, call: &Sgemm, x: BufId, y: BufId, c: BufId) -> DeviceResult<()> {
        let mut out = std::mem::take(&mut self.bufs[c]);
        let (a, b) = call.operands(x, y);
        sgemm_reference(call, &self.bufs[a], &self.bufs[b], &mut out);
        self.bufs[c] = out;
        Ok(())
    }

    fn sync(&mut self) -> DeviceResult<()> {
        Ok(())
    }
}
