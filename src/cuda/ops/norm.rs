//! Launchers for kernels/norm.cu (one 256-thread block per row).

use crate::cuda::mem::DevBuf;

use super::{dim, kname, need, per_row, Elem};
use crate::cuda::error::Result;
use crate::cuda::kernels::NORM;
use crate::cuda::Gpu;

const THREADS: u32 = 256;

/// RMSNorm forward. y, x: [rows, d]; w: [d]; rstd: [rows] (saved for the backward).
pub fn rmsnorm_fwd<T: Elem>(
    gpu: &Gpu,
    y: &mut DevBuf<T>,
    rstd: &mut DevBuf<f32>,
    x: &DevBuf<T>,
    w: &DevBuf<T>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    const OP: &str = "rmsnorm_fwd";
    need(OP, "x", x.len(), rows * d)?;
    need(OP, "y", y.len(), rows * d)?;
    need(OP, "w", w.len(), d)?;
    need(OP, "rstd", rstd.len(), rows)?;
    let f = gpu.function(&NORM, &kname::<T>(OP))?;
    let di = dim(OP, "d", d)?;
    let mut b = gpu.launch_builder(&f);
    b.arg(y).arg(rstd).arg(x).arg(w).arg(&di).arg(&eps);
    // SAFETY: buffer sizes checked; one block per row, threads stride over d.
    unsafe { b.launch(per_row(rows, THREADS)) }?;
    Ok(())
}

/// RMSNorm backward. dx, dy, x: [rows, d]; dw: [d] f32, ACCUMULATED (zero it first).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd<T: Elem>(
    gpu: &Gpu,
    dx: &mut DevBuf<T>,
    dw: &mut DevBuf<f32>,
    dy: &DevBuf<T>,
    x: &DevBuf<T>,
    w: &DevBuf<T>,
    rstd: &DevBuf<f32>,
    rows: usize,
    d: usize,
) -> Result<()> {
    const OP: &str = "rmsnorm_bwd";
    for (what, len) in [("dx", dx.len()), ("dy", dy.len()), ("x", x.len())] {
        need(OP, what, len, rows * d)?;
    }
    need(OP, "w", w.len(), d)?;
    need(OP, "dw", dw.len(), d)?;
    need(OP, "rstd", rstd.len(), rows)?;
    let f = gpu.function(&NORM, &kname::<T>(OP))?;
    let di = dim(OP, "d", d)?;
    let mut b = gpu.launch_builder(&f);
    b.arg(dx).arg(dw).arg(dy).arg(x).arg(w).arg(rstd).arg(&di);
    // SAFETY: buffer sizes checked; dw updated with atomicAdd.
    unsafe { b.launch(per_row(rows, THREADS)) }?;
    Ok(())
}

/// LayerNorm forward. y, x: [rows, d]; w, b: [d]; mean, rstd: [rows].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_fwd<T: Elem>(
    gpu: &Gpu,
    y: &mut DevBuf<T>,
    mean: &mut DevBuf<f32>,
    rstd: &mut DevBuf<f32>,
    x: &DevBuf<T>,
    w: &DevBuf<T>,
    bias: &DevBuf<T>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    const OP: &str = "layernorm_fwd";
    need(OP, "x", x.len(), rows * d)?;
    need(OP, "y", y.len(), rows * d)?;
    need(OP, "w", w.len(), d)?;
    need(OP, "b", bias.len(), d)?;
    need(OP, "mean", mean.len(), rows)?;
    need(OP, "rstd", rstd.len(), rows)?;
    let f = gpu.function(&NORM, &kname::<T>(OP))?;
    let di = dim(OP, "d", d)?;
    let mut b = gpu.launch_builder(&f);
    b.arg(y)
        .arg(mean)
        .arg(rstd)
        .arg(x)
        .arg(w)
        .arg(bias)
        .arg(&di)
        .arg(&eps);
    // SAFETY: buffer sizes checked; one block per row.
    unsafe { b.launch(per_row(rows, THREADS)) }?;
    Ok(())
}

/// LayerNorm backward. dw, db: [d] f32, ACCUMULATED (zero them first).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd<T: Elem>(
    gpu: &Gpu,
    dx: &mut DevBuf<T>,
    dw: &mut DevBuf<f32>,
    db: &mut DevBuf<f32>,
    dy: &DevBuf<T>,
    x: &DevBuf<T>,
    w: &DevBuf<T>,
    mean: &DevBuf<f32>,
    rstd: &DevBuf<f32>,
    rows: usize,
    d: usize,
) -> Result<()> {
    const OP: &str = "layernorm_bwd";
    for (what, len) in [("dx", dx.len()), ("dy", dy.len()), ("x", x.len())] {
        need(OP, what, len, rows * d)?;
    }
    for (what, len) in [("w", w.len()), ("dw", dw.len()), ("db", db.len())] {
        need(OP, what, len, d)?;
    }
    need(OP, "mean", mean.len(), rows)?;
    need(OP, "rstd", rstd.len(), rows)?;
    let f = gpu.function(&NORM, &kname::<T>(OP))?;
    let di = dim(OP, "d", d)?;
    let mut b = gpu.launch_builder(&f);
    b.arg(dx)
        .arg(dw)
        .arg(db)
        .arg(dy)
        .arg(x)
        .arg(w)
        .arg(mean)
        .arg(rstd)
        .arg(&di);
    // SAFETY: buffer sizes checked; dw/db updated with atomicAdd.
    unsafe { b.launch(per_row(rows, THREADS)) }?;
    Ok(())
}
