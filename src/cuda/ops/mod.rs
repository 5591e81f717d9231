//! Host launchers: one function per kernel. Each checks lengths against the stated dims (and
//! alignment where the kernel vectorizes) before launching, so a wrong shape is a
//! `CudaError::Shape` instead of an out-of-bounds access. Buffers are [`crate::cuda::DevBuf`]s
//! (and views) of either device: on a real GPU every launch is asynchronous on the `Gpu`'s
//! default stream; on the emulated device it runs to completion before returning.

#![allow(clippy::too_many_arguments)] // launchers take outputs, inputs and dims explicitly

pub mod act;
pub mod adamw8bit;
pub mod attention;
pub mod attention_tc;
pub mod blas;
pub mod cross_entropy;
pub mod embedding;
pub mod flash;
pub mod gemm4;
pub mod lora;
pub mod norm;
pub mod optim;
pub mod quant4;
pub mod rope;
pub mod tensor;

use cudarc::driver::{DeviceRepr, LaunchConfig, ValidAsZeroBits};

use super::error::{shape_err, Result};
use super::DevBuf;

/// A storage dtype with kernels (`_f32` / `_bf16` suffix). Arithmetic is always f32.
pub trait Elem:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Unpin + Send + Sync + 'static
{
    const SUFFIX: &'static str;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// `<base>_<suffix>` kernel name.
pub(crate) fn kname<T: Elem>(base: &str) -> String {
    format!("{base}_{}", T::SUFFIX)
}

/// 1-D grid over `n` items with `threads` per block.
pub(crate) fn grid1(n: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u64).div_ceil(threads as u64).max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of `threads` per row.
pub(crate) fn per_row(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Wall time by name, as the profiler keeps it (`RECIPE_CUDA_PROFILE`: the backend's ops, the
/// tensor-core attention's stages): name -> (calls, seconds).
#[derive(Default)]
pub struct Timings(std::collections::BTreeMap<String, (u64, f64)>);

impl Timings {
    pub fn add(&mut self, name: &str, secs: f64) {
        let e = match self.0.get_mut(name) {
            Some(e) => e,
            None => self.0.entry(name.to_string()).or_default(),
        };
        e.0 += 1;
        e.1 += secs;
    }

    /// (name, calls, seconds), by name.
    pub fn rows(&self) -> Vec<(String, u64, f64)> {
        self.0
            .iter()
            .map(|(k, &(n, s))| (k.clone(), n, s))
            .collect()
    }
}

/// `slot`'s buffer, replaced by a larger one when it holds fewer than `n` elements.
pub(crate) fn grown<'a, T: DeviceRepr + ValidAsZeroBits>(
    gpu: &crate::cuda::Gpu,
    slot: &'a mut Option<DevBuf<T>>,
    n: usize,
) -> Result<&'a mut DevBuf<T>> {
    if slot.as_ref().is_none_or(|b| b.len() < n) {
        *slot = None; // give the old block back before taking a larger one
        *slot = Some(gpu.alloc_zeros::<T>(n.max(1))?);
    }
    Ok(slot.as_mut().expect("just ensured"))
}

/// Checks that buffer `what` holds at least `want` elements.
pub(crate) fn need(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return Err(shape_err(
            op,
            format!("{what} has {got} elements, needs {want}"),
        ));
    }
    Ok(())
}

/// Converts a dim to the kernels' i32, refusing overflow.
pub(crate) fn dim(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape_err(op, format!("{what} = {v} exceeds i32")))
}

/// Grid dims are u32 with y/z at most 65535.
pub(crate) fn grid_u32(op: &'static str, what: &str, v: usize, max: usize) -> Result<u32> {
    if v == 0 || v > max {
        return Err(shape_err(op, format!("{what} = {v} outside 1..={max}")));
    }
    Ok(v as u32)
}
