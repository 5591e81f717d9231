//! The `Backend` trait: every numeric op the transformer needs, forward and backward side by side,
//! the optimizer updates and the host<->backend copies, on tensors the backend owns
//! ([`Tensor`]: a host `Vec` on the CPU, device memory on CUDA). The model code (src/model/) is
//! written once against this trait and never reads tensor memory; `cpu.rs` is the reference
//! implementation (plain loops + `gemm` + rayon), `cuda.rs` the same trait on device-resident
//! tensors.
//!
//! Conventions: row-major; arguments are outputs first, then inputs, then dims; shapes in comments.
//! `N` is the number of tokens (batch × time).
//!
//! [`backend_for_spec`] turns a `device` setting (`auto|cpu|cuda|cuda:N`) into a backend; the
//! train and evaluate steps and `recipe generate` / `recipe chat` all go through it, so the same
//! model code runs on either device.

pub mod cpu;
pub mod cuda;
pub mod tensor;

pub use cpu::CpuBackend;
pub use cuda::CudaBackend;
pub use tensor::Tensor;

use crate::cuda::{Device, DeviceRequest};
use std::sync::Arc;

/// The backend for a resolved device: the CPU, or GPU `n` (an error naming the device when it
/// cannot be opened: no driver, no such GPU, no NVRTC / headers / cuBLAS).
pub fn backend_for(device: Device, dtype: &str) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match device {
        Device::Cpu => Arc::new(CpuBackend),
        Device::Cuda(n) => Arc::new(CudaBackend::new(n)?.with_precision(cuda_precision(dtype)?)),
    })
}

/// The CUDA precision for a `dtype` value (`auto` is bf16 there).
fn cuda_precision(dtype: &str) -> anyhow::Result<Precision> {
    Precision::parse(dtype, true)
        .ok_or_else(|| anyhow::anyhow!("dtype `{dtype}`: expected one of {}", DTYPES.join(", ")))
}

/// Parses and resolves `auto|cpu|cuda|cuda:N` against this machine and opens its backend.
/// Returns the backend and one line for the log saying which device runs and why (the
/// `DeviceRequest::resolve` line). An explicit `cuda[:N]` that cannot be honoured is an error
/// naming the device; `auto` falls back to the CPU when there is no driver or GPU, and also when
/// a GPU is present but cannot be used (the line says why). `dtype` (`auto|bf16|f32`) sets what
/// CUDA computes products in (the line says which); the CPU always computes in f32.
pub fn backend_for_spec(spec: &str, dtype: &str) -> anyhow::Result<(Arc<dyn Backend>, String)> {
    let req: DeviceRequest = spec.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(n) = emulated_request(req) {
        return emulated_cuda(n, dtype);
    }
    let (device, line) = req
        .resolve()
        .map_err(|e| crate::cuda::device_error(&req.to_string(), e))?;
    match (req, backend_for(device, dtype)) {
        (_, Ok(be)) if device == Device::Cpu => Ok((be, line)),
        (_, Ok(be)) => Ok((
            be,
            format!("{line}, {}", precision_words(cuda_precision(dtype)?)),
        )),
        (DeviceRequest::Auto, Err(e)) => Ok((
            Arc::new(CpuBackend),
            format!("device: cpu (auto; {device} was found but cannot be used: {e:#})"),
        )),
        (_, Err(e)) => Err(e),
    }
}

/// Test hook: with this variable set, `cuda[:N]` opens the emulated device (`kernels/*.cu`
/// compiled for the host, see `crate::cuda::emu`), so the steps' and commands' CUDA path runs
/// end to end in CI without a GPU (`tests/cli_train.rs`). Never set it for real work: the
/// emulated device is slow. Set to `dry`, nothing is computed (`Gpu::emulated_dry`): a run of
/// any size then says what it would hold on a GPU (the numbers are meaningless).
pub const EMULATED_CUDA_HOOK: &str = "RECIPE_TEST_EMULATED_CUDA";

/// GPU n of an explicit `cuda[:N]` request while [`EMULATED_CUDA_HOOK`] is set (the emulated
/// device stands in for it).
fn emulated_request(req: DeviceRequest) -> Option<usize> {
    let hooked = std::env::var(EMULATED_CUDA_HOOK).is_ok_and(|v| !v.is_empty());
    match req {
        DeviceRequest::Exact(Device::Cuda(n)) if hooked => Some(n),
        _ => None,
    }
}

fn emulated_cuda(n: usize, dtype: &str) -> anyhow::Result<(Arc<dyn Backend>, String)> {
    let (be, line) = emulated_cuda_backend(n, dtype)?;
    Ok((Arc::new(be), line))
}

fn emulated_cuda_backend(n: usize, dtype: &str) -> anyhow::Result<(CudaBackend, String)> {
    let precision = cuda_precision(dtype)?;
    let dry = std::env::var(EMULATED_CUDA_HOOK).is_ok_and(|v| v == "dry");
    let gpu = if dry {
        crate::cuda::Gpu::emulated_dry(None, None)
    } else {
        crate::cuda::Gpu::emulated(None)
    }
    .map_err(|e| crate::cuda::device_error(&format!("cuda:{n}"), e))?;
    let label = format!("cuda:{n} emulated{}", if dry { ", dry" } else { "" });
    let be = CudaBackend::on(gpu, label.clone())?.with_precision(precision);
    Ok((
        be,
        format!(
            "device: {label} ({EMULATED_CUDA_HOOK} is set: kernels run on the host), {}",
            precision_words(precision)
        ),
    ))
}

/// The CUDA backend a `device` setting names, for tools that need the concrete type (`recipe
/// bench --model`): `cuda[:N]` or `auto` with a GPU; the emulated device under
/// [`EMULATED_CUDA_HOOK`]. A spec that resolves to the CPU is an error saying so.
pub fn open_cuda(spec: &str, dtype: &str) -> anyhow::Result<(CudaBackend, String)> {
    let req: DeviceRequest = spec.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(n) = emulated_request(req) {
        return emulated_cuda_backend(n, dtype);
    }
    let (device, line) = req
        .resolve()
        .map_err(|e| crate::cuda::device_error(&req.to_string(), e))?;
    let Device::Cuda(n) = device else {
        anyhow::bail!("{line}: this needs a CUDA device (--device cuda)");
    };
    let precision = cuda_precision(dtype)?;
    let be = CudaBackend::new(n)?.with_precision(precision);
    Ok((be, format!("{line}, {}", precision_words(precision))))
}

fn precision_words(p: Precision) -> &'static str {
    match p {
        Precision::Bf16 => "bf16 tensor-core products (dtype = \"f32\" for f32)",
        Precision::F32 => "f32 products",
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

/// One forward's rotary tables, per token: cos[t, i] = cos(pos[t]·θ_i)·scale, sin likewise
/// ([n, half] each; angles in f32 as transformers computes them). Built once per forward by
/// [`Backend::rope_tables`] and used by every layer's [`Backend::rope`].
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    /// The table row of each token (0..n), for kernels that index tables by position.
    pub index: Tensor<i32>,
    /// rot_dim / 2.
    pub half: usize,
}

/// Which keys each query may see. Key j is visible to query i (same batch row b) iff
/// (j <= i or j < `prefix[b]`), `valid[j]`, `valid[i]` and `segment[i] == segment[j]`. A query
/// with no visible key outputs 0.
pub struct AttnMask<'a> {
    /// [B*T] 1 = real token, 0 = padding.
    pub valid: &'a Tensor<u8>,
    /// [B*T] packed-example index (all 0 without packing), −1 on padding.
    pub segment: &'a Tensor<i32>,
    /// ALiBi: (slopes [NH], key positions [B*T]); bias = slope_h · pos_j.
    pub alibi: Option<(&'a Tensor, &'a Tensor)>,
    /// Whether the ALiBi key positions are `index + constant` within each (row, segment)
    /// ([`alibi_is_relative`]), so a kernel may use slope·(j − i) instead.
    pub alibi_relative: bool,
    /// Sliding window w: key j is also hidden from query i when j <= i − w (slot indices).
    pub window: Option<usize>,
    /// [B] per batch row: keys at slots j < prefix[b] are visible to every query of the row
    /// (ChatGLM-6B's bidirectional context up to `<sop>`); None: purely causal.
    pub prefix: Option<&'a Tensor<i32>>,
}

/// Whether ALiBi bias slope·kpos[j] equals slope·(j − i) up to a per-query constant (which
/// softmax ignores): kpos[j] − j is the same for every valid key of a (batch row, segment).
/// True for BLOOM's cumsum(mask) − 1 with left or right padding and for positions that restart
/// per packed example. `valid`, `segment`, `kpos` are [b·t].
pub fn alibi_is_relative(valid: &[u8], segment: &[i32], kpos: &[f32], b: usize, t: usize) -> bool {
    let mut offset: std::collections::HashMap<(usize, i32), f32> = Default::default();
    for bi in 0..b {
        for j in 0..t {
            let idx = bi * t + j;
            if valid[idx] == 0 {
                continue;
            }
            let off = kpos[idx] - j as f32;
            if *offset.entry((bi, segment[idx])).or_insert(off) != off {
                return false;
            }
        }
    }
    true
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

/// Adam state of one tensor in bitsandbytes' blockwise 8-bit form: m, v as u8 codes, one f32
/// absmax per [`crate::optim::adamw8bit::STATE_BLOCKSIZE`] elements.
pub struct Adam8State {
    pub m: Tensor<u8>,
    pub v: Tensor<u8>,
    pub absmax_m: Tensor,
    pub absmax_v: Tensor,
}

/// What a backend computes matrix products in (the `dtype` key of the train, evaluate and
/// generate steps; `--dtype` of `recipe generate` / `chat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 operands and accumulation (the CPU reference; CUDA `sgemm` without TF32).
    #[default]
    F32,
    /// bf16 operands on tensor cores, f32 accumulation and f32 results (CUDA only): as a
    /// torch autocast run, activations, norms, softmax, loss and the optimizer stay f32.
    Bf16,
}

impl Precision {
    /// `auto` (bf16 on CUDA, f32 on the CPU), `bf16` or `f32`; anything else is None.
    pub fn parse(s: &str, cuda: bool) -> Option<Precision> {
        match s {
            "auto" | "" => Some(if cuda {
                Precision::Bf16
            } else {
                Precision::F32
            }),
            "bf16" => Some(Precision::Bf16),
            "f32" => Some(Precision::F32),
            _ => None,
        }
    }
}

/// The `dtype` values, for key checks and errors.
pub const DTYPES: &[&str] = &["auto", "bf16", "f32"];

/// A frozen quantized weight owned by a backend ([`Backend::upload_quant`]).
pub enum QuantWeight {
    /// On the host, multiplied by its own tiled kernels (the CPU backend, or a weight kind a
    /// device has no kernel for).
    Host(Box<dyn crate::quant::QuantLinear>),
    /// A bitsandbytes 4-bit weight resident on a CUDA device.
    Device4(crate::cuda::ops::quant4::Quant4Weight),
    /// A 16-bit weight W [d_out, d_in] resident on a CUDA device as its 16-bit values.
    Device16 {
        bits: Tensor<u16>,
        bf16: bool,
        d_out: usize,
        d_in: usize,
    },
}

/// A strided 2-D window of a tensor for [`Backend::copy2d`]: row r starts at `off + r·ld`.
#[derive(Debug, Clone, Copy)]
pub struct Strided {
    pub ld: usize,
    pub off: usize,
}

impl Strided {
    pub fn rows(ld: usize, off: usize) -> Strided {
        Strided { ld, off }
    }
}

/// Every numeric op of the transformer, forward and backward side by side, the optimizer's
/// updates and the host<->backend copies. Tensors are the backend's own ([`Tensor`]); a length
/// `n` or shape argument says how much of each is used (a tensor may be longer).
pub trait Backend: Send + Sync {
    // ---- storage ----

    /// A zeroed f32 tensor.
    fn zeros(&self, len: usize) -> Tensor;
    /// A zeroed [rows, cols] tensor for a layer activation or its gradient that only the
    /// layer's ops read: f32 on the CPU and in CUDA's f32 mode; stored as bf16 where products are
    /// bf16 anyway (CUDA's bf16 mode: half the memory and no narrowing before each product;
    /// values are rounded to bf16 when written, as a bf16 model's activations are), except for
    /// the few rows of a decode step, whose products are f32 GEMVs over the stored weights.
    fn activation(&self, rows: usize, cols: usize) -> Tensor {
        self.zeros(rows * cols)
    }
    /// A zeroed tensor of `len` stored as `like` is (f32, or bf16 for a bf16 activation).
    fn zeros_like(&self, _like: &Tensor, len: usize) -> Tensor {
        self.zeros(len)
    }
    /// Host values into a new tensor (weights at load, batch data).
    fn upload(&self, v: &[f32]) -> Tensor;
    fn upload_i32(&self, v: &[i32]) -> Tensor<i32>;
    fn upload_u8(&self, v: &[u8]) -> Tensor<u8>;
    /// The memory plan's peak estimate (bytes) for the work about to run, named by an
    /// out-of-memory error (the CPU ignores it).
    fn set_planned_peak(&self, _bytes: u64) {}
    /// Keeps `x` [len] until the backward pass of gradient checkpointing: as it is, or where
    /// products are bf16 anyway stored as bf16 (half the memory; the model then computes from
    /// the stashed values forward and backward alike, as a bf16 model's checkpoints do; ops
    /// widen them where they need f32).
    fn stash(&self, x: Tensor) -> Tensor {
        x
    }
    /// One line on the device memory used so far (None on the CPU): the train step logs it.
    fn memory_line(&self) -> Option<String> {
        None
    }
    /// A tensor's values on the host (checkpoints, the loss, tests).
    fn download(&self, t: &Tensor) -> Vec<f32>;
    fn download_u8(&self, t: &Tensor<u8>) -> Vec<u8>;

    /// dst[d.off + r·d.ld + c] = src[s.off + r·s.ld + c] for r < rows, c < cols.
    fn copy2d(
        &self,
        dst: &mut Tensor,
        d: Strided,
        src: &Tensor,
        s: Strided,
        rows: usize,
        cols: usize,
    );
    /// y[..] = v (the whole tensor).
    fn fill(&self, y: &mut Tensor, v: f32);
    /// y[..n] += x[..n].
    fn add(&self, y: &mut Tensor, x: &Tensor, n: usize);
    /// y[..n] *= s.
    fn scale(&self, y: &mut Tensor, s: f32, n: usize);
    /// y[..n] *= s[0], with `s` a backend scalar (no host round trip).
    fn scale_by(&self, y: &mut Tensor, s: &Tensor, n: usize);
    /// y[r, c] += b[c], y [n, d].
    fn bias_add(&self, y: &mut Tensor, b: &Tensor, n: usize, d: usize);
    /// gb[c] += Σ_r dy[r, c] (rows in order), dy [n, d].
    fn bias_grad(&self, gb: &mut Tensor, dy: &Tensor, n: usize, d: usize);
    /// LoRA dropout with one mask definition on every backend ([`crate::rng::dropout_keep`]):
    /// y[i] (= or += when `accumulate`) keep(key, i, p) ? x[i]·(1/(1−p)) : 0, i < n.
    #[allow(clippy::too_many_arguments)]
    fn dropout(&self, y: &mut Tensor, x: &Tensor, p: f32, key: u64, n: usize, accumulate: bool);

    // ---- layers ----

    /// C[m,n] = beta·C + op(A)·op(B), op = transpose when the flag is set.
    /// A is [m,k] (or [k,m] when `ta`), B is [k,n] (or [n,k] when `tb`).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        c: &mut Tensor,
        a: &Tensor,
        b: &Tensor,
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        beta: f32,
    );

    /// A frozen quantized weight as this backend keeps it (the CPU: as loaded; CUDA: a 4-bit
    /// weight's packed nibbles, absmax and code on the device).
    fn upload_quant(&self, w: Box<dyn crate::quant::QuantLinear>) -> QuantWeight;
    /// A frozen quantized weight W [d_out, d_in]: forward y[n,d_out] = x·Wᵀ (overwritten), or
    /// with `backward` dx[n,d_in] += dy·W (x is then dy, y is dx).
    fn quant_matmul(&self, y: &mut Tensor, x: &Tensor, w: &QuantWeight, n: usize, backward: bool);
    /// W [d_out, d_in] as a dense f32 tensor when that is exact (16-bit weights), to train it;
    /// None for 4-bit weights.
    fn quant_dense(&self, w: &QuantWeight) -> Option<Tensor>;

    /// y[n,d] = w ⊙ x·rstd, rstd[n] = 1/sqrt(mean(x²)+eps) (HF RMSNorm, f32 variance).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_fwd(
        &self,
        y: &mut Tensor,
        rstd: &mut Tensor,
        x: &Tensor,
        w: &Tensor,
        n: usize,
        d: usize,
        eps: f32,
    );
    /// dx[n,d] (overwritten) and dw[d] (accumulated, if given) from dy[n,d].
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_bwd(
        &self,
        dx: &mut Tensor,
        dw: Option<&mut Tensor>,
        dy: &Tensor,
        x: &Tensor,
        w: &Tensor,
        rstd: &Tensor,
        n: usize,
        d: usize,
    );

    /// y[n,d] = (x−mean)·rstd ⊙ w + b.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &self,
        y: &mut Tensor,
        mean: &mut Tensor,
        rstd: &mut Tensor,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        n: usize,
        d: usize,
        eps: f32,
    );
    /// dx (overwritten), dw/db (accumulated, if given).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self,
        dx: &mut Tensor,
        dw: Option<&mut Tensor>,
        db: Option<&mut Tensor>,
        dy: &Tensor,
        x: &Tensor,
        w: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        n: usize,
        d: usize,
    );

    /// The rotary tables of one forward for positions `pos` [n] (see [`RopeTables`]).
    fn rope_tables(&self, pos: &Tensor, n: usize, freqs: &RopeFreqs) -> RopeTables;
    /// In place on x[n, heads, hd]: rotates the first 2·tab.half dims of each head of token t
    /// by the angles of table row t. `inverse` applies the transpose (the backward).
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut Tensor,
        tab: &RopeTables,
        n: usize,
        heads: usize,
        hd: usize,
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
        out: &mut Tensor,
        saved: &mut Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
        dims: AttnDims,
        scale: f32,
    );
    /// dq, dk, dv overwritten. With P recomputed from `saved`: dP = dO·Vᵀ;
    /// dS = P⊙(dP − rowsum(dP⊙P)); dQ = s·dS·K; dK = s·dSᵀ·Q; dV = Pᵀ·dO.
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self,
        dq: &mut Tensor,
        dk: &mut Tensor,
        dv: &mut Tensor,
        dout: &Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        saved: &Tensor,
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
        out: &mut Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        valid: &Tensor<u8>,
        alibi: Option<(&Tensor, &Tensor)>,
        window: Option<usize>,
        dims: AttnDims,
        cap: usize,
        past: usize,
        scale: f32,
    );

    /// a = silu(e) ⊙ g, all [n].
    fn swiglu_fwd(&self, a: &mut Tensor, e: &Tensor, g: &Tensor, n: usize);
    /// σ = sigmoid(e); dg = da⊙e·σ; de = da⊙g⊙σ·(1 + e·(1−σ)).
    fn swiglu_bwd(
        &self,
        de: &mut Tensor,
        dg: &mut Tensor,
        da: &Tensor,
        e: &Tensor,
        g: &Tensor,
        n: usize,
    );
    /// y = 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), [n].
    fn gelu_fwd(&self, y: &mut Tensor, x: &Tensor, n: usize);
    fn gelu_bwd(&self, dx: &mut Tensor, dy: &Tensor, x: &Tensor, n: usize);
    /// GeGLU: a = gelu_tanh(e) ⊙ g, all [n].
    fn geglu_fwd(&self, a: &mut Tensor, e: &Tensor, g: &Tensor, n: usize);
    /// dg = da⊙gelu_tanh(e); de = da⊙g⊙gelu_tanh'(e).
    fn geglu_bwd(
        &self,
        de: &mut Tensor,
        dg: &mut Tensor,
        da: &Tensor,
        e: &Tensor,
        g: &Tensor,
        n: usize,
    );

    /// y[i, :] = table[ids[i], :] for i < n; rows of width d.
    fn embedding_fwd(&self, y: &mut Tensor, table: &Tensor, ids: &Tensor<i32>, n: usize, d: usize);
    /// dtable[ids[i], :] += dy[i, :] (accumulated).
    fn embedding_bwd(
        &self,
        dtable: &mut Tensor,
        dy: &Tensor,
        ids: &Tensor<i32>,
        n: usize,
        d: usize,
    );

    /// Per row i < n with target t_i >= 0: loss_i = logsumexp(logits_i) − logits_i[t_i], added
    /// to `loss[0]` (Σ loss_i, unscaled). With `grad = Some(scale)` the logits are replaced by
    /// their gradient scale·(softmax(logits_i) − onehot(t_i)) (rows with t_i < 0 get 0).
    /// logits [n,v], targets [n].
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        logits: &mut Tensor,
        loss: &mut Tensor,
        targets: &Tensor<i32>,
        n: usize,
        v: usize,
        grad: Option<f32>,
    );
    /// hits[0] += number of rows i < n with target >= 0 whose first maximal logit is the target.
    fn argmax_hits(
        &self,
        hits: &mut Tensor,
        logits: &Tensor,
        targets: &Tensor<i32>,
        n: usize,
        v: usize,
    );

    /// LoRA forward: y[n,dout] += s·(x·Aᵀ)·Bᵀ. x [n,din], A [r,din], B [dout,r].
    #[allow(clippy::too_many_arguments)]
    fn lora_fwd(
        &self,
        y: &mut Tensor,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        n: usize,
        din: usize,
        dout: usize,
        r: usize,
        s: f32,
    ) {
        let mut v = self.zeros(n * r);
        self.matmul(&mut v, x, a, n, r, din, false, true, 0.0);
        self.scale(&mut v, s, n * r);
        self.matmul(y, &v, b, n, dout, r, false, true, 1.0);
    }
    /// LoRA backward: u = dY·B [n,r]; v = x·Aᵀ (recomputed); dA += s·uᵀx; dB += s·dYᵀv;
    /// dX += s·u·A. Never forms xᵀ·dY (din×dout).
    #[allow(clippy::too_many_arguments)]
    fn lora_bwd(
        &self,
        dx: &mut Tensor,
        da: &mut Tensor,
        db: &mut Tensor,
        dy: &Tensor,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        n: usize,
        din: usize,
        dout: usize,
        r: usize,
        s: f32,
    ) {
        let mut u = self.zeros(n * r);
        self.matmul(&mut u, dy, b, n, r, dout, false, false, 0.0);
        let mut v = self.zeros(n * r);
        self.matmul(&mut v, x, a, n, r, din, false, true, 0.0);
        self.scale(&mut u, s, n * r);
        self.scale(&mut v, s, n * r);
        self.matmul(da, &u, x, r, din, n, true, false, 1.0);
        self.matmul(db, dy, &v, dout, r, n, true, false, 1.0);
        self.matmul(dx, &u, a, n, din, r, false, false, 1.0);
    }

    // ---- optimizer ----

    /// out[i] = ‖xs[i]‖₂ (accumulated in f64 on the CPU, f32 in a fixed order on CUDA; rounded
    /// to f32 per tensor), staying on the backend. out: [>= xs.len()].
    fn norms_into(&self, out: &mut Tensor, xs: &[&Tensor]);
    /// ‖x‖₂ of each tensor (one host synchronization for all of them).
    fn norms(&self, xs: &[&Tensor]) -> Vec<f32> {
        let mut out = self.zeros(xs.len());
        self.norms_into(&mut out, xs);
        self.download(&out)
    }
    /// torch `clip_grad_norm_`'s coefficient from the per-tensor norms `norms[..k]`, on the
    /// backend: out[1] = total = √Σ nᵢ² (f64 sum in order, rounded to f32); out[0] = coef =
    /// min(max_norm / (total + 1e-6), 1) (NaN stays NaN), 1 without `max_norm`. out: [>= 2].
    fn clip_coef(&self, out: &mut Tensor, norms: &Tensor, k: usize, max_norm: Option<f32>);
    /// torch AdamW on p, m, v with gradient g ([`crate::optim::adamw::adamw_step`]).
    fn adamw(
        &self,
        p: &mut Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        g: &Tensor,
        s: &crate::optim::adamw::AdamwScalars,
        weight_decay: bool,
    );
    /// bitsandbytes' 32-bit Adam update of a small tensor in an 8-bit optimizer.
    fn bnb_adam32(
        &self,
        p: &mut Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        g: &Tensor,
        s: &crate::optim::adamw8bit::BnbScalars,
    );
    /// bitsandbytes' blockwise 8-bit AdamW update.
    fn adamw8bit(
        &self,
        p: &mut Tensor,
        st: &mut Adam8State,
        g: &Tensor,
        s: &crate::optim::adamw8bit::BnbScalars,
    );
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
        let (_, line) = backend_for_spec("cpu", "auto").unwrap();
        assert_eq!(line, "device: cpu (requested)");
        let e = backend_for_spec("tpu", "auto").err().unwrap();
        assert_eq!(
            e.to_string(),
            "invalid device 'tpu': expected auto, cpu, cuda or cuda:N (N = GPU index, e.g. cuda:0)"
        );
        if crate::cuda::device::driver_present() {
            return;
        }
        let (_, line) = backend_for_spec("auto", "auto").unwrap();
        assert_eq!(
            line,
            "device: cpu (auto; no CUDA driver found (libcuda.so is not loadable on this machine))"
        );
        let e = backend_for_spec("cuda:1", "auto").err().unwrap();
        assert_eq!(
            e.to_string(),
            "device cuda:1: no CUDA driver found (libcuda.so is not loadable on this machine)"
        );
    }
}
