//! `CudaBackend`: the [`Backend`] trait on one GPU, through the launchers in `src/cuda/ops`.
//!
//! This is the CORRECTNESS path: every call uploads its host inputs, launches, downloads its
//! outputs and synchronizes (weights included, on every matmul). It lets the train step,
//! evaluation and generation run their unchanged model code on the GPU and be compared with
//! [`CpuBackend`] op by op and loss by loss. It is not fast: keeping activations, weights and
//! adapter state resident on the device (device buffers behind the trait instead of host
//! slices) is the next step.
//!
//! Precision: f32 storage everywhere (the `_f32` kernels, cuBLAS `sgemm` in its default math
//! mode, no TF32), f32 accumulation, so results track the CPU within f32 reassociation error
//! (about 1e-6 relative per op; the self-test's tiny training run allows 1e-3 on the losses).
//!
//! On kernels: matmul (cuBLAS), rmsnorm / layernorm fwd+bwd, rope (both layouts, fwd and
//! inverse), attention fwd+bwd (padding, packed segments, GQA, ALiBi with per-segment
//! contiguous key positions, head dim <= 128), swiglu / gelu fwd+bwd, embedding fwd+bwd,
//! cross_entropy; lora_fwd / lora_bwd are the trait's defaults, i.e. this matmul.
//!
//! On the CPU ([`CpuBackend`]), because no kernel covers them yet:
//! - `attention_cached_fwd` (generation's KV-cache attention);
//! - `attention_fwd` / `attention_bwd` when the head dim exceeds 128, when query heads are not a
//!   multiple of kv heads, with a sliding window, or when ALiBi key positions are not `index + constant` within each
//!   (row, segment) (the kernel's bias is slope·(j − i));
//! - 4-bit (QLoRA) base weights: the model's `QuantLinear` multiplies on the host, outside the
//!   backend, so a quantized base runs its frozen matmuls on the CPU with the rest on the GPU.
//!
//! Memory: `attention_saved_len` is larger than the CPU's (the kernels' backward needs the
//! forward output O besides the logsumexp), so each layer keeps an extra [B,T,NH,HD] on the host.
//!
//! The trait returns no errors, so a CUDA failure inside an op (out of memory, a kernel fault)
//! panics with one line naming the device and the op. Everything that can be checked before the
//! first op is checked by [`CudaBackend::new`]: driver, GPU index, NVRTC, headers (every kernel
//! file used here is compiled there) and cuBLAS.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::cuda::mem::DevBuf;
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

use super::{AttnDims, AttnMask, Backend, CpuBackend, RopeFreqs, RopeKind};
use crate::cuda::error::{CudaError, Result};
use crate::cuda::kernels::{ACT, ATTENTION, CROSS_ENTROPY, EMBEDDING, NORM, ROPE};
use crate::cuda::ops::act::{gelu_tanh_bwd, gelu_tanh_fwd, swiglu_bwd, swiglu_fwd, GluLayout};
use crate::cuda::ops::attention::{attn_bwd, attn_fwd, DeviceMasks};
use crate::cuda::ops::blas::{matmul_f32, MatMul};
use crate::cuda::ops::cross_entropy::{cross_entropy_bwd_inplace, cross_entropy_fwd};
use crate::cuda::ops::embedding::{embedding_bwd, embedding_fwd};
use crate::cuda::ops::norm::{layernorm_bwd, layernorm_fwd, rmsnorm_bwd, rmsnorm_fwd};
use crate::cuda::ops::rope::{rope, RopeDims};
use crate::cuda::twins::attention::AttnDims as KDims;
use crate::cuda::twins::rope::RopeLayout;
use crate::cuda::Gpu;

/// Largest head dim the attention kernels take (static shared tiles).
const ATTN_DMAX: usize = 128;

pub struct CudaBackend {
    gpu: Gpu,
    /// `cuda:N <name> (sm_XY)`, for messages.
    label: String,
    /// One op at a time: the trait is Send + Sync and the model may call it from several
    /// threads, while a cuBLAS handle must not be used concurrently.
    lock: Mutex<()>,
    cpu: CpuBackend,
}

impl CudaBackend {
    /// Opens GPU `ordinal`, compiles (or loads from the cache) every kernel file this backend
    /// uses and creates the cuBLAS handle, so a missing driver, GPU, NVRTC, header or cuBLAS is
    /// one clear error here instead of a failure in the middle of a run.
    pub fn new(ordinal: usize) -> anyhow::Result<Self> {
        let gpu = Gpu::new(ordinal).map_err(|e| device_error(&format!("cuda:{ordinal}"), e))?;
        let label = format!("cuda:{ordinal} {} (sm_{}{})", gpu.name, gpu.cc.0, gpu.cc.1);
        Self::on(gpu, label)
    }

    /// The backend on an opened device (a real GPU, or the emulated one in tests), probing its
    /// kernels (and cuBLAS, on a real GPU) as [`CudaBackend::new`] does.
    pub fn on(gpu: Gpu, label: String) -> anyhow::Result<Self> {
        let probe = |r: Result<()>| r.map_err(|e| anyhow::anyhow!("device {label}: {e}"));
        for (file, f) in [
            (&NORM, "rmsnorm_fwd_f32"),
            (&ROPE, "rope_half_fwd_f32"),
            (&ACT, "swiglu_fwd_f32"),
            (&EMBEDDING, "embedding_fwd_f32"),
            (&CROSS_ENTROPY, "cross_entropy_fwd_f32"),
            (&ATTENTION, "attn_fwd_f32"),
        ] {
            probe(gpu.function(file, f).map(|_| ()))?;
        }
        if !gpu.is_emulated() {
            probe(gpu.blas().map(|_| ()))?;
        }
        Ok(CudaBackend {
            gpu,
            label,
            lock: Mutex::new(()),
            cpu: CpuBackend,
        })
    }

    /// The device's host<->device byte counters.
    pub fn traffic(&self) -> crate::cuda::Traffic {
        self.gpu.traffic()
    }

    /// `cuda:N <name> (sm_XY)`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs one op under the lock; a CUDA error is a panic naming the device and the op.
    fn run<R>(&self, op: &str, f: impl FnOnce(&Gpu) -> Result<R>) -> R {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.gpu.bind_to_thread().and_then(|_| f(&self.gpu));
        match result.and_then(|r| {
            self.gpu.synchronize()?;
            Ok(r)
        }) {
            Ok(r) => r,
            Err(e) => panic!("CUDA backend on {}: {op}: {e}", self.label),
        }
    }
}

/// One line naming the device: `device cuda:0: <why>` (the launcher-level error says
/// `--device`, which is wrong for a recipe's `device` key).
pub(crate) fn device_error(device: &str, e: CudaError) -> anyhow::Error {
    match e {
        CudaError::Unavailable { requested, reason } => {
            anyhow::anyhow!("device {requested}: {reason}")
        }
        e => anyhow::anyhow!("device {device}: {e}"),
    }
}

/// Host → new device buffer (one element of padding for empty inputs: zero-byte allocations are
/// refused by the driver).
fn up<T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, v: &[T]) -> Result<DevBuf<T>> {
    if v.is_empty() {
        return gpu.alloc_zeros(1);
    }
    gpu.clone_htod(v)
}

/// A zeroed device buffer of `n` (at least 1) elements.
fn zeros<T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, n: usize) -> Result<DevBuf<T>> {
    gpu.alloc_zeros(n.max(1))
}

/// The first `dst.len()` elements of `src` into `dst`.
fn down<T: DeviceRepr>(gpu: &Gpu, src: &DevBuf<T>, dst: &mut [T]) -> Result<()> {
    if dst.is_empty() {
        return Ok(());
    }
    gpu.memcpy_dtoh(&src.slice(..dst.len()), dst)?;
    Ok(())
}

/// Whether the kernel's ALiBi bias slope·(j − i) equals the trait's slope·kpos[j] up to a
/// per-query constant (softmax ignores it): kpos[j] − j must be the same for every valid key of
/// a (batch row, segment). True for BLOOM's cumsum(mask) − 1 with left or right padding and for
/// positions that restart per packed example.
fn alibi_is_relative(mask: &AttnMask, b: usize, t: usize) -> bool {
    let Some((_, kpos)) = mask.alibi else {
        return true;
    };
    let mut offset: HashMap<(usize, u32), f32> = HashMap::new();
    for bi in 0..b {
        for j in 0..t {
            let idx = bi * t + j;
            if mask.valid[idx] == 0 {
                continue;
            }
            let off = kpos[idx] - j as f32;
            match offset.entry((bi, mask.segment[idx])) {
                std::collections::hash_map::Entry::Occupied(o) if *o.get() != off => return false,
                std::collections::hash_map::Entry::Occupied(_) => {}
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(off);
                }
            }
        }
    }
    true
}

/// Whether the attention kernels can run these dims and mask (else the CPU does).
fn attention_on_gpu(mask: &AttnMask, dims: AttnDims) -> bool {
    let AttnDims { b, t, nh, nkv, hd } = dims;
    hd > 0
        && hd <= ATTN_DMAX
        && nkv > 0
        && nh % nkv == 0
        && mask.window.is_none()
        && alibi_is_relative(mask, b, t)
}

/// The kernels' segment ids: the trait's, with every padding token in segment −1.
fn kernel_segments(mask: &AttnMask, n: usize) -> Vec<i32> {
    (0..n)
        .map(|i| {
            if mask.valid[i] == 0 {
                -1
            } else {
                mask.segment[i] as i32
            }
        })
        .collect()
}

/// Per-token rope tables [n, rot_dim/2]: row t = cos/sin(pos[t]·θ_i)·scale with the same
/// frequencies and f32 arithmetic as `CpuBackend::rope`.
fn rope_token_tables(pos: &[f32], n: usize, freqs: &RopeFreqs) -> (Vec<f32>, Vec<f32>) {
    let half = freqs.inv.len();
    let (mut cos, mut sin) = (vec![0f32; n * half], vec![0f32; n * half]);
    for t in 0..n {
        for (i, f) in freqs.inv.iter().enumerate() {
            let ang = pos[t] * f;
            cos[t * half + i] = ang.cos() * freqs.scale;
            sin[t * half + i] = ang.sin() * freqs.scale;
        }
    }
    (cos, sin)
}

/// The kernel's masks on the device (see [`GpuMasks::new`]).
struct GpuMasks {
    kmask: DevBuf<u8>,
    seg: DevBuf<i32>,
    slopes: Option<DevBuf<f32>>,
}

impl GpuMasks {
    /// From the trait's mask over `n` = B·T tokens: kmask = valid; segment ids with every
    /// padding token moved to segment −1, so a padding query sees no key (output 0, as the CPU)
    /// while real queries never see padding keys (kmask); ALiBi slopes if any.
    fn new(gpu: &Gpu, mask: &AttnMask, n: usize) -> Result<Self> {
        Ok(GpuMasks {
            kmask: up(gpu, &mask.valid[..n])?,
            seg: up(gpu, &kernel_segments(mask, n))?,
            slopes: match mask.alibi {
                Some((s, _)) => Some(up(gpu, s)?),
                None => None,
            },
        })
    }

    fn view(&self) -> DeviceMasks<'_> {
        DeviceMasks {
            kmask: Some(&self.kmask),
            seg: Some(&self.seg),
            slopes: self.slopes.as_ref(),
        }
    }
}

fn kdims(dims: AttnDims, scale: f32) -> KDims {
    KDims {
        batch: dims.b,
        t: dims.t,
        hq: dims.nh,
        hkv: dims.nkv,
        d: dims.hd,
        scale,
    }
}

impl Backend for CudaBackend {
    fn matmul(
        &self,
        c: &mut [f32],
        a: &[f32],
        b: &[f32],
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        beta: f32,
    ) {
        assert!(
            c.len() >= m * n && a.len() >= m * k && b.len() >= k * n,
            "matmul shape"
        );
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            c[..m * n].iter_mut().for_each(|x| *x *= beta);
            return;
        }
        self.run("matmul", |g| {
            let (da, db) = (up(g, &a[..m * k])?, up(g, &b[..k * n])?);
            let mut dc = if beta != 0.0 {
                up(g, &c[..m * n])?
            } else {
                zeros(g, m * n)?
            };
            let mm = MatMul {
                m,
                n,
                k,
                trans_a: ta,
                trans_b: tb,
                alpha: 1.0,
                beta,
            };
            matmul_f32(g, &mut dc, &da, &db, &mm)?;
            down(g, &dc, &mut c[..m * n])
        })
    }

    fn rmsnorm_fwd(
        &self,
        y: &mut [f32],
        rstd: &mut [f32],
        x: &[f32],
        w: &[f32],
        n: usize,
        d: usize,
        eps: f32,
    ) {
        if n * d == 0 {
            return;
        }
        self.run("rmsnorm_fwd", |g| {
            let (dx, dw) = (up(g, &x[..n * d])?, up(g, &w[..d])?);
            let (mut dy, mut dr) = (zeros(g, n * d)?, zeros(g, n)?);
            rmsnorm_fwd::<f32>(g, &mut dy, &mut dr, &dx, &dw, n, d, eps)?;
            down(g, &dy, &mut y[..n * d])?;
            down(g, &dr, &mut rstd[..n])
        })
    }

    fn rmsnorm_bwd(
        &self,
        dx: &mut [f32],
        dw: Option<&mut [f32]>,
        dy: &[f32],
        x: &[f32],
        w: &[f32],
        rstd: &[f32],
        n: usize,
        d: usize,
    ) {
        if n * d == 0 {
            return;
        }
        self.run("rmsnorm_bwd", |g| {
            let (ddy, dxx, dww, dr) = (
                up(g, &dy[..n * d])?,
                up(g, &x[..n * d])?,
                up(g, &w[..d])?,
                up(g, &rstd[..n])?,
            );
            let mut ddx = zeros(g, n * d)?;
            // dw accumulates: start from the caller's values.
            let mut ddw = match &dw {
                Some(v) => up(g, &v[..d])?,
                None => zeros(g, d)?,
            };
            rmsnorm_bwd::<f32>(g, &mut ddx, &mut ddw, &ddy, &dxx, &dww, &dr, n, d)?;
            down(g, &ddx, &mut dx[..n * d])?;
            if let Some(v) = dw {
                down(g, &ddw, &mut v[..d])?;
            }
            Ok(())
        })
    }

    fn layernorm_fwd(
        &self,
        y: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
        x: &[f32],
        w: &[f32],
        b: &[f32],
        n: usize,
        d: usize,
        eps: f32,
    ) {
        if n * d == 0 {
            return;
        }
        self.run("layernorm_fwd", |g| {
            let (dx, dw, db) = (up(g, &x[..n * d])?, up(g, &w[..d])?, up(g, &b[..d])?);
            let (mut dy, mut dm, mut dr) = (zeros(g, n * d)?, zeros(g, n)?, zeros(g, n)?);
            layernorm_fwd::<f32>(g, &mut dy, &mut dm, &mut dr, &dx, &dw, &db, n, d, eps)?;
            down(g, &dy, &mut y[..n * d])?;
            down(g, &dm, &mut mean[..n])?;
            down(g, &dr, &mut rstd[..n])
        })
    }

    fn layernorm_bwd(
        &self,
        dx: &mut [f32],
        dw: Option<&mut [f32]>,
        db: Option<&mut [f32]>,
        dy: &[f32],
        x: &[f32],
        w: &[f32],
        mean: &[f32],
        rstd: &[f32],
        n: usize,
        d: usize,
    ) {
        if n * d == 0 {
            return;
        }
        self.run("layernorm_bwd", |g| {
            let (ddy, dxx, dww) = (up(g, &dy[..n * d])?, up(g, &x[..n * d])?, up(g, &w[..d])?);
            let (dm, dr) = (up(g, &mean[..n])?, up(g, &rstd[..n])?);
            let mut ddx = zeros(g, n * d)?;
            // dw, db accumulate: start from the caller's values.
            let mut gw = match &dw {
                Some(v) => up(g, &v[..d])?,
                None => zeros(g, d)?,
            };
            let mut gb = match &db {
                Some(v) => up(g, &v[..d])?,
                None => zeros(g, d)?,
            };
            layernorm_bwd::<f32>(
                g, &mut ddx, &mut gw, &mut gb, &ddy, &dxx, &dww, &dm, &dr, n, d,
            )?;
            down(g, &ddx, &mut dx[..n * d])?;
            if let Some(v) = dw {
                down(g, &gw, &mut v[..d])?;
            }
            if let Some(v) = db {
                down(g, &gb, &mut v[..d])?;
            }
            Ok(())
        })
    }

    /// The kernel reads cos/sin tables by position index; here the tables hold one row per
    /// TOKEN (row t = cos/sin(pos[t]·θ_i), computed in f32 exactly as the CPU does) and the
    /// index of token t is t, so any f32 position works and the angles match the CPU bit for bit.
    fn rope(
        &self,
        x: &mut [f32],
        pos: &[f32],
        n: usize,
        heads: usize,
        hd: usize,
        freqs: &RopeFreqs,
        kind: RopeKind,
        inverse: bool,
    ) {
        let half = freqs.inv.len();
        let rot_dim = 2 * half;
        if n * heads * hd == 0 || half == 0 {
            return;
        }
        let (cos, sin) = rope_token_tables(pos, n, freqs);
        let idx: Vec<i32> = (0..n as i32).collect();
        let layout = match kind {
            RopeKind::Half => RopeLayout::Half,
            RopeKind::Interleaved => RopeLayout::Glm,
        };
        let len = n * heads * hd;
        self.run("rope", |g| {
            let (dx, dc, ds, dp) = (up(g, &x[..len])?, up(g, &cos)?, up(g, &sin)?, up(g, &idx)?);
            let mut dy = zeros(g, len)?;
            let dm = RopeDims {
                tokens: n,
                heads,
                hd,
                rot: rot_dim,
                max_pos: n,
            };
            rope::<f32>(g, &mut dy, &dx, &dc, &ds, &dp, dm, layout, inverse)?;
            down(g, &dy, &mut x[..len])
        })
    }

    /// logsumexp [B,NH,T] (+∞ for a row with no key) followed by the output O [B,T,NH,HD]:
    /// the kernels' backward needs O for rowsum(dO⊙O).
    fn attention_saved_len(&self, dims: AttnDims) -> usize {
        dims.b * dims.t * dims.nh * (1 + dims.hd)
    }

    fn attention_fwd(
        &self,
        out: &mut [f32],
        saved: &mut [f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: &AttnMask,
        dims: AttnDims,
        scale: f32,
    ) {
        if !attention_on_gpu(mask, dims) {
            return self
                .cpu
                .attention_fwd(out, saved, q, k, v, mask, dims, scale);
        }
        let AttnDims { b, t, nh, nkv, hd } = dims;
        let (ntok, nq, nk) = (b * t, b * t * nh * hd, b * t * nkv * hd);
        if nq == 0 {
            return;
        }
        let nlse = b * nh * t;
        self.run("attention_fwd", |g| {
            let (dq, dk, dv) = (up(g, &q[..nq])?, up(g, &k[..nk])?, up(g, &v[..nk])?);
            let masks = GpuMasks::new(g, mask, ntok)?;
            let mk = masks.view();
            let (mut o, mut lse) = (zeros(g, nq)?, zeros(g, nlse)?);
            attn_fwd::<f32>(g, &mut o, &mut lse, &dq, &dk, &dv, &mk, &kdims(dims, scale))?;
            down(g, &o, &mut out[..nq])?;
            let (s_lse, s_o) = saved[..nlse + nq].split_at_mut(nlse);
            down(g, &lse, s_lse)?;
            down(g, &o, s_o)
        })
    }

    fn attention_bwd(
        &self,
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        dout: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        saved: &[f32],
        mask: &AttnMask,
        dims: AttnDims,
        scale: f32,
    ) {
        if !attention_on_gpu(mask, dims) {
            return self
                .cpu
                .attention_bwd(dq, dk, dv, dout, q, k, v, saved, mask, dims, scale);
        }
        let AttnDims { b, t, nh, nkv, hd } = dims;
        let (ntok, nq, nk) = (b * t, b * t * nh * hd, b * t * nkv * hd);
        if nq == 0 {
            return;
        }
        let nlse = b * nh * t;
        self.run("attention_bwd", |g| {
            let (gq, gk, gv) = (up(g, &q[..nq])?, up(g, &k[..nk])?, up(g, &v[..nk])?);
            let (go, gdo) = (up(g, &saved[nlse..nlse + nq])?, up(g, &dout[..nq])?);
            let lse = up(g, &saved[..nlse])?;
            let masks = GpuMasks::new(g, mask, ntok)?;
            let mk = masks.view();
            let (mut gdq, mut gdk, mut gdv) = (zeros(g, nq)?, zeros(g, nk)?, zeros(g, nk)?);
            let mut delta = zeros(g, nlse)?;
            attn_bwd::<f32>(
                g,
                &mut gdq,
                &mut gdk,
                &mut gdv,
                &mut delta,
                &gdo,
                &gq,
                &gk,
                &gv,
                &go,
                &lse,
                &mk,
                &kdims(dims, scale),
            )?;
            down(g, &gdq, &mut dq[..nq])?;
            down(g, &gdk, &mut dk[..nk])?;
            down(g, &gdv, &mut dv[..nk])
        })
    }

    /// CPU: no KV-cache attention kernel yet.
    fn attention_cached_fwd(
        &self,
        out: &mut [f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        valid: &[u8],
        alibi: Option<(&[f32], &[f32])>,
        window: Option<usize>,
        dims: AttnDims,
        cap: usize,
        past: usize,
        scale: f32,
    ) {
        self.cpu
            .attention_cached_fwd(out, q, k, v, valid, alibi, window, dims, cap, past, scale)
    }

    fn swiglu_fwd(&self, a: &mut [f32], e: &[f32], g: &[f32]) {
        let n = a.len();
        if n == 0 {
            return;
        }
        self.run("swiglu_fwd", |gpu| {
            let (de, dg) = (up(gpu, &e[..n])?, up(gpu, &g[..n])?);
            let mut da = zeros(gpu, n)?;
            swiglu_fwd::<f32>(gpu, &mut da, &de, &dg, 1, n, GluLayout::Separate)?;
            down(gpu, &da, a)
        })
    }

    fn swiglu_bwd(&self, de: &mut [f32], dg: &mut [f32], da: &[f32], e: &[f32], g: &[f32]) {
        let n = de.len();
        if n == 0 {
            return;
        }
        self.run("swiglu_bwd", |gpu| {
            let (gda, ge, gg) = (up(gpu, &da[..n])?, up(gpu, &e[..n])?, up(gpu, &g[..n])?);
            let (mut gde, mut gdg) = (zeros(gpu, n)?, zeros(gpu, n)?);
            swiglu_bwd::<f32>(
                gpu,
                &mut gde,
                &mut gdg,
                &gda,
                &ge,
                &gg,
                1,
                n,
                GluLayout::Separate,
            )?;
            down(gpu, &gde, de)?;
            down(gpu, &gdg, &mut dg[..n])
        })
    }

    fn gelu_fwd(&self, y: &mut [f32], x: &[f32]) {
        let n = y.len();
        if n == 0 {
            return;
        }
        self.run("gelu_fwd", |g| {
            let dx = g.clone_htod(&x[..n])?;
            let mut dy = g.alloc_zeros::<f32>(n)?;
            gelu_tanh_fwd::<f32>(g, &mut dy, &dx)?;
            down(g, &dy, y)
        })
    }

    fn gelu_bwd(&self, dx: &mut [f32], dy: &[f32], x: &[f32]) {
        let n = dx.len();
        if n == 0 {
            return;
        }
        self.run("gelu_bwd", |g| {
            let (gdy, gx) = (g.clone_htod(&dy[..n])?, g.clone_htod(&x[..n])?);
            let mut gdx = g.alloc_zeros::<f32>(n)?;
            gelu_tanh_bwd::<f32>(g, &mut gdx, &gdy, &gx)?;
            down(g, &gdx, dx)
        })
    }

    fn embedding_fwd(&self, y: &mut [f32], table: &[f32], ids: &[u32], d: usize) {
        let n = ids.len();
        if n * d == 0 {
            return;
        }
        let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        self.run("embedding_fwd", |g| {
            let (gt, gi) = (up(g, table)?, up(g, &ids)?);
            let mut gy = zeros(g, n * d)?;
            embedding_fwd::<f32>(g, &mut gy, &gi, &gt, d)?;
            down(g, &gy, &mut y[..n * d])
        })
    }

    fn embedding_bwd(&self, dtable: &mut [f32], dy: &[f32], ids: &[u32], d: usize) {
        let n = ids.len();
        if n * d == 0 {
            return;
        }
        let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        self.run("embedding_bwd", |g| {
            // dtable accumulates: start from the caller's values.
            let (mut gt, gi, gdy) = (up(g, dtable)?, up(g, &ids)?, up(g, &dy[..n * d])?);
            embedding_bwd::<f32>(g, &mut gt, &gi, &gdy, d)?;
            down(g, &gt, dtable)
        })
    }

    fn cross_entropy(
        &self,
        dlogits: Option<&mut [f32]>,
        logits: &[f32],
        targets: &[i64],
        v: usize,
        scale: f32,
    ) -> f64 {
        let n = targets.len();
        if n * v == 0 {
            return 0.0;
        }
        // The kernels ignore targets outside [0, v); the trait ignores t < 0.
        let tg: Vec<i32> = targets
            .iter()
            .map(|&t| {
                if t < 0 || t as usize >= v {
                    -100
                } else {
                    t as i32
                }
            })
            .collect();
        self.run("cross_entropy", |g| {
            let (mut z, gt) = (up(g, &logits[..n * v])?, up(g, &tg)?);
            let (mut loss, mut lse) = (zeros::<f32>(g, n)?, zeros::<f32>(g, n)?);
            cross_entropy_fwd::<f32>(g, &mut loss, &mut lse, &z, &gt, v)?;
            if let Some(dl) = dlogits {
                cross_entropy_bwd_inplace::<f32>(g, &mut z, &lse, &gt, v, scale)?;
                down(g, &z, &mut dl[..n * v])?;
            }
            let mut host = vec![0f32; n];
            down(g, &loss, &mut host)?;
            Ok(host.iter().map(|&l| l as f64).sum())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask<'a>(
        valid: &'a [u8],
        seg: &'a [u32],
        alibi: Option<(&'a [f32], &'a [f32])>,
    ) -> AttnMask<'a> {
        AttnMask {
            valid,
            segment: seg,
            alibi,
            window: None,
        }
    }

    /// BLOOM's cumsum(mask) − 1 under left padding, and positions restarting per packed
    /// example, are `index + constant` per (row, segment): the kernel's relative bias is exact.
    #[test]
    fn alibi_relative_check() {
        let slopes = [0.5f32];
        // row 0: two pads then 0,1,2; row 1: packed [0,1 | 0,1,2].
        let valid = [0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
        let seg = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1];
        let kpos = [0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 0.0, 1.0, 2.0];
        assert!(alibi_is_relative(
            &mask(&valid, &seg, Some((&slopes, &kpos))),
            2,
            5
        ));
        // A gap inside one segment is not.
        let kpos = [0.0, 0.0, 0.0, 2.0, 3.0, 0.0, 1.0, 0.0, 1.0, 2.0];
        assert!(!alibi_is_relative(
            &mask(&valid, &seg, Some((&slopes, &kpos))),
            2,
            5
        ));
        assert!(alibi_is_relative(&mask(&valid, &seg, None), 2, 5));
    }

    fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: kernel path {g} vs cpu {w}"
            );
        }
    }

    /// The host-side glue of the attention path, with the kernels' CPU twins standing in for
    /// the kernels (the self-test checks kernel = twin on the GPU): kmask, `kernel_segments`
    /// and the relative ALiBi through the twin give CpuBackend's outputs and gradients, on left
    /// padding, a packed row, GQA and BLOOM-style key positions.
    #[test]
    fn attention_glue_matches_cpu_backend_via_twins() {
        use crate::cuda::twins::attention::{attn_bwd, attn_fwd, AttnMasks};
        use crate::cuda::twins::Rng;
        let dims = AttnDims {
            b: 2,
            t: 7,
            nh: 4,
            nkv: 2,
            hd: 8,
        };
        let (nq, nk, nl) = (2 * 7 * 4 * 8, 2 * 7 * 2 * 8, 2 * 4 * 7);
        let mut rng = Rng::new(5);
        let (q, k, v, dout) = (
            rng.normals(nq, 1.0),
            rng.normals(nk, 1.0),
            rng.normals(nk, 1.0),
            rng.normals(nq, 1.0),
        );
        // row 0: two left pads; row 1: two packed examples [3 | 4].
        let valid = [0u8, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        let seg = [0u32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1];
        let kpos = [0f32, 0., 0., 1., 2., 3., 4., 0., 1., 2., 0., 1., 2., 3.];
        let slopes = [0.5f32, 0.25, 0.125, 0.0625];
        for alibi in [None, Some((&slopes[..], &kpos[..]))] {
            let m = mask(&valid, &seg, alibi);
            assert!(attention_on_gpu(&m, dims));
            let scale = 0.35;
            let cpu = CpuBackend;
            let (mut out, mut lse_cpu) = (vec![0f32; nq], vec![0f32; nl]);
            cpu.attention_fwd(&mut out, &mut lse_cpu, &q, &k, &v, &m, dims, scale);
            let (mut dq, mut dk, mut dv) = (vec![0f32; nq], vec![0f32; nk], vec![0f32; nk]);
            cpu.attention_bwd(
                &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &lse_cpu, &m, dims, scale,
            );

            let kseg = kernel_segments(&m, 14);
            let mk = AttnMasks {
                kmask: Some(&valid),
                seg: Some(&kseg),
                slopes: alibi.map(|(s, _)| s),
            };
            let kd = kdims(dims, scale);
            let (mut o, mut lse) = (vec![0f32; nq], vec![0f32; nl]);
            attn_fwd(&mut o, &mut lse, &q, &k, &v, &mk, &kd);
            close("out", &o, &out, 1e-5);
            let (mut gq, mut gk, mut gv) = (vec![0f32; nq], vec![0f32; nk], vec![0f32; nk]);
            attn_bwd(
                &mut gq, &mut gk, &mut gv, &dout, &q, &k, &v, &o, &lse, &mk, &kd,
            );
            close("dq", &gq, &dq, 1e-4);
            close("dk", &gk, &dk, 1e-4);
            close("dv", &gv, &dv, 1e-4);
        }
    }

    /// Per-token tables + the rope twin = CpuBackend::rope bit for bit, both layouts, both ways,
    /// partial rotation and non-integer positions.
    #[test]
    fn rope_glue_matches_cpu_backend_via_twin() {
        use crate::cuda::twins::rope::rope as twin_rope;
        use crate::cuda::twins::Rng;
        let (n, heads, hd, rot) = (5, 3, 8, 4);
        let pos = [0.0f32, 3.0, 17.0, 1000.0, 2.5];
        let x = Rng::new(9).normals(n * heads * hd, 1.0);
        let freqs = RopeFreqs::plain(rot, 10000.0);
        let (cos, sin) = rope_token_tables(&pos, n, &freqs);
        let idx: Vec<i32> = (0..n as i32).collect();
        for (kind, layout) in [
            (RopeKind::Half, RopeLayout::Half),
            (RopeKind::Interleaved, RopeLayout::Glm),
        ] {
            for inverse in [false, true] {
                let mut want = x.clone();
                CpuBackend.rope(&mut want, &pos, n, heads, hd, &freqs, kind, inverse);
                let mut got = vec![0f32; x.len()];
                let sgn = if inverse { -1.0 } else { 1.0 };
                twin_rope(&mut got, &x, &cos, &sin, &idx, heads, hd, rot, layout, sgn);
                assert_eq!(got, want, "{kind:?} inverse {inverse}");
            }
        }
    }

    /// Without a driver (this build machine, CI) construction is one error naming the device.
    #[test]
    fn new_without_driver_is_one_clear_error() {
        if crate::cuda::device::driver_present() {
            return;
        }
        let e = CudaBackend::new(0).err().expect("no driver: an error");
        assert_eq!(
            format!("{e:#}"),
            "device cuda:0: no CUDA driver found (libcuda.so is not loadable on this machine)"
        );
    }
}
