//! Launchers for kernels/gemm4.cu: 4-bit dequant-GEMM (bf16 tensor cores) forward and dX.

use crate::cuda::mem::DevBuf;
use cudarc::driver::LaunchConfig;
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
    y: &mut DevBuf<bf16>,
    x: &DevBuf<bf16>,
    w: &Quant4Weight,
    m: usize,
    accumulate: bool,
) -> Result<()> {
    launch(
        "gemm_4bit",
        "gemm_4bit_bf16",
        gpu,
        y,
        x,
        w,
        m,
        (w.cols, w.rows),
        accumulate,
    )
}

/// dX[m, k] (+)= dY[m, n]·W.
pub fn gemm_4bit_dx(
    gpu: &Gpu,
    dx: &mut DevBuf<bf16>,
    dy: &DevBuf<bf16>,
    w: &Quant4Weight,
    m: usize,
    accumulate: bool,
) -> Result<()> {
    launch(
        "gemm_4bit_dx",
        "gemm_4bit_dx_bf16",
        gpu,
        dx,
        dy,
        w,
        m,
        (w.rows, w.cols),
        accumulate,
    )
}

/// Shared launcher: input [m, inner], output [m, outer] with (inner, outer) = (k, n) for the
/// forward and (n, k) for dX. Both kernels take (out, in, packed, absmax, code, m, n, k, bs, acc).
#[allow(clippy::too_many_arguments)]
fn launch(
    op: &'static str,
    kernel: &str,
    gpu: &Gpu,
    out: &mut DevBuf<bf16>,
    inp: &DevBuf<bf16>,
    w: &Quant4Weight,
    m: usize,
    (inner, outer): (usize, usize),
    accumulate: bool,
) -> Result<()> {
    w.check(op)?;
    let (n, k) = (w.rows, w.cols);
    if k % 2 != 0 {
        return Err(shape_err(op, format!("in features k = {k} must be even")));
    }
    need(op, "input", inp.len(), m * inner)?;
    need(op, "output", out.len(), m * outer)?;
    if m.div_ceil(TILE) > 65535 {
        return Err(shape_err(
            op,
            format!("m = {m} too large for one launch (max {})", 65535 * TILE),
        ));
    }
    let f = gpu.function(&GEMM4, kernel)?;
    let (mi, ni, ki, bs, acc) = (
        dim(op, "m", m)?,
        dim(op, "n", n)?,
        dim(op, "k", k)?,
        dim(op, "blocksize", w.blocksize)?,
        accumulate as i32,
    );
    let aligned = i32::from(
        inp.device_addr().is_multiple_of(16) && w.packed.device_addr().is_multiple_of(16),
    );
    let mut b = gpu.launch_builder(&f);
    b.arg(out)
        .arg(inp)
        .arg(&w.packed)
        .arg(&w.absmax)
        .arg(&w.code)
        .arg(&mi)
        .arg(&ni)
        .arg(&ki)
        .arg(&bs)
        .arg(&acc)
        .arg(&aligned);
    // SAFETY: input has m*inner and output m*outer elements, w's buffers match n*k (checked);
    // the vectorized path runs only when both base pointers are 16-byte aligned (`aligned`);
    // the kernels bounds-check every load/store against m, n, k and zero-fill ragged tiles.
    unsafe { b.launch(cfg(m, outer)) }?;
    Ok(())
}
