//! Launchers for kernels/embedding.cu.

use crate::cuda::mem::DevBuf;

use super::{dim, grid1, kname, need, Elem};
use crate::cuda::error::Result;
use crate::cuda::kernels::EMBEDDING;
use crate::cuda::Gpu;

/// out[n, d] = table[ids[n], :].  table: [vocab, d]; ids out of range give zero rows.
pub fn embedding_fwd<T: Elem>(
    gpu: &Gpu,
    out: &mut DevBuf<T>,
    ids: &DevBuf<i32>,
    table: &DevBuf<T>,
    d: usize,
) -> Result<()> {
    const OP: &str = "embedding_fwd";
    let n = ids.len();
    need(OP, "out", out.len(), n * d)?;
    let vocab = table.len() / d.max(1);
    let f = gpu.function(&EMBEDDING, &kname::<T>(OP))?;
    let (ni, di, vi) = (dim(OP, "n", n)?, dim(OP, "d", d)?, dim(OP, "vocab", vocab)?);
    let mut b = gpu.launch_builder(&f);
    b.arg(out).arg(ids).arg(table).arg(&ni).arg(&di).arg(&vi);
    // SAFETY: out holds n*d; ids are range-checked against vocab = table.len()/d on the device.
    unsafe { b.launch(grid1(n * d, 256)) }?;
    Ok(())
}

/// dtable[ids[i], :] += dout[i, :] (f32 accumulator [vocab, d], zeroed by the caller).
pub fn embedding_bwd<T: Elem>(
    gpu: &Gpu,
    dtable: &mut DevBuf<f32>,
    ids: &DevBuf<i32>,
    dout: &DevBuf<T>,
    d: usize,
) -> Result<()> {
    const OP: &str = "embedding_bwd";
    let n = ids.len();
    need(OP, "dout", dout.len(), n * d)?;
    let vocab = dtable.len() / d.max(1);
    let f = gpu.function(&EMBEDDING, &kname::<T>(OP))?;
    let (ni, di, vi) = (dim(OP, "n", n)?, dim(OP, "d", d)?, dim(OP, "vocab", vocab)?);
    let mut b = gpu.launch_builder(&f);
    b.arg(dtable).arg(ids).arg(dout).arg(&ni).arg(&di).arg(&vi);
    // SAFETY: dout holds n*d; ids range-checked on the device; atomicAdd handles repeats.
    unsafe { b.launch(grid1(n * d, 256)) }?;
    Ok(())
}
