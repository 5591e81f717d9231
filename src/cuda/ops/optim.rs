//! Launchers for kernels/optim.cu: AdamW (f32 state) and the squared-norm reduction used for
//! global gradient clipping (sum sumsq over all grads, clip_factor on the host, pass it as
//! `grad_scale` to the optimizer step).

use crate::cuda::mem::DevBuf;
use cudarc::driver::LaunchConfig;

use super::{grid1, kname, need, Elem};
use crate::cuda::error::{shape_err, Result};
use crate::cuda::kernels::OPTIM;
use crate::cuda::twins::adamw8bit::AdamHyper;
use crate::cuda::Gpu;

/// One AdamW step: p, m, v, grad all [n] f32.
pub fn adamw_step(
    gpu: &Gpu,
    p: &mut DevBuf<f32>,
    m: &mut DevBuf<f32>,
    v: &mut DevBuf<f32>,
    grad: &DevBuf<f32>,
    h: &AdamHyper,
) -> Result<()> {
    const OP: &str = "adamw";
    let n = p.len();
    need(OP, "m", m.len(), n)?;
    need(OP, "v", v.len(), n)?;
    need(OP, "grad", grad.len(), n)?;
    if h.step == 0 {
        return Err(shape_err(OP, "step counts from 1"));
    }
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&OPTIM, "adamw_f32")?;
    let (bc1, bc2) = h.bias_corrections();
    let n64 = n as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(p)
        .arg(m)
        .arg(v)
        .arg(grad)
        .arg(&h.lr)
        .arg(&h.beta1)
        .arg(&h.beta2)
        .arg(&h.eps);
    b.arg(&h.weight_decay)
        .arg(&bc1)
        .arg(&bc2)
        .arg(&h.grad_scale)
        .arg(&n64);
    // SAFETY: all four buffers hold n elements (checked); one thread per element.
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}

/// out[0] += Σ x² (out: f32 [1], zero it first; accumulate several tensors into one out).
pub fn sumsq<T: Elem>(gpu: &Gpu, out: &mut DevBuf<f32>, x: &DevBuf<T>) -> Result<()> {
    const OP: &str = "sumsq";
    need(OP, "out", out.len(), 1)?;
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&OPTIM, &kname::<T>(OP))?;
    let n64 = n as i64;
    let blocks = n.div_ceil(256).min(4096) as u32;
    let mut b = gpu.launch_builder(&f);
    b.arg(out).arg(x).arg(&n64);
    // SAFETY: grid-stride loop bounded by n; out holds one element updated with atomicAdd.
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }?;
    Ok(())
}
