//! Attention as cuBLAS GEMMs: bf16 compute mode's training attention past the fused kernels'
//! head dim (or with `RECIPE_CUDA_ATTENTION=gemm`), and f32 mode's past the f32 kernels' head
//! dim (Gemma 3's 256). The products are batched GEMMs with f32 accumulation and f32 output
//! ([`matmul_ld`]) on operands of the element type [`TcElem`]: bf16 (tensor cores) or f32; the
//! masks, ALiBi and the softmax are two elementwise kernels in kernels/attention.cu
//! (`attn_tc_softmax_*`, `attn_tc_bwd_ds_*`) that share `visible()` with the flash-style f32
//! kernels, so both define the same attention.
//!
//! Layouts as [`super::attention::attn_fwd`]: q, o [B, T, Hq, D]; k, v [B, T, Hkv, D]; lse
//! [B, Hq, T] (+∞ for a query that sees no key). Query head h reads kv head g = h / rep
//! (rep = Hq / Hkv); one head of q is a [T, D] matrix with row length Hq·D, so the GEMMs take
//! leading dimensions instead of copies. For each batch row b and each r < rep, one GEMM batched
//! over the kv heads g covers the query heads h = g·rep + r. Scores live in an f32 scratch
//! [Hq, T, ld] for one batch row at a time (ld = T rounded up to 8: aligned rows for cuBLAS).
//! Math, per (b, h), with bias_ij = slope_h·(j − i):
//!
//! - forward: S = scale·Q·Kᵀ; lse_i = log Σ_visible exp(S_ij + bias_ij);
//!   P_ij = exp(S_ij + bias_ij − lse_i) (0 where hidden), stored bf16; O = P·V.
//! - backward (P recomputed from Q, K and lse): delta_i = Σ_c dO_ic·O_ic; dP = dO·Vᵀ;
//!   dS = P ⊙ (dP − delta); dV_g = Σ_r Pᵀ·dO; dQ = scale·dS·K; dK_g = scale·Σ_r dSᵀ·Q.
//!   dq, dk, dv are overwritten (the group sums start with beta 0).
//!
//! In bf16, q, k, v arrive as the backend holds them ([`Src`]: bf16 activations are used as
//! they are) and dO (and f32 q, k, v) are narrowed once per call (in f32 they are used as they
//! are), and P
//! and dS are stored bf16 (f32); every scratch buffer lives in
//! [`TcScratch`], grown to the largest call and reused, so a training step allocates nothing
//! after its first. What it costs: the full T×T scores are computed (twice the causal work) and
//! held per batch row. Training runs the fused kernels ([`super::flash`]) instead unless
//! `RECIPE_CUDA_ATTENTION=gemm`; this path stays until a GPU has timed the two side by side.

use half::bf16;

use super::attention::{attn_delta, check, lens_of, need_bwd, need_fwd, push_masks, DeviceMasks};
use super::blas::{matmul_ld, MatMul};
use super::tensor::narrow_bf16;
use super::{dim, grid1, grown, per_row, Elem, Timings};
use crate::cuda::error::{shape_err, Result};
use crate::cuda::kernels::ATTENTION;
use crate::cuda::mem::{AsDevView, AsDevViewMut, DevBuf, DevView, DevViewMut};
use crate::cuda::twins::attention::AttnDims;
use crate::cuda::Gpu;

/// The reused device buffers of the tensor-core attention (bf16 operands, f32 scores).
#[derive(Default)]
pub struct TcScratch {
    q: Option<DevBuf<bf16>>,
    k: Option<DevBuf<bf16>>,
    v: Option<DevBuf<bf16>>,
    dout: Option<DevBuf<bf16>>,
    /// [Hq, T, T] of one batch row: the scores S, and dP in the backward.
    s: Option<DevBuf<f32>>,
    dp: Option<DevBuf<f32>>,
    /// [Hq, T, T] bf16: P, and dS in the backward.
    p: Option<DevBuf<bf16>>,
    ds: Option<DevBuf<bf16>>,
    /// The same in f32 (f32 operands).
    p32: Option<DevBuf<f32>>,
    ds32: Option<DevBuf<f32>>,
    /// [B, Hq, T]: rowsum(dO ⊙ O).
    delta: Option<DevBuf<f32>>,
    /// Per-stage times when profiling (`RECIPE_CUDA_PROFILE`; None otherwise).
    pub stages: Option<Stages>,
}

/// Wall time per stage of the tensor-core attention ("fwd: softmax", ...): each mark
/// synchronizes the device and adds the time since the previous mark to its stage.
#[derive(Default)]
pub struct Stages {
    last: Option<std::time::Instant>,
    pub acc: Timings,
}

/// Starts (`stage` None) or closes a stage of `stages` (no-op when not profiling).
fn mark(stages: &mut Option<Stages>, gpu: &Gpu, stage: Option<&'static str>) -> Result<()> {
    let Some(st) = stages else { return Ok(()) };
    gpu.synchronize()?;
    let now = std::time::Instant::now();
    if let (Some(name), Some(last)) = (stage, st.last) {
        st.acc.add(name, (now - last).as_secs_f64());
    }
    st.last = Some(now);
    Ok(())
}

/// q, k, v or dO as the caller holds it: f32, or bf16 (the backend's bf16 activations).
pub enum Src<'a> {
    F32(DevView<'a, f32>),
    Bf16(DevView<'a, bf16>),
}

impl Src<'_> {
    fn len(&self) -> usize {
        match self {
            Src::F32(x) => x.len(),
            Src::Bf16(x) => x.len(),
        }
    }
}

/// The element type of the GEMM operands: bf16 (tensor cores; bf16 inputs as they are, f32
/// ones narrowed into reused scratch, P and dS stored bf16) or f32 (f32 inputs as they are, P
/// and dS f32).
pub trait TcElem: Elem {
    /// The softmax and dS kernels writing P (and dS) in this type.
    const SOFTMAX: &'static str;
    const BWD_DS: &'static str;
    /// x[..n] as an operand: x itself, or narrowed into `slot`.
    fn operand<'a>(
        gpu: &Gpu,
        slot: &'a mut Option<DevBuf<bf16>>,
        x: &'a Src<'_>,
        n: usize,
    ) -> Result<DevView<'a, Self>>;
    /// The P / dS slot of this type.
    fn slot<'a>(
        s16: &'a mut Option<DevBuf<bf16>>,
        s32: &'a mut Option<DevBuf<f32>>,
    ) -> &'a mut Option<DevBuf<Self>>;
}

impl TcElem for bf16 {
    const SOFTMAX: &'static str = "attn_tc_softmax_f32";
    const BWD_DS: &'static str = "attn_tc_bwd_ds_f32";
    fn operand<'a>(
        gpu: &Gpu,
        slot: &'a mut Option<DevBuf<bf16>>,
        x: &'a Src<'_>,
        n: usize,
    ) -> Result<DevView<'a, bf16>> {
        match x {
            Src::Bf16(x) => Ok(x.slice(..n)),
            Src::F32(x) => {
                let b = grown(gpu, slot, n)?;
                narrow_bf16(gpu, &mut b.slice_mut(..n), &x.slice(..n))?;
                Ok(b.slice(..))
            }
        }
    }
    fn slot<'a>(
        s16: &'a mut Option<DevBuf<bf16>>,
        _: &'a mut Option<DevBuf<f32>>,
    ) -> &'a mut Option<DevBuf<bf16>> {
        s16
    }
}

impl TcElem for f32 {
    const SOFTMAX: &'static str = "attn_tc_softmax_p32";
    const BWD_DS: &'static str = "attn_tc_bwd_ds_p32";
    fn operand<'a>(
        _: &Gpu,
        _: &'a mut Option<DevBuf<bf16>>,
        x: &'a Src<'_>,
        n: usize,
    ) -> Result<DevView<'a, f32>> {
        match x {
            Src::F32(x) => Ok(x.slice(..n)),
            // f32 compute never makes bf16 activations (Backend::activation).
            Src::Bf16(_) => Err(shape_err("attn_tc", "f32 operands given bf16 values")),
        }
    }
    fn slot<'a>(
        _: &'a mut Option<DevBuf<bf16>>,
        s32: &'a mut Option<DevBuf<f32>>,
    ) -> &'a mut Option<DevBuf<f32>> {
        s32
    }
}

/// The GEMM geometry of one head family: element offsets and row lengths of q-like
/// ([T, Hq, D]) and kv-like ([T, Hkv, D]) operands and of the [Hq, T, T] scores.
#[derive(Clone, Copy)]
struct Geo {
    t: usize,
    d: usize,
    rep: usize,
    hkv: usize,
    /// Row lengths: Hq·D and Hkv·D.
    rq: usize,
    rk: usize,
    /// Row length of the scores: T rounded up to 8, so every row of S (f32) and P (bf16)
    /// starts 16-byte aligned and cuBLAS keeps its vectorized tensor-core kernels (an odd T,
    /// as packing makes, would otherwise drop it to slow ones).
    ld: usize,
    /// T·ld: one head's scores.
    tt: usize,
}

impl Geo {
    fn new(dm: &AttnDims) -> Self {
        Geo {
            t: dm.t,
            d: dm.d,
            rep: dm.hq / dm.hkv,
            hkv: dm.hkv,
            rq: dm.hq * dm.d,
            rk: dm.hkv * dm.d,
            ld: dm.t.next_multiple_of(8),
            tt: dm.t * dm.t.next_multiple_of(8),
        }
    }

    /// [T, T] = alpha · (q-like head h) · (kv-like head g)ᵀ into the scores of heads g·rep + r:
    /// S = scale·Q·Kᵀ and dP = dO·Vᵀ.
    fn scores<E: Elem>(
        &self,
        gpu: &Gpu,
        out: &mut DevBuf<f32>,
        qlike: &DevView<E>,
        kvlike: &DevView<E>,
        alpha: f32,
        r: usize,
    ) -> Result<()> {
        let Geo { t, d, rep, tt, .. } = *self;
        let mm = MatMul {
            m: t,
            n: t,
            k: d,
            trans_a: false,
            trans_b: true,
            alpha,
            beta: 0.0,
        };
        matmul_ld(
            gpu,
            &mut out.slice_mut(r * tt..),
            &qlike.slice(r * d..),
            kvlike,
            &mm,
            self.hkv,
            (rep * d, d, rep * tt),
            (self.rq, self.rk, self.ld),
        )
    }

    /// [T, D] = alpha · (scores-like [T, T] of head h) · (kv-like head g) into the q-like head
    /// h = g·rep + r: O = P·V and dQ = scale·dS·K.
    fn onto_q<E: Elem>(
        &self,
        gpu: &Gpu,
        out: &mut DevViewMut<f32>,
        pr: &DevBuf<E>,
        kvlike: &DevView<E>,
        alpha: f32,
        r: usize,
    ) -> Result<()> {
        let Geo { t, d, rep, tt, .. } = *self;
        let mm = MatMul {
            m: t,
            n: d,
            k: t,
            trans_a: false,
            trans_b: false,
            alpha,
            beta: 0.0,
        };
        matmul_ld(
            gpu,
            &mut out.slice_mut(r * d..),
            &pr.slice(r * tt..),
            kvlike,
            &mm,
            self.hkv,
            (rep * tt, d, rep * d),
            (self.ld, self.rk, self.rq),
        )
    }

    /// [T, D] (+)= alpha · (scores-like of head h)ᵀ · (q-like head h) into the kv-like head g,
    /// summed over r (beta 0 at r = 0): dV = Σ Pᵀ·dO and dK = scale·Σ dSᵀ·Q.
    fn onto_kv<E: Elem>(
        &self,
        gpu: &Gpu,
        out: &mut DevViewMut<f32>,
        pr: &DevBuf<E>,
        qlike: &DevView<E>,
        alpha: f32,
        r: usize,
    ) -> Result<()> {
        let Geo { t, d, rep, tt, .. } = *self;
        let mm = MatMul {
            m: t,
            n: d,
            k: t,
            trans_a: true,
            trans_b: false,
            alpha,
            beta: if r == 0 { 0.0 } else { 1.0 },
        };
        matmul_ld(
            gpu,
            out,
            &pr.slice(r * tt..),
            &qlike.slice(r * d..),
            &mm,
            self.hkv,
            (rep * tt, rep * d, d),
            (self.ld, self.rq, self.rk),
        )
    }
}

impl TcScratch {
    /// The [B, Hq, T] rowsum(dO ⊙ O) scratch, lent to the fused kernels' backward.
    pub fn delta_slot(&mut self) -> &mut Option<DevBuf<f32>> {
        &mut self.delta
    }
}

/// Forward: o [B, T, Hq, D] and lse [B, Hq, T] from q, k, v (module docs), products on `E`
/// operands.
#[allow(clippy::too_many_arguments)]
pub fn attn_tc_fwd<E: TcElem>(
    gpu: &Gpu,
    sc: &mut TcScratch,
    o: &mut impl AsDevViewMut<f32>,
    lse: &mut impl AsDevViewMut<f32>,
    q: Src<'_>,
    k: Src<'_>,
    v: Src<'_>,
    mk: &DeviceMasks,
    dm: &AttnDims,
) -> Result<()> {
    const OP: &str = "attn_tc_fwd";
    check(OP, dm, mk, None)?;
    let (mut o, mut lse) = (o.dev_view_mut(), lse.dev_view_mut());
    if need_fwd(OP, dm, [q.len(), o.len(), k.len(), v.len(), lse.len()])? == 0 {
        return Ok(());
    }
    let (nq, nk, _) = lens_of(dm);
    let g = Geo::new(dm);
    let rows = dm.hq * dm.t;
    let TcScratch {
        q: q16,
        k: k16,
        v: v16,
        s: s_slot,
        p: p16,
        p32,
        stages,
        ..
    } = sc;
    mark(stages, gpu, None)?;
    let sq = E::operand(gpu, q16, &q, nq)?;
    let sk = E::operand(gpu, k16, &k, nk)?;
    let sv = E::operand(gpu, v16, &v, nk)?;
    let s = grown(gpu, s_slot, dm.hq * g.tt)?;
    let p = grown(gpu, E::slot(p16, p32), dm.hq * g.tt)?;
    mark(stages, gpu, Some("fwd: narrow q, k, v"))?;
    let (t, hq, ld) = (
        dim(OP, "t", dm.t)?,
        dim(OP, "hq", dm.hq)?,
        dim(OP, "ld", g.ld)?,
    );
    let w = mk.window_i32(OP)?;
    let f = gpu.function(&ATTENTION, E::SOFTMAX)?;
    let null = 0u64;
    for b in 0..dm.batch {
        let (q0, k0) = (b * dm.t * g.rq, b * dm.t * g.rk);
        let (qb, kb, vb) = (sq.slice(q0..), sk.slice(k0..), sv.slice(k0..));
        for r in 0..g.rep {
            g.scores(gpu, s, &qb, &kb, dm.scale, r)?;
        }
        mark(stages, gpu, Some("fwd: S = Q·Kᵀ"))?;
        let bi = dim(OP, "b", b)?;
        let mut l = gpu.launch_builder(&f);
        l.arg(&mut *p).arg(&mut lse).arg(&*s);
        push_masks(&mut l, mk, &null);
        l.arg(&bi).arg(&t).arg(&ld).arg(&hq).arg(&w);
        // SAFETY: one block of 256 per (h, i) row of the [hq, t, ld] scores (s and p hold
        // hq·t·ld); lse holds batch·hq·t and b < batch; mask lengths checked by `check`; absent
        // masks are null pointers, tested by the kernel.
        unsafe { l.launch(per_row(rows, 256)) }?;
        mark(stages, gpu, Some("fwd: softmax"))?;
        let mut ob = o.slice_mut(q0..);
        for r in 0..g.rep {
            g.onto_q(gpu, &mut ob, p, &vb, 1.0, r)?;
        }
        mark(stages, gpu, Some("fwd: O = P·V"))?;
    }
    Ok(())
}

/// Backward: dq [B, T, Hq, D], dk, dv [B, T, Hkv, D] overwritten, from dout, q, k, v and the
/// forward's o and lse (module docs), products on `E` operands.
#[allow(clippy::too_many_arguments)]
pub fn attn_tc_bwd<E: TcElem>(
    gpu: &Gpu,
    sc: &mut TcScratch,
    dq: &mut impl AsDevViewMut<f32>,
    dk: &mut impl AsDevViewMut<f32>,
    dv: &mut impl AsDevViewMut<f32>,
    dout: Src<'_>,
    q: Src<'_>,
    k: Src<'_>,
    v: Src<'_>,
    o: &impl AsDevView<f32>,
    lse: &impl AsDevView<f32>,
    mk: &DeviceMasks,
    dm: &AttnDims,
) -> Result<()> {
    const OP: &str = "attn_tc_bwd";
    check(OP, dm, mk, None)?;
    let (mut dq, mut dk, mut dv) = (dq.dev_view_mut(), dk.dev_view_mut(), dv.dev_view_mut());
    let (o, lse) = (o.dev_view(), lse.dev_view());
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
    let (nq, nk, nl) = lens_of(dm);
    let g = Geo::new(dm);
    let rows = dm.hq * dm.t;
    let TcScratch {
        q: q16,
        k: k16,
        v: v16,
        dout: do16,
        s: s_slot,
        dp: dp_slot,
        p: p16,
        ds: ds16,
        p32,
        ds32,
        delta: delta_slot,
        stages,
    } = sc;
    mark(stages, gpu, None)?;
    let delta = grown(gpu, delta_slot, nl)?;
    match &dout {
        Src::F32(d) => attn_delta(gpu, &mut delta.slice_mut(..nl), d, &o, dm)?,
        Src::Bf16(d) => attn_delta(gpu, &mut delta.slice_mut(..nl), d, &o, dm)?,
    }
    let sq = E::operand(gpu, q16, &q, nq)?;
    let sdo = E::operand(gpu, do16, &dout, nq)?;
    let sk = E::operand(gpu, k16, &k, nk)?;
    let sv = E::operand(gpu, v16, &v, nk)?;
    let s = grown(gpu, s_slot, dm.hq * g.tt)?;
    let dp = grown(gpu, dp_slot, dm.hq * g.tt)?;
    let p = grown(gpu, E::slot(p16, p32), dm.hq * g.tt)?;
    let ds = grown(gpu, E::slot(ds16, ds32), dm.hq * g.tt)?;
    mark(stages, gpu, Some("bwd: delta, narrow q, k, v, dO"))?;
    let (t, hq, ld) = (
        dim(OP, "t", dm.t)?,
        dim(OP, "hq", dm.hq)?,
        dim(OP, "ld", g.ld)?,
    );
    let w = mk.window_i32(OP)?;
    let f = gpu.function(&ATTENTION, E::BWD_DS)?;
    let null = 0u64;
    for b in 0..dm.batch {
        let (q0, k0) = (b * dm.t * g.rq, b * dm.t * g.rk);
        let (qb, dob) = (sq.slice(q0..), sdo.slice(q0..));
        let (kb, vb) = (sk.slice(k0..), sv.slice(k0..));
        for r in 0..g.rep {
            g.scores(gpu, s, &qb, &kb, dm.scale, r)?;
            g.scores(gpu, dp, &dob, &vb, 1.0, r)?;
        }
        mark(stages, gpu, Some("bwd: S = Q·Kᵀ, dP = dO·Vᵀ"))?;
        let bi = dim(OP, "b", b)?;
        let mut l = gpu.launch_builder(&f);
        l.arg(&mut *p)
            .arg(&mut *ds)
            .arg(&*s)
            .arg(&*dp)
            .arg(&lse)
            .arg(&*delta);
        push_masks(&mut l, mk, &null);
        l.arg(&bi).arg(&t).arg(&ld).arg(&hq).arg(&w);
        // SAFETY: one warp per (h, i) row of the [hq, t, ld] scores (s, dp, p, ds hold hq·t·ld);
        // lse and delta hold batch·hq·t and b < batch; masks as in attn_tc_fwd.
        unsafe { l.launch(grid1(rows * 32, 256)) }?;
        mark(stages, gpu, Some("bwd: P, dS"))?;
        let (mut dqb, mut dkb, mut dvb) =
            (dq.slice_mut(q0..), dk.slice_mut(k0..), dv.slice_mut(k0..));
        for r in 0..g.rep {
            g.onto_kv(gpu, &mut dvb, p, &dob, 1.0, r)?;
            g.onto_kv(gpu, &mut dkb, ds, &qb, dm.scale, r)?;
            g.onto_q(gpu, &mut dqb, ds, &kb, dm.scale, r)?;
        }
        mark(stages, gpu, Some("bwd: dV, dK, dQ"))?;
    }
    Ok(())
}
