//! Launchers for kernels/rope.cu: RoPE (both layouts) forward/backward, per-token cos/sin
//! tables and the ALiBi bias.

use crate::cuda::mem::{AsDevView, AsDevViewMut, DevBuf};

use super::{dim, grid1, kname, need, Elem};
use crate::cuda::error::{shape_err, Result};
use crate::cuda::kernels::ROPE;
use crate::cuda::twins::rope::RopeLayout;
use crate::cuda::Gpu;

/// Rotation geometry: x [tokens, heads, hd], the first `rot` dims rotate.
#[derive(Debug, Clone, Copy)]
pub struct RopeDims {
    pub tokens: usize,
    pub heads: usize,
    pub hd: usize,
    pub rot: usize,
    /// Rows in the cos/sin tables (max position + 1).
    pub max_pos: usize,
}

/// y = rope(x) (backward = false) or dx = rope⁻¹(dy) (backward = true).
/// cos, sin: [max_pos, rot/2]; pos: [tokens] i32 in [0, max_pos) (not checked on the device).
#[allow(clippy::too_many_arguments)]
pub fn rope<T: Elem>(
    gpu: &Gpu,
    y: &mut DevBuf<T>,
    x: &DevBuf<T>,
    cos: &DevBuf<f32>,
    sin: &DevBuf<f32>,
    pos: &DevBuf<i32>,
    dm: RopeDims,
    layout: RopeLayout,
    backward: bool,
) -> Result<()> {
    const OP: &str = "rope";
    if dm.rot % 2 != 0 || dm.rot > dm.hd {
        return Err(shape_err(
            OP,
            format!("rot = {} must be even and <= head_dim {}", dm.rot, dm.hd),
        ));
    }
    let n = dm.tokens * dm.heads * dm.hd;
    need(OP, "x", x.len(), n)?;
    need(OP, "y", y.len(), n)?;
    need(OP, "pos", pos.len(), dm.tokens)?;
    need(OP, "cos", cos.len(), dm.max_pos * dm.rot / 2)?;
    need(OP, "sin", sin.len(), dm.max_pos * dm.rot / 2)?;
    let base = match (layout, backward) {
        (RopeLayout::Half, false) => "rope_half_fwd",
        (RopeLayout::Half, true) => "rope_half_bwd",
        (RopeLayout::Glm, false) => "rope_glm_fwd",
        (RopeLayout::Glm, true) => "rope_glm_bwd",
    };
    let f = gpu.function(&ROPE, &kname::<T>(base))?;
    let (t, h, hd, rot) = (
        dim(OP, "tokens", dm.tokens)?,
        dim(OP, "heads", dm.heads)?,
        dim(OP, "hd", dm.hd)?,
        dim(OP, "rot", dm.rot)?,
    );
    let mut b = gpu.launch_builder(&f);
    b.arg(y)
        .arg(x)
        .arg(cos)
        .arg(sin)
        .arg(pos)
        .arg(&t)
        .arg(&h)
        .arg(&hd)
        .arg(&rot);
    // SAFETY: sizes checked; positions index the tables and must be < max_pos (the caller builds
    // them from sequence offsets); one thread per (token, head, pair or pass-through dim).
    unsafe { b.launch(grid1(dm.tokens * dm.heads * (dm.hd - dm.rot / 2), 256)) }?;
    Ok(())
}

/// bias[b, h, j] = slopes[h]·kpos[b, j].  bias: [batch, heads, t]; kpos: [batch, t]
pub fn alibi_bias(
    gpu: &Gpu,
    bias: &mut DevBuf<f32>,
    slopes: &DevBuf<f32>,
    kpos: &DevBuf<i32>,
    batch: usize,
    heads: usize,
    t: usize,
) -> Result<()> {
    const OP: &str = "alibi_bias";
    need(OP, "bias", bias.len(), batch * heads * t)?;
    need(OP, "slopes", slopes.len(), heads)?;
    need(OP, "kpos", kpos.len(), batch * t)?;
    let f = gpu.function(&ROPE, "alibi_bias_f32")?;
    let (bi, hi, ti) = (
        dim(OP, "batch", batch)?,
        dim(OP, "heads", heads)?,
        dim(OP, "t", t)?,
    );
    let mut b = gpu.launch_builder(&f);
    b.arg(bias).arg(slopes).arg(kpos).arg(&bi).arg(&hi).arg(&ti);
    // SAFETY: sizes checked; one thread per output element.
    unsafe { b.launch(grid1(batch * heads * t, 256)) }?;
    Ok(())
}

/// Per-token tables for `rope` with pos = 0..n: cos[t, i] = cos(pos[t]·inv[i])·scale, sin
/// likewise (the CPU backend's f32 angle). pos [n] f32, inv [half], cos/sin [n·half].
pub fn rope_table(
    gpu: &Gpu,
    cos: &mut impl AsDevViewMut<f32>,
    sin: &mut impl AsDevViewMut<f32>,
    pos: &impl AsDevView<f32>,
    inv: &impl AsDevView<f32>,
    scale: f32,
    n: usize,
    half: usize,
) -> Result<()> {
    const OP: &str = "rope_table";
    let (mut cv, mut sv) = (cos.dev_view_mut(), sin.dev_view_mut());
    let (pv, iv) = (pos.dev_view(), inv.dev_view());
    need(OP, "cos", cv.len(), n * half)?;
    need(OP, "sin", sv.len(), n * half)?;
    need(OP, "pos", pv.len(), n)?;
    need(OP, "inv", iv.len(), half)?;
    if n * half == 0 {
        return Ok(());
    }
    let (ni, hi) = (dim(OP, "n", n)?, dim(OP, "half", half)?);
    let f = gpu.function(&ROPE, "rope_table_f32")?;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut cv).arg(&mut sv).arg(&pv).arg(&iv);
    b.arg(&scale).arg(&ni).arg(&hi);
    // SAFETY: sizes checked; one thread per (token, frequency).
    unsafe { b.launch(grid1(n * half, 256)) }?;
    Ok(())
}
