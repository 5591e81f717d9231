//! Launcher for kernels/adamw8bit.cu and the paged (host-resident state) driver.

use crate::cuda::mem::{DevBuf, DevView, DevViewMut};
use cudarc::driver::LaunchConfig;

use super::need;
use crate::cuda::error::{shape_err, Result};
use crate::cuda::kernels::ADAMW8BIT;
use crate::cuda::twins::adamw8bit::{AdamHyper, QBLOCK};
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
        grid_dim: (n.div_ceil(QBLOCK) as u32, 1, 1),
        block_dim: (QBLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: callers pass views of n elements (absmax: ceil(n/256)); one block of 256 threads per
    // state block, the tail block masks i >= n; the maps hold 256 entries (checked).
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
