//! Fused LoRA linear and the LoRA SwiGLU MLP on the GPU, composed from the 4-bit GEMM, cuBLAS
//! and element-wise kernels (DESIGN.md §1, nn.Linear convention):
//!
//!   forward:  y = x·Wᵀ + s·(d(x)·Aᵀ)·Bᵀ        x [N, d_in], W [d_out, d_in] (4-bit),
//!                                               A [r, d_in], B [d_out, r], s = alpha/r,
//!                                               d = LoRA dropout (rng::dropout_keep mask, keyed)
//!   backward: u = dY·B [N, r];  v = d(x)·Aᵀ (recomputed)
//!             dA = s·uᵀ·d(x) [r, d_in];  dB = s·dYᵀ·v [d_out, r]
//!             dX (+)= dY·W + d(s·u·A)
//! Only x is saved; d(x) and x·Aᵀ are recomputed, dense W never exists, xᵀ·dY is never formed.
//!
//! SwiGLU MLP with LoRA on gate/up/down: e = gate(x), g = up(x), a = silu(e)⊙g, y = down(a).
//! Backward: a is recomputed from (e, g); da = down_bwd(dY); (de, dg) = swiglu_bwd(da, e, g);
//! dX = gate_bwd(de) + up_bwd(dg). Saved: x, e, g.

use crate::cuda::mem::DevBuf;
use half::bf16;

use super::act::{dropout, scale_add, swiglu_bwd, swiglu_fwd, GluLayout};
use super::blas::{matmul_bf16_slices, MatMul};
use super::gemm4::{gemm_4bit, gemm_4bit_dx};
use super::need;
use super::quant4::Quant4Weight;
use crate::cuda::error::Result;
use crate::cuda::Gpu;

/// Adapter weights on the device.
pub struct LoraAdapter {
    /// [r, d_in]
    pub a: DevBuf<bf16>,
    /// [d_out, r]
    pub b: DevBuf<bf16>,
    pub r: usize,
    /// alpha/r (or alpha/sqrt(r) for rsLoRA).
    pub scale: f32,
    /// Dropout probability on the adapter input (0 = off).
    pub dropout: f32,
}

/// A frozen 4-bit linear with an optional adapter.
pub struct LoraLinear {
    pub w: Quant4Weight,
    pub adapter: Option<LoraAdapter>,
}

/// Adapter gradients [r, d_in] and [d_out, r] (overwritten).
pub struct LoraGrads {
    pub da: DevBuf<bf16>,
    pub db: DevBuf<bf16>,
}

/// Scratch for one LoRA linear of up to `n` rows: u, v [n, r]; xd, t [n, d_in] (used only with
/// dropout > 0). Allocate once per layer shape (e.g. the largest d_in) and reuse.
pub struct LoraScratch {
    pub u: DevBuf<bf16>,
    pub v: DevBuf<bf16>,
    pub xd: DevBuf<bf16>,
    pub t: DevBuf<bf16>,
}

impl LoraScratch {
    pub fn new(gpu: &Gpu, n: usize, r: usize, d_in_max: usize, with_dropout: bool) -> Result<Self> {
        let big = if with_dropout { n * d_in_max } else { 1 };
        Ok(LoraScratch {
            u: gpu.alloc_zeros(n * r)?,
            v: gpu.alloc_zeros(n * r)?,
            xd: gpu.alloc_zeros(big)?,
            t: gpu.alloc_zeros(big)?,
        })
    }
}

/// y [n, d_out] = x·Wᵀ + s·(d(x)·Aᵀ)·Bᵀ.  `seed` selects the dropout mask (same seed in bwd).
pub fn lora_fwd(
    gpu: &Gpu,
    y: &mut DevBuf<bf16>,
    sc: &mut LoraScratch,
    x: &DevBuf<bf16>,
    lin: &LoraLinear,
    n: usize,
    seed: u64,
) -> Result<()> {
    let (d_out, d_in) = (lin.w.rows, lin.w.cols);
    gemm_4bit(gpu, y, x, &lin.w, n, false)?;
    let Some(ad) = &lin.adapter else {
        return Ok(());
    };
    let r = ad.r;
    need("lora_fwd", "v", sc.v.len(), n * r)?;
    if ad.dropout > 0.0 {
        need("lora_fwd", "xd", sc.xd.len(), n * d_in)?;
        dropout(gpu, &mut sc.xd, x, ad.dropout, seed)?;
        matmul_bf16_slices(gpu, &mut sc.v, &sc.xd, &ad.a, &MatMul::linear(n, r, d_in))?;
    } else {
        matmul_bf16_slices(gpu, &mut sc.v, x, &ad.a, &MatMul::linear(n, r, d_in))?;
    }
    let mm = MatMul {
        alpha: ad.scale,
        beta: 1.0,
        ..MatMul::linear(n, d_out, r)
    };
    matmul_bf16_slices(gpu, y, &sc.v, &ad.b, &mm)
}

/// Backward of [`lora_fwd`]: dX (overwritten, or added to when `accumulate_dx`) and the adapter
/// gradients (when the linear has an adapter; `grads` must then be Some).
#[allow(clippy::too_many_arguments)]
pub fn lora_bwd(
    gpu: &Gpu,
    dx: &mut DevBuf<bf16>,
    grads: Option<&mut LoraGrads>,
    sc: &mut LoraScratch,
    dy: &DevBuf<bf16>,
    x: &DevBuf<bf16>,
    lin: &LoraLinear,
    n: usize,
    seed: u64,
    accumulate_dx: bool,
) -> Result<()> {
    let (d_out, d_in) = (lin.w.rows, lin.w.cols);
    gemm_4bit_dx(gpu, dx, dy, &lin.w, n, accumulate_dx)?;
    let (Some(ad), Some(gr)) = (&lin.adapter, grads) else {
        return Ok(());
    };
    let (r, s) = (ad.r, ad.scale);
    need("lora_bwd", "u", sc.u.len(), n * r)?;
    need("lora_bwd", "v", sc.v.len(), n * r)?;
    // u = dY·B : [n, d_out]·[d_out, r]
    matmul_bf16_slices(
        gpu,
        &mut sc.u,
        dy,
        &ad.b,
        &MatMul {
            trans_b: false,
            ..MatMul::linear(n, r, d_out)
        },
    )?;
    let with_dropout = ad.dropout > 0.0;
    if with_dropout {
        need("lora_bwd", "xd", sc.xd.len(), n * d_in)?;
        need("lora_bwd", "t", sc.t.len(), n * d_in)?;
        dropout(gpu, &mut sc.xd, x, ad.dropout, seed)?;
    }
    let xin = if with_dropout { &sc.xd } else { x };
    // v = d(x)·Aᵀ
    matmul_bf16_slices(gpu, &mut sc.v, xin, &ad.a, &MatMul::linear(n, r, d_in))?;
    // dA = s·uᵀ·d(x) : [r, n]·[n, d_in]
    matmul_bf16_slices(
        gpu,
        &mut gr.da,
        &sc.u,
        xin,
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
        &mut gr.db,
        dy,
        &sc.v,
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
    let ua = MatMul {
        m: n,
        n: d_in,
        k: r,
        trans_a: false,
        trans_b: false,
        alpha: s,
        beta: 0.0,
    };
    if with_dropout {
        // t = s·u·A, then dX += d(t) (the mask of the forward, same seed).
        matmul_bf16_slices(gpu, &mut sc.t, &sc.u, &ad.a, &ua)?;
        dropout(gpu, &mut sc.xd, &sc.t, ad.dropout, seed)?;
        scale_add(gpu, dx, &sc.xd, 1.0)
    } else {
        matmul_bf16_slices(gpu, dx, &sc.u, &ad.a, &MatMul { beta: 1.0, ..ua })
    }
}

/// The three projections of a SwiGLU MLP.
pub struct LoraMlp {
    pub gate: LoraLinear,
    pub up: LoraLinear,
    pub down: LoraLinear,
}

/// Forward: e, g [n, ff] (saved for the backward), a [n, ff] scratch, y [n, d].
/// Dropout seeds: seed, seed+1, seed+2 for gate, up, down.
#[allow(clippy::too_many_arguments)]
pub fn lora_mlp_fwd(
    gpu: &Gpu,
    y: &mut DevBuf<bf16>,
    e: &mut DevBuf<bf16>,
    g: &mut DevBuf<bf16>,
    a: &mut DevBuf<bf16>,
    sc: &mut LoraScratch,
    x: &DevBuf<bf16>,
    mlp: &LoraMlp,
    n: usize,
    seed: u64,
) -> Result<()> {
    let ff = mlp.gate.w.rows;
    lora_fwd(gpu, e, sc, x, &mlp.gate, n, seed)?;
    lora_fwd(gpu, g, sc, x, &mlp.up, n, seed.wrapping_add(1))?;
    swiglu_fwd(gpu, a, e, g, n, ff, GluLayout::Separate)?;
    lora_fwd(gpu, y, sc, a, &mlp.down, n, seed.wrapping_add(2))
}

/// Gradients of the MLP's adapters.
pub struct LoraMlpGrads {
    pub gate: LoraGrads,
    pub up: LoraGrads,
    pub down: LoraGrads,
}

/// Backward: dX [n, d] (overwritten); scratch a, da, de, dg [n, ff].
#[allow(clippy::too_many_arguments)]
pub fn lora_mlp_bwd(
    gpu: &Gpu,
    dx: &mut DevBuf<bf16>,
    grads: &mut LoraMlpGrads,
    a: &mut DevBuf<bf16>,
    da: &mut DevBuf<bf16>,
    de: &mut DevBuf<bf16>,
    dg: &mut DevBuf<bf16>,
    sc: &mut LoraScratch,
    dy: &DevBuf<bf16>,
    x: &DevBuf<bf16>,
    e: &DevBuf<bf16>,
    g: &DevBuf<bf16>,
    mlp: &LoraMlp,
    n: usize,
    seed: u64,
) -> Result<()> {
    let ff = mlp.gate.w.rows;
    swiglu_fwd(gpu, a, e, g, n, ff, GluLayout::Separate)?;
    lora_bwd(
        gpu,
        da,
        Some(&mut grads.down),
        sc,
        dy,
        a,
        &mlp.down,
        n,
        seed.wrapping_add(2),
        false,
    )?;
    swiglu_bwd(gpu, de, dg, da, e, g, n, ff, GluLayout::Separate)?;
    lora_bwd(
        gpu,
        dx,
        Some(&mut grads.up),
        sc,
        dg,
        x,
        &mlp.up,
        n,
        seed.wrapping_add(1),
        false,
    )?;
    lora_bwd(
        gpu,
        dx,
        Some(&mut grads.gate),
        sc,
        de,
        x,
        &mlp.gate,
        n,
        seed,
        true,
    )
}
