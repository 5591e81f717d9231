//! Launchers for kernels/adamw8bit.cu: bitsandbytes' AdamW8bit exactly as the CPU runs it
//! ([`adamw8bit_bnb`], [`bnb_adam32`], with the tables of [`BnbTables`]), and the older
//! nearest-code 8-bit AdamW ([`adamw8bit_step`]) with its paged (host-resident state) driver,
//! which only the self-test and the benchmark use.

use crate::cuda::mem::{AsDevView, AsDevViewMut, DevBuf, DevView, DevViewMut};
use crate::optim::adamw8bit::{state_quantizers, BnbScalars, STATE_BLOCKSIZE};
use cudarc::driver::LaunchConfig;

use super::{grid1, need};
use crate::cuda::error::{shape_err, Result};
use crate::cuda::kernels::ADAMW8BIT;
use crate::cuda::twins::adamw8bit::{AdamHyper, QBLOCK};

/// State blocks per CUDA block (kernels/adamw8bit.cu's QPB).
const QPB: usize = 4;
use crate::cuda::Gpu;

/// 8-bit state of one parameter tensor on the device.
pub struct DeviceState8 {
    pub qm: DevBuf<u8>,
    pub absmax_m: DevBuf<f32>,
    pub qv: DevBuf<u8>,
    pub absmax_v: DevBuf<f32>,
}

/// The two 256-entry dynamic maps on the device (signed for m, unsigned for v).
pub struct DeviceMaps {
    pub code_m: DevBuf<f32>,
    pub code_v: DevBuf<f32>,
}

impl DeviceMaps {
    pub fn upload(gpu: &Gpu) -> Result<Self> {
        use crate::cuda::twins::adamw8bit::dynamic_map;
        Ok(DeviceMaps {
            code_m: gpu.clone_htod(&dynamic_map(true))?,
            code_v: gpu.clone_htod(&dynamic_map(false))?,
        })
    }
}

impl DeviceState8 {
    /// Zero state for `n` parameters.
    pub fn zeros(gpu: &Gpu, n: usize) -> Result<Self> {
        use crate::cuda::twins::adamw8bit::{dynamic_map, State8};
        let s = State8::zeros(n, &dynamic_map(true), &dynamic_map(false));
        Ok(DeviceState8 {
            qm: gpu.clone_htod(&s.qm)?,
            absmax_m: gpu.clone_htod(&s.absmax_m)?,
            qv: gpu.clone_htod(&s.qv)?,
            absmax_v: gpu.clone_htod(&s.absmax_v)?,
        })
    }
}

/// One AdamW step over `n` = p.len() parameters (f32 master weights and f32 grads).
pub fn adamw8bit_step(
    gpu: &Gpu,
    p: &mut DevBuf<f32>,
    grad: &DevBuf<f32>,
    st: &mut DeviceState8,
    maps: &DeviceMaps,
    h: &AdamHyper,
) -> Result<()> {
    const OP: &str = "adamw8bit";
    let n = p.len();
    need(OP, "grad", grad.len(), n)?;
    need(OP, "qm", st.qm.len(), n)?;
    need(OP, "qv", st.qv.len(), n)?;
    need(OP, "absmax_m", st.absmax_m.len(), n.div_ceil(QBLOCK))?;
    need(OP, "absmax_v", st.absmax_v.len(), n.div_ceil(QBLOCK))?;
    let nb = n.div_ceil(QBLOCK);
    launch(
        gpu,
        &mut p.slice_mut(..),
        &grad.slice(..n),
        &mut st.qm.slice_mut(..n),
        &mut st.absmax_m.slice_mut(..nb),
        &mut st.qv.slice_mut(..n),
        &mut st.absmax_v.slice_mut(..nb),
        maps,
        h,
        n,
    )
}

/// The kernel launch on views of exactly n (state: ceil(n/256)) elements.
#[allow(clippy::too_many_arguments)]
fn launch(
    gpu: &Gpu,
    p: &mut DevViewMut<f32>,
    grad: &DevView<f32>,
    qm: &mut DevViewMut<u8>,
    absmax_m: &mut DevViewMut<f32>,
    qv: &mut DevViewMut<u8>,
    absmax_v: &mut DevViewMut<f32>,
    maps: &DeviceMaps,
    h: &AdamHyper,
    n: usize,
) -> Result<()> {
    const OP: &str = "adamw8bit";
    need(OP, "code_m", maps.code_m.len(), 256)?;
    need(OP, "code_v", maps.code_v.len(), 256)?;
    if n == 0 {
        return Ok(());
    }
    if h.step == 0 {
        return Err(shape_err(OP, "step counts from 1"));
    }
    let f = gpu.function(&ADAMW8BIT, "adamw8bit_f32")?;
    let (bc1, bc2) = h.bias_corrections();
    let n64 = n as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(p)
        .arg(grad)
        .arg(qm)
        .arg(absmax_m)
        .arg(qv)
        .arg(absmax_v);
    b.arg(&maps.code_m)
        .arg(&maps.code_v)
        .arg(&h.lr)
        .arg(&h.beta1)
        .arg(&h.beta2)
        .arg(&h.eps);
    b.arg(&h.weight_decay)
        .arg(&bc1)
        .arg(&bc2)
        .arg(&h.grad_scale)
        .arg(&n64);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(QBLOCK).div_ceil(QPB) as u32, 1, 1),
        block_dim: (QBLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: callers pass views of n elements (absmax: ceil(n/256)); one block of 256 threads per
    // QPB state blocks, masking i >= n and state blocks past ceil(n/256); the maps hold 256
    // entries (checked).
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Paged 8-bit AdamW: the state lives in host memory and is streamed through one device staging
/// state of `chunk` elements (a multiple of 256) per step: copy in, update, copy out. Use it when
/// the memory plan cannot keep the state on the device. This version copies and computes on one
/// stream (correct, simple); overlapping the copies of chunk i+1 with the update of chunk i on a
/// second stream is the planned refinement (see the module doc of `crate::cuda`).
pub struct PagedAdamW8bit {
    pub chunk: usize,
    /// Host copies of the full state.
    pub host: crate::cuda::twins::adamw8bit::State8,
    staging: DeviceState8,
}

impl PagedAdamW8bit {
    pub fn new(gpu: &Gpu, n: usize, chunk: usize) -> Result<Self> {
        if chunk == 0 || chunk % QBLOCK != 0 {
            return Err(shape_err(
                "paged_adamw8bit",
                format!("chunk {chunk} must be a positive multiple of {QBLOCK}"),
            ));
        }
        use crate::cuda::twins::adamw8bit::{dynamic_map, State8};
        let host = State8::zeros(n, &dynamic_map(true), &dynamic_map(false));
        Ok(PagedAdamW8bit {
            chunk,
            host,
            staging: DeviceState8::zeros(gpu, chunk.min(n.max(1)))?,
        })
    }

    /// One step over all of `p` (device) with `grad` (device), chunk by chunk.
    pub fn step(
        &mut self,
        gpu: &Gpu,
        p: &mut DevBuf<f32>,
        grad: &DevBuf<f32>,
        maps: &DeviceMaps,
        h: &AdamHyper,
    ) -> Result<()> {
        const OP: &str = "paged_adamw8bit";
        let n = p.len();
        need(OP, "state", self.host.qm.len(), n)?;
        need(OP, "grad", grad.len(), n)?;
        let s = gpu;
        let st = &mut self.staging;
        let mut start = 0;
        while start < n {
            let end = (start + self.chunk).min(n);
            let (b0, b1) = (start / QBLOCK, end.div_ceil(QBLOCK));
            let (len, nb) = (end - start, b1 - b0);
            s.memcpy_htod(&self.host.qm[start..end], &mut st.qm.slice_mut(..len))?;
            s.memcpy_htod(&self.host.qv[start..end], &mut st.qv.slice_mut(..len))?;
            s.memcpy_htod(
                &self.host.absmax_m[b0..b1],
                &mut st.absmax_m.slice_mut(..nb),
            )?;
            s.memcpy_htod(
                &self.host.absmax_v[b0..b1],
                &mut st.absmax_v.slice_mut(..nb),
            )?;
            launch(
                gpu,
                &mut p.slice_mut(start..end),
                &grad.slice(start..end),
                &mut st.qm.slice_mut(..len),
                &mut st.absmax_m.slice_mut(..nb),
                &mut st.qv.slice_mut(..len),
                &mut st.absmax_v.slice_mut(..nb),
                maps,
                h,
                len,
            )?;
            s.memcpy_dtoh(&st.qm.slice(..len), &mut self.host.qm[start..end])?;
            s.memcpy_dtoh(&st.qv.slice(..len), &mut self.host.qv[start..end])?;
            s.memcpy_dtoh(&st.absmax_m.slice(..nb), &mut self.host.absmax_m[b0..b1])?;
            s.memcpy_dtoh(&st.absmax_v.slice(..nb), &mut self.host.absmax_v[b0..b1])?;
            start = end;
        }
        s.synchronize()?;
        Ok(())
    }
}

/// The code books and lookup tables of `optim::adamw8bit::state_quantizers()` on the device
/// (signed for m, unsigned for v): upload once, pass to every [`adamw8bit_bnb`] step.
pub struct BnbTables {
    pub code_m: DevBuf<f32>,
    pub code_v: DevBuf<f32>,
    pub lut_m: DevBuf<u8>,
    pub lut_v: DevBuf<u8>,
}

impl BnbTables {
    pub fn upload(gpu: &Gpu) -> Result<Self> {
        let (qm, qv) = state_quantizers();
        Ok(BnbTables {
            code_m: gpu.clone_htod(qm.code())?,
            code_v: gpu.clone_htod(qv.code())?,
            lut_m: gpu.clone_htod(qm.lut())?,
            lut_v: gpu.clone_htod(qv.lut())?,
        })
    }
}

/// The decay factor and its flag as the kernels take them (`decay: None` = no decay).
fn decay_args(s: &BnbScalars) -> (f32, i32) {
    (s.decay.unwrap_or(1.0), i32::from(s.decay.is_some()))
}

/// One bnb AdamW8bit step on p [n] (n = p's length) with gradient g, the state as u8 codes qm,
/// qv [n] and per-256 absmax_m, absmax_v [ceil(n/256)]: the same bits as the CPU's
/// `optim::adamw8bit::adamw8bit_step` (p, codes and absmax).
#[allow(clippy::too_many_arguments)]
pub fn adamw8bit_bnb(
    gpu: &Gpu,
    p: &mut impl AsDevViewMut<f32>,
    g: &impl AsDevView<f32>,
    qm: &mut impl AsDevViewMut<u8>,
    qv: &mut impl AsDevViewMut<u8>,
    absmax_m: &mut impl AsDevViewMut<f32>,
    absmax_v: &mut impl AsDevViewMut<f32>,
    tables: &BnbTables,
    s: &BnbScalars,
) -> Result<()> {
    const OP: &str = "adamw8bit_bnb";
    let (mut pv, gv, mut qmv, mut qvv) = (
        p.dev_view_mut(),
        g.dev_view(),
        qm.dev_view_mut(),
        qv.dev_view_mut(),
    );
    let (mut amv, mut avv) = (absmax_m.dev_view_mut(), absmax_v.dev_view_mut());
    let n = pv.len();
    let nb = n.div_ceil(STATE_BLOCKSIZE);
    need(OP, "grad", gv.len(), n)?;
    need(OP, "qm", qmv.len(), n)?;
    need(OP, "qv", qvv.len(), n)?;
    need(OP, "absmax_m", amv.len(), nb)?;
    need(OP, "absmax_v", avv.len(), nb)?;
    need(OP, "code_m", tables.code_m.len(), 256)?;
    need(OP, "code_v", tables.code_v.len(), 256)?;
    need(OP, "lut_m", tables.lut_m.len(), 65536)?;
    need(OP, "lut_v", tables.lut_v.len(), 65536)?;
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&ADAMW8BIT, "adamw8bit_bnb_f32")?;
    let ((decay, apply_decay), n64) = (decay_args(s), n as i64);
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut pv).arg(&gv).arg(&mut qmv).arg(&mut qvv);
    b.arg(&mut amv).arg(&mut avv);
    b.arg(&tables.code_m)
        .arg(&tables.code_v)
        .arg(&tables.lut_m)
        .arg(&tables.lut_v);
    b.arg(&s.beta1)
        .arg(&s.one_minus_beta1)
        .arg(&s.beta2)
        .arg(&s.one_minus_beta2)
        .arg(&s.correction2)
        .arg(&s.neg_lr_over_c1)
        .arg(&s.eps)
        .arg(&decay)
        .arg(&apply_decay)
        .arg(&n64);
    let threads = nb.div_ceil(QPB) * STATE_BLOCKSIZE;
    // SAFETY: p, grad and the codes hold n elements, the absmax ceil(n/256), the codes 256 and
    // the tables 65536 (checked); one block of 256 threads per QPB state blocks, masking i >= n
    // and state blocks past ceil(n/256); the table index the kernel computes is at most 65535.
    unsafe { b.launch(grid1(threads, STATE_BLOCKSIZE as u32)) }?;
    Ok(())
}

/// bnb's 32-bit step (tensors below `min_8bit_size`) on p, m, v with gradient g (all [p.len()]
/// f32): the same bits as the CPU's `optim::adamw8bit::bnb_adam32_step`.
pub fn bnb_adam32(
    gpu: &Gpu,
    p: &mut impl AsDevViewMut<f32>,
    m: &mut impl AsDevViewMut<f32>,
    v: &mut impl AsDevViewMut<f32>,
    g: &impl AsDevView<f32>,
    s: &BnbScalars,
) -> Result<()> {
    const OP: &str = "bnb_adam32";
    let (mut pv, mut mv, mut vv, gv) = (
        p.dev_view_mut(),
        m.dev_view_mut(),
        v.dev_view_mut(),
        g.dev_view(),
    );
    let n = pv.len();
    need(OP, "m", mv.len(), n)?;
    need(OP, "v", vv.len(), n)?;
    need(OP, "grad", gv.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&ADAMW8BIT, "bnb_adam32_f32")?;
    let ((decay, apply_decay), n64) = (decay_args(s), n as i64);
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut pv).arg(&mut mv).arg(&mut vv).arg(&gv);
    b.arg(&s.beta1)
        .arg(&s.one_minus_beta1)
        .arg(&s.beta2)
        .arg(&s.one_minus_beta2)
        .arg(&s.eps_c2)
        .arg(&s.step_size32)
        .arg(&decay)
        .arg(&apply_decay)
        .arg(&n64);
    // SAFETY: m, v, grad hold at least p.len() = n elements (checked); one thread per element.
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}
