//! One GPU: its context, default stream, compute capability, lazily loaded kernel modules and
//! a lazily created cuBLAS handle.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};

use super::device::cuda_device_count;
use super::error::{CudaError, Result};
use super::kernels::KernelFile;
use super::nvrtc::{self, Target};

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// Compute capability (major, minor).
    pub cc: (u32, u32),
    pub name: String,
    /// PTX/CUBIN cache directory (None: compile every time).
    pub cache_dir: Option<PathBuf>,
    /// What NVRTC produces for this device (CUBIN by default, see nvrtc.rs).
    pub target: Target,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    blas: Mutex<Option<Arc<CudaBlas>>>,
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
            ctx,
            stream,
            cc: (major as u32, minor as u32),
            name,
            cache_dir: Some(nvrtc::default_cache_dir()),
            target,
            modules: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
        })
    }

    /// Loads (compiling on first use, through the on-disk cache) `file` and returns function `name`.
    pub fn function(&self, file: &KernelFile, name: &str) -> Result<CudaFunction> {
        let module = {
            let mut map = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(file.name) {
                Some(m) => m.clone(),
                None => {
                    let image =
                        nvrtc::compile(file, self.cc, self.target, self.cache_dir.as_deref())?;
                    let m = self.ctx.load_module(image.into_cudarc())?;
                    map.insert(file.name, m.clone());
                    m
                }
            }
        };
        module
            .load_function(name)
            .map_err(|_| CudaError::MissingFunction {
                file: file.name.into(),
                name: name.into(),
            })
    }

    /// The cuBLAS handle bound to this GPU's stream.
    pub fn blas(&self) -> Result<Arc<CudaBlas>> {
        let mut b = self.blas.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = b.as_ref() {
            return Ok(h.clone());
        }
        // SAFETY: only tries to dlopen libcublas (cudarc would panic on first use otherwise).
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::NoCublas);
        }
        let h = Arc::new(CudaBlas::new(self.stream.clone())?);
        *b = Some(h.clone());
        Ok(h)
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> Result<u32> {
        use cudarc::driver::sys::CUdevice_attribute_enum as A;
        Ok(self
            .ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32)
    }
}
