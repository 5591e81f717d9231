//! The emulated CUDA device: the real `kernels/*.cu` source compiled for the host with g++ and
//! run with one fiber per CUDA thread on the launching thread (`kernels/emu/cuda_emu.h`; a
//! barrier is a switch between fibers, not an OS rendezvous), so the launchers in
//! [`crate::cuda::ops`] run end to end on a machine without a GPU (`tests/cuda_emulated.rs`).
//!
//! Per kernel file: `g++ -E` of common.cuh + the file (macros such as `ACT_KERNELS` expand), every
//! `extern "C" void NAME(PARAMS)` found in it gets a generated shim
//! `extern "C" int emu__NAME(void** args, grid xyz, block xyz, shared bytes)` that unpacks the
//! arguments (CUDA's `kernelParams` convention) and calls `emu_launch`, plus
//! `emu_sig__NAME` giving the parameter sizes so a launcher passing the wrong arguments is an
//! error, not a crash. The file + shims compile (`g++ -O2 -std=c++20 -include cuda_emu.h -fPIC
//! -shared`) into a shared library cached under the cache directory by a hash of everything that
//! goes into it, and is loaded with `libloading`.
//!
//! What the emulation shows: indexing, masks, tiling edge cases, reductions, barriers, shuffles,
//! the mma.sync and ldmatrix fragment layouts as we read the PTX ISA, misaligned vector accesses,
//! barriers that part of a block never reaches (a deadlock is an error, not a hang), and a tile
//! read before its cp.async copies were waited for (a thread's copies land at its wait). What it cannot:
//! timing, races between blocks (blocks run one after another), the real driver and compiler.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use super::error::{CudaError, Result};
use super::kernels::KernelFile;

/// The runtime header every emulated kernel file is compiled with.
pub const HEADER: &str = include_str!("../../kernels/emu/cuda_emu.h");

/// `int emu__NAME(void** args, gx, gy, gz, bx, by, bz, shared_bytes)`: 0 on success.
type ShimFn = unsafe extern "C" fn(*mut *mut c_void, u32, u32, u32, u32, u32, u32, u32) -> i32;
/// `const unsigned* emu_sig__NAME(unsigned* n)`: parameter sizes in bytes.
type SigFn = unsafe extern "C" fn(*mut u32) -> *const u32;
/// `const char* emu_last_error()`: what the last failed launch of the library threw.
type ErrFn = unsafe extern "C" fn() -> *const std::ffi::c_char;

/// Emulated launches share process-wide state in the runtime (gridDim, `__shared__` statics):
/// one at a time.
static LAUNCH_LOCK: Mutex<()> = Mutex::new(());

/// One build at a time in this process (devices opened by parallel tests share the cache).
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Unique temporary names (pid + counter) so concurrent builds never share a file.
fn tmp_name(path: &Path) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Keep the extension last: g++ picks the language from it.
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path.extension().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{stem}.tmp{}-{n}.{ext}", std::process::id()))
}

/// The emulated device: where compiled kernel libraries are cached, and the loaded ones.
pub struct EmuDevice {
    pub cache_dir: PathBuf,
    /// Launches, copies and GEMMs are checked (arguments, grid, operand reach) but not run, so
    /// a model of any size "trains" in host time while the allocator counts what it would hold
    /// ([`super::Gpu::emulated_dry`]).
    pub dry: bool,
    cxx: String,
    libs: Mutex<HashMap<&'static str, Arc<libloading::Library>>>,
}

/// One emulated kernel: its shim and parameter sizes.
pub struct EmuKernel {
    _lib: Arc<libloading::Library>,
    shim: ShimFn,
    last_error: ErrFn,
    pub name: String,
    pub param_sizes: Vec<u32>,
    dry: bool,
}

/// The C++ compiler the emulated device uses (`RECIPE_EMU_CXX`, default g++), if it runs.
pub fn compiler() -> std::result::Result<String, String> {
    let cxx = std::env::var("RECIPE_EMU_CXX").unwrap_or_else(|_| "g++".into());
    match Command::new(&cxx).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(cxx),
        Ok(o) => Err(format!(
            "{cxx} --version failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{cxx} not runnable: {e}")),
    }
}

/// Default cache: `RECIPE_EMU_CACHE`, else a folder under the temp dir.
pub fn default_cache_dir() -> PathBuf {
    match std::env::var_os("RECIPE_EMU_CACHE") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join("recipe-emu-kernels"),
    }
}

/// 64-bit FNV-1a: a stable cache key (std's hasher may change between Rust versions).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn emu_err(file: &str, msg: impl Into<String>) -> CudaError {
    CudaError::Emu {
        file: file.into(),
        msg: msg.into(),
    }
}

impl EmuDevice {
    /// An emulated device caching kernel libraries in `cache_dir`. Fails (one clear error) when
    /// no C++20 compiler runs.
    pub fn new(cache_dir: PathBuf) -> Result<Self> {
        let cxx = compiler().map_err(CudaError::NoEmuCompiler)?;
        std::fs::create_dir_all(&cache_dir).map_err(|source| CudaError::Cache {
            path: cache_dir.clone(),
            source,
        })?;
        Ok(EmuDevice {
            cache_dir,
            dry: false,
            cxx,
            libs: Mutex::new(HashMap::new()),
        })
    }

    /// Function `name` of `file` (compiling and loading the file on first use).
    pub fn function(&self, file: &KernelFile, name: &str) -> Result<EmuKernel> {
        let lib = {
            let mut map = self.libs.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(file.name) {
                Some(l) => l.clone(),
                None => {
                    let path = self.build(file)?;
                    // SAFETY: a library we just compiled from our own source; its initializers
                    // only set up the runtime's globals.
                    let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| {
                        emu_err(file.name, format!("loading {}: {e}", path.display()))
                    })?;
                    let lib = Arc::new(lib);
                    map.insert(file.name, lib.clone());
                    lib
                }
            }
        };
        let missing = || CudaError::MissingFunction {
            file: file.name.into(),
            name: name.into(),
        };
        // SAFETY: the symbols are generated by `shims` with exactly these signatures.
        let (shim, sig, last_error) = unsafe {
            let shim: ShimFn = *lib
                .get::<ShimFn>(format!("emu__{name}").as_bytes())
                .map_err(|_| missing())?;
            let sig: SigFn = *lib
                .get::<SigFn>(format!("emu_sig__{name}").as_bytes())
                .map_err(|_| missing())?;
            let last_error: ErrFn = *lib.get::<ErrFn>(b"emu_last_error").map_err(|_| missing())?;
            (shim, sig, last_error)
        };
        let mut n = 0u32;
        // SAFETY: emu_sig returns a static array of n entries.
        let param_sizes = unsafe {
            let p = sig(&mut n);
            std::slice::from_raw_parts(p, n as usize).to_vec()
        };
        Ok(EmuKernel {
            _lib: lib,
            shim,
            last_error,
            name: name.into(),
            param_sizes,
            dry: self.dry,
        })
    }

    /// Compiles `file` (with shims) into the cache unless it is there; returns the library path.
    fn build(&self, file: &KernelFile) -> Result<PathBuf> {
        let source = format!(
            "namespace recipe_emu_kernels_begin {{}}\n{}",
            file.full_source()
        );
        let key = fnv1a(&[HEADER, &source, &self.cxx]);
        let stem = format!("{}-{key:016x}", file.name);
        let so = self.cache_dir.join(format!("{stem}.so"));
        let _one = BUILD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if so.exists() {
            return Ok(so);
        }
        let io = |path: &Path, source: std::io::Error| CudaError::Cache {
            path: path.to_path_buf(),
            source,
        };
        let header = self
            .cache_dir
            .join(format!("cuda_emu-{:016x}.h", fnv1a(&[HEADER])));
        if !header.exists() {
            write_atomic(&header, HEADER.as_bytes()).map_err(|e| io(&header, e))?;
        }
        // Per-build file names: another process may be building the same file right now.
        let pre_src = tmp_name(&self.cache_dir.join(format!("{stem}.pre.cpp")));
        std::fs::write(&pre_src, source.as_bytes()).map_err(|e| io(&pre_src, e))?;
        let pre = self.run(
            file.name,
            Command::new(&self.cxx)
                .args(["-std=c++20", "-DRECIPE_EMU", "-E", "-P", "-include"])
                .arg(&header)
                .arg(&pre_src),
        )?;
        let shims = shims(file.name, &pre)?;
        let cpp = tmp_name(&self.cache_dir.join(format!("{stem}.cpp")));
        std::fs::write(&cpp, format!("{source}\n{shims}").as_bytes()).map_err(|e| io(&cpp, e))?;
        let tmp = tmp_name(&so);
        self.run(
            file.name,
            Command::new(&self.cxx)
                .args([
                    "-O2",
                    "-std=c++20",
                    "-DRECIPE_EMU",
                    "-fPIC",
                    "-shared",
                    "-pthread",
                ])
                .arg("-include")
                .arg(&header)
                .arg(&cpp)
                .arg("-o")
                .arg(&tmp),
        )?;
        std::fs::rename(&tmp, &so).map_err(|e| io(&so, e))?;
        let _ = std::fs::remove_file(&cpp);
        let _ = std::fs::remove_file(&pre_src);
        Ok(so)
    }

    fn run(&self, file: &str, cmd: &mut Command) -> Result<String> {
        let out = cmd
            .output()
            .map_err(|e| emu_err(file, format!("{} not runnable: {e}", self.cxx)))?;
        if !out.status.success() {
            let log = String::from_utf8_lossy(&out.stderr);
            let log: String = log.lines().take(40).collect::<Vec<_>>().join("\n");
            return Err(emu_err(file, format!("{} failed:\n{log}", self.cxx)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_name(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The generated C shims for every `extern "C" void NAME(PARAMS)` in the preprocessed source.
fn shims(file: &str, pre: &str) -> Result<String> {
    let body = pre
        .split_once("namespace recipe_emu_kernels_begin {}")
        .map(|(_, b)| b)
        .unwrap_or(pre);
    let re =
        regex::Regex::new(r#"extern\s+"C"\s+void\s+(\w+)\s*\(([^)]*)\)"#).expect("static regex");
    let mut out = String::from(
        "#include <cstdio>\n#include <cstring>\n#include <exception>\n\
         static char emu_error_text[512];\n\
         extern \"C\" const char* emu_last_error() { return emu_error_text; }\n",
    );
    for cap in re.captures_iter(body) {
        let name = &cap[1];
        let params: Vec<&str> = cap[2]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let mut unpack = String::new();
        let mut args = Vec::new();
        let mut sizes = Vec::new();
        for (i, p) in params.iter().enumerate() {
            let split = p
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                .ok_or_else(|| emu_err(file, format!("{name}: cannot parse parameter '{p}'")))?;
            let ty = p[..=split].trim();
            if ty.contains('[') || ty.contains('(') {
                return Err(emu_err(
                    file,
                    format!("{name}: unsupported parameter '{p}'"),
                ));
            }
            unpack.push_str(&format!(
                "    {ty} a{i}; std::memcpy(&a{i}, args[{i}], sizeof(a{i}));\n"
            ));
            args.push(format!("a{i}"));
            sizes.push(format!("sizeof({ty})"));
        }
        sizes.push("0".into());
        out.push_str(&format!(
            "extern \"C\" const unsigned* emu_sig__{name}(unsigned* n) {{\n    static const unsigned s[] = {{{}}};\n    *n = {};\n    return s;\n}}\n",
            sizes.join(", "),
            params.len()
        ));
        out.push_str(&format!(
            "extern \"C\" int emu__{name}(void** args, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared) {{\n{unpack}    try {{\n        emu_launch({{gx, gy, gz}}, {{bx, by, bz}}, shared, [=] {{ {name}({}); }});\n    }} catch (const std::exception& e) {{\n        std::snprintf(emu_error_text, sizeof emu_error_text, \"%s\", e.what());\n        return 1;\n    }}\n    return 0;\n}}\n",
            args.join(", ")
        ));
    }
    Ok(out)
}

impl EmuKernel {
    /// Runs the kernel over `grid` × `block` with `args` (each an 8-byte slot holding the value
    /// in its low bytes, and the value's size).
    ///
    /// # Safety
    /// The pointer arguments must address emulated allocations large enough for what the kernel
    /// touches (the launchers check this).
    pub unsafe fn launch(
        &self,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared: u32,
        args: &mut [(u64, usize)],
    ) -> Result<()> {
        let err = |msg: String| CudaError::Shape {
            op: "emulated launch",
            msg: format!("{}: {msg}", self.name),
        };
        if args.len() != self.param_sizes.len() {
            return Err(err(format!(
                "{} arguments passed, the kernel takes {}",
                args.len(),
                self.param_sizes.len()
            )));
        }
        for (i, (&(_, got), &want)) in args.iter().zip(&self.param_sizes).enumerate() {
            if got != want as usize {
                return Err(err(format!(
                    "argument {i} is {got} bytes, the kernel's parameter is {want}"
                )));
            }
        }
        let threads = block.0 as u64 * block.1 as u64 * block.2 as u64;
        if threads == 0 || threads > 1024 || grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Err(err(format!(
                "invalid launch grid {grid:?} block {block:?} (1..=1024 threads per block)"
            )));
        }
        if shared != 0 {
            return Err(err("dynamic shared memory is not emulated".into()));
        }
        if self.dry {
            return Ok(());
        }
        let mut ptrs: Vec<*mut c_void> = args
            .iter_mut()
            .map(|(slot, _)| slot as *mut u64 as *mut c_void)
            .collect();
        let _guard = LAUNCH_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let rc = (self.shim)(
            ptrs.as_mut_ptr(),
            grid.0,
            grid.1,
            grid.2,
            block.0,
            block.1,
            block.2,
            shared,
        );
        if rc != 0 {
            // SAFETY: emu_last_error returns the library's NUL-terminated static buffer, written
            // by the failed launch (launches are serialized by LAUNCH_LOCK, still held).
            let what = unsafe { std::ffi::CStr::from_ptr((self.last_error)()) };
            return Err(err(format!(
                "the emulated kernel threw: {}",
                what.to_string_lossy()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kernels exercising the runtime itself (kernels/emu/cuda_emu.h), not a real kernel file.
    const RUNTIME_CHECKS: KernelFile = KernelFile {
        name: "emu_runtime_checks",
        source: r#"
// Threads >= live return at once; the rest read a neighbour's value across a barrier (stale
// without it), and warp 0 sums those with shuffles.
extern "C" __global__ void barriers_and_exits(float* out, i32 live) {
    __shared__ float s[64];
    int t = threadIdx.x;
    s[t] = (float)(t + 100 * (int)blockIdx.x);
    if (t >= live) return;
    __syncthreads();
    float v = s[(t + 1) % live];
    __syncthreads();
    out[blockIdx.x * 64 + t] = t < 32 ? warp_sum(v) : v;
}
// Half of warp 0 waits at a shuffle, everyone else at __syncthreads: neither can release.
extern "C" __global__ void deadlock(float* out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.f, 0);
    __syncthreads();
}
// One warp: a 16 x 16 bf16 tile holding 0..255 read by ldmatrix x4 as mma A fragments, plain
// and transposed; lane l writes its 4 + 4 registers to out[8l..].
extern "C" __global__ void ldmatrix_layout(u32* out) {
    __shared__ __align__(16) bf16 tile[16][16];
    for (int e = threadIdx.x; e < 256; e += blockDim.x) tile[e / 16][e % 16] = __float2bfloat16((float)e);
    __syncthreads();
    int lane = threadIdx.x & 31, i = lane >> 3, r = lane & 7;
    u32 a[4], b[4];
    ldsm_x4<false>(a, &tile[r + 8 * (i & 1)][8 * (i >> 1)]);
    ldsm_x4<true>(b, &tile[r + 8 * (i & 1)][8 * (i >> 1)]);
    for (int k = 0; k < 4; k++) {
        out[8 * lane + k] = a[k];
        out[8 * lane + 4 + k] = b[k];
    }
}
// One warp: thread t copies src[4t..4t+4] into s and zero-fills z (both -1 before) by cp.async,
// then reads its own chunk before the wait (out[t]) and after it (out[32 + t]), a neighbour's
// after the barrier (out[64 + t]) and its zero-filled chunk (out[96 + t]).
extern "C" __global__ void cp_async_lands_at_the_wait(float* out, const float* src) {
    __shared__ __align__(16) float s[128];
    __shared__ __align__(16) float z[128];
    int t = threadIdx.x;
    for (int k = 0; k < 4; k++) s[4 * t + k] = z[4 * t + k] = -1.f;
    __syncthreads();
    cp_async16(&s[4 * t], &src[4 * t], true);
    cp_async16(&z[4 * t], src, false);
    cp_async_commit();
    out[t] = s[4 * t];
    cp_async_wait<0>();
    out[32 + t] = s[4 * t];
    __syncthreads();
    out[64 + t] = s[4 * ((t + 1) % 32) + 1];
    out[96 + t] = z[4 * t + 3];
}
"#,
        functions: &[
            "barriers_and_exits",
            "deadlock",
            "ldmatrix_layout",
            "cp_async_lands_at_the_wait",
        ],
    };

    fn device() -> Option<EmuDevice> {
        match EmuDevice::new(default_cache_dir()) {
            Ok(d) => Some(d),
            Err(e) if std::env::var("RECIPE_REQUIRE_EMU").as_deref() == Ok("1") => {
                panic!("RECIPE_REQUIRE_EMU=1 but the emulated device is unavailable: {e}")
            }
            Err(e) => {
                eprintln!("SKIP emulated runtime checks: {e}");
                None
            }
        }
    }

    #[test]
    fn barriers_shuffles_and_early_exits_follow_cuda() {
        let Some(dev) = device() else { return };
        let k = dev
            .function(&RUNTIME_CHECKS, "barriers_and_exits")
            .expect("compiles");
        let mut out = vec![-1f32; 3 * 64];
        let mut args = [(out.as_mut_ptr() as u64, 8), (40u64, 4)];
        // SAFETY: the kernel writes out[block * 64 + t] for t < 40, inside the 3 * 64 floats.
        unsafe { k.launch((3, 1, 1), (64, 1, 1), 0, &mut args) }.expect("launch");
        for b in 0..3 {
            let base = 100.0 * b as f32;
            let row = &out[b * 64..(b + 1) * 64];
            // Warp 0: sum over t < 32 of s[(t + 1) % 40] = (1 + ... + 32) + 32 * base.
            assert!(
                row[..32].iter().all(|&x| x == 528.0 + 32.0 * base),
                "{row:?}"
            );
            for t in 32..40 {
                assert_eq!(row[t], ((t + 1) % 40) as f32 + base, "block {b} thread {t}");
            }
            assert!(row[40..].iter().all(|&x| x == -1.0), "{row:?}");
        }
    }

    #[test]
    fn a_barrier_part_of_the_block_never_reaches_is_an_error() {
        let Some(dev) = device() else { return };
        let k = dev.function(&RUNTIME_CHECKS, "deadlock").expect("compiles");
        let mut out = vec![0f32; 64];
        let mut args = [(out.as_mut_ptr() as u64, 8)];
        // SAFETY: the kernel writes out[t] for t < 16.
        let err = unsafe { k.launch((1, 1, 1), (64, 1, 1), 0, &mut args) }
            .expect_err("deadlocks")
            .to_string();
        assert_eq!(
            err,
            "emulated launch: deadlock: the emulated kernel threw: emulated launch: deadlock \
             (threads wait at a barrier that the rest of their block or warp never reaches)"
        );
    }

    /// ldmatrix gives mma's A layout (common.cuh: a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..],
    /// A[g+8][2t+8..]}, lane = 4g + t) when lane 8i + r addresses row r of matrix i = the 8 x 8
    /// block at (8(i & 1), 8(i >> 1)); .trans gives each block's transpose: (rows 2t, 2t + 1 of
    /// column g).
    #[test]
    fn ldmatrix_gives_the_mma_fragment_layout() {
        let Some(dev) = device() else { return };
        let k = dev
            .function(&RUNTIME_CHECKS, "ldmatrix_layout")
            .expect("compiles");
        let mut out = vec![0u32; 32 * 8];
        let mut args = [(out.as_mut_ptr() as u64, 8)];
        // SAFETY: one warp writes out[8 * lane + k] for k < 8, inside the 256 words.
        unsafe { k.launch((1, 1, 1), (32, 1, 1), 0, &mut args) }.expect("launch");
        let at = |r: usize, c: usize| half::bf16::from_f32((16 * r + c) as f32).to_bits() as u32;
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            for i in 0..4 {
                let (r0, c0) = (8 * (i & 1), 8 * (i >> 1));
                let plain = at(r0 + g, c0 + 2 * t) | at(r0 + g, c0 + 2 * t + 1) << 16;
                let trans = at(r0 + 2 * t, c0 + g) | at(r0 + 2 * t + 1, c0 + g) << 16;
                assert_eq!(out[8 * lane + i], plain, "lane {lane} register {i}");
                assert_eq!(
                    out[8 * lane + 4 + i],
                    trans,
                    "lane {lane} .trans register {i}"
                );
            }
        }
    }

    /// A cp.async copy lands at the wait, not before (what lets `cargo test` catch a kernel
    /// that reads a tile it has not waited for), zero-fills when told, and another thread's copy
    /// is there after the barrier.
    #[test]
    fn cp_async_lands_at_the_wait() {
        let Some(dev) = device() else { return };
        let k = dev
            .function(&RUNTIME_CHECKS, "cp_async_lands_at_the_wait")
            .expect("compiles");
        let src: Vec<f32> = (0..128).map(|i| i as f32).collect();
        let mut out = vec![0f32; 128];
        let mut args = [(out.as_mut_ptr() as u64, 8), (src.as_ptr() as u64, 8)];
        // SAFETY: one warp reads src[..128] and writes out[..128].
        unsafe { k.launch((1, 1, 1), (32, 1, 1), 0, &mut args) }.expect("launch");
        for t in 0..32 {
            assert_eq!(out[t], -1.0, "thread {t} before the wait");
            assert_eq!(out[32 + t], (4 * t) as f32, "thread {t} after the wait");
            assert_eq!(
                out[64 + t],
                (4 * ((t + 1) % 32) + 1) as f32,
                "thread {t}'s neighbour"
            );
            assert_eq!(out[96 + t], 0.0, "thread {t} zero-filled");
        }
    }
}
