//! `CudaBackend`: the [`Backend`] trait on one GPU (or the emulated device), on device-resident
//! tensors. Weights cross to the device once, at load ([`Backend::upload`]); activations,
//! gradients and optimizer state stay there; the host sees the batch going up (through a
//! page-locked staging buffer on a GPU: `crate::cuda::context::STAGE_MAX_BYTES`) and, once per
//! optimizer step, one download of [weight norms, loss, gradient norm]
//! (`train::optimizer_step`: clipping's coefficient is computed and applied on the device), plus
//! checkpoints ([`Backend::download`]). The traffic counter ([`CudaBackend::traffic`]) counts
//! every byte and every download that crosses.
//!
//! Memory: every buffer comes from the device's caching allocator (`crate::cuda::pool`), so a
//! training step allocates nothing from the driver once the first step has run. Frozen weights
//! are held as stored: bitsandbytes 4-bit (packed + absmax + code) and 16-bit checkpoints as
//! their u16 values; each such matmul widens W into one shared f32 scratch, then one GEMM.
//!
//! Precision ([`Precision`], the steps' `dtype`): norms, softmax, loss and optimizer state are
//! f32. In f32 mode everything is f32 and products are `sgemm` without TF32, tracking the CPU
//! within f32 reassociation error. In bf16 mode (the default on a GPU) products are bf16
//! tensor-core GEMMs with f32 accumulation, writing f32 or (into a bf16 activation) bf16: an
//! operand stored as bf16 is read as it is, an f32 one is narrowed into one of two reused bf16
//! scratch buffers (a frozen 4-bit weight is dequantized, a 16-bit one converted, straight into
//! its bf16 operand), as torch autocast computes; a forward of at most 8 rows
//! (decode) against a 4-bit or 16-bit weight is one fused GEMV over the stored weight. Training
//! attention runs in bf16 mode on the fused tensor-core kernels (`crate::cuda::ops::flash`), or as
//! bf16 GEMMs + a masked-softmax kernel (`crate::cuda::ops::attention_tc`) past their head dim or
//! with `RECIPE_CUDA_ATTENTION=gemm`; in f32 mode on f32 kernels (head dims past 128 as f32
//! GEMMs + the masked-softmax kernels).
//!
//! Activations in bf16 mode: the layer activations ([`Backend::activation`]: the norm outputs,
//! q / k / v and the attention output, the MLP's gate / up / activated values and their
//! gradients; not the few rows of a decode step, whose products are f32 GEMVs) are stored as
//! bf16, so a product or the fused attention reads them as they are and writes them rounded
//! once; what gradient checkpointing keeps for the backward pass is stashed as bf16
//! ([`Backend::stash`]), and every layer computes from its stashed input forward and recompute
//! alike. The residual stream, the head's logits, the attention's logsumexp and the gradients of
//! the residual stream, q / k / v and the attention output stay f32, as do norm statistics,
//! softmax and loss. An op without a bf16 kernel for its mix of operands
//! widens a bf16 input into a transient f32 tensor and narrows its f32 result back
//! ([`CudaBackend::wide`], [`CudaBackend::f32_out`]).
//!
//! Each op launches on the device's stream and returns; errors of asynchronous work surface at
//! the next download. The trait returns no errors, so a CUDA failure panics with one line naming
//! the device and the op; out of device memory is a [`crate::util::UserPanic`] the step reports
//! as its error (what recipe holds, what is free, the plan's peak, the knobs).
//!
//! Not on kernels yet: attention with ALiBi key positions that are not contiguous per (row,
//! segment); quantized weights other than bitsandbytes 4-bit and 16-bit (none is loaded today).
//! These copy their operands to the host and back (counted as traffic).

use std::sync::Mutex;

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

use super::cpu::CpuBackend;
use super::{
    Adam8State, AttnDims, AttnMask, Backend, Precision, QuantWeight, RopeFreqs, RopeKind,
    RopeTables, Strided, Tensor,
};
use crate::cuda::error::Result;
use crate::cuda::ops::act::{
    dropout as dropout_k, dropout_acc, geglu_bwd, geglu_fwd, gelu_tanh_bwd, gelu_tanh_fwd,
    scale_add, swiglu_bwd, swiglu_fwd, GluLayout,
};
use crate::cuda::ops::adamw8bit::{adamw8bit_bnb, bnb_adam32, BnbTables};
use crate::cuda::ops::attention::{attn_bwd, attn_cached_fwd, attn_fwd, DeviceMasks};
use crate::cuda::ops::attention_tc::{attn_tc_bwd, attn_tc_fwd, Src, TcScratch};
use crate::cuda::ops::blas::{matmul_bf16_f32, matmul_f32, MatMul};
use crate::cuda::ops::cross_entropy::{cross_entropy_bwd_inplace, cross_entropy_fwd};
use crate::cuda::ops::embedding::{embedding_bwd, embedding_fwd};
use crate::cuda::ops::flash::{flash_bwd, flash_fwd, FLASH_DMAX};
use crate::cuda::ops::norm::{layernorm_bwd, layernorm_fwd, rmsnorm_bwd, rmsnorm_fwd};
use crate::cuda::ops::optim::{adamw_torch, clip_coef, norms_sqrt, sumsq_acc};
use crate::cuda::ops::quant4::{dequant_4bit, gemv_4bit, Quant4Weight, GEMV_MAX_ROWS};
use crate::cuda::ops::rope::rope_table;
use crate::cuda::ops::rope::{rope, RopeDims};
use crate::cuda::ops::tensor as tk;
use crate::cuda::ops::{grown, Timings};
use crate::cuda::twins::attention::AttnDims as KDims;
use crate::cuda::twins::attention::CachedDims;
use crate::cuda::twins::rope::RopeLayout;
use crate::cuda::AsDevView;
use crate::cuda::{DevBuf, Gpu};
use half::bf16;

/// Largest head dim the attention kernels take (static shared tiles).
const ATTN_DMAX: usize = 128;

/// An f32 view of a tensor ([`CudaBackend::wide`]).
enum Wide<'a> {
    Same(&'a Tensor),
    Widened(Tensor),
}

impl std::ops::Deref for Wide<'_> {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        match self {
            Wide::Same(t) => t,
            Wide::Widened(t) => t,
        }
    }
}

pub struct CudaBackend {
    gpu: Gpu,
    /// `cuda:N <name> (sm_XY)`, for messages.
    label: String,
    /// One op at a time: the trait is Send + Sync, while a cuBLAS handle must not be used
    /// concurrently.
    lock: Mutex<()>,
    /// The dequantized 4-bit weight of the current matmul: one buffer, grown to the largest
    /// weight and reused by every 4-bit matmul.
    dequant_scratch: Mutex<Option<Tensor>>,
    /// The 8-bit optimizer's code books and lookup tables, uploaded at the first 8-bit step.
    bnb_tables: std::sync::OnceLock<BnbTables>,
    /// The memory plan's peak for the running step, bytes (0: none given).
    planned_peak: std::sync::atomic::AtomicU64,
    /// What matrix products compute in ([`CudaBackend::with_precision`]).
    precision: Precision,
    /// bf16 mode: the two tensor-core operands of the current product (A, B), each one buffer
    /// grown to the largest operand and reused.
    bf16_scratch: Mutex<[Option<DevBuf<bf16>>; 2]>,
    /// bf16 mode: the tensor-core attention's operands and scores, reused.
    attn_tc: Mutex<TcScratch>,
    /// bf16 mode: training attention as cuBLAS GEMMs + masked softmax instead of the fused
    /// kernels (`RECIPE_CUDA_ATTENTION=gemm`): kept so one GPU run can time both; the fused
    /// kernels are not yet measured on a GPU.
    gemm_attention: bool,
    /// bf16 mode: the f32 buffer (device address, elements) whose bf16 copy scratch 0 holds, so
    /// consecutive products of one activation (q, k, v and their LoRA A's read the same x) narrow
    /// it once. Every other op forgets it ([`CudaBackend::run`]), as does a product writing over it.
    narrowed_a: Mutex<Option<(u64, usize)>>,
    /// `RECIPE_CUDA_PROFILE=1`: every op synchronizes and adds its wall time here; the table
    /// goes to stderr when the backend is dropped ([`CudaBackend::profile_table`]).
    profile: Option<Mutex<Timings>>,
}

impl Drop for CudaBackend {
    /// With `RECIPE_CUDA_PROFILE=1`, the per-op table to stderr.
    fn drop(&mut self) {
        let rows = self.profile_table();
        if rows.is_empty() {
            return;
        }
        let total: f64 = rows.iter().map(|r| r.2).sum();
        let pool = self.pool_stats();
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        eprintln!(
            "cuda profile ({}): {total:.3} s in ops, each synchronized; buffers: peak {:.2} GiB live, {:.2} GiB cached now, {} driver allocations",
            self.label,
            gib(pool.peak_in_use),
            gib(pool.cached),
            pool.fresh
        );
        eprintln!(
            "{:<52} {:>8} {:>10} {:>10} {:>6}",
            "op", "calls", "total s", "ms/call", "share"
        );
        for (name, n, secs) in rows {
            eprintln!(
                "{name:<52} {n:>8} {secs:>10.4} {:>10.4} {:>5.1}%",
                1e3 * secs / n as f64,
                100.0 * secs / total
            );
        }
        let stages = self.attention_stages();
        if !stages.is_empty() {
            eprintln!("tensor-core attention by stage (inside the attention rows above):");
            for (name, n, secs) in stages {
                eprintln!(
                    "  {name:<50} {n:>8} {secs:>10.4} {:>10.4}",
                    1e3 * secs / n as f64
                );
            }
        }
    }
}

impl CudaBackend {
    /// Opens GPU `ordinal`, compiles (or loads from the cache) every kernel file this backend
    /// uses and creates the cuBLAS handle, so a missing driver, GPU, NVRTC, header or cuBLAS is
    /// one clear error here instead of a failure in the middle of a run.
    pub fn new(ordinal: usize) -> anyhow::Result<Self> {
        let gpu = Gpu::new(ordinal)
            .map_err(|e| crate::cuda::device_error(&format!("cuda:{ordinal}"), e))?;
        let label = format!("cuda:{ordinal} {} (sm_{}{})", gpu.name, gpu.cc.0, gpu.cc.1);
        Self::on(gpu, label)
    }

    /// The backend on an opened device (a real GPU, or the emulated one in tests), probing its
    /// kernels (and cuBLAS, on a real GPU) as [`CudaBackend::new`] does. Every kernel file is
    /// compiled (or loaded from the cache) here, so no op of a training step pays for NVRTC.
    pub fn on(gpu: Gpu, label: String) -> anyhow::Result<Self> {
        let probe = |r: Result<()>| r.map_err(|e| anyhow::anyhow!("device {label}: {e}"));
        for file in crate::cuda::kernels::ALL {
            probe(gpu.function(file, file.functions[0]).map(|_| ()))?;
        }
        if !gpu.is_emulated() {
            probe(gpu.blas().map(|_| ()))?;
        }
        Ok(CudaBackend {
            gpu,
            label,
            lock: Mutex::new(()),
            dequant_scratch: Mutex::new(None),
            bnb_tables: std::sync::OnceLock::new(),
            planned_peak: std::sync::atomic::AtomicU64::new(0),
            precision: Precision::F32,
            bf16_scratch: Mutex::new([None, None]),
            attn_tc: Mutex::new(TcScratch::default()),
            gemm_attention: std::env::var("RECIPE_CUDA_ATTENTION").is_ok_and(|v| v == "gemm"),
            narrowed_a: Mutex::new(None),
            profile: None,
        }
        .with_profile(std::env::var_os("RECIPE_CUDA_PROFILE").is_some_and(|v| v != "0")))
    }

    /// bf16 mode's training attention as cuBLAS GEMMs + masked softmax (true) or the fused
    /// tensor-core kernels (false, the default; `RECIPE_CUDA_ATTENTION=gemm` sets true).
    pub fn with_gemm_attention(mut self, on: bool) -> Self {
        self.gemm_attention = on;
        self
    }

    /// Times every op (synchronizing after each) for [`CudaBackend::profile_table`], and the
    /// stages of the tensor-core attention.
    pub fn with_profile(mut self, on: bool) -> Self {
        self.profile = on.then(Mutex::default);
        self.attn_tc
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .stages = on.then(Default::default);
        self
    }

    /// The profile so far: one row per op name, largest total first (empty when off).
    pub fn profile_table(&self) -> Vec<(String, u64, f64)> {
        let Some(p) = &self.profile else {
            return Vec::new();
        };
        let mut rows = p.lock().unwrap_or_else(|p| p.into_inner()).rows();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        rows
    }

    /// The tensor-core attention's stages so far (profiling only): (stage, marks, seconds).
    pub fn attention_stages(&self) -> Vec<(String, u64, f64)> {
        let sc = self.attn_tc.lock().unwrap_or_else(|p| p.into_inner());
        sc.stages.as_ref().map_or(Vec::new(), |st| st.acc.rows())
    }

    /// An op's name for the profile: `op` with its shape when profiling (`detail` is not
    /// called otherwise).
    fn op_name(
        &self,
        op: &'static str,
        detail: impl FnOnce() -> String,
    ) -> std::borrow::Cow<'static, str> {
        match self.profile {
            Some(_) => format!("{op} {}", detail()).into(),
            None => op.into(),
        }
    }

    /// The same backend computing matrix products in `p` (f32 when opened).
    pub fn with_precision(mut self, p: Precision) -> Self {
        self.precision = p;
        self
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// bf16 mode: C[m,n] = beta·C + op(A)·op(B), one tensor-core GEMM with f32 accumulation.
    /// An A stored as bf16 is used as it is; an f32 A is narrowed into scratch 0 (once for
    /// consecutive products of one activation). B is `b` when given (stored as bf16), else
    /// produced in bf16 into scratch 1 by `fill_b` (narrowed, dequantized or converted). C keeps
    /// its storage: f32, or bf16 rounded once from the f32 result.
    fn gemm_bf16(
        &self,
        c: &mut Tensor,
        a: &Tensor,
        b: Option<&Tensor>,
        mm: &MatMul,
        b_name: &str,
        fill_b: impl FnOnce(&Gpu, &mut DevBuf<bf16>) -> Result<()>,
    ) {
        let (na, nb, nc) = (mm.m * mm.k, mm.k * mm.n, mm.m * mm.n);
        let mut slots = self.bf16_scratch.lock().unwrap_or_else(|p| p.into_inner());
        let [sa, sb] = &mut *slots;
        let mut narrowed = self.narrowed_a.lock().unwrap_or_else(|p| p.into_inner());
        if !a.is_bf16() {
            let key = (a.device().device_addr(), na);
            if *narrowed != Some(key) || sa.as_ref().is_none_or(|b| b.len() < na) {
                *narrowed = None;
                let name = self.op_name("narrow_bf16 A", || {
                    let (r, c) = if mm.trans_a {
                        (mm.k, mm.m)
                    } else {
                        (mm.m, mm.k)
                    };
                    format!("{r}x{c}")
                });
                self.run_keep(&name, |g| {
                    let sa = grown(g, sa, na)?;
                    tk::narrow_bf16(g, &mut sa.slice_mut(..na), &a.device().slice(..na))
                });
                *narrowed = Some(key);
            }
        }
        // C written over the f32 values scratch 0 holds a copy of: that copy is stale after this
        // product.
        if let (Some((at, len)), false) = (*narrowed, c.is_bf16()) {
            let c_at = c.device().device_addr();
            if c_at < at + 4 * len as u64 && at < c_at + 4 * nc as u64 {
                *narrowed = None;
            }
        }
        drop(narrowed);
        if b.is_none() {
            self.run_keep(b_name, |g| fill_b(g, grown(g, sb, nb)?));
        }
        let name = self.op_name("gemm_bf16", || {
            format!(
                "{}x{}x{} {}{}{}",
                mm.m,
                mm.n,
                mm.k,
                ["N", "T"][mm.trans_a as usize],
                ["N", "T"][mm.trans_b as usize],
                if c.is_bf16() { " -> bf16" } else { "" }
            )
        });
        fn scratch(s: &Option<DevBuf<bf16>>) -> &DevBuf<bf16> {
            s.as_ref().expect("scratch filled above")
        }
        let av = match a.is_bf16() {
            true => a.device_bf16().slice(..na),
            false => scratch(sa).slice(..na),
        };
        let bv = match b {
            Some(b) => b.device_bf16().slice(..nb),
            None => scratch(sb).slice(..nb),
        };
        self.run_keep(&name, |g| match c.is_bf16() {
            true => {
                let mut cv = c.device_bf16_mut().slice_mut(..nc);
                matmul_bf16_f32(g, &mut cv, &av, &bv, mm, 1, (0, 0, 0))
            }
            false => {
                let mut cv = c.device_mut().slice_mut(..nc);
                matmul_bf16_f32(g, &mut cv, &av, &bv, mm, 1, (0, 0, 0))
            }
        })
    }

    /// `t` as f32 for an op without a bf16 kernel: itself, or its bf16 values widened into a
    /// transient tensor.
    fn wide<'a>(&self, t: &'a Tensor) -> Wide<'a> {
        match t.is_bf16() {
            true => Wide::Widened(self.widened(t)),
            false => Wide::Same(t),
        }
    }

    /// A bf16 tensor's values in a new f32 tensor.
    fn widened(&self, t: &Tensor) -> Tensor {
        let n = t.len();
        self.run("widen bf16", |g| {
            let mut y = g.alloc::<f32>(n.max(1))?;
            tk::widen16(g, &mut y.slice_mut(..n), &t.device_bf16().slice(..n), true)?;
            Ok(Tensor::from_device(y, n))
        })
    }

    /// An f32 tensor's values rounded to bf16 in a new bf16 tensor (the profile's `op`).
    fn narrowed(&self, op: &str, t: &Tensor) -> Tensor {
        let n = t.len();
        self.run(op, |g| {
            let mut s = g.alloc::<bf16>(n.max(1))?;
            tk::narrow_bf16(g, &mut s.slice_mut(..n), &t.device().slice(..n))?;
            Ok(Tensor::from_device_bf16(s, n))
        })
    }

    /// A zeroed tensor of `len` values stored as bf16.
    fn zeros_bf16(&self, len: usize) -> Tensor {
        self.run("alloc", |g| {
            Ok(Tensor::from_device_bf16(g.alloc_zeros(len.max(1))?, len))
        })
    }

    /// Runs `f` on `y` as f32, for an op without a bf16 kernel: `y` itself, or for a bf16 `y`
    /// a transient f32 copy narrowed back into `y` afterwards. `keep`: y's values matter (`f`
    /// reads them, or writes only a prefix), so the copy starts as y widened, not as zeros.
    fn f32_out(&self, y: &mut Tensor, keep: bool, f: impl FnOnce(&mut Tensor)) {
        if !y.is_bf16() {
            return f(y);
        }
        let mut t = match keep {
            true => self.widened(y),
            false => self.zeros(y.len()),
        };
        f(&mut t);
        let n = y.len();
        self.run("narrow bf16", |g| {
            tk::narrow_bf16(
                g,
                &mut y.device_bf16_mut().slice_mut(..n),
                &t.device().slice(..n),
            )
        })
    }

    /// The device's host<->device byte counters.
    pub fn traffic(&self) -> crate::cuda::Traffic {
        self.gpu.traffic()
    }

    pub fn reset_traffic(&self) {
        self.gpu.reset_traffic()
    }

    /// The device allocator's counters: driver allocations so far, bytes in use and cached.
    pub fn pool_stats(&self) -> crate::cuda::PoolStats {
        self.gpu.pool_stats()
    }

    /// The device the backend runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// `cuda:N <name> (sm_XY)`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs one op under the lock; a CUDA error is a panic naming the device and the op (the
    /// step running it reports the panic as its error). Out of memory is a
    /// [`crate::util::UserPanic`] (reported as the step's error, not as a bug) that says what
    /// recipe holds, what is free, what the plan expected and which knobs lower the need.
    fn run<R>(&self, op: &str, f: impl FnOnce(&Gpu) -> Result<R>) -> R {
        *self.narrowed_a.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.run_keep(op, f)
    }

    /// [`CudaBackend::run`] keeping the narrowed A operand (the parts of a bf16 product).
    fn run_keep<R>(&self, op: &str, f: impl FnOnce(&Gpu) -> Result<R>) -> R {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let t0 = std::time::Instant::now();
        let mut r = self.gpu.bind_to_thread().and_then(|_| f(&self.gpu));
        if let (Some(p), true) = (&self.profile, r.is_ok()) {
            r = r.and_then(|v| self.gpu.synchronize().map(|_| v));
            let secs = t0.elapsed().as_secs_f64();
            p.lock().unwrap_or_else(|p| p.into_inner()).add(op, secs);
        }
        match r {
            Ok(r) => r,
            Err(e) if crate::cuda::pool::is_oom(&e) => {
                crate::util::user_panic(self.oom_message(op))
            }
            Err(e) => panic!("CUDA backend on {}: {op}: {e}", self.label),
        }
    }

    /// A device-resident frozen weight as f32 into `out` [>= d_out·d_in]: 4-bit dequantized,
    /// 16-bit widened (exact).
    fn widen(&self, out: &mut Tensor, w: &QuantWeight) {
        match w {
            QuantWeight::Device4(q) => self.run("dequant_4bit", |g| {
                dequant_4bit::<f32>(g, out.device_mut(), q)
            }),
            QuantWeight::Device16 { bits, bf16, .. } => self.run("widen16", |g| {
                tk::widen16(
                    g,
                    out.device_mut(),
                    &bits.device().slice(..bits.len()),
                    *bf16,
                )
            }),
            QuantWeight::Host(_) => unreachable!("a host weight is multiplied on the host"),
        }
    }

    /// The out-of-memory error of `op`.
    fn oom_message(&self, op: &str) -> String {
        let h = crate::util::human_bytes;
        let pool = self.gpu.pool_stats();
        let mut m = format!(
            "out of device memory in `{op}` on {}: recipe holds {} (+{} cached)",
            self.label,
            h(pool.in_use as u64),
            h(pool.cached as u64)
        );
        if !self.gpu.is_emulated() {
            if let Ok((free, total)) = cudarc::driver::result::mem_get_info() {
                m += &format!(", {} of {} free", h(free as u64), h(total as u64));
            }
        }
        match self.planned_peak.load(std::sync::atomic::Ordering::Relaxed) {
            0 => {}
            p => m += &format!("; the plan expected a peak of {}", h(p)),
        }
        m + "; lower batch_size or max_length, or set gradient_checkpointing = true \
             (`recipe plan` shows the planned memory)"
    }

    fn up<T: DeviceRepr + ValidAsZeroBits>(&self, v: &[T]) -> Tensor<T> {
        self.run("upload", |g| {
            let buf = if v.is_empty() {
                g.alloc_zeros(1)?
            } else {
                g.clone_htod(v)?
            };
            Ok(Tensor::from_device(buf, v.len()))
        })
    }

    fn down<T: DeviceRepr + Default + Clone>(&self, t: &Tensor<T>) -> Vec<T> {
        if t.is_empty() {
            return Vec::new();
        }
        self.run("download", |g| {
            let mut out = vec![T::default(); t.len()];
            g.memcpy_dtoh(&t.device().slice(..t.len()), &mut out)?;
            Ok(out)
        })
    }

    /// `t`, or (the kernels always write a weight gradient) a zeroed scratch of `len` kept in
    /// `slot`.
    fn or_scratch<'a>(
        &self,
        t: Option<&'a mut Tensor>,
        slot: &'a mut Option<Tensor>,
        len: usize,
    ) -> &'a mut Tensor {
        match t {
            Some(t) => t,
            None => slot.insert(self.zeros(len)),
        }
    }

    /// Overwrites the first `v.len()` values of a device tensor with host values.
    fn put(&self, t: &mut Tensor, v: &[f32]) {
        if v.is_empty() {
            return;
        }
        if t.is_bf16() {
            return self.f32_out(t, v.len() < t.len(), |t| self.put(t, v));
        }
        self.run("upload", |g| {
            g.memcpy_htod(v, &mut t.device_mut().slice_mut(..v.len()))
        })
    }

    /// Runs the CPU backend's op on host copies of device tensors: `inputs` are downloaded,
    /// `outputs` downloaded, updated by `f` and uploaded back. The bridge for ops without a
    /// kernel yet; every byte is counted as traffic.
    fn host_fallback(
        &self,
        outputs: &mut [&mut Tensor],
        inputs: &[&Tensor],
        f: impl FnOnce(&CpuBackend, &mut [Tensor], &[Tensor]),
    ) {
        let ins: Vec<Tensor> = inputs
            .iter()
            .map(|t| Tensor::from_host(self.download(t)))
            .collect();
        let mut outs: Vec<Tensor> = outputs
            .iter()
            .map(|t| Tensor::from_host(self.download(t)))
            .collect();
        f(&CpuBackend, &mut outs, &ins);
        for (t, h) in outputs.iter_mut().zip(&outs) {
            self.put(t, h.host());
        }
    }
}

/// Whether every tensor is stored as bf16 (an op's bf16 kernel applies).
/// An attention operand as the tensor holds it.
fn src(t: &Tensor) -> Src<'_> {
    match t.is_bf16() {
        true => Src::Bf16(t.device_bf16().slice(..)),
        false => Src::F32(t.device().slice(..)),
    }
}

fn all_bf16(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.is_bf16())
}

/// The kernels' attention dims.
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

/// The attention mask's device tensors as the kernels take them.
fn device_masks<'a>(mask: &AttnMask<'a>) -> DeviceMasks<'a> {
    DeviceMasks {
        kmask: Some(mask.valid.device()),
        seg: Some(mask.segment.device()),
        prefix: mask.prefix.map(|p| p.device()),
        slopes: mask.alibi.map(|(s, _)| s.device()),
        window: mask.window.unwrap_or(0),
    }
}

/// bf16 mode's attention: the fused tensor-core kernels (`crate::cuda::ops::flash`), or cuBLAS
/// GEMMs and the masked-softmax kernels (`crate::cuda::ops::attention_tc`) for a head dim past
/// theirs (Gemma 3's 256) or with `RECIPE_CUDA_ATTENTION=gemm`; f32 mode's past the f32
/// kernels' head dim, as f32 GEMMs on the same path; `saved` in the f32 kernels' layout (lse,
/// then O).
#[allow(clippy::too_many_arguments)]
impl CudaBackend {
    fn attention_tc_fwd(
        &self,
        out: &mut Tensor,
        saved: &mut Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
        dims: AttnDims,
        scale: f32,
    ) {
        let (nq, nlse) = (
            dims.b * dims.t * dims.nh * dims.hd,
            dims.b * dims.nh * dims.t,
        );
        let mut sc = self.attn_tc.lock().unwrap_or_else(|p| p.into_inner());
        let gemm = self.attention_as_gemms(dims);
        let op = if gemm {
            "attention_tc_fwd"
        } else {
            "flash_fwd"
        };
        let name = self.op_name(op, || format!("{dims:?}"));
        let (mk, kd) = (device_masks(mask), kdims(dims, scale));
        if !gemm && all_bf16(&[out, q, k, v]) {
            // bf16 activations straight into the fused kernels; `saved` keeps O widened.
            return self.run(&name, |g| {
                let (mut lse, mut so) = saved.device_mut().split_at_mut(nlse);
                let mut o = out.device_bf16_mut().slice_mut(..nq);
                let (q, k, v) = (q.device_bf16(), k.device_bf16(), v.device_bf16());
                flash_fwd::<bf16>(g, &mut o, &mut lse, q, k, v, &mk, &kd)?;
                tk::widen16(g, &mut so.slice_mut(..nq), &o.as_view(), true)
            });
        }
        // The GEMMs take bf16 q, k, v as they are (bf16 mode); the f32 kernels need f32.
        let (q, k, v) = match gemm && self.precision == Precision::Bf16 {
            true => (Wide::Same(q), Wide::Same(k), Wide::Same(v)),
            false => (self.wide(q), self.wide(k), self.wide(v)),
        };
        self.f32_out(out, nq < out.len(), |out| {
            self.run(&name, |g| {
                let (mut lse, mut so) = saved.device_mut().split_at_mut(nlse);
                let mut o = out.device_mut().slice_mut(..nq);
                if gemm {
                    let (q, k, v) = (src(&q), src(&k), src(&v));
                    match self.precision {
                        Precision::Bf16 => {
                            attn_tc_fwd::<bf16>(g, &mut sc, &mut o, &mut lse, q, k, v, &mk, &kd)?
                        }
                        Precision::F32 => {
                            attn_tc_fwd::<f32>(g, &mut sc, &mut o, &mut lse, q, k, v, &mk, &kd)?
                        }
                    }
                } else {
                    let (q, k, v) = (q.device(), k.device(), v.device());
                    flash_fwd::<f32>(g, &mut o, &mut lse, q, k, v, &mk, &kd)?;
                }
                g.memcpy_dtod(&o.as_view(), &mut so.slice_mut(..nq))
            })
        })
    }

    fn attention_tc_bwd(
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
    ) {
        let (nq, nlse) = (
            dims.b * dims.t * dims.nh * dims.hd,
            dims.b * dims.nh * dims.t,
        );
        let mut sc = self.attn_tc.lock().unwrap_or_else(|p| p.into_inner());
        let gemm = self.attention_as_gemms(dims);
        let op = if gemm {
            "attention_tc_bwd"
        } else {
            "flash_bwd"
        };
        let name = self.op_name(op, || format!("{dims:?}"));
        let (mk, kd) = (device_masks(mask), kdims(dims, scale));
        if !gemm && all_bf16(&[q, k, v]) {
            // dO as the bf16 activation it is (an f32 one is rounded here: the kernels round
            // every product's operands anyway; only delta = rowsum(dO ⊙ O) sees the rounding).
            let d16 = (!dout.is_bf16()).then(|| self.narrowed("narrow dO", dout));
            let dout = d16.as_ref().unwrap_or(dout);
            return self.run(&name, |g| {
                let sd = saved.device();
                let (lse, o) = (sd.slice(..nlse), sd.slice(nlse..nlse + nq));
                let (dq, dk, dv) = (dq.device_mut(), dk.device_mut(), dv.device_mut());
                let (q, k, v) = (q.device_bf16(), k.device_bf16(), v.device_bf16());
                let delta = sc.delta_slot();
                let dout = dout.device_bf16();
                flash_bwd::<bf16>(g, delta, dq, dk, dv, dout, q, k, v, &o, &lse, &mk, &kd)
            });
        }
        // The GEMMs take bf16 q, k, v and dO as they are (bf16 mode); the f32 kernels need f32.
        let (q, k, v, dout) = match gemm && self.precision == Precision::Bf16 {
            true => (
                Wide::Same(q),
                Wide::Same(k),
                Wide::Same(v),
                Wide::Same(dout),
            ),
            false => (self.wide(q), self.wide(k), self.wide(v), self.wide(dout)),
        };
        self.run(&name, |g| {
            let sd = saved.device();
            let (lse, o) = (sd.slice(..nlse), sd.slice(nlse..nlse + nq));
            let (dq, dk, dv) = (dq.device_mut(), dk.device_mut(), dv.device_mut());
            if gemm {
                let (dout, q, k, v) = (src(&dout), src(&q), src(&k), src(&v));
                match self.precision {
                    Precision::Bf16 => attn_tc_bwd::<bf16>(
                        g, &mut sc, dq, dk, dv, dout, q, k, v, &o, &lse, &mk, &kd,
                    ),
                    Precision::F32 => attn_tc_bwd::<f32>(
                        g, &mut sc, dq, dk, dv, dout, q, k, v, &o, &lse, &mk, &kd,
                    ),
                }
            } else {
                let (dout, q, k, v) = (dout.device(), q.device(), k.device(), v.device());
                let delta = sc.delta_slot();
                flash_bwd::<f32>(g, delta, dq, dk, dv, dout, q, k, v, &o, &lse, &mk, &kd)
            }
        })
    }
}

impl CudaBackend {
    /// bf16 mode: whether training attention runs as GEMMs + masked softmax (asked for, or a
    /// head dim past the fused kernels') rather than on the fused kernels.
    fn attention_as_gemms(&self, dims: AttnDims) -> bool {
        self.gemm_attention || dims.hd > FLASH_DMAX
    }

    /// Whether the attention kernels take these dims and mask (else the host runs it): every
    /// head dim (past the kernels' on the GEMM path), GQA, ALiBi with relative key positions.
    fn attention_on_kernels(&self, mask: &AttnMask, dims: AttnDims) -> bool {
        dims.hd > 0 && dims.nkv > 0 && dims.nh % dims.nkv == 0 && mask.alibi_relative
    }
}

impl Backend for CudaBackend {
    fn stash(&self, x: Tensor) -> Tensor {
        if self.precision != Precision::Bf16 || x.is_empty() || x.is_bf16() {
            return x;
        }
        self.narrowed("stash bf16", &x)
    }
    fn set_planned_peak(&self, bytes: u64) {
        self.planned_peak
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }
    fn zeros(&self, len: usize) -> Tensor {
        self.run("alloc", |g| {
            Ok(Tensor::from_device(g.alloc_zeros(len.max(1))?, len))
        })
    }
    fn activation(&self, rows: usize, cols: usize) -> Tensor {
        let len = rows * cols;
        if self.precision != Precision::Bf16 || rows <= GEMV_MAX_ROWS.max(tk::GEMV16_MAX_ROWS) {
            return self.zeros(len);
        }
        self.zeros_bf16(len)
    }
    fn zeros_like(&self, like: &Tensor, len: usize) -> Tensor {
        match like.is_bf16() {
            true => self.zeros_bf16(len),
            false => self.zeros(len),
        }
    }
    fn upload(&self, v: &[f32]) -> Tensor {
        self.up(v)
    }
    fn upload_i32(&self, v: &[i32]) -> Tensor<i32> {
        self.up(v)
    }
    fn upload_u8(&self, v: &[u8]) -> Tensor<u8> {
        self.up(v)
    }
    fn download(&self, t: &Tensor) -> Vec<f32> {
        if !t.is_bf16() || t.is_empty() {
            return self.down(t);
        }
        self.run("download", |g| {
            let mut out = vec![bf16::ZERO; t.len()];
            g.memcpy_dtoh(&t.device_bf16().slice(..t.len()), &mut out)?;
            Ok(out.into_iter().map(f32::from).collect())
        })
    }
    fn download_u8(&self, t: &Tensor<u8>) -> Vec<u8> {
        self.down(t)
    }

    fn copy2d(
        &self,
        dst: &mut Tensor,
        d: Strided,
        src: &Tensor,
        s: Strided,
        rows: usize,
        cols: usize,
    ) {
        if rows * cols == 0 {
            return;
        }
        let (dk, sk) = (tk::Strided::new(d.ld, d.off), tk::Strided::new(s.ld, s.off));
        if dst.is_bf16() && src.is_bf16() {
            return self.run("copy2d", |g| {
                let (dv, sv) = (dst.device_bf16_mut(), src.device_bf16());
                tk::copy2d(g, dv, dk, sv, sk, rows, cols)
            });
        }
        let src = self.wide(src);
        self.f32_out(dst, true, |dst| {
            self.run("copy2d", |g| {
                tk::copy2d(g, dst.device_mut(), dk, src.device(), sk, rows, cols)
            })
        })
    }
    fn fill(&self, y: &mut Tensor, v: f32) {
        let n = y.len();
        if n == 0 {
            return;
        }
        self.f32_out(y, false, |y| {
            self.run("fill", |g| {
                tk::fill(g, &mut y.device_mut().slice_mut(..n), v)
            })
        })
    }
    fn add(&self, y: &mut Tensor, x: &Tensor, n: usize) {
        if n == 0 {
            return;
        }
        if y.len() != n || x.len() != n {
            // A prefix of a longer tensor (no caller does this today).
            return self.host_fallback(&mut [y], &[x], |cpu, o, i| cpu.add(&mut o[0], &i[0], n));
        }
        if y.is_bf16() && x.is_bf16() {
            return self.run("add", |g| {
                scale_add::<bf16>(g, y.device_bf16_mut(), x.device_bf16(), 1.0)
            });
        }
        let x = self.wide(x);
        self.f32_out(y, true, |y| {
            self.run("add", |g| {
                scale_add::<f32>(g, y.device_mut(), x.device(), 1.0)
            })
        })
    }
    fn scale_by(&self, y: &mut Tensor, s: &Tensor, n: usize) {
        if n == 0 {
            return;
        }
        self.f32_out(y, true, |y| {
            self.run("scale_by", |g| {
                tk::scale_by(
                    g,
                    &mut y.device_mut().slice_mut(..n),
                    &s.device().slice(..1),
                )
            })
        })
    }
    fn scale(&self, y: &mut Tensor, s: f32, n: usize) {
        if n == 0 {
            return;
        }
        if y.is_bf16() && s == 0.0 && n == y.len() {
            return self.run("scale", |g| g.memset_zeros(y.device_bf16_mut()));
        }
        self.f32_out(y, s != 0.0 || n < y.len(), |y| {
            self.run("scale", |g| {
                tk::scale(g, &mut y.device_mut().slice_mut(..n), s)
            })
        })
    }
    fn bias_add(&self, y: &mut Tensor, b: &Tensor, n: usize, d: usize) {
        if n * d == 0 {
            return;
        }
        self.f32_out(y, true, |y| {
            self.run("bias_add", |g| {
                tk::bias_add(g, y.device_mut(), b.device(), n, d)
            })
        })
    }
    fn bias_grad(&self, gb: &mut Tensor, dy: &Tensor, n: usize, d: usize) {
        if n * d == 0 {
            return;
        }
        let dy = self.wide(dy);
        self.run("bias_grad", |g| {
            tk::col_sum(g, gb.device_mut(), dy.device(), n, d)
        })
    }
    fn dropout(&self, y: &mut Tensor, x: &Tensor, p: f32, key: u64, n: usize, accumulate: bool) {
        if n == 0 {
            return;
        }
        let x = self.wide(x);
        self.f32_out(y, accumulate || n < y.len(), |y| {
            self.run("dropout", |g| {
                let (mut yv, xv) = (y.device_mut().slice_mut(..n), x.device().slice(..n));
                if accumulate {
                    dropout_acc::<f32>(g, &mut yv, &xv, p, key)
                } else {
                    dropout_k::<f32>(g, &mut yv, &xv, p, key)
                }
            })
        })
    }

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
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            return self.scale(c, beta, m * n);
        }
        let mm = MatMul {
            m,
            n,
            k,
            trans_a: ta,
            trans_b: tb,
            alpha: 1.0,
            beta,
        };
        if self.precision == Precision::Bf16 {
            let b16 = b.is_bf16().then_some(b);
            return self.gemm_bf16(c, a, b16, &mm, "narrow_bf16 B", |g, sb| {
                let nb = k * n;
                tk::narrow_bf16(g, &mut sb.slice_mut(..nb), &b.device().slice(..nb))
            });
        }
        let (a, b) = (self.wide(a), self.wide(b));
        self.f32_out(c, beta != 0.0 || m * n < c.len(), |c| {
            self.run("matmul", |g| {
                matmul_f32(g, c.device_mut(), a.device(), b.device(), &mm)
            })
        })
    }

    /// A bitsandbytes 4-bit weight goes to the device (packed nibbles, f32 absmax, code);
    /// other quantized kinds stay on the host.
    fn memory_line(&self) -> Option<String> {
        let h = |b: usize| crate::util::human_bytes(b as u64);
        let p = self.gpu.pool_stats();
        Some(format!(
            "device memory on {}: peak {} live, {} held now ({} driver allocations)",
            self.label,
            h(p.peak_in_use),
            h(p.in_use + p.cached),
            p.fresh
        ))
    }

    fn upload_quant(&self, w: Box<dyn crate::quant::QuantLinear>) -> QuantWeight {
        if let Some(h) = w.half() {
            return QuantWeight::Device16 {
                bits: self.up(h.bits),
                bf16: h.kind == crate::quant::half::HalfKind::Bf16,
                d_out: w.d_out(),
                d_in: w.d_in(),
            };
        }
        let Some(fb) = w.four_bit() else {
            return QuantWeight::Host(w);
        };
        let (packed, absmax, code) = (self.up(fb.packed), self.up(fb.absmax), self.up(fb.code));
        QuantWeight::Device4(Quant4Weight {
            packed: packed.into_device(),
            absmax: absmax.into_device(),
            code: code.into_device(),
            blocksize: fb.blocksize,
            rows: w.d_out(),
            cols: w.d_in(),
        })
    }

    fn quant_dense(&self, w: &QuantWeight) -> Option<Tensor> {
        match w {
            QuantWeight::Device16 { d_out, d_in, .. } => {
                let mut t = self.zeros(d_out * d_in);
                self.widen(&mut t, w);
                Some(t)
            }
            QuantWeight::Host(q) => q.dense().map(|v| self.up(&v)),
            QuantWeight::Device4(_) => None,
        }
    }

    /// 4-bit and 16-bit: W widened into an f32 scratch [d_out, d_in] on the device (one buffer,
    /// reused), then one GEMM (forward y = x·Wᵀ; backward dx += dy·W), as bitsandbytes trains; a
    /// forward of at most 8 rows (decode) is one fused GEMV over the stored weight instead. A
    /// host weight runs on the host.
    fn quant_matmul(&self, y: &mut Tensor, x: &Tensor, w: &QuantWeight, n: usize, backward: bool) {
        let (dout, din) = match w {
            QuantWeight::Device4(q) => (q.rows, q.cols),
            QuantWeight::Device16 { d_out, d_in, .. } => (*d_out, *d_in),
            QuantWeight::Host(h) => {
                return self.host_fallback(&mut [y], &[x], |_, o, i| {
                    if backward {
                        h.matmul_dyw(o[0].host_mut(), i[0].host(), n)
                    } else {
                        h.matmul_xwt(o[0].host_mut(), i[0].host(), n)
                    }
                })
            }
        };
        // forward y[n,dout] = x·Wᵀ; backward dx[n,din] += dy·W
        let mm = if backward {
            MatMul {
                m: n,
                n: din,
                k: dout,
                trans_a: false,
                trans_b: false,
                alpha: 1.0,
                beta: 1.0,
            }
        } else {
            MatMul::linear(n, dout, din)
        };
        if n == 0 {
            return;
        }
        // Decode (a few rows): one fused pass over the stored weight instead of widening all of
        // it to a bf16/f32 copy and reading that back (4-bit: 4.5 bytes per weight against 0.5;
        // 16-bit: 6 against 2).
        let gemv = match w {
            QuantWeight::Device4(q) => {
                n <= GEMV_MAX_ROWS && q.cols % 32 == 0 && q.blocksize % 32 == 0
            }
            QuantWeight::Device16 { bits, .. } => {
                n <= tk::GEMV16_MAX_ROWS && din % 8 == 0 && bits.device().device_addr() % 16 == 0
            }
            QuantWeight::Host(_) => false,
        };
        if gemv && !backward {
            let x = self.wide(x);
            return self.f32_out(y, n * dout < y.len(), |y| match w {
                QuantWeight::Device4(q) => self.run("gemv_4bit", |g| {
                    gemv_4bit::<f32>(g, y.device_mut(), x.device(), q, n)
                }),
                QuantWeight::Device16 { bits, bf16, .. } => self.run("gemv16", |g| {
                    tk::gemv16(
                        g,
                        y.device_mut(),
                        x.device(),
                        bits.device(),
                        *bf16,
                        n,
                        dout,
                        din,
                    )
                }),
                QuantWeight::Host(_) => unreachable!("a host weight is multiplied on the host"),
            });
        }
        if self.precision == Precision::Bf16 {
            // W straight into the bf16 operand: dequantized (4-bit) or converted (16-bit).
            let b_name = match w {
                QuantWeight::Device4(_) => "dequant_4bit_bf16 W",
                _ => "widen16_bf16 W",
            };
            return self.gemm_bf16(y, x, None, &mm, b_name, |g, sb| match w {
                QuantWeight::Device4(q) => dequant_4bit::<bf16>(g, sb, q),
                QuantWeight::Device16 { bits, bf16, .. } => tk::widen16::<bf16, u16>(
                    g,
                    &mut sb.slice_mut(..bits.len()),
                    &bits.device().slice(..bits.len()),
                    *bf16,
                ),
                QuantWeight::Host(_) => unreachable!("a host weight is multiplied on the host"),
            });
        }
        let mut slot = self
            .dequant_scratch
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|t| t.len() < dout * din) {
            *slot = Some(self.zeros(dout * din));
        }
        let wd = slot.as_mut().expect("scratch just ensured");
        self.widen(wd, w);
        let x = self.wide(x);
        self.f32_out(y, backward || n * dout < y.len(), |y| {
            self.run("quant_matmul", |g| {
                matmul_f32(g, y.device_mut(), x.device(), wd.device(), &mm)
            })
        })
    }

    fn rmsnorm_fwd(
        &self,
        y: &mut Tensor,
        rstd: &mut Tensor,
        x: &Tensor,
        w: &Tensor,
        n: usize,
        d: usize,
        eps: f32,
    ) {
        if n * d == 0 {
            return;
        }
        let x = self.wide(x);
        self.f32_out(y, n * d < y.len(), |y| {
            self.run("rmsnorm_fwd", |g| {
                rmsnorm_fwd::<f32>(
                    g,
                    y.device_mut(),
                    rstd.device_mut(),
                    x.device(),
                    w.device(),
                    n,
                    d,
                    eps,
                )
            })
        })
    }
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
    ) {
        if n * d == 0 {
            return;
        }
        let mut scratch = None;
        let dw = self.or_scratch(dw, &mut scratch, d);
        let (dy, x) = (self.wide(dy), self.wide(x));
        self.f32_out(dx, true, |dx| {
            self.run("rmsnorm_bwd", |g| {
                rmsnorm_bwd::<f32>(
                    g,
                    dx.device_mut(),
                    dw.device_mut(),
                    dy.device(),
                    x.device(),
                    w.device(),
                    rstd.device(),
                    n,
                    d,
                )
            })
        })
    }
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
    ) {
        if n * d == 0 {
            return;
        }
        let x = self.wide(x);
        self.f32_out(y, n * d < y.len(), |y| {
            self.run("layernorm_fwd", |g| {
                layernorm_fwd::<f32>(
                    g,
                    y.device_mut(),
                    mean.device_mut(),
                    rstd.device_mut(),
                    x.device(),
                    w.device(),
                    b.device(),
                    n,
                    d,
                    eps,
                )
            })
        })
    }
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
    ) {
        if n * d == 0 {
            return;
        }
        let (mut s1, mut s2) = (None, None);
        let dw = self.or_scratch(dw, &mut s1, d);
        let db = self.or_scratch(db, &mut s2, d);
        let (dy, x) = (self.wide(dy), self.wide(x));
        self.f32_out(dx, true, |dx| {
            self.run("layernorm_bwd", |g| {
                layernorm_bwd::<f32>(
                    g,
                    dx.device_mut(),
                    dw.device_mut(),
                    db.device_mut(),
                    dy.device(),
                    x.device(),
                    w.device(),
                    mean.device(),
                    rstd.device(),
                    n,
                    d,
                )
            })
        })
    }

    fn rope_tables(&self, pos: &Tensor, n: usize, freqs: &RopeFreqs) -> RopeTables {
        let half = freqs.inv.len();
        let (mut cos, mut sin) = (self.zeros(n * half), self.zeros(n * half));
        let inv = self.up(&freqs.inv);
        if n * half > 0 {
            self.run("rope_tables", |g| {
                rope_table(
                    g,
                    cos.device_mut(),
                    sin.device_mut(),
                    pos.device(),
                    inv.device(),
                    freqs.scale,
                    n,
                    half,
                )
            });
        }
        RopeTables {
            cos,
            sin,
            index: self.up(&(0..n as i32).collect::<Vec<_>>()),
            half,
        }
    }
    /// The kernel reads cos/sin by table row; the tables hold one row per token, so row t is
    /// token t (`tab.index`).
    fn rope(
        &self,
        x: &mut Tensor,
        tab: &RopeTables,
        n: usize,
        heads: usize,
        hd: usize,
        kind: RopeKind,
        inverse: bool,
    ) {
        let len = n * heads * hd;
        if len == 0 || tab.half == 0 {
            return;
        }
        let layout = match kind {
            RopeKind::Half => RopeLayout::Half,
            RopeKind::Interleaved => RopeLayout::Glm,
        };
        let dm = RopeDims {
            tokens: n,
            heads,
            hd,
            rot: 2 * tab.half,
            max_pos: n,
        };
        let mut y = self.zeros_like(x, len);
        let (cos, sin, pos) = (tab.cos.device(), tab.sin.device(), tab.index.device());
        self.run("rope", |g| match x.is_bf16() {
            true => {
                let (yv, xv) = (y.device_bf16_mut(), x.device_bf16());
                rope::<bf16>(g, yv, xv, cos, sin, pos, dm, layout, inverse)
            }
            false => {
                let (yv, xv) = (y.device_mut(), x.device());
                rope::<f32>(g, yv, xv, cos, sin, pos, dm, layout, inverse)
            }
        });
        if x.len() == len {
            *x = y;
        } else {
            self.copy2d(x, Strided::rows(len, 0), &y, Strided::rows(len, 0), 1, len);
        }
    }

    /// logsumexp [B,NH,T] (+∞ for a row with no key) followed by the output O [B,T,NH,HD]:
    /// the kernels' backward needs O for rowsum(dO⊙O).
    fn attention_saved_len(&self, dims: AttnDims) -> usize {
        dims.b * dims.t * dims.nh * (1 + dims.hd)
    }

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
    ) {
        let AttnDims { b, t, nh, hd, .. } = dims;
        if b * t * nh * hd == 0 {
            return;
        }
        if !self.attention_on_kernels(mask, dims) {
            // The CPU saves [B,T,NH] logsumexp; keep its layout in the first part of `saved`.
            let hm = HostMask::down(self, mask);
            let m = hm.mask(mask);
            let nl = CpuBackend.attention_saved_len(dims);
            let mut lse = Tensor::from_host(vec![0.0; nl]);
            let mut o = Tensor::from_host(vec![0.0; out.len()]);
            let (qh, kh, vh) = (
                Tensor::from_host(self.download(q)),
                Tensor::from_host(self.download(k)),
                Tensor::from_host(self.download(v)),
            );
            Backend::attention_fwd(
                &CpuBackend,
                &mut o,
                &mut lse,
                &qh,
                &kh,
                &vh,
                &m,
                dims,
                scale,
            );
            self.put(out, o.host());
            self.put(saved, lse.host());
            return;
        }
        let (nq, nlse) = (b * t * nh * hd, b * nh * t);
        if self.precision == Precision::Bf16 || hd > ATTN_DMAX {
            return self.attention_tc_fwd(out, saved, q, k, v, mask, dims, scale);
        }
        let mut lse = self.zeros(nlse);
        self.run("attention_fwd", |g| {
            let mk = device_masks(mask);
            attn_fwd::<f32>(
                g,
                out.device_mut(),
                lse.device_mut(),
                q.device(),
                k.device(),
                v.device(),
                &mk,
                &kdims(dims, scale),
            )?;
            let sd = saved.device_mut();
            g.memcpy_dtod(&lse.device().slice(..nlse), &mut sd.slice_mut(..nlse))?;
            g.memcpy_dtod(
                &out.device().slice(..nq),
                &mut sd.slice_mut(nlse..nlse + nq),
            )
        })
    }

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
    ) {
        let AttnDims { b, t, nh, hd, .. } = dims;
        if b * t * nh * hd == 0 {
            return;
        }
        if !self.attention_on_kernels(mask, dims) {
            let hm = HostMask::down(self, mask);
            let m = hm.mask(mask);
            let nl = CpuBackend.attention_saved_len(dims);
            let sh = Tensor::from_host(self.down(saved)[..nl].to_vec());
            let h = |t: &Tensor| Tensor::from_host(self.download(t));
            let (mut gq, mut gk, mut gv) = (h(dq), h(dk), h(dv));
            Backend::attention_bwd(
                &CpuBackend,
                &mut gq,
                &mut gk,
                &mut gv,
                &h(dout),
                &h(q),
                &h(k),
                &h(v),
                &sh,
                &m,
                dims,
                scale,
            );
            self.put(dq, gq.host());
            self.put(dk, gk.host());
            self.put(dv, gv.host());
            return;
        }
        let (nq, nlse) = (b * t * nh * hd, b * nh * t);
        if self.precision == Precision::Bf16 || hd > ATTN_DMAX {
            return self.attention_tc_bwd(dq, dk, dv, dout, q, k, v, saved, mask, dims, scale);
        }
        let mut lse = self.zeros(nlse);
        let mut o = self.zeros(nq);
        let mut delta = self.zeros(nlse);
        self.run("attention_bwd", |g| {
            let sd = saved.device();
            g.memcpy_dtod(&sd.slice(..nlse), &mut lse.device_mut().slice_mut(..nlse))?;
            g.memcpy_dtod(
                &sd.slice(nlse..nlse + nq),
                &mut o.device_mut().slice_mut(..nq),
            )?;
            let mk = device_masks(mask);
            attn_bwd::<f32>(
                g,
                dq.device_mut(),
                dk.device_mut(),
                dv.device_mut(),
                delta.device_mut(),
                dout.device(),
                q.device(),
                k.device(),
                v.device(),
                o.device(),
                lse.device(),
                &mk,
                &kdims(dims, scale),
            )
        })
    }

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
    ) {
        let AttnDims { b, t, nh, nkv, hd } = dims;
        if b * t * nh * hd == 0 {
            return;
        }
        let dm = CachedDims {
            b,
            tn: t,
            nh,
            nkv,
            hd,
            cap,
            past,
            window,
            scale,
        };
        let (q, k, v) = (self.wide(q), self.wide(k), self.wide(v));
        self.f32_out(out, b * t * nh * hd < out.len(), |out| {
            self.run("attention_cached_fwd", |g| {
                let al: Option<(&dyn AsDevView<f32>, &dyn AsDevView<f32>)> = alibi.map(|(s, p)| {
                    (
                        s.device() as &dyn AsDevView<f32>,
                        p.device() as &dyn AsDevView<f32>,
                    )
                });
                attn_cached_fwd(
                    g,
                    out.device_mut(),
                    q.device(),
                    k.device(),
                    v.device(),
                    valid.device(),
                    al,
                    &dm,
                )
            })
        })
    }

    fn swiglu_fwd(&self, a: &mut Tensor, e: &Tensor, g: &Tensor, n: usize) {
        if n == 0 {
            return;
        }
        let sep = GluLayout::Separate;
        if all_bf16(&[a, e, g]) {
            return self.run("swiglu_fwd", |gpu| {
                let (av, ev, gv) = (a.device_bf16_mut(), e.device_bf16(), g.device_bf16());
                swiglu_fwd::<bf16>(gpu, av, ev, gv, 1, n, sep)
            });
        }
        let (e, g) = (self.wide(e), self.wide(g));
        self.f32_out(a, n < a.len(), |a| {
            self.run("swiglu_fwd", |gpu| {
                swiglu_fwd::<f32>(gpu, a.device_mut(), e.device(), g.device(), 1, n, sep)
            })
        })
    }
    fn swiglu_bwd(
        &self,
        de: &mut Tensor,
        dg: &mut Tensor,
        da: &Tensor,
        e: &Tensor,
        g: &Tensor,
        n: usize,
    ) {
        if n == 0 {
            return;
        }
        let sep = GluLayout::Separate;
        if all_bf16(&[de, dg, da, e, g]) {
            return self.run("swiglu_bwd", |gpu| {
                let (dev, dgv) = (de.device_bf16_mut(), dg.device_bf16_mut());
                let (dav, ev, gv) = (da.device_bf16(), e.device_bf16(), g.device_bf16());
                swiglu_bwd::<bf16>(gpu, dev, dgv, dav, ev, gv, 1, n, sep)
            });
        }
        let (da, e, g) = (self.wide(da), self.wide(e), self.wide(g));
        self.f32_out(de, n < de.len(), |de| {
            self.f32_out(dg, n < dg.len(), |dg| {
                self.run("swiglu_bwd", |gpu| {
                    let (dev, dgv) = (de.device_mut(), dg.device_mut());
                    swiglu_bwd::<f32>(
                        gpu,
                        dev,
                        dgv,
                        da.device(),
                        e.device(),
                        g.device(),
                        1,
                        n,
                        sep,
                    )
                })
            })
        })
    }
    fn gelu_fwd(&self, y: &mut Tensor, x: &Tensor, n: usize) {
        if n == 0 {
            return;
        }
        assert_eq!(y.len(), n, "gelu_fwd: y must hold n values");
        if all_bf16(&[y, x]) {
            return self.run("gelu_fwd", |g| {
                gelu_tanh_fwd::<bf16>(g, y.device_bf16_mut(), x.device_bf16())
            });
        }
        let x = self.wide(x);
        self.f32_out(y, false, |y| {
            self.run("gelu_fwd", |g| {
                gelu_tanh_fwd::<f32>(g, y.device_mut(), x.device())
            })
        })
    }
    fn gelu_bwd(&self, dx: &mut Tensor, dy: &Tensor, x: &Tensor, n: usize) {
        if n == 0 {
            return;
        }
        assert_eq!(dx.len(), n, "gelu_bwd: dx must hold n values");
        if all_bf16(&[dx, dy, x]) {
            return self.run("gelu_bwd", |g| {
                let (dxv, dyv, xv) = (dx.device_bf16_mut(), dy.device_bf16(), x.device_bf16());
                gelu_tanh_bwd::<bf16>(g, dxv, dyv, xv)
            });
        }
        let (dy, x) = (self.wide(dy), self.wide(x));
        self.f32_out(dx, false, |dx| {
            self.run("gelu_bwd", |g| {
                gelu_tanh_bwd::<f32>(g, dx.device_mut(), dy.device(), x.device())
            })
        })
    }
    fn geglu_fwd(&self, a: &mut Tensor, e: &Tensor, g: &Tensor, n: usize) {
        if n == 0 {
            return;
        }
        if all_bf16(&[a, e, g]) {
            return self.run("geglu_fwd", |gpu| {
                let (av, ev, gv) = (a.device_bf16_mut(), e.device_bf16(), g.device_bf16());
                geglu_fwd::<bf16>(gpu, av, ev, gv, n)
            });
        }
        let (e, g) = (self.wide(e), self.wide(g));
        self.f32_out(a, n < a.len(), |a| {
            self.run("geglu_fwd", |gpu| {
                geglu_fwd::<f32>(gpu, a.device_mut(), e.device(), g.device(), n)
            })
        })
    }
    fn geglu_bwd(
        &self,
        de: &mut Tensor,
        dg: &mut Tensor,
        da: &Tensor,
        e: &Tensor,
        g: &Tensor,
        n: usize,
    ) {
        if n == 0 {
            return;
        }
        if all_bf16(&[de, dg, da, e, g]) {
            return self.run("geglu_bwd", |gpu| {
                let (dev, dgv) = (de.device_bf16_mut(), dg.device_bf16_mut());
                let (dav, ev, gv) = (da.device_bf16(), e.device_bf16(), g.device_bf16());
                geglu_bwd::<bf16>(gpu, dev, dgv, dav, ev, gv, n)
            });
        }
        let (da, e, g) = (self.wide(da), self.wide(e), self.wide(g));
        self.f32_out(de, n < de.len(), |de| {
            self.f32_out(dg, n < dg.len(), |dg| {
                self.run("geglu_bwd", |gpu| {
                    let (dev, dgv) = (de.device_mut(), dg.device_mut());
                    geglu_bwd::<f32>(gpu, dev, dgv, da.device(), e.device(), g.device(), n)
                })
            })
        })
    }

    fn embedding_fwd(&self, y: &mut Tensor, table: &Tensor, ids: &Tensor<i32>, n: usize, d: usize) {
        if n * d == 0 {
            return;
        }
        assert_eq!(ids.len(), n, "embedding_fwd: ids must hold n values");
        self.run("embedding_fwd", |g| {
            embedding_fwd::<f32>(g, y.device_mut(), ids.device(), table.device(), d)
        })
    }
    fn embedding_bwd(
        &self,
        dtable: &mut Tensor,
        dy: &Tensor,
        ids: &Tensor<i32>,
        n: usize,
        d: usize,
    ) {
        if n * d == 0 {
            return;
        }
        assert_eq!(ids.len(), n, "embedding_bwd: ids must hold n values");
        self.run("embedding_bwd", |g| {
            embedding_bwd::<f32>(g, dtable.device_mut(), ids.device(), dy.device(), d)
        })
    }

    fn cross_entropy(
        &self,
        logits: &mut Tensor,
        loss: &mut Tensor,
        targets: &Tensor<i32>,
        n: usize,
        v: usize,
        grad: Option<f32>,
    ) {
        if n * v == 0 {
            return;
        }
        assert_eq!(
            targets.len(),
            n,
            "cross_entropy: targets must hold n values"
        );
        let (mut rows, mut lse) = (self.zeros(n), self.zeros(n));
        self.run("cross_entropy", |g| {
            cross_entropy_fwd::<f32>(
                g,
                rows.device_mut(),
                lse.device_mut(),
                logits.device(),
                targets.device(),
                v,
            )?;
            if let Some(scale) = grad {
                cross_entropy_bwd_inplace::<f32>(
                    g,
                    logits.device_mut(),
                    lse.device(),
                    targets.device(),
                    v,
                    scale,
                )?;
            }
            Ok(())
        });
        self.run("cross_entropy", |g| {
            tk::sum_acc(
                g,
                &mut loss.device_mut().slice_mut(..1),
                &rows.device().slice(..n),
            )
        })
    }
    fn argmax_hits(
        &self,
        hits: &mut Tensor,
        logits: &Tensor,
        targets: &Tensor<i32>,
        n: usize,
        v: usize,
    ) {
        if n * v == 0 {
            return;
        }
        self.run("argmax_hits", |g| {
            tk::argmax_hits(
                g,
                &mut hits.device_mut().slice_mut(..1),
                logits.device(),
                targets.device(),
                n,
                v,
            )
        })
    }

    /// Σx² per tensor on the device (f32, fixed order), then √ in f64 rounded to f32.
    fn norms_into(&self, out: &mut Tensor, xs: &[&Tensor]) {
        let k = xs.len();
        if k == 0 {
            return;
        }
        self.run("norms", |gpu| {
            let mut o = out.device_mut().slice_mut(..k);
            gpu.memset_zeros(&mut o)?;
            let mut part = None;
            for (i, x) in xs.iter().enumerate() {
                if !x.is_empty() {
                    sumsq_acc(
                        gpu,
                        &mut o.slice_mut(i..i + 1),
                        &x.device().slice(..x.len()),
                        &mut part,
                    )?;
                }
            }
            norms_sqrt(gpu, &mut o)
        })
    }
    fn clip_coef(&self, out: &mut Tensor, norms: &Tensor, k: usize, max_norm: Option<f32>) {
        self.run("clip_coef", |g| {
            clip_coef(
                g,
                &mut out.device_mut().slice_mut(..2),
                &norms.device().slice(..k),
                max_norm,
            )
        })
    }
    fn adamw(
        &self,
        p: &mut Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        g: &Tensor,
        s: &crate::optim::adamw::AdamwScalars,
        weight_decay: bool,
    ) {
        let n = g.len();
        if n == 0 {
            return;
        }
        self.run("adamw", |gpu| {
            adamw_torch(
                gpu,
                &mut p.device_mut().slice_mut(..n),
                &mut m.device_mut().slice_mut(..n),
                &mut v.device_mut().slice_mut(..n),
                &g.device().slice(..n),
                s,
                1.0,
                weight_decay,
            )
        })
    }
    fn bnb_adam32(
        &self,
        p: &mut Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        g: &Tensor,
        s: &crate::optim::adamw8bit::BnbScalars,
    ) {
        let n = g.len();
        if n == 0 {
            return;
        }
        self.run("bnb_adam32", |gpu| {
            bnb_adam32(
                gpu,
                &mut p.device_mut().slice_mut(..n),
                &mut m.device_mut().slice_mut(..n),
                &mut v.device_mut().slice_mut(..n),
                &g.device().slice(..n),
                s,
            )
        })
    }
    fn adamw8bit(
        &self,
        p: &mut Tensor,
        st: &mut Adam8State,
        g: &Tensor,
        s: &crate::optim::adamw8bit::BnbScalars,
    ) {
        let n = g.len();
        if n == 0 {
            return;
        }
        let nb = n.div_ceil(crate::optim::adamw8bit::STATE_BLOCKSIZE);
        self.run("adamw8bit", |gpu| {
            let tables = match self.bnb_tables.get() {
                Some(t) => t,
                None => {
                    let t = BnbTables::upload(gpu)?;
                    self.bnb_tables.get_or_init(|| t)
                }
            };
            adamw8bit_bnb(
                gpu,
                &mut p.device_mut().slice_mut(..n),
                &g.device().slice(..n),
                &mut st.m.device_mut().slice_mut(..n),
                &mut st.v.device_mut().slice_mut(..n),
                &mut st.absmax_m.device_mut().slice_mut(..nb),
                &mut st.absmax_v.device_mut().slice_mut(..nb),
                tables,
                s,
            )
        })
    }
}

/// A device attention mask copied to the host, for the attention cases without a kernel.
struct HostMask {
    valid: Tensor<u8>,
    segment: Tensor<i32>,
    alibi: Option<(Tensor, Tensor)>,
    prefix: Option<Tensor<i32>>,
}

impl HostMask {
    fn down(be: &CudaBackend, m: &AttnMask) -> HostMask {
        let h = |t: &Tensor| Tensor::from_host(be.down(t));
        HostMask {
            valid: Tensor::from_host(be.down(m.valid)),
            segment: Tensor::from_host(be.down(m.segment)),
            alibi: m.alibi.map(|(s, p)| (h(s), h(p))),
            prefix: m.prefix.map(|p| Tensor::from_host(be.down(p))),
        }
    }

    fn mask(&self, like: &AttnMask) -> AttnMask<'_> {
        AttnMask {
            valid: &self.valid,
            segment: &self.segment,
            alibi: self.alibi.as_ref().map(|(s, p)| (s, p)),
            alibi_relative: like.alibi_relative,
            window: like.window,
            prefix: self.prefix.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
