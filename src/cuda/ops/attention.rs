//! Launchers for kernels/attention.cu: causal flash-style attention forward and backward, and
//! the forward of new queries over a KV cache (generation).

use crate::cuda::mem::{AsDevView, AsDevViewMut, DevBuf};
use cudarc::driver::LaunchConfig;

use super::{dim, grid1, grid_u32, kname, need, Elem};
use crate::cuda::error::{shape_err, Result};
use crate::cuda::kernels::ATTENTION;
use crate::cuda::launch::Launch;
use crate::cuda::twins::attention::{AttnDims, CachedDims};
use crate::cuda::Gpu;

/// Rows per block in the kernels (8 warps).
const ROWS: usize = 8;
const DMAX: usize = 128;

/// Optional masks on the device: kmask [batch, t] u8 (0 = padding key), seg [batch, t] i32
/// (packed-sequence ids), prefix [batch] i32 (keys before it are visible to every query of the
/// row), slopes [hq] f32 (ALiBi), and a sliding window (key j hidden from query i when
/// j + window <= i; 0 = none).
#[derive(Default, Clone, Copy)]
pub struct DeviceMasks<'a> {
    pub kmask: Option<&'a DevBuf<u8>>,
    pub seg: Option<&'a DevBuf<i32>>,
    pub prefix: Option<&'a DevBuf<i32>>,
    pub slopes: Option<&'a DevBuf<f32>>,
    pub window: usize,
}

impl DeviceMasks<'_> {
    /// The window as the kernels' last argument.
    pub(super) fn window_i32(&self, op: &'static str) -> Result<i32> {
        dim(op, "window", self.window)
    }
}

/// The dims and masks every attention launcher checks; `dmax`: the largest head dim its kernels
/// take (None: any, the GEMM path).
pub(super) fn check(
    op: &'static str,
    dm: &AttnDims,
    mk: &DeviceMasks,
    dmax: Option<usize>,
) -> Result<()> {
    if dm.d == 0 || dmax.is_some_and(|m| dm.d > m) {
        return Err(shape_err(
            op,
            match dmax {
                Some(m) => format!("head dim {} outside 1..={m}", dm.d),
                None => "head dim 0".into(),
            },
        ));
    }
    if dm.hkv == 0 || dm.hq % dm.hkv != 0 {
        return Err(shape_err(
            op,
            format!(
                "query heads {} not a multiple of kv heads {}",
                dm.hq, dm.hkv
            ),
        ));
    }
    if let Some(m) = mk.kmask {
        need(op, "kmask", m.len(), dm.batch * dm.t)?;
    }
    if let Some(s) = mk.seg {
        need(op, "seg", s.len(), dm.batch * dm.t)?;
    }
    if let Some(p) = mk.prefix {
        need(op, "prefix", p.len(), dm.batch)?;
    }
    if let Some(s) = mk.slopes {
        need(op, "slopes", s.len(), dm.hq)?;
    }
    Ok(())
}

/// Checks a forward's lengths against the dims: [q, o, k, v, lse]; returns B·T·Hq·D.
pub(super) fn need_fwd(op: &'static str, dm: &AttnDims, lens: [usize; 5]) -> Result<usize> {
    let (nq, nk, nl) = lens_of(dm);
    let names = ["q", "o", "k", "v", "lse"];
    for ((what, len), want) in names.into_iter().zip(lens).zip([nq, nq, nk, nk, nl]) {
        need(op, what, len, want)?;
    }
    Ok(nq)
}

/// Checks a backward's lengths: [dout, q, o, dq, k, v, dk, dv, lse]; returns B·T·Hq·D.
pub(super) fn need_bwd(op: &'static str, dm: &AttnDims, lens: [usize; 9]) -> Result<usize> {
    let (nq, nk, nl) = lens_of(dm);
    let names = ["dout", "q", "o", "dq", "k", "v", "dk", "dv", "lse"];
    let wants = [nq, nq, nq, nq, nk, nk, nk, nk, nl];
    for ((what, len), want) in names.into_iter().zip(lens).zip(wants) {
        need(op, what, len, want)?;
    }
    Ok(nq)
}

/// The lengths of q-like ([B, T, Hq, D]), kv-like ([B, T, Hkv, D]) and lse ([B, Hq, T]) tensors.
pub(super) fn lens_of(dm: &AttnDims) -> (usize, usize, usize) {
    (
        dm.batch * dm.t * dm.hq * dm.d,
        dm.batch * dm.t * dm.hkv * dm.d,
        dm.batch * dm.hq * dm.t,
    )
}

/// Pushes the four optional mask pointers (absent ones as a null device pointer).
pub(super) fn push_masks<'a>(b: &mut Launch<'a>, mk: &DeviceMasks<'a>, null: &'a u64) {
    match mk.kmask {
        Some(m) => b.arg(m),
        None => b.arg(null),
    };
    match mk.seg {
        Some(s) => b.arg(s),
        None => b.arg(null),
    };
    match mk.prefix {
        Some(p) => b.arg(p),
        None => b.arg(null),
    };
    match mk.slopes {
        Some(s) => b.arg(s),
        None => b.arg(null),
    };
}

fn grid(op: &'static str, dm: &AttnDims, heads: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (
            dm.t.div_ceil(ROWS) as u32,
            grid_u32(op, "heads", heads, 65535)?,
            grid_u32(op, "batch", dm.batch, 65535)?,
        ),
        block_dim: (32 * ROWS as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// o [B, T, Hq, D], lse [B, Hq, T] from q [B, T, Hq, D], k, v [B, T, Hkv, D].
#[allow(clippy::too_many_arguments)]
pub fn attn_fwd<T: Elem>(
    gpu: &Gpu,
    o: &mut DevBuf<T>,
    lse: &mut DevBuf<f32>,
    q: &DevBuf<T>,
    k: &DevBuf<T>,
    v: &DevBuf<T>,
    mk: &DeviceMasks,
    dm: &AttnDims,
) -> Result<()> {
    const OP: &str = "attn_fwd";
    check(OP, dm, mk, Some(DMAX))?;
    let (nq, nk) = (
        dm.batch * dm.t * dm.hq * dm.d,
        dm.batch * dm.t * dm.hkv * dm.d,
    );
    need(OP, "q", q.len(), nq)?;
    need(OP, "o", o.len(), nq)?;
    need(OP, "k", k.len(), nk)?;
    need(OP, "v", v.len(), nk)?;
    need(OP, "lse", lse.len(), dm.batch * dm.hq * dm.t)?;
    let f = gpu.function(&ATTENTION, &kname::<T>(OP))?;
    let (t, hq, hkv, d) = (
        dim(OP, "t", dm.t)?,
        dim(OP, "hq", dm.hq)?,
        dim(OP, "hkv", dm.hkv)?,
        dim(OP, "d", dm.d)?,
    );
    let w = mk.window_i32(OP)?;
    let null = 0u64;
    let mut b = gpu.launch_builder(&f);
    b.arg(o).arg(lse).arg(q).arg(k).arg(v);
    push_masks(&mut b, mk, &null);
    b.arg(&t).arg(&hq).arg(&hkv).arg(&d).arg(&dm.scale).arg(&w);
    // SAFETY: all sizes checked against (B, T, Hq, Hkv, D); absent masks are passed as null
    // pointers (8-byte zero) which the kernel tests before reading; D <= 128 fits the static
    // shared tiles; Hq % Hkv == 0 keeps the kv head index in range.
    unsafe { b.launch(grid(OP, dm, dm.hq)?) }?;
    Ok(())
}

/// Backward: dq [B,T,Hq,D], dk, dv [B,T,Hkv,D]; `delta` is scratch [B, Hq, T] f32.
#[allow(clippy::too_many_arguments)]
pub fn attn_bwd<T: Elem>(
    gpu: &Gpu,
    dq: &mut DevBuf<T>,
    dk: &mut DevBuf<T>,
    dv: &mut DevBuf<T>,
    delta: &mut DevBuf<f32>,
    dout: &DevBuf<T>,
    q: &DevBuf<T>,
    k: &DevBuf<T>,
    v: &DevBuf<T>,
    o: &DevBuf<T>,
    lse: &DevBuf<f32>,
    mk: &DeviceMasks,
    dm: &AttnDims,
) -> Result<()> {
    const OP: &str = "attn_bwd";
    check(OP, dm, mk, Some(DMAX))?;
    let (nq, nk) = (
        dm.batch * dm.t * dm.hq * dm.d,
        dm.batch * dm.t * dm.hkv * dm.d,
    );
    for (what, len) in [
        ("q", q.len()),
        ("o", o.len()),
        ("dout", dout.len()),
        ("dq", dq.len()),
    ] {
        need(OP, what, len, nq)?;
    }
    for (what, len) in [
        ("k", k.len()),
        ("v", v.len()),
        ("dk", dk.len()),
        ("dv", dv.len()),
    ] {
        need(OP, what, len, nk)?;
    }
    need(OP, "lse", lse.len(), dm.batch * dm.hq * dm.t)?;
    need(OP, "delta", delta.len(), dm.batch * dm.hq * dm.t)?;
    let (t, hq, hkv, d) = (
        dim(OP, "t", dm.t)?,
        dim(OP, "hq", dm.hq)?,
        dim(OP, "hkv", dm.hkv)?,
        dim(OP, "d", dm.d)?,
    );
    let w = mk.window_i32(OP)?;
    let null = 0u64;

    attn_delta(gpu, &mut *delta, dout, o, dm)?;

    let f = gpu.function(&ATTENTION, &kname::<T>("attn_bwd_dq"))?;
    let mut b = gpu.launch_builder(&f);
    b.arg(dq)
        .arg(dout)
        .arg(q)
        .arg(k)
        .arg(v)
        .arg(lse)
        .arg(&*delta);
    push_masks(&mut b, mk, &null);
    b.arg(&t).arg(&hq).arg(&hkv).arg(&d).arg(&dm.scale).arg(&w);
    // SAFETY: as attn_fwd; dq rows are owned by one warp each (no races).
    unsafe { b.launch(grid(OP, dm, dm.hq)?) }?;

    let f = gpu.function(&ATTENTION, &kname::<T>("attn_bwd_dkdv"))?;
    let mut b = gpu.launch_builder(&f);
    b.arg(dk)
        .arg(dv)
        .arg(dout)
        .arg(q)
        .arg(k)
        .arg(v)
        .arg(lse)
        .arg(&*delta);
    push_masks(&mut b, mk, &null);
    b.arg(&t).arg(&hq).arg(&hkv).arg(&d).arg(&dm.scale).arg(&w);
    // SAFETY: as attn_fwd; grid over kv heads, each warp owns one key row of dk/dv.
    unsafe { b.launch(grid(OP, dm, dm.hkv)?) }?;
    Ok(())
}

/// delta [B, Hq, T] f32 = rowsum(dO ⊙ O) over the head dim, from dout and o [B, T, Hq, D]: the
/// backward's per-row correction of dS.
pub fn attn_delta<TD: Elem, TO: Elem>(
    gpu: &Gpu,
    delta: &mut impl AsDevViewMut<f32>,
    dout: &impl AsDevView<TD>,
    o: &impl AsDevView<TO>,
    dm: &AttnDims,
) -> Result<()> {
    const OP: &str = "attn_bwd_delta";
    let (mut delta, dout, o) = (delta.dev_view_mut(), dout.dev_view(), o.dev_view());
    let nq = dm.batch * dm.t * dm.hq * dm.d;
    need(OP, "o", o.len(), nq)?;
    need(OP, "dout", dout.len(), nq)?;
    need(OP, "delta", delta.len(), dm.batch * dm.hq * dm.t)?;
    if nq == 0 {
        return Ok(());
    }
    let (bsz, t, hq, d) = (
        dim(OP, "batch", dm.batch)?,
        dim(OP, "t", dm.t)?,
        dim(OP, "hq", dm.hq)?,
        dim(OP, "d", dm.d)?,
    );
    let name = match TD::SUFFIX == TO::SUFFIX {
        true => kname::<TD>(OP),
        false => format!("{OP}_{}_{}", TD::SUFFIX, TO::SUFFIX),
    };
    let f = gpu.function(&ATTENTION, &name)?;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut delta)
        .arg(&dout)
        .arg(&o)
        .arg(&bsz)
        .arg(&t)
        .arg(&hq)
        .arg(&d);
    // SAFETY: one warp per (b, i, h) row of nq/D rows; sizes checked.
    unsafe { b.launch(grid1(nq / dm.d * 32, 256)) }?;
    Ok(())
}

/// Largest head dim of `attn_cached_fwd` (one thread per output dim in a 256-thread block).
const CACHED_DMAX: usize = 256;

/// Attention of new queries over a KV cache (generation), the CPU backend's
/// `attention_cached_fwd`: out, q [b·tn, nh, hd]; k, v [b·cap, nkv, hd]; valid [b·cap] u8;
/// alibi = (slopes [nh], kpos [b·cap]) or None. Geometry and window in `dm`.
pub fn attn_cached_fwd(
    gpu: &Gpu,
    out: &mut impl AsDevViewMut<f32>,
    q: &impl AsDevView<f32>,
    k: &impl AsDevView<f32>,
    v: &impl AsDevView<f32>,
    valid: &impl AsDevView<u8>,
    alibi: Option<(&dyn AsDevView<f32>, &dyn AsDevView<f32>)>,
    dm: &CachedDims,
) -> Result<()> {
    const OP: &str = "attn_cached_fwd";
    if dm.hd == 0 || dm.hd > CACHED_DMAX {
        return Err(shape_err(
            OP,
            format!("head dim {} outside 1..={CACHED_DMAX}", dm.hd),
        ));
    }
    if dm.nkv == 0 || dm.nh % dm.nkv != 0 {
        return Err(shape_err(
            OP,
            format!(
                "query heads {} not a multiple of kv heads {}",
                dm.nh, dm.nkv
            ),
        ));
    }
    if dm.past + dm.tn > dm.cap {
        return Err(shape_err(
            OP,
            format!(
                "past {} + {} new tokens exceed the cache's {} slots",
                dm.past, dm.tn, dm.cap
            ),
        ));
    }
    if dm.window == Some(0) {
        return Err(shape_err(OP, "window of 0 slots"));
    }
    let (mut ov, qv, kv, vv, mv) = (
        out.dev_view_mut(),
        q.dev_view(),
        k.dev_view(),
        v.dev_view(),
        valid.dev_view(),
    );
    let (nq, nk) = (dm.b * dm.tn * dm.nh * dm.hd, dm.b * dm.cap * dm.nkv * dm.hd);
    need(OP, "out", ov.len(), nq)?;
    need(OP, "q", qv.len(), nq)?;
    need(OP, "k", kv.len(), nk)?;
    need(OP, "v", vv.len(), nk)?;
    need(OP, "valid", mv.len(), dm.b * dm.cap)?;
    let alibi = alibi.map(|(s, p)| (s.dev_view(), p.dev_view()));
    if let Some((s, p)) = &alibi {
        need(OP, "slopes", s.len(), dm.nh)?;
        need(OP, "kpos", p.len(), dm.b * dm.cap)?;
    }
    if nq == 0 {
        return Ok(());
    }
    let rows = grid_u32(OP, "b·tn", dm.b * dm.tn, i32::MAX as usize)?;
    let heads = grid_u32(OP, "nh", dm.nh, 65535)?;
    let [tn, nh, nkv, hd, cap, past] =
        [dm.tn, dm.nh, dm.nkv, dm.hd, dm.cap, dm.past].map(|x| x as i32);
    dim(OP, "b·cap·nkv·hd", nk)?; // every index above fits i64; the dims themselves fit i32
    let window = dim(OP, "window", dm.window.unwrap_or(0))?;
    let null = 0u64;
    let f = gpu.function(&ATTENTION, "attn_cached_fwd_f32")?;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut ov).arg(&qv).arg(&kv).arg(&vv).arg(&mv);
    match &alibi {
        Some((s, p)) => b.arg(s).arg(p),
        None => b.arg(&null).arg(&null),
    };
    b.arg(&tn).arg(&nh).arg(&nkv).arg(&hd).arg(&cap).arg(&past);
    b.arg(&window).arg(&dm.scale);
    // SAFETY: sizes checked against (b, tn, nh, nkv, hd, cap); past + tn <= cap keeps every
    // query slot and visible key slot inside its row; nh % nkv == 0 keeps the kv head in range;
    // hd <= 256 fits the 256-thread block and its static shared arrays; absent ALiBi pointers
    // are null (8-byte zero), tested by the kernel before reading.
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (rows, heads, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }?;
    Ok(())
}
