//! Launchers for kernels/flash.cu: fused attention on bf16 tensor cores (mma.sync), what the
//! CUDA backend runs for training attention in bf16 compute mode. No T×T buffer exists: each
//! block keeps its scores on chip, and the causal upper triangle (and what a sliding window
//! hides) is skipped a tile at a time. The kernel file's header has the math.
//!
//! Layouts as [`super::attention::attn_fwd`]: q, o [B, T, Hq, D]; k, v [B, T, Hkv, D]; lse
//! [B, Hq, T] (+∞ for a query that sees no key). q, k, v, o and dout are f32 or bf16 (the element
//! type `T`: the backend's bf16 activations are staged as they are); dq, dk, dv, lse are f32; the
//! backward reads the forward's o as f32 (the backend saves it widened). The
//! masks are the f32 kernels' ([`DeviceMasks`], sliding window included). Head dims up to
//! [`FLASH_DMAX`]; D is padded with zeros to 32, 64 or 128.

use cudarc::driver::LaunchConfig;

use super::attention::{attn_delta, check, lens_of, need_bwd, need_fwd, push_masks, DeviceMasks};
use super::{dim, grid_u32, grown, Elem};
use crate::cuda::error::Result;
use crate::cuda::kernels::FLASH;
use crate::cuda::mem::{AsDevView, AsDevViewMut, DevBuf};
use crate::cuda::twins::attention::AttnDims;
use crate::cuda::Gpu;

/// Largest head dim the fused kernels take.
pub const FLASH_DMAX: usize = 128;
/// Rows of a block: queries (forward, dq) or keys (dk, dv).
const ROWS: usize = 64;

/// The kernel variant's padded head dim for `d`.
fn padded(d: usize) -> usize {
    match d {
        0..=32 => 32,
        33..=64 => 64,
        _ => 128,
    }
}

fn grid(op: &'static str, dm: &AttnDims, heads: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (
            grid_u32(op, "t / 64", dm.t.div_ceil(ROWS), i32::MAX as usize)?,
            grid_u32(op, "heads", heads, 65535)?,
            grid_u32(op, "batch", dm.batch, 65535)?,
        ),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The checks every call makes: dims, masks; the window as the kernels take it.
fn check_flash(op: &'static str, dm: &AttnDims, mk: &DeviceMasks) -> Result<i32> {
    check(op, dm, mk, Some(FLASH_DMAX))?;
    mk.window_i32(op)
}

/// The scalar tail every kernel takes: t, hq, hkv, d.
fn dims_i32(op: &'static str, dm: &AttnDims) -> Result<[i32; 4]> {
    Ok([
        dim(op, "t", dm.t)?,
        dim(op, "hq", dm.hq)?,
        dim(op, "hkv", dm.hkv)?,
        dim(op, "d", dm.d)?,
    ])
}

/// Forward: o [B, T, Hq, D] and lse [B, Hq, T] from q, k, v (module docs).
#[allow(clippy::too_many_arguments)]
pub fn flash_fwd<T: Elem>(
    gpu: &Gpu,
    o: &mut impl AsDevViewMut<T>,
    lse: &mut impl AsDevViewMut<f32>,
    q: &impl AsDevView<T>,
    k: &impl AsDevView<T>,
    v: &impl AsDevView<T>,
    mk: &DeviceMasks,
    dm: &AttnDims,
) -> Result<()> {
    const OP: &str = "flash_fwd";
    let w = check_flash(OP, dm, mk)?;
    let (mut o, mut lse) = (o.dev_view_mut(), lse.dev_view_mut());
    let (q, k, v) = (q.dev_view(), k.dev_view(), v.dev_view());
    let nq = need_fwd(OP, dm, [q.len(), o.len(), k.len(), v.len(), lse.len()])?;
    if nq == 0 {
        return Ok(());
    }
    let [t, hq, hkv, d] = dims_i32(OP, dm)?;
    let f = gpu.function(&FLASH, &format!("{OP}_{}_d{}", T::SUFFIX, padded(dm.d)))?;
    let null = 0u64;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut o).arg(&mut lse).arg(&q).arg(&k).arg(&v);
    push_masks(&mut b, mk, &null);
    b.arg(&t).arg(&hq).arg(&hkv).arg(&d).arg(&dm.scale).arg(&w);
    // SAFETY: sizes checked against (B, T, Hq, Hkv, D); D <= the variant's padded dim, so the
    // static shared tiles hold a row; Hq % Hkv == 0 (check) keeps the kv head in range; absent
    // masks are null pointers (8-byte zero) the kernel tests before reading; each block writes
    // only its own 64 query rows of o and lse.
    unsafe { b.launch(grid(OP, dm, dm.hq)?) }?;
    Ok(())
}

/// Backward: dq [B, T, Hq, D], dk, dv [B, T, Hkv, D] overwritten, from dout, q, k, v and the
/// forward's o and lse; `delta` is scratch grown to [B, Hq, T] (module docs).
#[allow(clippy::too_many_arguments)]
pub fn flash_bwd<T: Elem>(
    gpu: &Gpu,
    delta: &mut Option<DevBuf<f32>>,
    dq: &mut impl AsDevViewMut<f32>,
    dk: &mut impl AsDevViewMut<f32>,
    dv: &mut impl AsDevViewMut<f32>,
    dout: &impl AsDevView<T>,
    q: &impl AsDevView<T>,
    k: &impl AsDevView<T>,
    v: &impl AsDevView<T>,
    o: &impl AsDevView<f32>,
    lse: &impl AsDevView<f32>,
    mk: &DeviceMasks,
    dm: &AttnDims,
) -> Result<()> {
    const OP: &str = "flash_bwd";
    let w = check_flash(OP, dm, mk)?;
    let (mut dq, mut dk, mut dv) = (dq.dev_view_mut(), dk.dev_view_mut(), dv.dev_view_mut());
    let (dout, q, k, v, o, lse) = (
        dout.dev_view(),
        q.dev_view(),
        k.dev_view(),
        v.dev_view(),
        o.dev_view(),
        lse.dev_view(),
    );
    let lens = [
        dout.len(),
        q.len(),
        o.len(),
        dq.len(),
        k.len(),
        v.len(),
        dk.len(),
        dv.len(),
        lse.len(),
    ];
    if need_bwd(OP, dm, lens)? == 0 {
        return Ok(());
    }
    let nl = lens_of(dm).2;
    let [t, hq, hkv, d] = dims_i32(OP, dm)?;
    let delta = grown(gpu, delta, nl)?;
    attn_delta::<T, f32>(gpu, &mut delta.slice_mut(..nl), &dout, &o, dm)?;
    let delta = delta.slice(..nl);
    let pd = padded(dm.d);
    let null = 0u64;

    let f = gpu.function(&FLASH, &format!("flash_bwd_dq_{}_d{pd}", T::SUFFIX))?;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut dq).arg(&dout).arg(&q).arg(&k).arg(&v).arg(&lse);
    b.arg(&delta);
    push_masks(&mut b, mk, &null);
    b.arg(&t).arg(&hq).arg(&hkv).arg(&d).arg(&dm.scale).arg(&w);
    // SAFETY: as flash_fwd; each block writes only its own 64 query rows of dq.
    unsafe { b.launch(grid(OP, dm, dm.hq)?) }?;

    let f = gpu.function(&FLASH, &format!("flash_bwd_dkdv_{}_d{pd}", T::SUFFIX))?;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut dk)
        .arg(&mut dv)
        .arg(&dout)
        .arg(&q)
        .arg(&k)
        .arg(&v);
    b.arg(&lse).arg(&delta);
    push_masks(&mut b, mk, &null);
    b.arg(&t).arg(&hq).arg(&hkv).arg(&d).arg(&dm.scale).arg(&w);
    // SAFETY: as flash_fwd, with the grid over kv heads; each block writes only its own 64 key
    // rows of dk and dv.
    unsafe { b.launch(grid(OP, dm, dm.hkv)?) }?;
    Ok(())
}
