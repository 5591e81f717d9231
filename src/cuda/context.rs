//! One device: a real GPU (context, default stream, compute capability, lazily loaded kernel
//! modules, a lazily created cuBLAS handle) or the emulated device ([`super::emu`]). Both give
//! the launchers the same interface: allocation, copies (host<->device bytes counted in
//! [`Traffic`]), kernel lookup and launch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaModule, CudaStream, DevicePtrMut, DeviceRepr, PinnedHostSlice,
    ValidAsZeroBits,
};

use super::device::cuda_device_count;
use super::emu::EmuDevice;
use super::error::{shape_err, CudaError, Result};
use super::kernels::KernelFile;
use super::launch::{Kernel, Launch, LaunchRepr};
use super::mem::{AsDevView, AsDevViewMut, DevBuf, DevViewMut, ViewMutRepr, ViewRepr};
use super::nvrtc::{self, Target};
use super::pool::{Pool, PoolStats};

pub struct Gpu {
    /// Created at the first small host→device copy, grown as needed. First, so it is dropped
    /// (its last copy waited for) while the device's stream still exists.
    stage: Mutex<Option<Staging>>,
    /// Compute capability (major, minor); (8, 0) for the emulated device (it runs the sm_80 path).
    pub cc: (u32, u32),
    pub name: String,
    pub(crate) dev: Dev,
    /// The caching allocator every buffer of this device comes from.
    pool: Arc<Pool>,
    htod: AtomicU64,
    /// Of `htod`, the bytes that went through `stage`.
    staged: AtomicU64,
    dtoh: AtomicU64,
    dtoh_copies: AtomicU64,
}

pub(crate) enum Dev {
    Real(RealGpu),
    Emu(EmuDevice),
}

/// The real GPU's cudarc handles.
pub struct RealGpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// PTX/CUBIN cache directory (None: compile every time).
    pub cache_dir: Option<PathBuf>,
    /// What NVRTC produces for this device (CUBIN by default, see nvrtc.rs).
    pub target: Target,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    blas: Mutex<Option<Arc<CudaBlas>>>,
}

/// Host→device copies up to this size go through the pinned staging buffer (truly asynchronous,
/// full PCIe speed); larger ones (weights at load) are copied from pageable memory.
pub const STAGE_MAX_BYTES: usize = 64 << 20;

/// The staging buffer host→device copies of at most [`STAGE_MAX_BYTES`] go through: page-locked
/// host memory and the event recorded after the last copy out of it on a GPU; a plain host
/// buffer on the emulated device (whose copies are synchronous), so the same path runs in tests.
enum Staging {
    Real {
        buf: PinnedHostSlice<u8>,
        done: CudaEvent,
    },
    Emu(Vec<u8>),
}

impl Staging {
    fn len(&self) -> usize {
        match self {
            Staging::Real { buf, .. } => buf.len(),
            Staging::Emu(v) => v.len(),
        }
    }
}

impl Drop for Staging {
    /// The last copy out of a page-locked buffer finishes before the buffer is freed.
    fn drop(&mut self) {
        if let Staging::Real { done, .. } = self {
            let _ = done.synchronize();
        }
    }
}

/// Bytes copied between host and device since the device was opened (or [`Gpu::reset_traffic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Traffic {
    pub htod_bytes: u64,
    /// Of `htod_bytes`, what went through the staging buffer (page-locked on a GPU): every copy
    /// of at most [`STAGE_MAX_BYTES`], such as the batch.
    pub staged_htod_bytes: u64,
    pub dtoh_bytes: u64,
    /// Device→host copies: each one waits for the stream (a host synchronization).
    pub dtoh_copies: u64,
}

impl Gpu {
    /// Opens GPU `ordinal`. Without a driver or with too few GPUs this is one clear
    /// [`CudaError::Unavailable`], never a panic.
    pub fn new(ordinal: usize) -> Result<Self> {
        let requested = format!("cuda:{ordinal}");
        let count = cuda_device_count().map_err(|reason| CudaError::Unavailable {
            requested: requested.clone(),
            reason,
        })?;
        if ordinal >= count {
            return Err(CudaError::Unavailable {
                requested,
                reason: format!(
                    "GPU index {ordinal} does not exist ({count} CUDA device(s) found)"
                ),
            });
        }
        if !nvrtc::nvrtc_available() {
            return Err(CudaError::NoNvrtc);
        }
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        let name = ctx.name()?;
        let stream = ctx.default_stream();
        let target = match std::env::var("RECIPE_CUDA_TARGET").as_deref() {
            Ok("ptx") => Target::Ptx,
            _ => Target::Cubin,
        };
        Ok(Gpu {
            cc: (major as u32, minor as u32),
            name,
            pool: Pool::new(Some(stream.clone()), None),
            dev: Dev::Real(RealGpu {
                ctx,
                stream,
                cache_dir: Some(nvrtc::default_cache_dir()),
                target,
                modules: Mutex::new(HashMap::new()),
                blas: Mutex::new(None),
            }),
            htod: AtomicU64::new(0),
            staged: AtomicU64::new(0),
            dtoh: AtomicU64::new(0),
            dtoh_copies: AtomicU64::new(0),
            stage: Mutex::new(None),
        })
    }

    /// The emulated device, caching compiled kernels in `cache_dir` (None:
    /// [`super::emu::default_cache_dir`]). Needs a C++20 g++ (one clear error otherwise).
    pub fn emulated(cache_dir: Option<PathBuf>) -> Result<Self> {
        Self::emulated_with_memory(cache_dir, None)
    }

    /// [`Gpu::emulated`] with `memory` bytes of device memory (None: as much as the host has);
    /// allocations past it fail as a full GPU's do.
    pub fn emulated_with_memory(cache_dir: Option<PathBuf>, memory: Option<usize>) -> Result<Self> {
        let dev = EmuDevice::new(cache_dir.unwrap_or_else(super::emu::default_cache_dir))?;
        Ok(Gpu {
            cc: (8, 0),
            name: "emulated CUDA device (kernels compiled for the host)".into(),
            dev: Dev::Emu(dev),
            pool: Pool::new(None, memory),
            htod: AtomicU64::new(0),
            staged: AtomicU64::new(0),
            dtoh: AtomicU64::new(0),
            dtoh_copies: AtomicU64::new(0),
            stage: Mutex::new(None),
        })
    }

    /// The emulated device in dry mode (`EmuDevice::dry`): nothing is computed or copied, every
    /// launch and GEMM is still checked, and the allocator runs as on a GPU, so
    /// [`Gpu::pool_stats`] says what a model of any size holds on the device (its memory is
    /// reserved on the host but never touched). `memory`: the device's capacity, as in
    /// [`Gpu::emulated_with_memory`].
    pub fn emulated_dry(cache_dir: Option<PathBuf>, memory: Option<usize>) -> Result<Self> {
        let mut g = Self::emulated_with_memory(cache_dir, memory)?;
        if let Dev::Emu(e) = &mut g.dev {
            e.dry = true;
        }
        g.name = "emulated CUDA device, dry (nothing computed)".into();
        Ok(g)
    }

    /// Whether this is the dry emulated device.
    pub fn is_dry(&self) -> bool {
        matches!(&self.dev, Dev::Emu(e) if e.dry)
    }

    pub fn is_emulated(&self) -> bool {
        matches!(self.dev, Dev::Emu(_))
    }

    /// The cudarc handles of a real GPU; an error on the emulated device (timing, events).
    pub fn real(&self) -> Result<&RealGpu> {
        match &self.dev {
            Dev::Real(r) => Ok(r),
            Dev::Emu(_) => Err(CudaError::NeedsRealGpu),
        }
    }

    /// Loads (compiling on first use, through the on-disk cache) `file` and returns function `name`.
    pub fn function(&self, file: &KernelFile, name: &str) -> Result<Kernel> {
        let r = match &self.dev {
            Dev::Real(r) => r,
            Dev::Emu(e) => return Ok(Kernel::Emu(e.function(file, name)?)),
        };
        let module = {
            let mut map = r.modules.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(file.name) {
                Some(m) => m.clone(),
                None => {
                    let image = nvrtc::compile(file, self.cc, r.target, r.cache_dir.as_deref())?;
                    let m = r.ctx.load_module(image.into_cudarc())?;
                    map.insert(file.name, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(name)
            .map_err(|_| CudaError::MissingFunction {
                file: file.name.into(),
                name: name.into(),
            })?;
        Ok(Kernel::Real(f))
    }

    /// Starts the argument list of a launch of `f` (on this device's stream).
    pub fn launch_builder<'a>(&'a self, f: &'a Kernel) -> Launch<'a> {
        let repr = match (&self.dev, f) {
            (Dev::Real(r), Kernel::Real(f)) => LaunchRepr::Real(r.stream.launch_builder(f)),
            (Dev::Emu(_), Kernel::Emu(k)) => LaunchRepr::Emu(k, Vec::new()),
            _ => panic!("a kernel of one device launched on the other"),
        };
        Launch { repr }
    }

    /// The cuBLAS handle bound to a real GPU's stream.
    pub fn blas(&self) -> Result<Arc<CudaBlas>> {
        let r = self.real()?;
        let mut b = r.blas.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = b.as_ref() {
            return Ok(h.clone());
        }
        // SAFETY: only tries to dlopen libcublas (cudarc would panic on first use otherwise).
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::NoCublas);
        }
        let h = Arc::new(CudaBlas::new(r.stream.clone())?);
        *b = Some(h.clone());
        Ok(h)
    }

    /// Number of streaming multiprocessors (1 for the emulated device).
    pub fn sm_count(&self) -> Result<u32> {
        use cudarc::driver::sys::CUdevice_attribute_enum as A;
        match &self.dev {
            Dev::Real(r) => Ok(r
                .ctx
                .attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?
                as u32),
            Dev::Emu(_) => Ok(1),
        }
    }

    /// Makes this device current on the calling thread (a real GPU's context; no-op emulated).
    pub fn bind_to_thread(&self) -> Result<()> {
        if let Dev::Real(r) = &self.dev {
            r.ctx.bind_to_thread()?;
        }
        Ok(())
    }

    /// Waits for all queued work (a no-op on the emulated device, whose launches are synchronous).
    pub fn synchronize(&self) -> Result<()> {
        if let Dev::Real(r) = &self.dev {
            r.stream.synchronize()?;
        }
        Ok(())
    }

    /// Host<->device bytes copied so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            htod_bytes: self.htod.load(Ordering::Relaxed),
            staged_htod_bytes: self.staged.load(Ordering::Relaxed),
            dtoh_bytes: self.dtoh.load(Ordering::Relaxed),
            dtoh_copies: self.dtoh_copies.load(Ordering::Relaxed),
        }
    }

    pub fn reset_traffic(&self) {
        self.htod.store(0, Ordering::Relaxed);
        self.staged.store(0, Ordering::Relaxed);
        self.dtoh.store(0, Ordering::Relaxed);
        self.dtoh_copies.store(0, Ordering::Relaxed);
    }

    /// The caching allocator's counters (fresh allocations, bytes in use and cached).
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Returns the allocator's cached blocks to the driver; the bytes released.
    pub fn release_cached(&self) -> usize {
        self.pool.release()
    }

    fn count_htod<T>(&self, n: usize) {
        self.htod
            .fetch_add((n * std::mem::size_of::<T>()) as u64, Ordering::Relaxed);
    }

    fn count_dtoh<T>(&self, n: usize) {
        self.dtoh
            .fetch_add((n * std::mem::size_of::<T>()) as u64, Ordering::Relaxed);
        self.dtoh_copies.fetch_add(1, Ordering::Relaxed);
    }

    /// An uninitialized buffer of `n` elements from the pool.
    pub(crate) fn alloc<T>(&self, n: usize) -> Result<DevBuf<T>> {
        let (block, size) = self.pool.take(n * std::mem::size_of::<T>())?;
        let stream = match &self.dev {
            Dev::Real(r) => Some(&r.stream),
            Dev::Emu(_) => None,
        };
        Ok(DevBuf::from_block(&self.pool, block, size, n, stream))
    }

    /// A zeroed buffer of `n` elements.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<DevBuf<T>> {
        let mut b = self.alloc(n)?;
        self.memset_zeros(&mut b)?;
        Ok(b)
    }

    /// `src` into `dst` through the staging buffer: waits for the previous staged copy to have
    /// read it, fills it, queues the copy and (GPU) records its event. False when the GPU had no
    /// page-locked memory to give (the caller copies from pageable memory instead).
    fn copy_staged<T: DeviceRepr>(&self, src: &[T], dst: &mut DevViewMut<T>) -> Result<bool> {
        let bytes = std::mem::size_of_val(src);
        // SAFETY: DeviceRepr types are plain data; `bytes` is exactly src's size.
        let raw = unsafe { std::slice::from_raw_parts(src.as_ptr() as *const u8, bytes) };
        let mut slot = self.stage.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|s| s.len() < bytes) {
            drop(slot.take());
            let cap = bytes.next_power_of_two().clamp(64 << 10, STAGE_MAX_BYTES);
            *slot = Some(match &self.dev {
                // SAFETY: the buffer is written before any copy reads it (below).
                Dev::Real(r) => match unsafe { r.ctx.alloc_pinned::<u8>(cap) } {
                    Ok(buf) => Staging::Real {
                        buf,
                        done: r.ctx.new_event(None)?,
                    },
                    Err(_) => return Ok(false),
                },
                Dev::Emu(_) => Staging::Emu(vec![0; cap]),
            });
        }
        match (
            slot.as_mut().expect("staging just ensured"),
            &self.dev,
            &mut dst.0,
        ) {
            (Staging::Real { buf, done }, Dev::Real(r), ViewMutRepr::Real(v)) => {
                r.ctx.bind_to_thread()?;
                done.synchronize()?;
                let host = buf.as_mut_slice()?;
                host[..bytes].copy_from_slice(raw);
                let (ptr, _sync) = v.device_ptr_mut(&r.stream);
                // SAFETY: dst holds at least src.len() elements (the caller checked); the staged
                // bytes stay untouched until `done`, recorded right after on the same stream,
                // has fired.
                unsafe {
                    cudarc::driver::result::memcpy_htod_async(
                        ptr,
                        &host[..bytes],
                        r.stream.cu_stream(),
                    )
                }?;
                done.record(&r.stream)?;
            }
            (Staging::Emu(_), Dev::Emu(e), _) if e.dry => {}
            (Staging::Emu(host), Dev::Emu(_), ViewMutRepr::Emu { ptr, .. }) => {
                host[..bytes].copy_from_slice(raw);
                // SAFETY: the view holds at least src.len() elements (the caller checked).
                unsafe { std::ptr::copy_nonoverlapping(host.as_ptr(), *ptr as *mut u8, bytes) }
            }
            _ => panic!("a buffer of one device copied on the other"),
        }
        Ok(true)
    }

    /// A new device buffer holding `src` (counted as host→device traffic).
    pub fn clone_htod<T: DeviceRepr + ValidAsZeroBits>(&self, src: &[T]) -> Result<DevBuf<T>> {
        let mut b = self.alloc(src.len())?;
        self.memcpy_htod(src, &mut b)?;
        Ok(b)
    }

    /// Copies `src` into the start of `dst` (host→device traffic).
    pub fn memcpy_htod<T: DeviceRepr>(
        &self,
        src: &[T],
        dst: &mut impl AsDevViewMut<T>,
    ) -> Result<()> {
        let mut d = dst.dev_view_mut();
        if d.len() < src.len() {
            return Err(shape_err(
                "memcpy_htod",
                format!("{} elements into a buffer of {}", src.len(), d.len()),
            ));
        }
        let bytes = std::mem::size_of_val(src);
        if bytes > 0 && bytes <= STAGE_MAX_BYTES && self.copy_staged(src, &mut d)? {
            self.count_htod::<T>(src.len());
            self.staged.fetch_add(bytes as u64, Ordering::Relaxed);
            return Ok(());
        }
        match (&self.dev, &mut d.0) {
            (Dev::Real(r), ViewMutRepr::Real(v)) => r.stream.memcpy_htod(src, v)?,
            // SAFETY: the view holds at least src.len() elements (checked).
            (Dev::Emu(e), _) if e.dry => {}
            (Dev::Emu(_), ViewMutRepr::Emu { ptr, .. }) => unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), *ptr, src.len())
            },
            _ => panic!("a buffer of one device copied on the other"),
        }
        self.count_htod::<T>(src.len());
        Ok(())
    }

    /// The whole of `src` back on the host (device→host traffic; waits for the stream).
    pub fn clone_dtoh<T: DeviceRepr + Default + Clone>(
        &self,
        src: &impl AsDevView<T>,
    ) -> Result<Vec<T>> {
        let mut out = vec![T::default(); src.dev_view().len()];
        self.memcpy_dtoh(src, &mut out)?;
        Ok(out)
    }

    /// Copies `src` into the start of `dst` (device→host traffic; waits for the stream).
    pub fn memcpy_dtoh<T: DeviceRepr>(&self, src: &impl AsDevView<T>, dst: &mut [T]) -> Result<()> {
        let s = src.dev_view();
        if dst.len() < s.len() {
            return Err(shape_err(
                "memcpy_dtoh",
                format!("{} elements into a host slice of {}", s.len(), dst.len()),
            ));
        }
        let n = s.len();
        match (&self.dev, &s.0) {
            (Dev::Real(r), ViewRepr::Real(v)) => {
                r.stream.memcpy_dtoh(v, &mut dst[..n])?;
                r.stream.synchronize()?;
            }
            // SAFETY: the view holds n elements and dst at least n (checked).
            (Dev::Emu(e), _) if e.dry => {}
            (Dev::Emu(_), ViewRepr::Emu { ptr, .. }) => unsafe {
                std::ptr::copy_nonoverlapping(*ptr, dst.as_mut_ptr(), n)
            },
            _ => panic!("a buffer of one device copied on the other"),
        }
        self.count_dtoh::<T>(n);
        Ok(())
    }

    /// Device-to-device copy of `src` into the start of `dst` (not host traffic).
    pub fn memcpy_dtod<T: DeviceRepr>(
        &self,
        src: &impl AsDevView<T>,
        dst: &mut impl AsDevViewMut<T>,
    ) -> Result<()> {
        let s = src.dev_view();
        let mut d = dst.dev_view_mut();
        if d.len() < s.len() {
            return Err(shape_err(
                "memcpy_dtod",
                format!("{} elements into a buffer of {}", s.len(), d.len()),
            ));
        }
        match (&self.dev, &s.0, &mut d.0) {
            (Dev::Real(r), ViewRepr::Real(a), ViewMutRepr::Real(b)) => {
                r.stream.memcpy_dtod(a, b)?
            }
            (Dev::Emu(e), _, _) if e.dry => {}
            // SAFETY: both views are inside their allocations; ptr::copy allows overlap.
            (Dev::Emu(_), ViewRepr::Emu { ptr: a, len, .. }, ViewMutRepr::Emu { ptr: b, .. }) => unsafe {
                std::ptr::copy(*a, *b, *len)
            },
            _ => panic!("a buffer of one device copied on the other"),
        }
        Ok(())
    }

    /// Sets every element of `dst` to zero bits.
    pub fn memset_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        dst: &mut impl AsDevViewMut<T>,
    ) -> Result<()> {
        let mut d = dst.dev_view_mut();
        match (&self.dev, &mut d.0) {
            (Dev::Real(r), ViewMutRepr::Real(v)) => r.stream.memset_zeros(v)?,
            (Dev::Emu(e), _) if e.dry => {}
            // SAFETY: the view is inside its allocation; T is valid as zero bits.
            (Dev::Emu(_), ViewMutRepr::Emu { ptr, len, .. }) => unsafe {
                std::ptr::write_bytes(*ptr, 0, *len)
            },
            _ => panic!("a buffer of one device used on the other"),
        }
        Ok(())
    }
}
