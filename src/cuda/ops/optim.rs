//! Launchers for kernels/optim.cu: torch AdamW with f32 state (bit for bit the CPU's
//! `optim::adamw::adamw_step`) and the squared-norm reductions used for global gradient clipping
//! (sum of squares over all grads, clip coefficient, passed as `grad_scale` to the step).

use crate::cuda::mem::{AsDevView, AsDevViewMut, DevBuf};
use cudarc::driver::LaunchConfig;

use super::{grid1, kname, need, Elem};
use crate::cuda::error::Result;
use crate::cuda::kernels::OPTIM;
use crate::cuda::Gpu;
use crate::optim::adamw::AdamwScalars;

/// Threads of the one-block deterministic reductions (`sumsq_acc`, `tensor::sum_acc`).
pub(crate) const REDUCE_THREADS: u32 = 1024;

/// One torch AdamW step on p, m, v with gradient `grad` (all [p.len()] f32), the scalars of
/// `optim::adamw::AdamwScalars` for this step. `grad_scale`: the clipping coefficient (1.0 =
/// none), applied as the CPU's clip does (g·coef rounded, then the step); grad is not written.
/// `apply_decay`: the CPU's `weight_decay != 0` flag. Same bits as the CPU function.
pub fn adamw_torch(
    gpu: &Gpu,
    p: &mut impl AsDevViewMut<f32>,
    m: &mut impl AsDevViewMut<f32>,
    v: &mut impl AsDevViewMut<f32>,
    grad: &impl AsDevView<f32>,
    s: &AdamwScalars,
    grad_scale: f32,
    apply_decay: bool,
) -> Result<()> {
    const OP: &str = "adamw_torch";
    let (mut pv, mut mv, mut vv, gv) = (
        p.dev_view_mut(),
        m.dev_view_mut(),
        v.dev_view_mut(),
        grad.dev_view(),
    );
    let n = pv.len();
    need(OP, "m", mv.len(), n)?;
    need(OP, "v", vv.len(), n)?;
    need(OP, "grad", gv.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&OPTIM, "adamw_torch_f32")?;
    let (decay_flag, n64) = (i32::from(apply_decay), n as i64);
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut pv).arg(&mut mv).arg(&mut vv).arg(&gv);
    b.arg(&s.decay)
        .arg(&s.one_minus_beta1)
        .arg(&s.beta2)
        .arg(&s.one_minus_beta2)
        .arg(&s.neg_step_size)
        .arg(&s.bias_correction2_sqrt)
        .arg(&s.eps)
        .arg(&grad_scale)
        .arg(&decay_flag)
        .arg(&n64);
    // SAFETY: m, v, grad hold at least p.len() = n elements (checked); one thread per element.
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}

/// out[0] += Σ x² (out: f32 [1], zero it first; accumulate several tensors into one out).
/// Blocks add with atomicAdd: the last bits depend on their order (see `sumsq_acc`).
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

/// The chunk of [`sumsq_acc`]'s first pass for n elements: at least 16 elements per thread of
/// a 1024-thread block, and at most 1024 chunks (so the second pass is one block).
pub fn sumsq_chunk(n: usize) -> usize {
    n.div_ceil(REDUCE_THREADS as usize)
        .max(16 * REDUCE_THREADS as usize)
        .next_multiple_of(REDUCE_THREADS as usize)
}

/// acc[0] += Σ x² over all of x, deterministic in two passes (kernels/optim.cu
/// `sumsq_part_f32`: one block per [`sumsq_chunk`] elements, then `sum_acc_f32` over the
/// parts): the same x gives the same bits every run. acc: f32 [>= 1]; `part` holds the partial
/// sums (grown as needed, so a caller summing many tensors allocates once).
pub fn sumsq_acc(
    gpu: &Gpu,
    acc: &mut impl AsDevViewMut<f32>,
    x: &impl AsDevView<f32>,
    part: &mut Option<DevBuf<f32>>,
) -> Result<()> {
    let (mut av, xv) = (acc.dev_view_mut(), x.dev_view());
    need("sumsq_acc", "acc", av.len(), 1)?;
    let n = xv.len();
    if n == 0 {
        return Ok(());
    }
    let chunk = sumsq_chunk(n);
    let parts = n.div_ceil(chunk);
    let mut part = super::grown(gpu, part, parts)?.slice_mut(..parts);
    let f = gpu.function(&OPTIM, "sumsq_part_f32")?;
    let (n64, c64) = (n as i64, chunk as i64);
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut part).arg(&xv).arg(&n64).arg(&c64);
    // SAFETY: block b reads x[b·chunk, min(n, (b+1)·chunk)) and writes part[b], b < parts.
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (parts as u32, 1, 1),
            block_dim: (REDUCE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }?;
    super::tensor::sum_acc(gpu, &mut av, &part.as_view())
}

/// x[i] = √x[i] in f64, rounded to f32 (per-tensor norms from their sums of squares).
pub fn norms_sqrt(gpu: &Gpu, x: &mut impl AsDevViewMut<f32>) -> Result<()> {
    let mut xv = x.dev_view_mut();
    let k = xv.len();
    if k == 0 {
        return Ok(());
    }
    let f = gpu.function(&OPTIM, "norms_sqrt_f32")?;
    let k64 = k as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut xv).arg(&k64);
    // SAFETY: one thread per element of x, bounded by k.
    unsafe { b.launch(grid1(k, 256)) }?;
    Ok(())
}

/// torch clip_grad_norm_'s coefficient from the per-tensor norms (kernels/optim.cu
/// `clip_coef_f32`): out[0] = coef (1 without `max_norm`), out[1] = total norm. out: f32 [>= 2].
pub fn clip_coef(
    gpu: &Gpu,
    out: &mut impl AsDevViewMut<f32>,
    norms: &impl AsDevView<f32>,
    max_norm: Option<f32>,
) -> Result<()> {
    const OP: &str = "clip_coef_f32";
    let (mut ov, nv) = (out.dev_view_mut(), norms.dev_view());
    need(OP, "out", ov.len(), 2)?;
    let f = gpu.function(&OPTIM, OP)?;
    let (k, m, clip) = (
        nv.len() as i64,
        max_norm.unwrap_or(0.0),
        max_norm.is_some() as i32,
    );
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut ov).arg(&nv).arg(&k).arg(&m).arg(&clip);
    // SAFETY: one thread reads norms[..k] (k is its length) and writes out[0..2] (checked).
    unsafe { b.launch(grid1(1, 1)) }?;
    Ok(())
}

/// Launches a one-block `(float* acc, const float* x, i64 n)` reduction over all of x.
pub(crate) fn one_block_reduce(
    gpu: &Gpu,
    file: &crate::cuda::kernels::KernelFile,
    name: &'static str,
    acc: &mut impl AsDevViewMut<f32>,
    x: &impl AsDevView<f32>,
) -> Result<()> {
    let (mut av, xv) = (acc.dev_view_mut(), x.dev_view());
    need(name, "acc", av.len(), 1)?;
    let n = xv.len();
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(file, name)?;
    let n64 = n as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut av).arg(&xv).arg(&n64);
    // SAFETY: one block striding over x's n elements; only thread 0 writes acc[0] (len checked).
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (REDUCE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }?;
    Ok(())
}
