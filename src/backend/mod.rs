//! The `Backend` trait: every numeric op the transformer needs, forward and backward side by side,
//! on f32 slices. The model code (src/model/) is written once against this trait; `cpu.rs` is the
//! reference implementation (plain loops + `gemm` + rayon), CUDA implements the same trait.
//!
//! Conventions: row-major; arguments are outputs first, then inputs, then dims; shapes in comments.
//! `N` is the number of tokens (batch × time).
//!
//! [`backend_for_spec`] turns a `device` setting (`auto|cpu|cuda|cuda:N`) into a backend; the
//! train and evaluate steps and `recipe generate` / `recipe chat` all go through it, so the same
//! model code runs on either device.

pub mod cpu;
pub mod cuda;

pub use cpu::CpuBackend;
pub use cuda::CudaBackend;

use crate::cuda::{Device, DeviceRequest};
use std::sync::Arc;

/// The backend for a resolved device: the CPU, or GPU `n` (an error naming the device when it
/// cannot be opened: no driver, no such GPU, no NVRTC / headers / cuBLAS).
pub fn backend_for(device: Device) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match device {
        Device::Cpu => Arc::new(CpuBackend),
        Device::Cuda(n) => Arc::new(CudaBackend::new(n)?),
    })
}

/// Parses and resolves `auto|cpu|cuda|cuda:N` against this machine and opens its backend.
/// Returns the backend and one line for the log saying which device runs and why (the
/// `DeviceRequest::resolve` line). An explicit `cuda[:N]` that cannot be honoured is an error
/// naming the device; `auto` falls back to the CPU when there is no driver or GPU, and also when
/// a GPU is present but cannot be used (the line says why).
pub fn backend_for_spec(spec: &str) -> anyhow::Result<(Arc<dyn Backend>, String)> {
    let req: DeviceRequest = spec.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (device, line) = req
        .resolve()
        .map_err(|e| cuda::device_error(&req.to_string(), e))?;
    match (req, backend_for(device)) {
        (_, Ok(be)) => Ok((be, line)),
        (DeviceRequest::Auto, Err(e)) => Ok((
            Arc::new(CpuBackend),
            format!("device: cpu (auto; {device} was found but cannot be used: {e:#})"),
        )),
        (_, Err(e)) => Err(e),
    }
}

/// The device a step uses: its own `device` key, or the run's `--device` when the key is
/// `auto` (its default).
pub fn step_device<'a>(step_key: &'a str, run_flag: &'a str) -> &'a str {
    match step_key {
        "" | "auto" if !run_flag.is_empty() => run_flag,
        k => k,
    }
}

/// How the rotary embedding pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RopeKind {
    /// LLaMA `rotate_half`: dim i pairs with i + rot_dim/2, θ_i = base^(−2i/rot_dim).
    Half,
    /// ChatGLM / GLM: adjacent pairs (2i, 2i+1) on the first rot_dim dims, θ_i = base^(−2i/rot_dim).
    Interleaved,
}

/// The rotary frequencies of one forward: θ_i (`inv`, rot_dim/2 of them, so rot_dim = 2·len)
/// and the factor cos/sin are multiplied by (YaRN's attention scaling; 1 otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFreqs {
    pub inv: Vec<f32>,
    pub scale: f32,
}

impl RopeFreqs {
    /// The original RoPE: θ_i = base^(−2i/rot_dim), no scaling.
    pub fn plain(rot_dim: usize, base: f32) -> RopeFreqs {
        RopeFreqs {
            inv: cpu::inv_freq(rot_dim, base),
            scale: 1.0,
        }
    }
}

/// Which keys each query may see. Key j is visible to query i (same batch row) iff
/// j <= i, `valid[j]`, `valid[i]` and `segment[i] == segment[j]`. A query with no visible key outputs 0.
pub struct AttnMask<'a> {
    /// [B*T] 1 = real token, 0 = padding.
    pub valid: &'a [u8],
    /// [B*T] packed-example index (all 0 without packing).
    pub segment: &'a [u32],
    /// ALiBi: (slopes [NH], key positions [B*T]); bias = slope_h · pos_j.
    pub alibi: Option<(&'a [f32], &'a [f32])>,
    /// Sliding window w: key j is also hidden from query i when j <= i − w (slot indices).
    pub window: Option<usize>,
}

/// Attention dims: q [B,T,NH,HD], k/v [B,T,KV,HD]; head h reads kv group h / (NH/KV).
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
}

pub trait Backend: Send + Sync {
    /// C[m,n] = beta·C + op(A)·op(B), op = transpose when the flag is set.
    /// A is [m,k] (or [k,m] when `ta`), B is [k,n] (or [n,k] when `tb`).
    #[allow(clippy::too_many_arguments)]
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
    );

    /// y[n,d] = w ⊙ x·rstd, rstd[n] = 1/sqrt(mean(x²)+eps) (HF RMSNorm, f32 variance).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_fwd(
        &self,
        y: &mut [f32],
        rstd: &mut [f32],
        x: &[f32],
        w: &[f32],
        n: usize,
        d: usize,
        eps: f32,
    );
    /// dx[n,d] (overwritten) and dw[d] (accumulated, if given) from dy[n,d].
    #[allow(clippy::too_many_arguments)]
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
    );

    /// y[n,d] = (x−mean)·rstd ⊙ w + b.
    #[allow(clippy::too_many_arguments)]
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
    );
    /// dx (overwritten), dw/db (accumulated, if given).
    #[allow(clippy::too_many_arguments)]
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
    );

    /// In place on x[n, heads, hd]; pos[n]; rotates the first 2·freqs.inv.len() dims of each
    /// head by angles pos·θ_i, cos/sin scaled by `freqs.scale`. `inverse` applies the transpose
    /// (the backward).
    #[allow(clippy::too_many_arguments)]
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
    );

    /// Length of the buffer `attention_fwd` saves for its backward. The CPU keeps one
    /// logsumexp per (token, head): [B,T,NH]; the probabilities are recomputed in backward.
    fn attention_saved_len(&self, dims: AttnDims) -> usize {
        dims.b * dims.t * dims.nh
    }

    /// Causal attention: out[B,T,NH,HD] = softmax(scale·q·kᵀ + alibi, masked)·v, and `saved`
    /// (`attention_saved_len` values; CPU: row logsumexp [B,T,NH], −∞ for rows with no key).
    #[allow(clippy::too_many_arguments)]
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
    );
    /// dq, dk, dv overwritten. With P recomputed from `saved`: dP = dO·Vᵀ;
    /// dS = P⊙(dP − rowsum(dP⊙P)); dQ = s·dS·K; dK = s·dSᵀ·Q; dV = Pᵀ·dO.
    #[allow(clippy::too_many_arguments)]
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
    );

    /// Attention of new queries over a KV cache (generation, no backward).
    /// out, q [B,Tn,NH,HD]; k, v caches [B,cap,KV,HD] already holding the new keys at
    /// past..past+Tn; valid [B*cap]; query i (cache slot past+i) sees valid slots j <= past+i
    /// (and j > past+i − w with a sliding window w).
    /// ALiBi: (slopes [NH], key positions [B*cap]). `dims.t` is Tn.
    #[allow(clippy::too_many_arguments)]
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
    );

    /// a = silu(e) ⊙ g, all [len].
    fn swiglu_fwd(&self, a: &mut [f32], e: &[f32], g: &[f32]);
    /// σ = sigmoid(e); dg = da⊙e·σ; de = da⊙g⊙σ·(1 + e·(1−σ)).
    fn swiglu_bwd(&self, de: &mut [f32], dg: &mut [f32], da: &[f32], e: &[f32], g: &[f32]);
    /// y = 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))).
    fn gelu_fwd(&self, y: &mut [f32], x: &[f32]);
    fn gelu_bwd(&self, dx: &mut [f32], dy: &[f32], x: &[f32]);

    /// y[n,d] = table[ids[i]].
    fn embedding_fwd(&self, y: &mut [f32], table: &[f32], ids: &[u32], d: usize);
    /// dtable[ids[i]] += dy[i] (accumulated).
    fn embedding_bwd(&self, dtable: &mut [f32], dy: &[f32], ids: &[u32], d: usize);

    /// Per row i with target t_i >= 0: loss_i = logsumexp(logits_i) − logits_i[t_i];
    /// dlogits_i = scale·(softmax(logits_i) − onehot(t_i)); rows with t_i < 0 get 0.
    /// Returns Σ loss_i (unscaled). logits, dlogits [n,v].
    fn cross_entropy(
        &self,
        dlogits: Option<&mut [f32]>,
        logits: &[f32],
        targets: &[i64],
        v: usize,
        scale: f32,
    ) -> f64;

    /// LoRA forward (fused): y[n,dout] += s·(x·Aᵀ)·Bᵀ. x [n,din], A [r,din], B [dout,r].
    #[allow(clippy::too_many_arguments)]
    fn lora_fwd(
        &self,
        y: &mut [f32],
        x: &[f32],
        a: &[f32],
        b: &[f32],
        n: usize,
        din: usize,
        dout: usize,
        r: usize,
        s: f32,
    ) {
        let mut v = vec![0.0; n * r];
        self.matmul(&mut v, x, a, n, r, din, false, true, 0.0);
        for x in v.iter_mut() {
            *x *= s;
        }
        self.matmul(y, &v, b, n, dout, r, false, true, 1.0);
    }
    /// LoRA backward (fused): u = dY·B [n,r]; v = x·Aᵀ (recomputed); dA += s·uᵀx; dB += s·dYᵀv;
    /// dX += s·u·A. Never forms xᵀ·dY (din×dout).
    #[allow(clippy::too_many_arguments)]
    fn lora_bwd(
        &self,
        dx: &mut [f32],
        da: &mut [f32],
        db: &mut [f32],
        dy: &[f32],
        x: &[f32],
        a: &[f32],
        b: &[f32],
        n: usize,
        din: usize,
        dout: usize,
        r: usize,
        s: f32,
    ) {
        let mut u = vec![0.0; n * r];
        self.matmul(&mut u, dy, b, n, r, dout, false, false, 0.0);
        let mut v = vec![0.0; n * r];
        self.matmul(&mut v, x, a, n, r, din, false, true, 0.0);
        for t in u.iter_mut().chain(v.iter_mut()) {
            *t *= s;
        }
        self.matmul(da, &u, x, r, din, n, true, false, 1.0);
        self.matmul(db, dy, &v, dout, r, n, true, false, 1.0);
        self.matmul(dx, &u, a, n, din, r, false, false, 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_key_wins_unless_auto() {
        assert_eq!(step_device("auto", "cuda:1"), "cuda:1");
        assert_eq!(step_device("", "cpu"), "cpu");
        assert_eq!(step_device("cpu", "cuda"), "cpu");
        assert_eq!(step_device("auto", ""), "auto");
    }

    /// Without a driver (this build machine, CI): `auto` and `cpu` give the CPU with the
    /// resolve line; `cuda` is one error naming the device; bad text names the accepted forms.
    #[test]
    fn device_specs_without_a_driver() {
        let (_, line) = backend_for_spec("cpu").unwrap();
        assert_eq!(line, "device: cpu (requested)");
        let e = backend_for_spec("tpu").err().unwrap();
        assert_eq!(
            e.to_string(),
            "invalid device 'tpu': expected auto, cpu, cuda or cuda:N (N = GPU index, e.g. cuda:0)"
        );
        if crate::cuda::device::driver_present() {
            return;
        }
        let (_, line) = backend_for_spec("auto").unwrap();
        assert_eq!(
            line,
            "device: cpu (auto; no CUDA driver found (libcuda.so is not loadable on this machine))"
        );
        let e = backend_for_spec("cuda:1").err().unwrap();
        assert_eq!(
            e.to_string(),
            "device cuda:1: no CUDA driver found (libcuda.so is not loadable on this machine)"
        );
    }
}
