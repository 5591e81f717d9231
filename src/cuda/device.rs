//! Device selection: `--device auto|cpu|cuda|cuda:N`.
//!
//! `auto` becomes CUDA only when the driver library loads and reports a GPU; `cuda` on a machine
//! without a driver is one clear error (never a panic: cudarc is built with dynamic loading and we
//! probe `cudarc::driver::sys::is_culib_present()` before touching any driver function).

use std::fmt;
use std::str::FromStr;

use super::error::{CudaError, Result};

/// Where tensors live and kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// GPU ordinal.
    Cuda(usize),
}

/// What the user asked for, before probing the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Exact(Device),
}

impl FromStr for DeviceRequest {
    type Err = CudaError;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Exact(Device::Cpu)),
            "cuda" | "gpu" => Ok(DeviceRequest::Exact(Device::Cuda(0))),
            _ => match t.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map(|n| DeviceRequest::Exact(Device::Cuda(n)))
                    .map_err(|_| CudaError::BadDevice(s.to_string())),
                None => Err(CudaError::BadDevice(s.to_string())),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Auto => write!(f, "auto"),
            DeviceRequest::Exact(d) => d.fmt(f),
        }
    }
}

/// Whether the CUDA driver library (libcuda.so) can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its candidate names; no symbol is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The oldest driver API version the build runs on (CUDA 13.0: cudarc's bindings and the
/// NVRTC 13 kernels).
const MIN_DRIVER: i32 = 13000;

/// Why a driver reporting `version` (cuDriverGetVersion: 1000·major + 10·minor) cannot run
/// recipe's kernels, or None.
fn driver_too_old(version: i32) -> Option<String> {
    (version < MIN_DRIVER).then(|| {
        format!(
            "the NVIDIA driver supports CUDA {}.{}, recipe needs CUDA {}.{} or newer: update the driver",
            version / 1000,
            version % 1000 / 10,
            MIN_DRIVER / 1000,
            MIN_DRIVER % 1000 / 10
        )
    })
}

/// Number of CUDA devices, or why there are none usable.
pub fn cuda_device_count() -> std::result::Result<usize, String> {
    if !driver_present() {
        return Err("no CUDA driver found (libcuda.so is not loadable on this machine)".into());
    }
    let mut version = 0i32;
    // SAFETY: cuDriverGetVersion only writes one int; it needs no cuInit.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    if r == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        if let Some(why) = driver_too_old(version) {
            return Err(why);
        }
    }
    match cudarc::driver::CudaContext::device_count() {
        Ok(n) => Ok(n.max(0) as usize),
        Err(e) => Err(format!("the CUDA driver failed to initialize ({e})")),
    }
}

impl DeviceRequest {
    /// Resolves against this machine. Returns the device and one line saying which was picked and
    /// why, for the run log. An explicit `cuda[:N]` that cannot be honoured is an error.
    pub fn resolve(self) -> Result<(Device, String)> {
        match self {
            DeviceRequest::Exact(Device::Cpu) => {
                Ok((Device::Cpu, "device: cpu (requested)".into()))
            }
            DeviceRequest::Exact(Device::Cuda(n)) => {
                let count = cuda_device_count().map_err(|reason| CudaError::Unavailable {
                    requested: self.to_string(),
                    reason,
                })?;
                if n >= count {
                    return Err(CudaError::Unavailable {
                        requested: self.to_string(),
                        reason: format!(
                            "GPU index {n} does not exist ({count} CUDA device(s) found)"
                        ),
                    });
                }
                Ok((
                    Device::Cuda(n),
                    format!("device: cuda:{n} (requested; {count} CUDA device(s))"),
                ))
            }
            DeviceRequest::Auto => match cuda_device_count() {
                Ok(n) if n > 0 => Ok((
                    Device::Cuda(0),
                    format!("device: cuda:0 (auto; {n} CUDA device(s) found)"),
                )),
                Ok(_) => Ok((
                    Device::Cpu,
                    "device: cpu (auto; the CUDA driver reports no GPU)".into(),
                )),
                Err(reason) => Ok((Device::Cpu, format!("device: cpu (auto; {reason})"))),
            },
        }
    }
}

impl Device {
    /// Parses and resolves in one go (`"auto"`, `"cpu"`, `"cuda"`, `"cuda:1"`).
    pub fn resolve(spec: &str) -> Result<(Device, String)> {
        spec.parse::<DeviceRequest>()?.resolve()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver older than CUDA 13.0 is one clear reason (the device then counts as unusable:
    /// `auto` falls back to the CPU, `cuda` is an error naming it).
    #[test]
    fn an_old_driver_is_named() {
        assert_eq!(
            driver_too_old(12040).as_deref(),
            Some("the NVIDIA driver supports CUDA 12.4, recipe needs CUDA 13.0 or newer: update the driver")
        );
        assert_eq!(driver_too_old(13000), None);
        assert_eq!(driver_too_old(13020), None);
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            "auto".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Auto
        );
        assert_eq!(
            "CPU".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Exact(Device::Cpu)
        );
        assert_eq!(
            "cuda".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Exact(Device::Cuda(0))
        );
        assert_eq!(
            "cuda:3".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Exact(Device::Cuda(3))
        );
    }

    #[test]
    fn rejects_bad_text_with_one_clear_message() {
        let e = "cuda:x".parse::<DeviceRequest>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid device 'cuda:x': expected auto, cpu, cuda or cuda:N (N = GPU index, e.g. cuda:0)"
        );
        assert!("tpu".parse::<DeviceRequest>().is_err());
    }

    #[test]
    fn cpu_always_resolves() {
        assert_eq!(Device::resolve("cpu").unwrap().0, Device::Cpu);
    }

    /// On a machine without a driver (CI, this build machine): `auto` falls back to the CPU and
    /// `cuda` is a single error naming the missing driver. With a GPU both pick CUDA.
    #[test]
    fn cuda_without_driver_is_one_clear_error() {
        let (auto, line) = Device::resolve("auto").unwrap();
        if driver_present() {
            return;
        }
        assert_eq!(auto, Device::Cpu);
        assert!(line.starts_with("device: cpu (auto;"), "{line}");
        let e = Device::resolve("cuda").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--device cuda:0: no CUDA driver found (libcuda.so is not loadable on this machine)"
        );
    }
}
