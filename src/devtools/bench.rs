//! `recipe bench --device cuda[:N]`: kernel timings against measured peaks.
//!
//! Peaks are measured, not taken from a datasheet: compute = a cuBLAS bf16 GEMM (8192³),
//! bandwidth = a device-to-device copy of 1 GiB (bytes read + bytes written). Each kernel is
//! timed with CUDA events around `iters` back-to-back launches after a warm-up (module load and
//! NVRTC compilation stay out of the numbers), five repetitions, median reported. Inputs are
//! random (never zeros), and the GEMV rotates over enough weight copies to defeat the L2 cache.
//!
//! Rows: NF4 dequant-GEMM vs cuBLAS bf16 on LLaMA-7B projection shapes (tokens 2048×4 = 8192;
//! 4096×4096, 11008×4096, 4096×11008), its dX variant, the batch-1 NF4 GEMV (GB/s of weight bytes
//! actually read), the NF4 dequantize to bf16 (GB/s of weight bytes read + bf16 written), causal
//! training attention forward and backward on the fused kernels and on the GEMM path (TFLOP/s
//! of the causal half), the f32 RMSNorm, operand narrowing, RoPE, SwiGLU and cross-entropy of
//! a step (GB/s), and the 8-bit AdamW step (GB/s of state + params + grads moved).

use std::io::Write;

use crate::cuda::mem::DevBuf;
use cudarc::driver::sys::CUevent_flags;
use half::bf16;

use crate::cuda::error::Result;
use crate::cuda::ops::{self, blas::MatMul};
use crate::cuda::twins::Rng;
use crate::cuda::Gpu;

/// One timed kernel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub name: String,
    /// Median milliseconds per launch.
    pub ms: f64,
    pub tflops: Option<f64>,
    pub gbps: Option<f64>,
    /// Achieved / measured peak (compute for GEMMs, bandwidth otherwise).
    pub frac_of_peak: f64,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub device: String,
    pub peak_tflops: f64,
    pub peak_gbps: f64,
    pub rows: Vec<BenchRow>,
    /// Row groups that failed ("group: error"); the others ran.
    pub failed: Vec<String>,
}

/// Knobs (smaller values for a quick smoke run).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Token rows for the GEMMs (LLaMA-7B training: 2048×4).
    pub tokens: usize,
    pub iters: usize,
    pub reps: usize,
    /// `recipe bench --json FILE`: the report so far, rewritten (atomically) after every row,
    /// so a run cut short still reports.
    pub json: Option<std::path::PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            tokens: 2048 * 4,
            iters: 10,
            reps: 5,
            json: None,
        }
    }
}

/// Median ms per call of `f` (event-timed over `iters` calls, `reps` repetitions).
fn time_ms(gpu: &Gpu, o: &BenchOptions, f: &mut dyn FnMut(usize) -> Result<()>) -> Result<f64> {
    for i in 0..3 {
        f(i)?;
    }
    gpu.synchronize()?;
    let mut v = Vec::with_capacity(o.reps);
    for _ in 0..o.reps {
        let r = gpu.real()?;
        let start = r.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let end = r.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        start.record(&r.stream)?;
        for i in 0..o.iters {
            f(i)?;
        }
        end.record(&r.stream)?;
        v.push(start.elapsed_ms(&end)? as f64 / o.iters as f64);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[v.len() / 2])
}

/// n uniform values in [-0.5, 0.5), as f32 (the backend's activations).
fn rand_f32(gpu: &Gpu, rng: &mut Rng, n: usize) -> Result<DevBuf<f32>> {
    gpu.clone_htod(&(0..n).map(|_| rng.uniform() - 0.5).collect::<Vec<f32>>())
}

fn rand_bf16(gpu: &Gpu, rng: &mut Rng, n: usize, scale: f32) -> Result<DevBuf<bf16>> {
    let h: Vec<bf16> = (0..n)
        .map(|_| bf16::from_f32((rng.uniform() * 2.0 - 1.0) * scale))
        .collect();
    gpu.clone_htod(&h)
}

fn rand_nf4(
    gpu: &Gpu,
    rng: &mut Rng,
    rows: usize,
    cols: usize,
) -> Result<ops::quant4::Quant4Weight> {
    let n = rows * cols;
    let packed: Vec<u8> = (0..n.div_ceil(2)).map(|_| rng.next_u64() as u8).collect();
    let absmax: Vec<f32> = (0..n.div_ceil(64))
        .map(|_| 0.01 + 0.05 * rng.uniform())
        .collect();
    Ok(ops::quant4::Quant4Weight {
        packed: gpu.clone_htod(&packed)?,
        absmax: gpu.clone_htod(&absmax)?,
        code: gpu.clone_htod(&crate::cuda::twins::quant4::NF4_CODE[..])?,
        blocksize: 64,
        rows,
        cols,
    })
}

/// The compute peak: TFLOP/s of a cuBLAS bf16 GEMM 8192³ (random inputs).
pub fn peak_tflops(gpu: &Gpu, o: &BenchOptions) -> Result<f64> {
    let mut rng = Rng::new(7);
    let p = 8192;
    let (a, b) = (
        rand_bf16(gpu, &mut rng, p * p, 1.0)?,
        rand_bf16(gpu, &mut rng, p * p, 1.0)?,
    );
    let mut c = gpu.alloc_zeros::<bf16>(p * p)?;
    let ms = time_ms(gpu, o, &mut |_| {
        ops::blas::matmul_bf16_slices(gpu, &mut c, &a, &b, &MatMul::linear(p, p, p))
    })?;
    Ok(2.0 * (p as f64).powi(3) / (ms * 1e-3) / 1e12)
}

/// The `--json` document: device, measured peaks and the rows so far.
pub fn json_report(
    device: &str,
    peak_tflops: f64,
    peak_gbps: f64,
    rows: &[BenchRow],
) -> serde_json::Value {
    serde_json::json!({
        "device": device,
        "peak_tflops_bf16": peak_tflops,
        "peak_gbps_copy": peak_gbps,
        "rows": rows,
    })
}

/// Runs the benchmark on GPU `device_ordinal`, printing a table to `out`.
pub fn bench(device_ordinal: usize, out: &mut dyn Write, o: &BenchOptions) -> Result<BenchReport> {
    let gpu = Gpu::new(device_ordinal)?;
    let device = format!(
        "cuda:{device_ordinal} {} (sm_{}{}, {} SMs)",
        gpu.name,
        gpu.cc.0,
        gpu.cc.1,
        gpu.sm_count()?
    );
    let _ = writeln!(out, "bench on {device}");
    let mut rng = Rng::new(7);

    let peak_tflops = peak_tflops(&gpu, o)?;
    // Bandwidth peak: 1 GiB device-to-device copy.
    let nbytes = 1usize << 30;
    let src = gpu.alloc_zeros::<u8>(nbytes)?;
    let mut dst = gpu.alloc_zeros::<u8>(nbytes)?;
    let ms = time_ms(&gpu, o, &mut |_| gpu.memcpy_dtod(&src, &mut dst))?;
    let peak_gbps = 2.0 * nbytes as f64 / (ms * 1e-3) / 1e9;
    drop((src, dst));
    let _ = writeln!(out, "measured peaks: {peak_tflops:.1} TFLOP/s (cuBLAS bf16 8192^3), {peak_gbps:.0} GB/s (1 GiB D2D copy)");

    let save = |rows: &[BenchRow]| -> Result<()> {
        let Some(path) = &o.json else { return Ok(()) };
        let doc = json_report(&device, peak_tflops, peak_gbps, rows);
        crate::util::write_atomic(path, doc.to_string().as_bytes()).map_err(|source| {
            crate::cuda::error::CudaError::Json {
                path: path.clone(),
                source,
            }
        })
    };
    save(&[])?;
    let mut rows = Vec::new();
    let push = |rows: &mut Vec<BenchRow>,
                name: String,
                ms: f64,
                flops: Option<f64>,
                bytes: Option<f64>| {
        let tflops = flops.map(|f| f / (ms * 1e-3) / 1e12);
        let gbps = bytes.map(|b| b / (ms * 1e-3) / 1e9);
        let frac = tflops
            .map(|t| t / peak_tflops)
            .or(gbps.map(|g| g / peak_gbps))
            .unwrap_or(0.0);
        rows.push(BenchRow {
            name,
            ms,
            tflops,
            gbps,
            frac_of_peak: frac,
        });
        save(rows)
    };

    let m = o.tokens;
    // Each group of rows runs on its own: one that fails (out of memory, a launch refused) is
    // reported after the table and the groups after it still run. A kernel fault poisons the
    // context, so after one the later groups fail too (each says so).
    let mut failed: Vec<String> = Vec::new();
    let section = |failed: &mut Vec<String>, name: &str, r: Result<()>| {
        if let Err(e) = r {
            failed.push(format!("{name}: {e}"));
        }
    };

    // NF4 GEMM vs cuBLAS on LLaMA-7B shapes.
    let r = (|| -> Result<()> {
        for (n, k) in [(4096usize, 4096usize), (11008, 4096), (4096, 11008)] {
            let flops = 2.0 * m as f64 * n as f64 * k as f64;
            let x = rand_bf16(&gpu, &mut rng, m * k, 1.0)?;
            let w = rand_nf4(&gpu, &mut rng, n, k)?;
            let wd = rand_bf16(&gpu, &mut rng, n * k, 0.05)?;
            let mut y = gpu.alloc_zeros::<bf16>(m * n)?;
            let ms = time_ms(&gpu, o, &mut |_| {
                ops::gemm4::gemm_4bit(&gpu, &mut y, &x, &w, m, false)
            })?;
            push(
                &mut rows,
                format!("gemm_4bit_bf16 {m}x{n}x{k}"),
                ms,
                Some(flops),
                None,
            )?;
            let ms = time_ms(&gpu, o, &mut |_| {
                ops::blas::matmul_bf16_slices(&gpu, &mut y, &x, &wd, &MatMul::linear(m, n, k))
            })?;
            push(
                &mut rows,
                format!("cublas bf16 (dense W) {m}x{n}x{k}"),
                ms,
                Some(flops),
                None,
            )?;
            let dy = rand_bf16(&gpu, &mut rng, m * n, 1.0)?;
            let mut dx = gpu.alloc_zeros::<bf16>(m * k)?;
            let ms = time_ms(&gpu, o, &mut |_| {
                ops::gemm4::gemm_4bit_dx(&gpu, &mut dx, &dy, &w, m, false)
            })?;
            push(
                &mut rows,
                format!("gemm_4bit_dx_bf16 {m}x{n}x{k}"),
                ms,
                Some(flops),
                None,
            )?;
        }
        Ok(())
    })();
    section(&mut failed, "nf4 gemm", r);

    // NF4 dequantize to bf16 (the QLoRA product's B operand), rotating copies past the L2.
    let r = (|| -> Result<()> {
        for (n, k) in [(4096usize, 4096usize), (11008, 4096)] {
            let bytes = n * k / 2 + n * k / 64 * 4 + 2 * n * k;
            let copies = (512usize << 20).div_ceil(bytes).max(2);
            let ws: Vec<_> = (0..copies)
                .map(|_| rand_nf4(&gpu, &mut rng, n, k))
                .collect::<Result<_>>()?;
            let mut outs: Vec<_> = (0..copies)
                .map(|_| gpu.alloc_zeros::<bf16>(n * k))
                .collect::<Result<_>>()?;
            let ms = time_ms(&gpu, o, &mut |i| {
                ops::quant4::dequant_4bit(&gpu, &mut outs[i % copies], &ws[i % copies])
            })?;
            push(
                &mut rows,
                format!("dequant_4bit_bf16 {n}x{k}"),
                ms,
                None,
                Some(bytes as f64),
            )?;
        }
        Ok(())
    })();
    section(&mut failed, "nf4 dequant", r);

    // NF4 GEMV (decode), rotating weight copies past the L2 cache.
    let r = (|| -> Result<()> {
        for (n, k) in [(4096usize, 4096usize), (11008, 4096), (4096, 11008)] {
            let wbytes = n * k / 2 + n * k / 64 * 4;
            let copies = (512usize << 20).div_ceil(wbytes).max(2);
            let ws: Vec<_> = (0..copies)
                .map(|_| rand_nf4(&gpu, &mut rng, n, k))
                .collect::<Result<_>>()?;
            let x = rand_bf16(&gpu, &mut rng, 4 * k, 1.0)?;
            let mut y = gpu.alloc_zeros::<bf16>(4 * n)?;
            for bm in [1usize, 4] {
                let ms = time_ms(&gpu, o, &mut |i| {
                    let xv = x.slice(..bm * k);
                    let mut yv = y.slice_mut(..bm * n);
                    ops::quant4::gemv_4bit(&gpu, &mut yv, &xv, &ws[i % copies], bm)
                })?;
                push(
                    &mut rows,
                    format!("gemv_4bit_bf16 m={bm} {n}x{k}"),
                    ms,
                    None,
                    Some((wbytes + 2 * bm * (n + k)) as f64),
                )?;
            }
            // The backend's decode path: f32 activations.
            let xf = rand_f32(&gpu, &mut rng, k)?;
            let mut yf = gpu.alloc_zeros::<f32>(n)?;
            let ms = time_ms(&gpu, o, &mut |i| {
                ops::quant4::gemv_4bit(&gpu, &mut yf, &xf, &ws[i % copies], 1)
            })?;
            push(
                &mut rows,
                format!("gemv_4bit_f32 m=1 {n}x{k}"),
                ms,
                None,
                Some((wbytes + 4 * (n + k)) as f64),
            )?;
        }
        Ok(())
    })();
    section(&mut failed, "nf4 gemv", r);

    // 16-bit GEMV (decode on a bf16 base), f32 x, rotating weight copies past the L2 cache.
    let r = (|| -> Result<()> {
        for (n, k) in [(4096usize, 4096usize), (11008, 4096)] {
            let wbytes = 2 * n * k;
            let copies = (512usize << 20).div_ceil(wbytes).max(2);
            let ws: Vec<DevBuf<u16>> = (0..copies)
                .map(|_| {
                    let bits: Vec<u16> = (0..n * k)
                        .map(|_| bf16::from_f32(rng.uniform() - 0.5).to_bits())
                        .collect();
                    gpu.clone_htod(&bits)
                })
                .collect::<Result<_>>()?;
            let x = rand_f32(&gpu, &mut rng, k)?;
            let mut y = gpu.alloc_zeros::<f32>(n)?;
            let ms = time_ms(&gpu, o, &mut |i| {
                ops::tensor::gemv16(&gpu, &mut y, &x, &ws[i % copies], true, 1, n, k)
            })?;
            push(
                &mut rows,
                format!("gemv16_f32 bf16 W m=1 {n}x{k}"),
                ms,
                None,
                Some((wbytes + 4 * (n + k)) as f64),
            )?;
        }
        Ok(())
    })();
    section(&mut failed, "16-bit gemv", r);

    // Training attention, causal, on the LLaMA-7B shape (T 2048, 32 heads of 128; MHA and GQA
    // with 8 kv heads; bf16 q, k, v and dO as in bf16 training): the fused kernels against the
    // GEMM path, forward and backward. FLOPs
    // count the causal half only (forward 2 products, backward 5 products), so both paths are
    // measured against the same useful work.
    let r = (|| -> Result<()> {
        let t = m.min(2048);
        for hkv in [32usize, 8] {
            let dm = crate::cuda::twins::attention::AttnDims {
                batch: (m / t).max(1),
                t,
                hq: 32,
                hkv,
                d: 128,
                scale: 1.0 / (128f32).sqrt(),
            };
            let (nq, nk) = (dm.batch * t * dm.hq * dm.d, dm.batch * t * hkv * dm.d);
            // bf16 q, k, v, O and dO, as bf16 training has them (O also as the f32 copy the
            // backward reads).
            let (q, k, v, dout) = (
                rand_bf16(&gpu, &mut rng, nq, 0.5)?,
                rand_bf16(&gpu, &mut rng, nk, 0.5)?,
                rand_bf16(&gpu, &mut rng, nk, 0.5)?,
                rand_bf16(&gpu, &mut rng, nq, 0.5)?,
            );
            let (mut out, mut o16, mut lse) = (
                gpu.alloc_zeros::<f32>(nq)?,
                gpu.alloc_zeros::<bf16>(nq)?,
                gpu.alloc_zeros::<f32>(dm.batch * dm.hq * t)?,
            );
            let (mut dq, mut dk, mut dv) = (
                gpu.alloc_zeros::<f32>(nq)?,
                gpu.alloc_zeros::<f32>(nk)?,
                gpu.alloc_zeros::<f32>(nk)?,
            );
            let fwd_flops = 4.0 * (dm.batch * dm.hq * t * t * dm.d) as f64 / 2.0;
            let mk = ops::attention::DeviceMasks::default();
            let mut sc = ops::attention_tc::TcScratch::default();
            let shape = format!("b{} t{t} hq32 hkv{hkv} d128 bf16", dm.batch);
            for gemm in [false, true] {
                let path = if gemm { "attn_gemm" } else { "attn_fused" };
                let ms = time_ms(&gpu, o, &mut |_| {
                    if gemm {
                        use ops::attention_tc::Src::Bf16;
                        let (qs, ks, vs) =
                            (Bf16(q.slice(..)), Bf16(k.slice(..)), Bf16(v.slice(..)));
                        ops::attention_tc::attn_tc_fwd::<bf16>(
                            &gpu, &mut sc, &mut out, &mut lse, qs, ks, vs, &mk, &dm,
                        )
                    } else {
                        ops::flash::flash_fwd(&gpu, &mut o16, &mut lse, &q, &k, &v, &mk, &dm)
                    }
                })?;
                push(
                    &mut rows,
                    format!("{path} fwd {shape}"),
                    ms,
                    Some(fwd_flops),
                    None,
                )?;
                let ms = time_ms(&gpu, o, &mut |_| {
                    if gemm {
                        use ops::attention_tc::Src::Bf16;
                        let (qs, ks, vs) =
                            (Bf16(q.slice(..)), Bf16(k.slice(..)), Bf16(v.slice(..)));
                        let dos = Bf16(dout.slice(..));
                        ops::attention_tc::attn_tc_bwd::<bf16>(
                            &gpu, &mut sc, &mut dq, &mut dk, &mut dv, dos, qs, ks, vs, &out, &lse,
                            &mk, &dm,
                        )
                    } else {
                        ops::flash::flash_bwd(
                            &gpu,
                            sc.delta_slot(),
                            &mut dq,
                            &mut dk,
                            &mut dv,
                            &dout,
                            &q,
                            &k,
                            &v,
                            &out,
                            &lse,
                            &mk,
                            &dm,
                        )
                    }
                })?;
                push(
                    &mut rows,
                    format!("{path} bwd {shape}"),
                    ms,
                    Some(2.5 * fwd_flops),
                    None,
                )?;
            }
        }
        Ok(())
    })();
    section(&mut failed, "attention", r);

    // The elementwise and row kernels of a training step, f32 as the backend stores
    // activations, on the LLaMA-7B shapes (tokens × 4096, × 11008; a 32000-wide head chunk):
    // GB/s of bytes read + written.
    let r = (|| -> Result<()> {
        let (h, f) = (4096usize, 11008usize);
        {
            let x = rand_f32(&gpu, &mut rng, m * h)?;
            let w = rand_f32(&gpu, &mut rng, h)?;
            let mut y = gpu.alloc_zeros::<f32>(m * h)?;
            let mut rstd = gpu.alloc_zeros::<f32>(m)?;
            let ms = time_ms(&gpu, o, &mut |_| {
                ops::norm::rmsnorm_fwd(&gpu, &mut y, &mut rstd, &x, &w, m, h, 1e-5)
            })?;
            push(
                &mut rows,
                format!("rmsnorm_fwd_f32 {m}x{h}"),
                ms,
                None,
                Some(8.0 * (m * h) as f64),
            )?;
            let mut yb = gpu.alloc_zeros::<bf16>(m * h)?;
            let ms = time_ms(&gpu, o, &mut |_| {
                ops::tensor::narrow_bf16(&gpu, &mut yb, &x)
            })?;
            push(
                &mut rows,
                format!("narrow_bf16 {m}x{h}"),
                ms,
                None,
                Some(6.0 * (m * h) as f64),
            )?;
            let (half_rot, max_pos) = (64usize, 4096usize);
            let cos = rand_f32(&gpu, &mut rng, max_pos * half_rot)?;
            let sin = rand_f32(&gpu, &mut rng, max_pos * half_rot)?;
            let pos = gpu.clone_htod(&(0..m).map(|i| (i % 2048) as i32).collect::<Vec<i32>>())?;
            let dm = ops::rope::RopeDims {
                tokens: m,
                heads: 32,
                hd: 128,
                rot: 128,
                max_pos,
            };
            let layout = crate::cuda::twins::rope::RopeLayout::Half;
            let ms = time_ms(&gpu, o, &mut |_| {
                ops::rope::rope(&gpu, &mut y, &x, &cos, &sin, &pos, dm, layout, false)
            })?;
            push(
                &mut rows,
                format!("rope_f32 {m}x32x128"),
                ms,
                None,
                Some(8.0 * (m * h) as f64),
            )?;
        }
        {
            let (e, g) = (
                rand_f32(&gpu, &mut rng, m * f)?,
                rand_f32(&gpu, &mut rng, m * f)?,
            );
            let mut a = gpu.alloc_zeros::<f32>(m * f)?;
            let sep = ops::act::GluLayout::Separate;
            let ms = time_ms(&gpu, o, &mut |_| {
                ops::act::swiglu_fwd(&gpu, &mut a, &e, &g, m, f, sep)
            })?;
            push(
                &mut rows,
                format!("swiglu_fwd_f32 {m}x{f}"),
                ms,
                None,
                Some(12.0 * (m * f) as f64),
            )?;
        }
        {
            let (n, v) = (1024usize.min(m), 32000usize);
            let logits = rand_f32(&gpu, &mut rng, n * v)?;
            let targets =
                gpu.clone_htod(&(0..n).map(|i| (i * 7 % v) as i32).collect::<Vec<i32>>())?;
            let (mut loss, mut lse) = (gpu.alloc_zeros::<f32>(n)?, gpu.alloc_zeros::<f32>(n)?);
            let ms = time_ms(&gpu, o, &mut |_| {
                ops::cross_entropy::cross_entropy_fwd(
                    &gpu, &mut loss, &mut lse, &logits, &targets, v,
                )
            })?;
            push(
                &mut rows,
                format!("cross_entropy_fwd_f32 {n}x{v}"),
                ms,
                None,
                Some(4.0 * (n * v) as f64),
            )?;
        }
        Ok(())
    })();
    section(&mut failed, "row kernels", r);

    // 8-bit AdamW over 64M parameters.
    let r = (|| -> Result<()> {
        let np = 64usize << 20;
        let pvals: Vec<f32> = (0..np).map(|_| rng.uniform() - 0.5).collect();
        let mut pd = gpu.clone_htod(&pvals)?;
        let gd = gpu.clone_htod(&pvals)?;
        let maps = ops::adamw8bit::DeviceMaps::upload(&gpu)?;
        let mut st = ops::adamw8bit::DeviceState8::zeros(&gpu, np)?;
        let mut step = 0u32;
        let ms = time_ms(&gpu, o, &mut |_| {
            step += 1;
            let h = crate::cuda::twins::adamw8bit::AdamHyper {
                lr: 1e-4,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                step,
                grad_scale: 1.0,
            };
            ops::adamw8bit::adamw8bit_step(&gpu, &mut pd, &gd, &mut st, &maps, &h)
        })?;
        // p read+write (8), g read (4), m,v codes read+write (4), absmax (negligible).
        push(
            &mut rows,
            format!("adamw8bit_f32 {np} params"),
            ms,
            None,
            Some(16.0 * np as f64),
        )?;
        // The training path's kernel: bitsandbytes' rounding, code lookups through 64 KiB tables.
        drop(st);
        let tables = ops::adamw8bit::BnbTables::upload(&gpu)?;
        let nb = np.div_ceil(crate::optim::adamw8bit::STATE_BLOCKSIZE);
        let (mut qm, mut qv) = (gpu.alloc_zeros::<u8>(np)?, gpu.alloc_zeros::<u8>(np)?);
        let (mut am, mut av) = (gpu.alloc_zeros::<f32>(nb)?, gpu.alloc_zeros::<f32>(nb)?);
        let mut step = 0u64;
        let ms = time_ms(&gpu, o, &mut |_| {
            step += 1;
            let s = crate::optim::adamw8bit::BnbScalars::new(1e-4, (0.9, 0.999), 1e-8, 0.0, step);
            ops::adamw8bit::adamw8bit_bnb(
                &gpu, &mut pd, &gd, &mut qm, &mut qv, &mut am, &mut av, &tables, &s,
            )
        })?;
        push(
            &mut rows,
            format!("adamw8bit_bnb {np} params"),
            ms,
            None,
            Some(16.0 * np as f64),
        )?;
        Ok(())
    })();
    section(&mut failed, "adamw8bit", r);

    let _ = writeln!(
        out,
        "{:<44} {:>10} {:>10} {:>10} {:>8}",
        "kernel", "ms", "TFLOP/s", "GB/s", "of peak"
    );
    for r in &rows {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<44} {:>10.3} {:>10} {:>10} {:>7.1}%",
            r.name,
            r.ms,
            f(r.tflops),
            f(r.gbps),
            100.0 * r.frac_of_peak
        );
    }
    for f in &failed {
        let _ = writeln!(out, "FAILED {f}");
    }
    Ok(BenchReport {
        device,
        peak_tflops,
        peak_gbps,
        rows,
        failed,
    })
}

#[cfg(test)]
mod tests {
    /// The `--json` document: peaks and one object per row, null where a row has no rate.
    #[test]
    fn the_json_report_holds_peaks_and_rows() {
        let row = super::BenchRow {
            name: "dequant_4bit_bf16 4096x4096".into(),
            ms: 0.019,
            tflops: None,
            gbps: Some(2268.6),
            frac_of_peak: 0.536,
        };
        let doc = super::json_report("cuda:0 H200", 757.0, 4233.0, &[row]);
        assert_eq!(
            doc.to_string(),
            r#"{"device":"cuda:0 H200","peak_tflops_bf16":757.0,"peak_gbps_copy":4233.0,"rows":[{"name":"dequant_4bit_bf16 4096x4096","ms":0.019,"tflops":null,"gbps":2268.6,"frac_of_peak":0.536}]}"#
        );
    }

    /// Without a driver both entry points fail with the one clear "unavailable" error.
    #[test]
    fn without_a_driver_selftest_and_bench_fail_cleanly() {
        if crate::cuda::device::driver_present() {
            return;
        }
        let mut out = Vec::new();
        let e = super::bench(0, &mut out, &Default::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--device cuda:0: no CUDA driver found (libcuda.so is not loadable on this machine)"
        );
        let e = super::super::selftest::selftest(0, &mut out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--device cuda:0: no CUDA driver found (libcuda.so is not loadable on this machine)"
        );
        assert!(out.is_empty());
    }
}
