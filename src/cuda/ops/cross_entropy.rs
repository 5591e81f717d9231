//! Launchers for kernels/cross_entropy.cu. Call them per CHUNK of token rows: compute the chunk's
//! logits (lm_head GEMM), run fwd, then bwd in place (dlogits may be the logits buffer), then
//! the chunk's lm_head backward; full-batch f32 logits never exist.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{dim, kname, need, per_row, Elem};
use crate::cuda::error::Result;
use crate::cuda::kernels::CROSS_ENTROPY;
use crate::cuda::Gpu;

const THREADS: u32 = 512;

/// loss[n], lse[n] from logits [n, v] and targets [n] (shifted; -100 ignored → loss 0).
pub fn cross_entropy_fwd<T: Elem>(
    gpu: &Gpu,
    loss: &mut CudaSlice<f32>,
    lse: &mut CudaSlice<f32>,
    logits: &CudaSlice<T>,
    targets: &CudaSlice<i32>,
    v: usize,
) -> Result<()> {
    const OP: &str = "cross_entropy_fwd";
    let n = targets.len();
    need(OP, "logits", logits.len(), n * v)?;
    need(OP, "loss", loss.len(), n)?;
    need(OP, "lse", lse.len(), n)?;
    let f = gpu.function(&CROSS_ENTROPY, &kname::<T>(OP))?;
    let vi = dim(OP, "v", v)?;
    let mut b = gpu.stream.launch_builder(&f);
    b.arg(loss).arg(lse).arg(logits).arg(targets).arg(&vi);
    // SAFETY: sizes checked; one block per row; targets outside [0, v) are treated as ignored.
    unsafe { b.launch(per_row(n, THREADS)) }?;
    Ok(())
}

/// dlogits = grad_scale·(softmax − onehot) in place over `logits` [n, v] (ignored rows → 0).
pub fn cross_entropy_bwd_inplace<T: Elem>(
    gpu: &Gpu,
    logits: &mut CudaSlice<T>,
    lse: &CudaSlice<f32>,
    targets: &CudaSlice<i32>,
    v: usize,
    grad_scale: f32,
) -> Result<()> {
    const OP: &str = "cross_entropy_bwd";
    let n = targets.len();
    need(OP, "logits", logits.len(), n * v)?;
    need(OP, "lse", lse.len(), n)?;
    let f = gpu.function(&CROSS_ENTROPY, &kname::<T>(OP))?;
    let vi = dim(OP, "v", v)?;
    // The kernel takes (dlogits, logits): both are this buffer. Passing the same CudaSlice twice
    // through the builder would need two borrows, so pass its raw device address for the input.
    let (ptr, _sync) = {
        use cudarc::driver::DevicePtr;
        logits.device_ptr(&gpu.stream)
    };
    let mut b = gpu.stream.launch_builder(&f);
    b.arg(&ptr)
        .arg(&ptr)
        .arg(lse)
        .arg(targets)
        .arg(&vi)
        .arg(&grad_scale);
    // SAFETY: n*v elements checked; each thread reads logits[row, c] before writing the same
    // element (no other thread touches it), so the alias is benign; _sync keeps the buffer's
    // stream bookkeeping alive across the launch.
    unsafe { b.launch(per_row(n, THREADS)) }?;
    Ok(())
}
