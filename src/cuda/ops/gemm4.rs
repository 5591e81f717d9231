//! Launchers for kernels/gemm4.cu: 4-bit dequant-GEMM (bf16 tensor cores) forward and dX.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

use super::quant4::Quant4Weight;
use super::{dim, need};
use crate::cuda::error::{shape_err, Result};
use crate::cuda::kernels::GEMM4;
use crate::cuda::Gpu;

const TILE: usize = 64;

fn cfg(rows: usize, cols: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (cols.div_ceil(TILE) as u32, rows.div_ceil(TILE) as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Y[m, n] (+)= X[m, k]·Wᵀ with W = w [n, k] dequantized tile by tile in shared memory.
/// `accumulate` adds into y (LoRA: base output then the adapter term, or vice versa).
pub fn gemm_4bit(
    gpu: &Gpu,
    y: &mut CudaSlice<bf16>,
    x: &CudaSlice<bf16>,
    w: &Quant4Weight,
    m: usize,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "gemm_4bit";
    w.check(OP)?;
    let (n, k) = (w.rows, w.cols);
    if k % 2 != 0 {
        return Err(shape_err(OP, format!("in features k = {k} must be even")));
    }
    need(OP, "x", x.len(), m * k)?;
    need(OP, "y", y.len(), m * n)?;
    if m.div_ceil(TILE) > 65535 {
        return Err(shape_err(
            OP,
            format!("m = {m} too large for one launch (max {})", 65535 * TILE),
        ));
    }
    let f = gpu.function(&GEMM4, "gemm_4bit_bf16")?;
    let (mi, ni, ki, bs, acc) = (
        dim(OP, "m", m)?,
        dim(OP, "n", n)?,
        dim(OP, "k", k)?,
        dim(OP, "blocksize", w.blocksize)?,
        accumulate as i32,
    );
    let mut b = gpu.stream.launch_builder(&f);
    b.arg(y)
        .arg(x)
        .arg(&w.packed)
        .arg(&w.absmax)
        .arg(&w.code)
        .arg(&mi)
        .arg(&ni)
        .arg(&ki)
        .arg(&bs)
        .arg(&acc);
    // SAFETY: x has m*k, y m*n elements and w's buffers match n*k (checked); the kernel
    // bounds-checks every load/store against m, n, k and zero-fills ragged tiles.
    unsafe { b.launch(cfg(m, n)) }?;
    Ok(())
}

/// dX[m, k] (+)= dY[m, n]·W.
pub fn gemm_4bit_dx(
    gpu: &Gpu,
    dx: &mut CudaSlice<bf16>,
    dy: &CudaSlice<bf16>,
    w: &Quant4Weight,
    m: usize,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "gemm_4bit_dx";
    w.check(OP)?;
    let (n, k) = (w.rows, w.cols);
    if k % 2 != 0 {
        return Err(shape_err(OP, format!("in features k = {k} must be even")));
    }
    need(OP, "dy", dy.len(), m * n)?;
    need(OP, "dx", dx.len(), m * k)?;
    if m.div_ceil(TILE) > 65535 {
        return Err(shape_err(OP, format!("m = {m} too large for one launch")));
    }
    let f = gpu.function(&GEMM4, "gemm_4bit_dx_bf16")?;
    let (mi, ni, ki, bs, acc) = (
        dim(OP, "m", m)?,
        dim(OP, "n", n)?,
        dim(OP, "k", k)?,
        dim(OP, "blocksize", w.blocksize)?,
        accumulate as i32,
    );
    let mut b = gpu.stream.launch_builder(&f);
    b.arg(dx)
        .arg(dy)
        .arg(&w.packed)
        .arg(&w.absmax)
        .arg(&w.code)
        .arg(&mi)
        .arg(&ni)
        .arg(&ki)
        .arg(&bs)
        .arg(&acc);
    // SAFETY: as in gemm_4bit, with dy [m, n] and dx [m, k].
    unsafe { b.launch(cfg(m, k)) }?;
    Ok(())
}
