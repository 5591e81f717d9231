//! Fused LoRA linear on the GPU, composed from the 4-bit GEMM, cuBLAS and element-wise kernels
//! (DESIGN.md §1, nn.Linear convention):
//!
//!   forward:  y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ               x [N, d_in], W [d_out, d_in] (4-bit),
//!                                                   A [r, d_in], B [d_out, r], s = alpha/r
//!   backward: u = dY·B [N, r]; v = x·Aᵀ (recomputed)
//!             dA = s·uᵀ·x [r, d_in];  dB = s·dYᵀ·v [d_out, r]
//!             dX = dY·W + s·u·A
//! Only x is saved; x·Aᵀ is recomputed, dense W never exists, xᵀ·dY is never formed. Dropout on
//! the adapter input is not applied here (see ops::act::dropout: apply it to a copy of x first).

use cudarc::driver::CudaSlice;
use half::bf16;

use super::blas::{matmul_bf16_slices, MatMul};
use super::gemm4::{gemm_4bit, gemm_4bit_dx};
use super::need;
use super::quant4::Quant4Weight;
use crate::cuda::error::Result;
use crate::cuda::Gpu;

/// Adapter weights on the device.
pub struct LoraAdapter {
    /// [r, d_in]
    pub a: CudaSlice<bf16>,
    /// [d_out, r]
    pub b: CudaSlice<bf16>,
    pub r: usize,
    pub scale: f32,
}

/// y [n, d_out] = x·Wᵀ + s·(x·Aᵀ)·Bᵀ; `v` is scratch [n, r].
pub fn lora_fwd(
    gpu: &Gpu,
    y: &mut CudaSlice<bf16>,
    v: &mut CudaSlice<bf16>,
    x: &CudaSlice<bf16>,
    w: &Quant4Weight,
    ad: &LoraAdapter,
    n: usize,
) -> Result<()> {
    let (d_out, d_in, r) = (w.rows, w.cols, ad.r);
    need("lora_fwd", "v", v.len(), n * r)?;
    gemm_4bit(gpu, y, x, w, n, false)?;
    matmul_bf16_slices(gpu, v, x, &ad.a, &MatMul::linear(n, r, d_in))?;
    let mm = MatMul {
        alpha: ad.scale,
        beta: 1.0,
        ..MatMul::linear(n, d_out, r)
    };
    matmul_bf16_slices(gpu, y, v, &ad.b, &mm)
}

/// Gradients for the adapter and the input. Scratch u, v: [n, r]. dA [r, d_in], dB [d_out, r]
/// are overwritten (use beta = 1 variants for accumulation across micro-batches if needed).
#[allow(clippy::too_many_arguments)]
pub fn lora_bwd(
    gpu: &Gpu,
    dx: &mut CudaSlice<bf16>,
    da: &mut CudaSlice<bf16>,
    db: &mut CudaSlice<bf16>,
    u: &mut CudaSlice<bf16>,
    v: &mut CudaSlice<bf16>,
    dy: &CudaSlice<bf16>,
    x: &CudaSlice<bf16>,
    w: &Quant4Weight,
    ad: &LoraAdapter,
    n: usize,
) -> Result<()> {
    let (d_out, d_in, r, s) = (w.rows, w.cols, ad.r, ad.scale);
    // u = dY·B : [n, d_out]·[d_out, r]
    matmul_bf16_slices(
        gpu,
        u,
        dy,
        &ad.b,
        &MatMul {
            trans_b: false,
            ..MatMul::linear(n, r, d_out)
        },
    )?;
    // v = x·Aᵀ
    matmul_bf16_slices(gpu, v, x, &ad.a, &MatMul::linear(n, r, d_in))?;
    // dA = s·uᵀ·x : [r, n]·[n, d_in]
    matmul_bf16_slices(
        gpu,
        da,
        u,
        x,
        &MatMul {
            m: r,
            n: d_in,
            k: n,
            trans_a: true,
            trans_b: false,
            alpha: s,
            beta: 0.0,
        },
    )?;
    // dB = s·dYᵀ·v : [d_out, n]·[n, r]
    matmul_bf16_slices(
        gpu,
        db,
        dy,
        v,
        &MatMul {
            m: d_out,
            n: r,
            k: n,
            trans_a: true,
            trans_b: false,
            alpha: s,
            beta: 0.0,
        },
    )?;
    // dX = dY·W (4-bit) + s·u·A
    gemm_4bit_dx(gpu, dx, dy, w, n, false)?;
    matmul_bf16_slices(
        gpu,
        dx,
        u,
        &ad.a,
        &MatMul {
            m: n,
            n: d_in,
            k: r,
            trans_a: false,
            trans_b: false,
            alpha: s,
            beta: 1.0,
        },
    )
}
