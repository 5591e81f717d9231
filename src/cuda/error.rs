//! Errors of the CUDA layer: one enum, so callers can tell "no GPU here" from a kernel bug.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// `--device` text that is not `auto`, `cpu`, `cuda` or `cuda:N`.
    #[error(
        "invalid device '{0}': expected auto, cpu, cuda or cuda:N (N = GPU index, e.g. cuda:0)"
    )]
    BadDevice(String),
    /// CUDA was asked for but this machine cannot provide it.
    #[error("--device {requested}: {reason}")]
    Unavailable { requested: String, reason: String },
    /// libnvrtc could not be loaded.
    #[error("NVRTC (libnvrtc.so.13) is not loadable: put its directory on LD_LIBRARY_PATH (see .ci/nvrtc.sh)")]
    NoNvrtc,
    /// libcublas could not be loaded.
    #[error("cuBLAS (libcublas.so.13) is not loadable: put the CUDA library directory on LD_LIBRARY_PATH")]
    NoCublas,
    /// cuda_bf16.h was not found in any include directory we know of.
    #[error("CUDA headers (cuda_bf16.h) not found: set RECIPE_CUDA_INCLUDE to the CUDA include directory (tried: {tried})")]
    NoHeaders { tried: String },
    /// NVRTC rejected a kernel file.
    #[error("NVRTC failed to compile kernels/{file} for {arch}: {log}")]
    Compile {
        file: String,
        arch: String,
        log: String,
    },
    #[error("PTX cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `recipe bench --json FILE` could not be written.
    #[error("--json {path}: {source}")]
    Json {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    /// A launcher's shape, length or alignment check failed.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// The emulated device needs a C++20 compiler (g++) and found none.
    #[error("the emulated CUDA device needs g++ with C++20 (set RECIPE_EMU_CXX to another compiler): {0}")]
    NoEmuCompiler(String),
    /// Building or loading an emulated kernel library failed.
    #[error("emulated CUDA device, kernels/{file}.cu: {msg}")]
    Emu { file: String, msg: String },
    /// Something only a real GPU has (events, timing) was asked of the emulated device.
    #[error("this needs a real GPU; the emulated CUDA device has no timing or events")]
    NeedsRealGpu,
    #[error("kernel function {name} missing from kernels/{file}")]
    MissingFunction { file: String, name: String },
}

pub type Result<T, E = CudaError> = std::result::Result<T, E>;

/// Shorthand for a launcher's shape error.
pub(crate) fn shape_err(op: &'static str, msg: impl Into<String>) -> CudaError {
    CudaError::Shape {
        op,
        msg: msg.into(),
    }
}

/// One line naming the device: `device cuda:0: <why>` (the launcher-level error says
/// `--device`, which is wrong for a recipe's `device` key).
pub fn device_error(device: &str, e: CudaError) -> anyhow::Error {
    match e {
        CudaError::Unavailable { requested, reason } => {
            anyhow::anyhow!("device {requested}: {reason}")
        }
        e => anyhow::anyhow!("device {device}: {e}"),
    }
}
