//! `recipe selftest --device cuda[:N]`: every kernel against its CPU twin on seeded random inputs
//! at several shapes (ragged ones included), f32 and bf16 variants. Prints one line per check:
//! max abs error, max relative error, the tolerance and PASS/FAIL.
//!
//! Tolerances: an element passes when |gpu − twin| <= atol + rtol·|twin|. The twin runs on the
//! same (bf16-rounded, for bf16 variants) inputs, so the error left is f32 reassociation (f32:
//! ~1e-5 relative) plus the final bf16 rounding of outputs (bf16: 2^-8 relative, so rtol 1e-2).
//!
//! Last, the whole model: a tiny LLaMA trained with LoRA on `CpuBackend` and on `CudaBackend`
//! from the same seed, per-step losses within 1e-3 relative (`train_check`).

use std::io::Write;

use crate::cuda::mem::DevBuf;
use half::bf16;

use crate::cuda::error::{CudaError, Result};
use crate::cuda::ops::{self, Elem};
use crate::cuda::twins::{self, max_errors, Rng};
use crate::cuda::Gpu;

/// One comparison.
#[derive(Debug, Clone)]
pub struct KernelResult {
    pub name: String,
    pub max_abs: f32,
    pub max_rel: f32,
    pub atol: f32,
    pub rtol: f32,
    pub pass: bool,
}

#[derive(Debug, Clone)]
pub struct SelftestReport {
    pub device: String,
    pub results: Vec<KernelResult>,
}

impl SelftestReport {
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.pass)
    }
    pub fn failures(&self) -> Vec<&KernelResult> {
        self.results.iter().filter(|r| !r.pass).collect()
    }
}

#[derive(Debug, Clone, Copy)]
struct Tol {
    atol: f32,
    rtol: f32,
}

/// Tolerance by storage dtype: (f32, bf16).
fn tol<T: Elem>(f: (f32, f32), b: (f32, f32)) -> Tol {
    let (atol, rtol) = if T::SUFFIX == "f32" { f } else { b };
    Tol { atol, rtol }
}

struct Checker<'a> {
    out: &'a mut dyn Write,
    results: Vec<KernelResult>,
    /// Smaller shapes for the emulated device (a fiber per CUDA thread on one host thread); the largest,
    /// GPU-sized cases are skipped or shrunk there.
    small: bool,
}

impl Checker<'_> {
    fn check(&mut self, name: &str, got: &[f32], want: &[f32], t: Tol) {
        let (max_abs, max_rel) = max_errors(got, want, 1e-6);
        let mut pass = got.len() == want.len();
        let mut first_bad = None;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let ok = g == w || (g - w).abs() <= t.atol + t.rtol * w.abs();
            if !ok {
                pass = false;
                if first_bad.is_none() {
                    first_bad = Some((i, g, w));
                }
            }
        }
        let _ = writeln!(
            self.out,
            "{:<44} max_abs {:>10.3e}  max_rel {:>10.3e}  (atol {:.0e} rtol {:.0e})  {}",
            name,
            max_abs,
            max_rel,
            t.atol,
            t.rtol,
            if pass { "PASS" } else { "FAIL" }
        );
        if let Some((i, g, w)) = first_bad {
            let _ = writeln!(self.out, "    first mismatch at {i}: gpu {g} twin {w}");
        }
        self.results.push(KernelResult {
            name: name.into(),
            max_abs,
            max_rel,
            atol: t.atol,
            rtol: t.rtol,
            pass,
        });
    }

    /// Records a check that is not an elementwise comparison.
    fn record(&mut self, name: &str, pass: bool, detail: &str) {
        let _ = writeln!(
            self.out,
            "{name:<44} {detail}  {}",
            if pass { "PASS" } else { "FAIL" }
        );
        self.results.push(KernelResult {
            name: name.into(),
            max_abs: 0.0,
            max_rel: 0.0,
            atol: 0.0,
            rtol: 0.0,
            pass,
        });
    }

    /// Records a launch/driver error as a failed check instead of aborting the whole run.
    fn error(&mut self, name: &str, e: &CudaError) {
        let _ = writeln!(self.out, "{name:<44} ERROR {e}  FAIL");
        self.results.push(KernelResult {
            name: name.into(),
            max_abs: f32::INFINITY,
            max_rel: f32::INFINITY,
            atol: 0.0,
            rtol: 0.0,
            pass: false,
        });
    }
}

fn up<T: Elem>(gpu: &Gpu, v: &[f32]) -> Result<DevBuf<T>> {
    let h: Vec<T> = v.iter().map(|&x| T::from_f32(x)).collect();
    Ok(gpu.clone_htod(&h)?)
}

fn down<T: Elem>(gpu: &Gpu, s: &DevBuf<T>) -> Result<Vec<f32>> {
    Ok(gpu.clone_dtoh(s)?.into_iter().map(|x| x.to_f32()).collect())
}

/// What a T buffer stores for these values.
fn rounded<T: Elem>(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| T::from_f32(x).to_f32()).collect()
}

/// Runs every check on GPU `device_ordinal`, writing one line per check to `out`.
pub fn selftest(device_ordinal: usize, out: &mut dyn Write) -> Result<SelftestReport> {
    let gpu = Gpu::new(device_ordinal)?;
    let device = format!(
        "cuda:{device_ordinal} {} (sm_{}{})",
        gpu.name, gpu.cc.0, gpu.cc.1
    );
    let _ = writeln!(out, "selftest on {device}");
    let mut ck = Checker {
        out,
        results: Vec::new(),
        small: gpu.is_emulated(),
    };
    kernel_checks(&gpu, &mut ck, |_| true);
    train_check(device_ordinal, &mut ck);
    model_checks(device_ordinal, &mut ck);
    let report = SelftestReport {
        device,
        results: ck.results,
    };
    let fails = report.failures().len();
    let _ = writeln!(
        ck.out,
        "{} checks, {} failed: {}",
        report.results.len(),
        fails,
        if fails == 0 { "PASS" } else { "FAIL" }
    );
    Ok(report)
}

/// The kernel families on `gpu` (a real GPU or the emulated device), those whose name `want`
/// accepts; one line per check to `out`. `tests/cuda_emulated.rs` runs these on the emulated
/// device, `selftest` on a real one.
pub fn kernel_families(
    gpu: &Gpu,
    out: &mut dyn Write,
    want: impl Fn(&str) -> bool,
) -> SelftestReport {
    let mut ck = Checker {
        out,
        results: Vec::new(),
        small: gpu.is_emulated(),
    };
    kernel_checks(gpu, &mut ck, want);
    SelftestReport {
        device: gpu.name.clone(),
        results: ck.results,
    }
}

fn kernel_checks(gpu: &Gpu, ck: &mut Checker, want: impl Fn(&str) -> bool) {
    type Family = fn(&Gpu, &mut Checker, &mut Rng) -> Result<()>;
    let families: &[(&str, Family)] = &[
        ("quant4", |g, c, r| quant4_checks(g, c, r)),
        ("gemm4", |g, c, r| gemm4_checks(g, c, r)),
        ("adamw8bit", |g, c, r| adamw_checks(g, c, r)),
        ("optim", |g, c, r| optim_checks(g, c, r)),
        ("norm f32", |g, c, r| norm_checks::<f32>(g, c, r)),
        ("norm bf16", |g, c, r| norm_checks::<bf16>(g, c, r)),
        ("rope f32", |g, c, r| rope_checks::<f32>(g, c, r)),
        ("rope bf16", |g, c, r| rope_checks::<bf16>(g, c, r)),
        ("act f32", |g, c, r| act_checks::<f32>(g, c, r)),
        ("act bf16", |g, c, r| act_checks::<bf16>(g, c, r)),
        ("embedding f32", |g, c, r| embedding_checks::<f32>(g, c, r)),
        ("embedding bf16", |g, c, r| {
            embedding_checks::<bf16>(g, c, r)
        }),
        ("cross_entropy f32", |g, c, r| ce_checks::<f32>(g, c, r)),
        ("cross_entropy bf16", |g, c, r| ce_checks::<bf16>(g, c, r)),
        ("lm_head_ce", |g, c, r| lm_head_ce_check(g, c, r)),
        ("attention f32", |g, c, r| {
            attention_checks::<f32>(g, c, r, AttnPath::Kernels)
        }),
        ("attention bf16", |g, c, r| {
            attention_checks::<bf16>(g, c, r, AttnPath::Kernels)
        }),
        ("attention tensor-core", |g, c, r| {
            attention_checks::<bf16>(g, c, r, AttnPath::Gemm)
        }),
        ("attention fused", |g, c, r| {
            attention_checks::<bf16>(g, c, r, AttnPath::Fused)
        }),
        ("cublas", |g, c, r| blas_checks(g, c, r)),
        ("cublas batched", |g, c, r| blas_batched_check(g, c, r)),
        ("lora", |g, c, r| lora_checks(g, c, r)),
    ];
    for (i, (name, f)) in families.iter().enumerate() {
        if !want(name) {
            continue;
        }
        let mut rng = Rng::new(1000 + i as u64);
        if let Err(e) = f(gpu, ck, &mut rng).and_then(|_| Ok(gpu.synchronize()?)) {
            ck.error(name, &e);
        }
    }
}

/// The whole model on `CudaBackend` vs `CpuBackend`: a tiny LLaMA, LoRA on every linear,
/// `train_check::STEPS` AdamW steps from the same seed; per-step losses within
/// `train_check::LOSS_RTOL` (1e-3) relative.
fn train_check(device_ordinal: usize, ck: &mut Checker) {
    use super::train_check::{cpu_vs_cuda, LOSS_RTOL, STEPS};
    let name = format!("train: tiny llama LoRA, {STEPS} steps cpu vs cuda");
    match cpu_vs_cuda(device_ordinal) {
        Ok(r) => {
            let pass = r.passed();
            let losses = |v: &[f32]| {
                v.iter()
                    .map(|l| format!("{l:.6}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            ck.record(
                &name,
                pass,
                &format!("max_rel {:.3e} (rtol {LOSS_RTOL:.0e})", r.max_rel),
            );
            let _ = writeln!(ck.out, "    cpu  losses: {}", losses(&r.cpu));
            let _ = writeln!(ck.out, "    cuda losses: {}", losses(&r.cuda));
        }
        Err(e) => ck.record(&name, false, &format!("ERROR {e:#}")),
    }
}

/// The repository's tiny fixture models (`tests/fixtures`, present when the self-test runs from
/// a checkout, as on a lent GPU machine) trained on the device and on the CPU, as
/// `tests/cuda_emulated.rs` does on the emulated device: LLaMA and ChatGLM with 10 LoRA steps and
/// 10 QLoRA steps (NF4 + double quant, 8-bit AdamW, checkpointing), every other family 3 LoRA
/// steps, in f32 and again in bf16 compute (bf16 products and activations). Losses within 1e-2
/// relative, adapters within 2e-2 of each tensor's largest value (f32) or in L2 within 0.15
/// after 10 bf16 steps and 0.4 after 3 (as tests/cuda_emulated.rs bounds them).
fn model_checks(device_ordinal: usize, ck: &mut Checker) {
    use super::train_check::{compare, Run, OTHER_FAMILIES};
    let root = std::path::Path::new("tests/fixtures");
    if !root.is_dir() {
        let _ = writeln!(
            ck.out,
            "(no tests/fixtures here: fixture model checks skipped)"
        );
        return;
    }
    use crate::backend::Precision;
    let (lora, qlora) = (Run::LORA_DROPOUT, Run::QLORA);
    let mut cases: Vec<(&str, &Run, usize, Precision)> = Vec::new();
    for p in [Precision::F32, Precision::Bf16] {
        for d in ["engine/llama", "engine/chatglm"] {
            cases.push((d, &lora, 10, p));
            cases.push((d, &qlora, 10, p));
        }
    }
    for p in [Precision::F32, Precision::Bf16] {
        cases.extend(OTHER_FAMILIES.iter().map(|&d| (d, &lora, 3, p)));
    }
    for (d, run, steps, precision) in cases {
        let what = if run.qlora { "qlora" } else { "lora" };
        let name = format!("model: {d} {what} {precision:?}, {steps} steps cpu vs cuda");
        let r = crate::backend::CudaBackend::new(device_ordinal).and_then(|be| {
            let be = std::sync::Arc::new(be.with_precision(precision));
            compare(&root.join(d), be, steps, run)
        });
        match r {
            Ok(r) => ck.record(
                &name,
                // bf16: AdamW turns bf16-perturbed signs of near-zero gradients into whole
                // steps, so the adapters are held in L2 (as tests/cuda_emulated.rs does).
                r.max_rel_loss <= 1e-2
                    && match (precision, steps) {
                        (Precision::F32, _) => r.max_rel_adapter <= 2e-2,
                        (Precision::Bf16, 10) => r.l2_rel_adapter <= 1.5e-1,
                        (Precision::Bf16, _) => r.l2_rel_adapter <= 0.4,
                    },
                &format!(
                    "loss {:.2e} adapter {:.2e} (l2 {:.2e})",
                    r.max_rel_loss, r.max_rel_adapter, r.l2_rel_adapter
                ),
            ),
            Err(e) => ck.record(&name, false, &format!("ERROR {e:#}")),
        }
    }
}

fn quant4_checks(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    use twins::quant4::{dequant_4bit, quantize_4bit, FP4_CODE, NF4_CODE};
    for (code, cname) in [(&NF4_CODE, "nf4"), (&FP4_CODE, "fp4")] {
        for (n, bs) in [(64 * 37 + 13, 64usize), (4096 * 3, 256)] {
            let x = rng.normals(n, 1.0);
            let (packed, absmax) = quantize_4bit(&x, bs, code);
            let mut want = vec![0f32; n];
            dequant_4bit(&mut want, &packed, &absmax, code, bs);
            let w = ops::quant4::Quant4Weight {
                packed: gpu.clone_htod(&packed)?,
                absmax: gpu.clone_htod(&absmax)?,
                code: gpu.clone_htod(&code[..])?,
                blocksize: bs,
                rows: 1,
                cols: n,
            };
            let mut o32 = gpu.alloc_zeros::<f32>(n)?;
            ops::quant4::dequant_4bit(gpu, &mut o32, &w)?;
            ck.check(
                &format!("dequant_4bit_f32 {cname} n={n} bs={bs}"),
                &down(gpu, &o32)?,
                &want,
                Tol {
                    atol: 0.0,
                    rtol: 1e-6,
                },
            );
            let mut o16 = gpu.alloc_zeros::<bf16>(n)?;
            ops::quant4::dequant_4bit(gpu, &mut o16, &w)?;
            ck.check(
                &format!("dequant_4bit_bf16 {cname} n={n} bs={bs}"),
                &down(gpu, &o16)?,
                &rounded::<bf16>(&want),
                Tol {
                    atol: 0.0,
                    rtol: 1e-6,
                },
            );
        }
    }
    // Double-quant absmax.
    let nb = 1000;
    let code8 = twins::adamw8bit::dynamic_map(true);
    let raw: Vec<f32> = (0..nb).map(|_| rng.uniform()).collect();
    let offset = raw.iter().sum::<f32>() / nb as f32;
    let centered: Vec<f32> = raw.iter().map(|v| v - offset).collect();
    let (q, absmax2) = twins::quant4::quantize_8bit(&centered, 256, &code8);
    let mut want = vec![0f32; nb];
    twins::quant4::dequant_absmax(&mut want, &q, &code8, &absmax2, offset, 256);
    let mut got = gpu.alloc_zeros::<f32>(nb)?;
    ops::quant4::dequant_absmax(
        gpu,
        &mut got,
        &gpu.clone_htod(&q)?,
        &gpu.clone_htod(&code8[..])?,
        &gpu.clone_htod(&absmax2)?,
        offset,
        256,
    )?;
    ck.check(
        "dequant_absmax_f32 n=1000",
        &down(gpu, &got)?,
        &want,
        Tol {
            atol: 1e-7,
            rtol: 1e-6,
        },
    );
    // GEMV.
    let small = ck.small;
    for (rows, cols, bs) in [
        (96usize, 256usize, 64usize),
        (130, 608, 32),
        // 258 chunks of 32: three passes of a lane's unrolled loads, the last one partial.
        (20, 8256, 64),
        (4096, 4096, 64),
    ]
    .into_iter()
    .filter(|&(rows, _, _)| !small || rows < 4096)
    {
        let wv = rng.normals(rows * cols, 0.05);
        let (packed, absmax) = quantize_4bit(&wv, bs, &NF4_CODE);
        let w = ops::quant4::Quant4Weight {
            packed: gpu.clone_htod(&packed)?,
            absmax: gpu.clone_htod(&absmax)?,
            code: gpu.clone_htod(&NF4_CODE[..])?,
            blocksize: bs,
            rows,
            cols,
        };
        for m in [1usize, 3] {
            let x = rng.normals(m * cols, 1.0);
            let dims = (m, rows, cols, bs);
            gemv_variant::<f32>(gpu, ck, &w, &x, &packed, &absmax, dims)?;
            gemv_variant::<bf16>(gpu, ck, &w, &x, &packed, &absmax, dims)?;
        }
    }
    gemv16_checks(gpu, ck, rng)
}

/// The 16-bit decode GEMV (bf16 and f16 bits, f32 x) against an f64 product of the exact stored
/// values; 2056 columns are 257 chunks of 8: three passes of a lane's unrolled loads.
fn gemv16_checks(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    for (rows, cols) in [(40usize, 2056usize), (130, 64)] {
        let wv = rng.normals(rows * cols, 0.5);
        for is_bf16 in [true, false] {
            let (bits, vals): (Vec<u16>, Vec<f32>) = wv
                .iter()
                .map(|&v| {
                    if is_bf16 {
                        let h = bf16::from_f32(v);
                        (h.to_bits(), h.to_f32())
                    } else {
                        let h = half::f16::from_f32(v);
                        (h.to_bits(), h.to_f32())
                    }
                })
                .unzip();
            let wd = gpu.clone_htod(&bits)?;
            for m in [1usize, 3] {
                let x = rng.normals(m * cols, 1.0);
                let want: Vec<f32> = (0..m * rows)
                    .map(|i| {
                        let (r, o) = (i / rows, i % rows);
                        (0..cols)
                            .map(|c| x[r * cols + c] as f64 * vals[o * cols + c] as f64)
                            .sum::<f64>() as f32
                    })
                    .collect();
                let mut y = gpu.alloc_zeros::<f32>(m * rows)?;
                ops::tensor::gemv16(
                    gpu,
                    &mut y,
                    &gpu.clone_htod(&x)?,
                    &wd,
                    is_bf16,
                    m,
                    rows,
                    cols,
                )?;
                let kind = if is_bf16 { "bf16" } else { "f16" };
                ck.check(
                    &format!("gemv16 {kind} m={m} {rows}x{cols}"),
                    &down(gpu, &y)?,
                    &want,
                    Tol {
                        atol: 1e-4,
                        rtol: 1e-4,
                    },
                );
            }
        }
    }
    Ok(())
}

fn gemv_variant<T: Elem>(
    gpu: &Gpu,
    ck: &mut Checker,
    w: &ops::quant4::Quant4Weight,
    x: &[f32],
    packed: &[u8],
    absmax: &[f32],
    (m, rows, cols, bs): (usize, usize, usize, usize),
) -> Result<()> {
    let xr = rounded::<T>(x);
    let mut want = vec![0f32; m * rows];
    for (yr, xrow) in want.chunks_mut(rows).zip(xr.chunks(cols)) {
        twins::quant4::gemv_4bit(
            yr,
            xrow,
            packed,
            absmax,
            &twins::quant4::NF4_CODE,
            rows,
            cols,
            bs,
        );
    }
    let mut y = gpu.alloc_zeros::<T>(m * rows)?;
    ops::quant4::gemv_4bit(gpu, &mut y, &up::<T>(gpu, &xr)?, w, m)?;
    let t = tol::<T>((1e-4, 1e-4), (2e-2, 1e-2));
    ck.check(
        &format!("gemv_4bit_{} m={m} {rows}x{cols} bs={bs}", T::SUFFIX),
        &down(gpu, &y)?,
        &want,
        t,
    );
    Ok(())
}

fn gemm4_checks(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    use twins::quant4::{dequant_4bit, quantize_4bit, NF4_CODE};
    let small = ck.small;
    for (m, n, k) in [
        (64usize, 64usize, 64usize),
        (100, 72, 96),
        (3, 130, 258),
        (257, 192, 1024),
    ]
    .into_iter()
    .filter(|&(m, _, _)| !small || m < 257)
    {
        let bs = 64;
        let wv = rng.normals(n * k, 0.05);
        let (packed, absmax) = quantize_4bit(&wv, bs, &NF4_CODE);
        // The kernel rounds dequantized weights to bf16 before the tensor-core product.
        let mut wd = vec![0f32; n * k];
        dequant_4bit(&mut wd, &packed, &absmax, &NF4_CODE, bs);
        let wd = rounded::<bf16>(&wd);
        let w = ops::quant4::Quant4Weight {
            packed: gpu.clone_htod(&packed)?,
            absmax: gpu.clone_htod(&absmax)?,
            code: gpu.clone_htod(&NF4_CODE[..])?,
            blocksize: bs,
            rows: n,
            cols: k,
        };
        let x = rounded::<bf16>(&rng.normals(m * k, 1.0));
        let mut want = vec![0f32; m * n];
        ops::blas::matmul_ref(&mut want, &x, &wd, &ops::blas::MatMul::linear(m, n, k));
        let mut y = gpu.alloc_zeros::<bf16>(m * n)?;
        ops::gemm4::gemm_4bit(gpu, &mut y, &up::<bf16>(gpu, &x)?, &w, m, false)?;
        let t = Tol {
            atol: 2e-2,
            rtol: 1e-2,
        };
        ck.check(
            &format!("gemm_4bit_bf16 m={m} n={n} k={k}"),
            &down(gpu, &y)?,
            &want,
            t,
        );
        // Accumulate: y += X·Wᵀ again.
        ops::gemm4::gemm_4bit(gpu, &mut y, &up::<bf16>(gpu, &x)?, &w, m, true)?;
        let want2: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
        ck.check(
            &format!("gemm_4bit_bf16 accumulate m={m} n={n} k={k}"),
            &down(gpu, &y)?,
            &want2,
            Tol {
                atol: 4e-2,
                rtol: 2e-2,
            },
        );
        // dX = dY·W.
        let dy = rounded::<bf16>(&rng.normals(m * n, 1.0));
        let mut want_dx = vec![0f32; m * k];
        ops::blas::matmul_ref(
            &mut want_dx,
            &dy,
            &wd,
            &ops::blas::MatMul {
                trans_b: false,
                ..ops::blas::MatMul::linear(m, k, n)
            },
        );
        let mut dx = gpu.alloc_zeros::<bf16>(m * k)?;
        ops::gemm4::gemm_4bit_dx(gpu, &mut dx, &up::<bf16>(gpu, &dy)?, &w, m, false)?;
        ck.check(
            &format!("gemm_4bit_dx_bf16 m={m} n={n} k={k}"),
            &down(gpu, &dx)?,
            &want_dx,
            t,
        );
    }
    Ok(())
}

fn adamw_checks(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    use twins::adamw8bit::{adamw8bit_step, dynamic_map, AdamHyper, State8};
    let (cm, cv) = (dynamic_map(true), dynamic_map(false));
    let maps = ops::adamw8bit::DeviceMaps::upload(gpu)?;
    let big = if ck.small { 256 * 9 + 5 } else { 100_000 };
    for n in [256 * 5 + 77, big] {
        let p0 = rng.normals(n, 1.0);
        let mut p_cpu = p0.clone();
        let mut st_cpu = State8::zeros(n, &cm, &cv);
        let mut st_gpu = ops::adamw8bit::DeviceState8::zeros(gpu, n)?;
        let mut paged = ops::adamw8bit::PagedAdamW8bit::new(gpu, n, 1024)?;
        for step in 1..=3 {
            let g = rng.normals(n, 0.1);
            let h = AdamHyper {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                step,
                grad_scale: 0.5,
            };
            // Each side starts the step from the same state (the CPU one), so one rounding flip
            // in a code does not compound over steps.
            st_gpu.qm = gpu.clone_htod(&st_cpu.qm)?;
            st_gpu.qv = gpu.clone_htod(&st_cpu.qv)?;
            st_gpu.absmax_m = gpu.clone_htod(&st_cpu.absmax_m)?;
            st_gpu.absmax_v = gpu.clone_htod(&st_cpu.absmax_v)?;
            let mut p_gpu = gpu.clone_htod(&p_cpu)?;
            paged.host = st_cpu.clone();
            let mut p_paged = gpu.clone_htod(&p_cpu)?;
            let gd = gpu.clone_htod(&g)?;
            ops::adamw8bit::adamw8bit_step(gpu, &mut p_gpu, &gd, &mut st_gpu, &maps, &h)?;
            paged.step(gpu, &mut p_paged, &gd, &maps, &h)?;
            adamw8bit_step(&mut p_cpu, &mut st_cpu, &g, &cm, &cv, &h);
            let t = Tol {
                atol: 1e-6,
                rtol: 1e-5,
            };
            ck.check(
                &format!("adamw8bit_f32 n={n} step={step} params"),
                &down(gpu, &p_gpu)?,
                &p_cpu,
                t,
            );
            ck.check(
                &format!("adamw8bit_f32 paged n={n} step={step} params"),
                &down(gpu, &p_paged)?,
                &p_cpu,
                t,
            );
            // State: absmax must match; codes may differ by one step where the f32 value sits
            // within rounding of a midpoint between two codes (FMA contraction on the GPU).
            for (which, q_gpu, a_gpu, q_cpu, a_cpu) in [
                (
                    "m",
                    &st_gpu.qm,
                    &st_gpu.absmax_m,
                    &st_cpu.qm,
                    &st_cpu.absmax_m,
                ),
                (
                    "v",
                    &st_gpu.qv,
                    &st_gpu.absmax_v,
                    &st_cpu.qv,
                    &st_cpu.absmax_v,
                ),
            ] {
                let qg: Vec<u8> = gpu.clone_dtoh(q_gpu)?;
                let ag: Vec<f32> = gpu.clone_dtoh(a_gpu)?;
                ck.check(
                    &format!("adamw8bit_f32 n={n} step={step} {which} absmax"),
                    &ag,
                    a_cpu,
                    Tol {
                        atol: 1e-12,
                        rtol: 1e-5,
                    },
                );
                let flips = qg.iter().zip(q_cpu).filter(|(a, b)| a != b).count();
                let far = qg
                    .iter()
                    .zip(q_cpu)
                    .filter(|(a, b)| (**a as i32 - **b as i32).abs() > 1)
                    .count();
                let pass = far == 0 && flips * 1000 <= n;
                ck.record(
                    &format!("adamw8bit_f32 n={n} step={step} {which} codes"),
                    pass,
                    &format!("{flips} of {n} differ by one code, {far} by more (allowed: 0.1%, 0)"),
                );
            }
        }
    }
    Ok(())
}

fn optim_checks(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    use crate::optim::adamw::AdamwScalars;
    let big = if ck.small { 10_003 } else { 100_003 };
    for n in [1usize, 1000, big] {
        let (mut p, mut m, mut v) = (rng.normals(n, 1.0), vec![0f32; n], vec![0f32; n]);
        let (mut pd, mut md, mut vd) = (
            gpu.clone_htod(&p)?,
            gpu.clone_htod(&m)?,
            gpu.clone_htod(&v)?,
        );
        for step in 1..=3 {
            let g = rng.normals(n, 0.1);
            let s = AdamwScalars::new(1e-3, (0.9, 0.999), 1e-8, 0.01, step);
            twins::optim::adamw_torch(&mut p, &mut m, &mut v, &g, &s, 0.7, true);
            let gd = gpu.clone_htod(&g)?;
            ops::optim::adamw_torch(gpu, &mut pd, &mut md, &mut vd, &gd, &s, 0.7, true)?;
        }
        // Bit for bit the CPU optimizer (IEEE division and sqrt, no fused products).
        let exact = Tol {
            atol: 0.0,
            rtol: 0.0,
        };
        for (what, dev, host) in [("params", &pd, &p), ("m", &md, &m), ("v", &vd, &v)] {
            ck.check(
                &format!("adamw_torch_f32 n={n} 3 steps {what}"),
                &down(gpu, dev)?,
                host,
                exact,
            );
        }
        let x = rng.normals(n, 1.0);
        let mut out = gpu.alloc_zeros::<f32>(1)?;
        ops::optim::sumsq(gpu, &mut out, &gpu.clone_htod(&x)?)?;
        ops::optim::sumsq(gpu, &mut out, &up::<bf16>(gpu, &x)?)?;
        let want = (twins::optim::sumsq(&x) + twins::optim::sumsq(&rounded::<bf16>(&x))) as f32;
        ck.check(
            &format!("sumsq_f32+sumsq_bf16 n={n}"),
            &down(gpu, &out)?,
            &[want],
            Tol {
                atol: 1e-4,
                rtol: 1e-5,
            },
        );
    }
    Ok(())
}

fn norm_checks<T: Elem>(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    let s = T::SUFFIX;
    for (rows, d) in [(7usize, 64usize), (5, 1000), (3, 4096)] {
        let x = rounded::<T>(&rng.normals(rows * d, 1.0));
        let w = rounded::<T>(&rng.normals(d, 1.0));
        let b = rounded::<T>(&rng.normals(d, 1.0));
        let dy = rounded::<T>(&rng.normals(rows * d, 1.0));
        let (xd, wd, bd, dyd) = (
            up::<T>(gpu, &x)?,
            up::<T>(gpu, &w)?,
            up::<T>(gpu, &b)?,
            up::<T>(gpu, &dy)?,
        );
        let t = tol::<T>((1e-4, 1e-4), (2e-2, 1e-2));
        // Weight grads sum over rows in f32 with atomics: looser absolute tolerance.
        let tw = tol::<T>((1e-3, 1e-4), (3e-2, 1e-2));
        // RMSNorm
        let (mut y, mut rs) = (vec![0f32; rows * d], vec![0f32; rows]);
        twins::norm::rmsnorm_fwd(&mut y, &mut rs, &x, &w, d, 1e-5);
        let (mut yg, mut rsg) = (
            gpu.alloc_zeros::<T>(rows * d)?,
            gpu.alloc_zeros::<f32>(rows)?,
        );
        ops::norm::rmsnorm_fwd(gpu, &mut yg, &mut rsg, &xd, &wd, rows, d, 1e-5)?;
        ck.check(
            &format!("rmsnorm_fwd_{s} {rows}x{d} y"),
            &down(gpu, &yg)?,
            &y,
            t,
        );
        ck.check(
            &format!("rmsnorm_fwd_{s} {rows}x{d} rstd"),
            &down(gpu, &rsg)?,
            &rs,
            Tol {
                atol: 1e-6,
                rtol: 1e-5,
            },
        );
        let (mut dx, mut dw) = (vec![0f32; rows * d], vec![0f32; d]);
        twins::norm::rmsnorm_bwd(&mut dx, &mut dw, &dy, &x, &w, &rs, d);
        let (mut dxg, mut dwg) = (gpu.alloc_zeros::<T>(rows * d)?, gpu.alloc_zeros::<f32>(d)?);
        ops::norm::rmsnorm_bwd(gpu, &mut dxg, &mut dwg, &dyd, &xd, &wd, &rsg, rows, d)?;
        ck.check(
            &format!("rmsnorm_bwd_{s} {rows}x{d} dx"),
            &down(gpu, &dxg)?,
            &dx,
            t,
        );
        ck.check(
            &format!("rmsnorm_bwd_{s} {rows}x{d} dw"),
            &down(gpu, &dwg)?,
            &dw,
            tw,
        );
        // LayerNorm
        let (mut mu, mut rs) = (vec![0f32; rows], vec![0f32; rows]);
        twins::norm::layernorm_fwd(&mut y, &mut mu, &mut rs, &x, &w, &b, d, 1e-5);
        let (mut mug, mut rsg) = (gpu.alloc_zeros::<f32>(rows)?, gpu.alloc_zeros::<f32>(rows)?);
        ops::norm::layernorm_fwd(
            gpu, &mut yg, &mut mug, &mut rsg, &xd, &wd, &bd, rows, d, 1e-5,
        )?;
        ck.check(
            &format!("layernorm_fwd_{s} {rows}x{d} y"),
            &down(gpu, &yg)?,
            &y,
            t,
        );
        let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
        twins::norm::layernorm_bwd(&mut dx, &mut dw, &mut db, &dy, &x, &w, &mu, &rs, d);
        let (mut dwg, mut dbg) = (gpu.alloc_zeros::<f32>(d)?, gpu.alloc_zeros::<f32>(d)?);
        ops::norm::layernorm_bwd(
            gpu, &mut dxg, &mut dwg, &mut dbg, &dyd, &xd, &wd, &mug, &rsg, rows, d,
        )?;
        ck.check(
            &format!("layernorm_bwd_{s} {rows}x{d} dx"),
            &down(gpu, &dxg)?,
            &dx,
            t,
        );
        ck.check(
            &format!("layernorm_bwd_{s} {rows}x{d} dw"),
            &down(gpu, &dwg)?,
            &dw,
            tw,
        );
        ck.check(
            &format!("layernorm_bwd_{s} {rows}x{d} db"),
            &down(gpu, &dbg)?,
            &db,
            tw,
        );
    }
    Ok(())
}

fn rope_checks<T: Elem>(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    use twins::rope::{rope, rope_tables, RopeLayout};
    let s = T::SUFFIX;
    let t = tol::<T>((1e-5, 1e-5), (1e-2, 1e-2));
    for (layout, tokens, heads, hd, rot) in [
        (RopeLayout::Half, 9usize, 3usize, 64usize, 64usize),
        (RopeLayout::Half, 5, 2, 80, 40),
        (RopeLayout::Glm, 11, 4, 128, 64),
    ] {
        let max_pos = 40;
        let (c, sn) = rope_tables(max_pos, rot, 10000.0);
        let pos: Vec<i32> = (0..tokens)
            .map(|_| rng.below(max_pos as u32) as i32)
            .collect();
        let x = rounded::<T>(&rng.normals(tokens * heads * hd, 1.0));
        let (cd, sd, pd, xd) = (
            gpu.clone_htod(&c)?,
            gpu.clone_htod(&sn)?,
            gpu.clone_htod(&pos)?,
            up::<T>(gpu, &x)?,
        );
        let dm = ops::rope::RopeDims {
            tokens,
            heads,
            hd,
            rot,
            max_pos,
        };
        for backward in [false, true] {
            let mut want = vec![0f32; x.len()];
            rope(
                &mut want,
                &x,
                &c,
                &sn,
                &pos,
                heads,
                hd,
                rot,
                layout,
                if backward { -1.0 } else { 1.0 },
            );
            let mut y = gpu.alloc_zeros::<T>(x.len())?;
            ops::rope::rope(gpu, &mut y, &xd, &cd, &sd, &pd, dm, layout, backward)?;
            let name = format!(
                "rope_{:?}_{}_{s} t={tokens} h={heads} hd={hd} rot={rot}",
                layout,
                if backward { "bwd" } else { "fwd" }
            )
            .to_lowercase();
            ck.check(&name, &down(gpu, &y)?, &want, t);
        }
    }
    // ALiBi
    let (batch, heads, tt) = (2, 12, 33);
    let slopes = twins::rope::alibi_slopes(heads);
    let kpos: Vec<i32> = (0..batch * tt)
        .map(|i| (i % tt) as i32 - 3)
        .map(|p| p.max(0))
        .collect();
    let mut want = vec![0f32; batch * heads * tt];
    twins::rope::alibi_bias(&mut want, &slopes, &kpos, batch, tt);
    let mut got = gpu.alloc_zeros::<f32>(want.len())?;
    ops::rope::alibi_bias(
        gpu,
        &mut got,
        &gpu.clone_htod(&slopes)?,
        &gpu.clone_htod(&kpos)?,
        batch,
        heads,
        tt,
    )?;
    ck.check(
        "alibi_bias_f32 b=2 h=12 t=33",
        &down(gpu, &got)?,
        &want,
        Tol {
            atol: 0.0,
            rtol: 1e-6,
        },
    );
    Ok(())
}

fn act_checks<T: Elem>(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    use ops::act::GluLayout;
    let s = T::SUFFIX;
    let t = tol::<T>((1e-5, 1e-4), (1e-2, 1e-2));
    for (rows, cols) in [(3usize, 5usize), (17, 1000)] {
        // Separate gate/up.
        let e = rounded::<T>(&rng.normals(rows * cols, 2.0));
        let g = rounded::<T>(&rng.normals(rows * cols, 1.0));
        let da = rounded::<T>(&rng.normals(rows * cols, 1.0));
        let (ed, gd, dad) = (up::<T>(gpu, &e)?, up::<T>(gpu, &g)?, up::<T>(gpu, &da)?);
        let mut a = vec![0f32; rows * cols];
        twins::act::swiglu_fwd(&mut a, &e, &g, rows, cols, cols);
        let mut ag = gpu.alloc_zeros::<T>(rows * cols)?;
        ops::act::swiglu_fwd(gpu, &mut ag, &ed, &gd, rows, cols, GluLayout::Separate)?;
        ck.check(
            &format!("swiglu_fwd_{s} {rows}x{cols}"),
            &down(gpu, &ag)?,
            &a,
            t,
        );
        let (mut de, mut dg) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
        twins::act::swiglu_bwd(&mut de, &mut dg, &da, &e, &g, rows, cols, cols);
        let (mut deg, mut dgg) = (
            gpu.alloc_zeros::<T>(rows * cols)?,
            gpu.alloc_zeros::<T>(rows * cols)?,
        );
        ops::act::swiglu_bwd(
            gpu,
            &mut deg,
            &mut dgg,
            &dad,
            &ed,
            &gd,
            rows,
            cols,
            GluLayout::Separate,
        )?;
        ck.check(
            &format!("swiglu_bwd_{s} {rows}x{cols} de"),
            &down(gpu, &deg)?,
            &de,
            t,
        );
        ck.check(
            &format!("swiglu_bwd_{s} {rows}x{cols} dg"),
            &down(gpu, &dgg)?,
            &dg,
            t,
        );
        // Packed [gate | up] (ChatGLM dense_h_to_4h).
        let h = rounded::<T>(&rng.normals(rows * 2 * cols, 1.5));
        let hd = up::<T>(gpu, &h)?;
        twins::act::swiglu_fwd(&mut a, &h, &h[cols..], rows, cols, 2 * cols);
        ops::act::swiglu_fwd(gpu, &mut ag, &hd, &hd, rows, cols, GluLayout::Packed)?;
        ck.check(
            &format!("swiglu_fwd_{s} packed {rows}x{cols}"),
            &down(gpu, &ag)?,
            &a,
            t,
        );
        // The twin writes the up-half gradient at g's offsets: move it into dh's up half.
        let mut dh = vec![0f32; rows * 2 * cols];
        let mut tmp = vec![0f32; rows * 2 * cols];
        twins::act::swiglu_bwd(&mut dh, &mut tmp, &da, &h, &h[cols..], rows, cols, 2 * cols);
        for r in 0..rows {
            for c in 0..cols {
                dh[r * 2 * cols + cols + c] = tmp[r * 2 * cols + c];
            }
        }
        let mut dhg = gpu.alloc_zeros::<T>(rows * 2 * cols)?;
        let mut unused = gpu.alloc_zeros::<T>(1)?;
        ops::act::swiglu_bwd(
            gpu,
            &mut dhg,
            &mut unused,
            &dad,
            &hd,
            &hd,
            rows,
            cols,
            GluLayout::Packed,
        )?;
        ck.check(
            &format!("swiglu_bwd_{s} packed {rows}x{cols}"),
            &down(gpu, &dhg)?,
            &dh,
            t,
        );
    }
    for n in [1usize, 1000, 65537] {
        let x = rounded::<T>(&rng.normals(n, 3.0));
        let dy = rounded::<T>(&rng.normals(n, 1.0));
        let (xd, dyd) = (up::<T>(gpu, &x)?, up::<T>(gpu, &dy)?);
        let mut y = vec![0f32; n];
        twins::act::gelu_tanh_fwd(&mut y, &x);
        let mut yg = gpu.alloc_zeros::<T>(n)?;
        ops::act::gelu_tanh_fwd(gpu, &mut yg, &xd)?;
        ck.check(&format!("gelu_tanh_fwd_{s} n={n}"), &down(gpu, &yg)?, &y, t);
        twins::act::gelu_tanh_bwd(&mut y, &dy, &x);
        ops::act::gelu_tanh_bwd(gpu, &mut yg, &dyd, &xd)?;
        ck.check(&format!("gelu_tanh_bwd_{s} n={n}"), &down(gpu, &yg)?, &y, t);
        // GeGLU with x as the gate, dy as the up projection and the gradient.
        twins::act::geglu_fwd(&mut y, &x, &dy);
        ops::act::geglu_fwd(gpu, &mut yg, &xd, &dyd, n)?;
        ck.check(&format!("geglu_fwd_{s} n={n}"), &down(gpu, &yg)?, &y, t);
        let (mut de, mut dg) = (vec![0f32; n], vec![0f32; n]);
        twins::act::geglu_bwd(&mut de, &mut dg, &dy, &x, &dy);
        let mut dgg = gpu.alloc_zeros::<T>(n)?;
        ops::act::geglu_bwd(gpu, &mut yg, &mut dgg, &dyd, &xd, &dyd, n)?;
        ck.check(&format!("geglu_bwd_{s} de n={n}"), &down(gpu, &yg)?, &de, t);
        ck.check(
            &format!("geglu_bwd_{s} dg n={n}"),
            &down(gpu, &dgg)?,
            &dg,
            t,
        );
        let mut acc = x.clone();
        twins::act::scale_add(&mut acc, &dy, 0.37);
        let mut accg = up::<T>(gpu, &x)?;
        ops::act::scale_add(gpu, &mut accg, &dyd, 0.37)?;
        ck.check(&format!("scale_add_{s} n={n}"), &down(gpu, &accg)?, &acc, t);
        twins::act::dropout(&mut y, &x, 0.1, 1234);
        ops::act::dropout(gpu, &mut yg, &xd, 0.1, 1234)?;
        ck.check(
            &format!("dropout_{s} n={n}"),
            &down(gpu, &yg)?,
            &y,
            tol::<T>((1e-6, 1e-6), (1e-2, 1e-2)),
        );
    }
    Ok(())
}

fn embedding_checks<T: Elem>(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    let s = T::SUFFIX;
    let (vocab, d, n) = (50usize, 72usize, 37usize);
    let table = rounded::<T>(&rng.normals(vocab * d, 1.0));
    let mut ids: Vec<i32> = (0..n).map(|_| rng.below(vocab as u32) as i32).collect();
    ids[3] = -1;
    ids[5] = vocab as i32;
    ids[7] = ids[8];
    let dout = rounded::<T>(&rng.normals(n * d, 1.0));
    let (td, idd, dod) = (
        up::<T>(gpu, &table)?,
        gpu.clone_htod(&ids)?,
        up::<T>(gpu, &dout)?,
    );
    let mut out = vec![0f32; n * d];
    twins::embedding::embedding_fwd(&mut out, &ids, &table, d);
    let mut og = gpu.alloc_zeros::<T>(n * d)?;
    ops::embedding::embedding_fwd(gpu, &mut og, &idd, &td, d)?;
    ck.check(
        &format!("embedding_fwd_{s} n={n} d={d}"),
        &down(gpu, &og)?,
        &out,
        Tol {
            atol: 0.0,
            rtol: 0.0,
        },
    );
    let mut dt = vec![0f32; vocab * d];
    twins::embedding::embedding_bwd(&mut dt, &ids, &dout, d);
    let mut dtg = gpu.alloc_zeros::<f32>(vocab * d)?;
    ops::embedding::embedding_bwd(gpu, &mut dtg, &idd, &dod, d)?;
    ck.check(
        &format!("embedding_bwd_{s} n={n} d={d}"),
        &down(gpu, &dtg)?,
        &dt,
        Tol {
            atol: 1e-6,
            rtol: 1e-6,
        },
    );
    Ok(())
}

fn ce_checks<T: Elem>(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    let s = T::SUFFIX;
    for (n, v) in [(5usize, 1000usize), (3, 32001), (2, 65024)] {
        let z = rounded::<T>(&rng.normals(n * v, 3.0));
        let mut targets: Vec<i32> = (0..n).map(|_| rng.below(v as u32) as i32).collect();
        targets[1] = -100;
        let (zd, td) = (up::<T>(gpu, &z)?, gpu.clone_htod(&targets)?);
        let (mut loss, mut lse) = (vec![0f32; n], vec![0f32; n]);
        twins::cross_entropy::cross_entropy_fwd(&mut loss, &mut lse, &z, &targets, v);
        let (mut lg, mut lseg) = (gpu.alloc_zeros::<f32>(n)?, gpu.alloc_zeros::<f32>(n)?);
        ops::cross_entropy::cross_entropy_fwd(gpu, &mut lg, &mut lseg, &zd, &td, v)?;
        ck.check(
            &format!("cross_entropy_fwd_{s} n={n} v={v} loss"),
            &down(gpu, &lg)?,
            &loss,
            Tol {
                atol: 1e-4,
                rtol: 1e-5,
            },
        );
        let mut dz = vec![0f32; n * v];
        twins::cross_entropy::cross_entropy_bwd(&mut dz, &z, &lse, &targets, v, 0.25);
        let mut zg = up::<T>(gpu, &z)?;
        ops::cross_entropy::cross_entropy_bwd_inplace(gpu, &mut zg, &lseg, &td, v, 0.25)?;
        ck.check(
            &format!("cross_entropy_bwd_{s} n={n} v={v}"),
            &down(gpu, &zg)?,
            &dz,
            tol::<T>((1e-6, 1e-4), (1e-4, 1e-2)),
        );
        drop(zd);
    }
    Ok(())
}

fn lm_head_ce_check(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    use ops::blas::{matmul_ref, MatMul};
    let (n, d, v, chunk, scale) = (45usize, 64usize, 1000usize, 16usize, 1.0f32 / 40.0);
    let h = rounded::<bf16>(&rng.normals(n * d, 1.0));
    let w = rounded::<bf16>(&rng.normals(v * d, 0.2));
    let mut targets: Vec<i32> = (0..n).map(|_| rng.below(v as u32) as i32).collect();
    targets[0] = -100;
    targets[17] = -100;
    // CPU: logits stored as bf16 chunk by chunk, exactly as the driver does.
    let mut z = vec![0f32; n * v];
    matmul_ref(&mut z, &h, &w, &MatMul::linear(n, v, d));
    let z = rounded::<bf16>(&z);
    let (mut loss, mut lse) = (vec![0f32; n], vec![0f32; n]);
    twins::cross_entropy::cross_entropy_fwd(&mut loss, &mut lse, &z, &targets, v);
    let mut dz = vec![0f32; n * v];
    twins::cross_entropy::cross_entropy_bwd(&mut dz, &z, &lse, &targets, v, scale);
    let dz = rounded::<bf16>(&dz);
    let mut dh = vec![0f32; n * d];
    matmul_ref(
        &mut dh,
        &dz,
        &w,
        &MatMul {
            trans_b: false,
            ..MatMul::linear(n, d, v)
        },
    );
    let mut dw = vec![0f32; v * d];
    matmul_ref(
        &mut dw,
        &dz,
        &h,
        &MatMul {
            m: v,
            n: d,
            k: n,
            trans_a: true,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
        },
    );
    let mut drv = ops::cross_entropy::LmHeadCe::new(gpu, chunk, v)?;
    let mut lossg = gpu.alloc_zeros::<f32>(n)?;
    let mut dhg = gpu.alloc_zeros::<bf16>(n * d)?;
    let mut dwg = gpu.alloc_zeros::<bf16>(v * d)?;
    let (hd, wd, td) = (
        up::<bf16>(gpu, &h)?,
        up::<bf16>(gpu, &w)?,
        gpu.clone_htod(&targets)?,
    );
    drv.run(
        gpu,
        &mut lossg,
        &mut dhg,
        Some(&mut dwg),
        &hd,
        &wd,
        &td,
        d,
        scale,
    )?;
    ck.check(
        "lm_head_ce n=45 d=64 v=1000 chunk=16 loss",
        &down(gpu, &lossg)?,
        &loss,
        Tol {
            atol: 2e-2,
            rtol: 1e-2,
        },
    );
    ck.check(
        "lm_head_ce dh",
        &down(gpu, &dhg)?,
        &dh,
        Tol {
            atol: 2e-3,
            rtol: 2e-2,
        },
    );
    ck.check(
        "lm_head_ce dw (accumulated over 3 chunks)",
        &down(gpu, &dwg)?,
        &dw,
        Tol {
            atol: 2e-3,
            rtol: 3e-2,
        },
    );
    Ok(())
}

/// Which attention [`attention_checks`] runs.
#[derive(Clone, Copy, PartialEq)]
enum AttnPath {
    /// kernels/attention.cu with T storage.
    Kernels,
    /// bf16 cuBLAS GEMMs + masked softmax (f32 storage, T-rounded inputs).
    Gemm,
    /// kernels/flash.cu on tensor cores (f32 storage, T-rounded inputs).
    Fused,
}

/// One attention path against the twin, forward and backward; the masked shapes add padding,
/// packing and ALiBi, the first of them a sliding window.
fn attention_checks<T: Elem>(
    gpu: &Gpu,
    ck: &mut Checker,
    rng: &mut Rng,
    path: AttnPath,
) -> Result<()> {
    use ops::attention_tc::{attn_tc_bwd, attn_tc_fwd, Src::F32, TcScratch};
    use ops::flash::{flash_bwd, flash_fwd};
    use twins::attention::{attn_bwd, attn_fwd, AttnDims, AttnMasks};
    let s = match path {
        AttnPath::Kernels => T::SUFFIX,
        AttnPath::Gemm => "tc",
        AttnPath::Fused => "fused",
    };
    let tc = path != AttnPath::Kernels;
    let mut sc = TcScratch::default();
    let t = tol::<T>((1e-4, 1e-3), (2e-2, 2e-2));
    let small = ck.small;
    // Head dim 256 (Gemma 3) only on the GEMM path, which bf16 mode runs past 128.
    let wide =
        (path == AttnPath::Gemm).then_some((1usize, 19usize, 2usize, 1usize, 256usize, true));
    for (batch, tt, hq, hkv, d, masked) in [
        (2usize, 37usize, 4usize, 2usize, 64usize, true),
        (1, if small { 24 } else { 70 }, 2, 1, 128, false),
        (2, 20, 3, 3, 80, true),
    ]
    .into_iter()
    .chain(wide)
    {
        let dm = AttnDims {
            batch,
            t: tt,
            hq,
            hkv,
            d,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let q = rounded::<T>(&rng.normals(batch * tt * hq * d, 1.0));
        let k = rounded::<T>(&rng.normals(batch * tt * hkv * d, 1.0));
        let v = rounded::<T>(&rng.normals(batch * tt * hkv * d, 1.0));
        let dout = rounded::<T>(&rng.normals(q.len(), 1.0));
        // Left padding of 3 in batch 0, two packed segments in batch 1.
        let kmask: Vec<u8> = (0..batch * tt).map(|i| u8::from(i >= 3)).collect();
        let seg: Vec<i32> = (0..batch * tt)
            .map(|i| if i >= tt && (i - tt) >= tt / 2 { 1 } else { 0 })
            .collect();
        let slopes = twins::rope::alibi_slopes(hq);
        // A sliding window on the first masked shape (every path takes one).
        let window = (masked && d == 64).then_some(tt / 3);
        let mk = if masked {
            AttnMasks {
                kmask: Some(&kmask),
                seg: Some(&seg),
                slopes: Some(&slopes),
                window,
            }
        } else {
            AttnMasks::default()
        };
        let (kmd, segd, sld) = (
            gpu.clone_htod(&kmask)?,
            gpu.clone_htod(&seg)?,
            gpu.clone_htod(&slopes)?,
        );
        let dmk = if masked {
            ops::attention::DeviceMasks {
                kmask: Some(&kmd),
                seg: Some(&segd),
                prefix: None,
                slopes: Some(&sld),
                window: window.unwrap_or(0),
            }
        } else {
            ops::attention::DeviceMasks::default()
        };
        let (qd, kd, vd, dod) = (
            up::<T>(gpu, &q)?,
            up::<T>(gpu, &k)?,
            up::<T>(gpu, &v)?,
            up::<T>(gpu, &dout)?,
        );
        let (mut o, mut lse) = (vec![0f32; q.len()], vec![0f32; batch * hq * tt]);
        attn_fwd(&mut o, &mut lse, &q, &k, &v, &mk, &dm);
        let mut lseg = gpu.alloc_zeros::<f32>(lse.len())?;
        let got_o = if tc {
            let (qf, kf, vf) = (
                gpu.clone_htod(&q)?,
                gpu.clone_htod(&k)?,
                gpu.clone_htod(&v)?,
            );
            let mut og = gpu.alloc_zeros::<f32>(q.len())?;
            if path == AttnPath::Fused {
                flash_fwd(gpu, &mut og, &mut lseg, &qf, &kf, &vf, &dmk, &dm)?;
            } else {
                let (qs, ks, vs) = (F32(qf.slice(..)), F32(kf.slice(..)), F32(vf.slice(..)));
                attn_tc_fwd::<half::bf16>(gpu, &mut sc, &mut og, &mut lseg, qs, ks, vs, &dmk, &dm)?;
            }
            down(gpu, &og)?
        } else {
            let mut og = gpu.alloc_zeros::<T>(q.len())?;
            ops::attention::attn_fwd(gpu, &mut og, &mut lseg, &qd, &kd, &vd, &dmk, &dm)?;
            down(gpu, &og)?
        };
        let name = format!(
            "b={batch} t={tt} hq={hq} hkv={hkv} d={d}{}{}",
            if masked { " masked+alibi" } else { "" },
            window.map_or(String::new(), |w| format!(" window={w}"))
        );
        ck.check(&format!("attn_fwd_{s} {name} o"), &got_o, &o, t);
        ck.check(
            &format!("attn_fwd_{s} {name} lse"),
            &down(gpu, &lseg)?,
            &lse,
            Tol {
                atol: 1e-4,
                rtol: 1e-4,
            },
        );
        // Backward from the twin's own o (rounded like the GPU's o) so both sides see one input.
        let o_r = rounded::<T>(&o);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.len()],
            vec![0f32; k.len()],
            vec![0f32; v.len()],
        );
        attn_bwd(
            &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &o_r, &lse, &mk, &dm,
        );
        let lsed = gpu.clone_htod(&lse)?;
        let [dqg, dkg, dvg] = if tc {
            let (mut dqg, mut dkg, mut dvg) = (
                gpu.alloc_zeros::<f32>(q.len())?,
                gpu.alloc_zeros::<f32>(k.len())?,
                gpu.alloc_zeros::<f32>(v.len())?,
            );
            let [qf, kf, vf, dof, of] = [&q, &k, &v, &dout, &o_r].map(|x| gpu.clone_htod(x));
            let (qf, kf, vf, dof, of) = (qf?, kf?, vf?, dof?, of?);
            if path == AttnPath::Fused {
                flash_bwd(
                    gpu,
                    sc.delta_slot(),
                    &mut dqg,
                    &mut dkg,
                    &mut dvg,
                    &dof,
                    &qf,
                    &kf,
                    &vf,
                    &of,
                    &lsed,
                    &dmk,
                    &dm,
                )?;
            } else {
                let (qs, ks, vs) = (F32(qf.slice(..)), F32(kf.slice(..)), F32(vf.slice(..)));
                let dos = F32(dof.slice(..));
                attn_tc_bwd::<half::bf16>(
                    gpu, &mut sc, &mut dqg, &mut dkg, &mut dvg, dos, qs, ks, vs, &of, &lsed, &dmk,
                    &dm,
                )?;
            }
            [down(gpu, &dqg)?, down(gpu, &dkg)?, down(gpu, &dvg)?]
        } else {
            let (mut dqg, mut dkg, mut dvg) = (
                gpu.alloc_zeros::<T>(q.len())?,
                gpu.alloc_zeros::<T>(k.len())?,
                gpu.alloc_zeros::<T>(v.len())?,
            );
            let mut delta = gpu.alloc_zeros::<f32>(lse.len())?;
            let od = up::<T>(gpu, &o_r)?;
            ops::attention::attn_bwd(
                gpu, &mut dqg, &mut dkg, &mut dvg, &mut delta, &dod, &qd, &kd, &vd, &od, &lsed,
                &dmk, &dm,
            )?;
            [down(gpu, &dqg)?, down(gpu, &dkg)?, down(gpu, &dvg)?]
        };
        let tb = tol::<T>((2e-4, 2e-3), (3e-2, 3e-2));
        ck.check(&format!("attn_bwd_{s} {name} dq"), &dqg, &dq, tb);
        ck.check(&format!("attn_bwd_{s} {name} dk"), &dkg, &dk, tb);
        ck.check(&format!("attn_bwd_{s} {name} dv"), &dvg, &dv, tb);
        if path == AttnPath::Fused {
            // The variants bf16 training runs: q, k, v, o and dO stored as T, tiles by cp.async.
            let mut og = gpu.alloc_zeros::<T>(q.len())?;
            let mut lseg = gpu.alloc_zeros::<f32>(lse.len())?;
            flash_fwd(gpu, &mut og, &mut lseg, &qd, &kd, &vd, &dmk, &dm)?;
            ck.check(
                &format!("attn_fwd_{s} {name} {} o", T::SUFFIX),
                &down(gpu, &og)?,
                &o,
                t,
            );
            let lt = Tol {
                atol: 1e-4,
                rtol: 1e-4,
            };
            let what = format!("attn_fwd_{s} {name} {} lse", T::SUFFIX);
            ck.check(&what, &down(gpu, &lseg)?, &lse, lt);
            let of = gpu.clone_htod(&o_r)?;
            let (mut dqg, mut dkg, mut dvg) = (
                gpu.alloc_zeros::<f32>(q.len())?,
                gpu.alloc_zeros::<f32>(k.len())?,
                gpu.alloc_zeros::<f32>(v.len())?,
            );
            flash_bwd(
                gpu,
                sc.delta_slot(),
                &mut dqg,
                &mut dkg,
                &mut dvg,
                &dod,
                &qd,
                &kd,
                &vd,
                &of,
                &lsed,
                &dmk,
                &dm,
            )?;
            for (x, got, want) in [("dq", &dqg, &dq), ("dk", &dkg, &dk), ("dv", &dvg, &dv)] {
                let what = format!("attn_bwd_{s} {name} {} {x}", T::SUFFIX);
                ck.check(&what, &down(gpu, got)?, want, tb);
            }
        }
    }
    Ok(())
}

fn blas_checks(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    use ops::blas::{matmul_bf16_slices, matmul_f32, matmul_ref, MatMul};
    for (m, n, k) in [(33usize, 65usize, 47usize), (128, 256, 512)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let mm = MatMul {
                m,
                n,
                k,
                trans_a: ta,
                trans_b: tb,
                alpha: 0.5,
                beta: 1.0,
            };
            let a = rounded::<bf16>(&rng.normals(m * k, 1.0));
            let b = rounded::<bf16>(&rng.normals(k * n, 1.0));
            let c0 = rounded::<bf16>(&rng.normals(m * n, 1.0));
            let mut want = c0.clone();
            matmul_ref(&mut want, &a, &b, &mm);
            let mut cg = up::<bf16>(gpu, &c0)?;
            matmul_bf16_slices(
                gpu,
                &mut cg,
                &up::<bf16>(gpu, &a)?,
                &up::<bf16>(gpu, &b)?,
                &mm,
            )?;
            ck.check(
                &format!("cublas bf16 m={m} n={n} k={k} ta={ta} tb={tb}"),
                &down(gpu, &cg)?,
                &want,
                Tol {
                    atol: 5e-2,
                    rtol: 1e-2,
                },
            );
            let mut cf = gpu.clone_htod(&c0)?;
            matmul_f32(
                gpu,
                &mut cf,
                &gpu.clone_htod(&a)?,
                &gpu.clone_htod(&b)?,
                &mm,
            )?;
            // cuBLAS may use TF32 for f32 only when asked; default is full f32.
            ck.check(
                &format!("cublas f32 m={m} n={n} k={k} ta={ta} tb={tb}"),
                &down(gpu, &cf)?,
                &want,
                Tol {
                    atol: 1e-3,
                    rtol: 1e-4,
                },
            );
        }
    }
    Ok(())
}

fn blas_batched_check(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    use ops::blas::{matmul_bf16_batched, matmul_ref, MatMul};
    let (batch, m, n, k) = (5usize, 17usize, 33usize, 64usize);
    let mm = MatMul {
        m,
        n,
        k,
        trans_a: false,
        trans_b: true,
        alpha: 1.0,
        beta: 0.0,
    };
    let a = rounded::<bf16>(&rng.normals(batch * m * k, 1.0));
    let b = rounded::<bf16>(&rng.normals(batch * n * k, 1.0));
    let mut want = vec![0f32; batch * m * n];
    for i in 0..batch {
        matmul_ref(
            &mut want[i * m * n..(i + 1) * m * n],
            &a[i * m * k..(i + 1) * m * k],
            &b[i * n * k..(i + 1) * n * k],
            &mm,
        );
    }
    let mut c = gpu.alloc_zeros::<bf16>(batch * m * n)?;
    matmul_bf16_batched(
        gpu,
        &mut c,
        &up::<bf16>(gpu, &a)?,
        &up::<bf16>(gpu, &b)?,
        &mm,
        batch,
        (m * k, n * k, m * n),
    )?;
    ck.check(
        "cublas bf16 strided batched 5x(17x33x64)",
        &down(gpu, &c)?,
        &want,
        Tol {
            atol: 5e-2,
            rtol: 1e-2,
        },
    );
    Ok(())
}

/// Host copy of one LoRA linear for the CPU composite (W already dequantized and bf16-rounded).
struct HostLora {
    w: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    d_out: usize,
    d_in: usize,
    r: usize,
    s: f32,
    p: f32,
}

impl HostLora {
    fn new(
        rng: &mut Rng,
        d_out: usize,
        d_in: usize,
        r: usize,
        p: f32,
    ) -> (Self, Vec<u8>, Vec<f32>) {
        use twins::quant4::{dequant_4bit, quantize_4bit, NF4_CODE};
        let (packed, absmax) = quantize_4bit(&rng.normals(d_out * d_in, 0.05), 64, &NF4_CODE);
        let mut w = vec![0f32; d_out * d_in];
        dequant_4bit(&mut w, &packed, &absmax, &NF4_CODE, 64);
        let h = HostLora {
            w: rounded::<bf16>(&w),
            a: rounded::<bf16>(&rng.normals(r * d_in, 0.06)),
            b: rounded::<bf16>(&rng.normals(d_out * r, 0.1)),
            d_out,
            d_in,
            r,
            s: 4.0,
            p,
        };
        (h, packed, absmax)
    }

    fn upload(&self, gpu: &Gpu, packed: &[u8], absmax: &[f32]) -> Result<ops::lora::LoraLinear> {
        Ok(ops::lora::LoraLinear {
            w: ops::quant4::Quant4Weight {
                packed: gpu.clone_htod(packed)?,
                absmax: gpu.clone_htod(absmax)?,
                code: gpu.clone_htod(&twins::quant4::NF4_CODE[..])?,
                blocksize: 64,
                rows: self.d_out,
                cols: self.d_in,
            },
            adapter: Some(ops::lora::LoraAdapter {
                a: up::<bf16>(gpu, &self.a)?,
                b: up::<bf16>(gpu, &self.b)?,
                r: self.r,
                scale: self.s,
                dropout: self.p,
            }),
        })
    }

    /// d(x) as the GPU stores it.
    fn dropped(&self, x: &[f32], seed: u64) -> Vec<f32> {
        if self.p == 0.0 {
            return x.to_vec();
        }
        let mut y = vec![0f32; x.len()];
        twins::act::dropout(&mut y, x, self.p, seed);
        rounded::<bf16>(&y)
    }

    /// y = x·Wᵀ + s·(d(x)·Aᵀ)·Bᵀ, rounding where the GPU stores bf16.
    fn fwd(&self, x: &[f32], n: usize, seed: u64) -> Vec<f32> {
        use ops::blas::{matmul_ref, MatMul};
        let mut y = vec![0f32; n * self.d_out];
        matmul_ref(
            &mut y,
            x,
            &self.w,
            &MatMul::linear(n, self.d_out, self.d_in),
        );
        let mut y = rounded::<bf16>(&y);
        let mut v = vec![0f32; n * self.r];
        matmul_ref(
            &mut v,
            &self.dropped(x, seed),
            &self.a,
            &MatMul::linear(n, self.r, self.d_in),
        );
        let v = rounded::<bf16>(&v);
        matmul_ref(
            &mut y,
            &v,
            &self.b,
            &MatMul {
                alpha: self.s,
                beta: 1.0,
                ..MatMul::linear(n, self.d_out, self.r)
            },
        );
        rounded::<bf16>(&y)
    }

    /// (dx, dA, dB) for dy, rounding where the GPU stores bf16.
    fn bwd(&self, dy: &[f32], x: &[f32], n: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        use ops::blas::{matmul_ref, MatMul};
        let (d_out, d_in, r, s) = (self.d_out, self.d_in, self.r, self.s);
        let xd = self.dropped(x, seed);
        let mut u = vec![0f32; n * r];
        matmul_ref(
            &mut u,
            dy,
            &self.b,
            &MatMul {
                trans_b: false,
                ..MatMul::linear(n, r, d_out)
            },
        );
        let u = rounded::<bf16>(&u);
        let mut v = vec![0f32; n * r];
        matmul_ref(&mut v, &xd, &self.a, &MatMul::linear(n, r, d_in));
        let v = rounded::<bf16>(&v);
        let mut da = vec![0f32; r * d_in];
        matmul_ref(
            &mut da,
            &u,
            &xd,
            &MatMul {
                m: r,
                n: d_in,
                k: n,
                trans_a: true,
                trans_b: false,
                alpha: s,
                beta: 0.0,
            },
        );
        let mut db = vec![0f32; d_out * r];
        matmul_ref(
            &mut db,
            dy,
            &v,
            &MatMul {
                m: d_out,
                n: r,
                k: n,
                trans_a: true,
                trans_b: false,
                alpha: s,
                beta: 0.0,
            },
        );
        let mut dx = vec![0f32; n * d_in];
        matmul_ref(
            &mut dx,
            dy,
            &self.w,
            &MatMul {
                trans_b: false,
                ..MatMul::linear(n, d_in, d_out)
            },
        );
        let mut dx = rounded::<bf16>(&dx);
        let mut t = vec![0f32; n * d_in];
        matmul_ref(
            &mut t,
            &u,
            &self.a,
            &MatMul {
                m: n,
                n: d_in,
                k: r,
                trans_a: false,
                trans_b: false,
                alpha: s,
                beta: 0.0,
            },
        );
        let t = self.dropped(&rounded::<bf16>(&t), seed);
        twins::act::scale_add(&mut dx, &t, 1.0);
        (
            rounded::<bf16>(&dx),
            rounded::<bf16>(&da),
            rounded::<bf16>(&db),
        )
    }
}

fn lora_checks(gpu: &Gpu, ck: &mut Checker, rng: &mut Rng) -> Result<()> {
    let (n, d_in, d_out, r) = (70usize, 256usize, 192usize, 8usize);
    let t = Tol {
        atol: 5e-2,
        rtol: 2e-2,
    };
    let tg = Tol {
        atol: 1e-1,
        rtol: 3e-2,
    };
    for p in [0.0f32, 0.1] {
        let (h, packed, absmax) = HostLora::new(rng, d_out, d_in, r, p);
        let lin = h.upload(gpu, &packed, &absmax)?;
        let x = rounded::<bf16>(&rng.normals(n * d_in, 1.0));
        let dy = rounded::<bf16>(&rng.normals(n * d_out, 1.0));
        let seed = 99;
        let mut sc = ops::lora::LoraScratch::new(gpu, n, r, d_in, p > 0.0)?;
        let (xd, dyd) = (up::<bf16>(gpu, &x)?, up::<bf16>(gpu, &dy)?);
        let mut yg = gpu.alloc_zeros::<bf16>(n * d_out)?;
        ops::lora::lora_fwd(gpu, &mut yg, &mut sc, &xd, &lin, n, seed)?;
        ck.check(
            &format!("lora_fwd nf4 n={n} {d_in}->{d_out} r={r} dropout={p}"),
            &down(gpu, &yg)?,
            &h.fwd(&x, n, seed),
            t,
        );
        let (dx, da, db) = h.bwd(&dy, &x, n, seed);
        let mut dxg = gpu.alloc_zeros::<bf16>(n * d_in)?;
        let mut gr = ops::lora::LoraGrads {
            da: gpu.alloc_zeros(r * d_in)?,
            db: gpu.alloc_zeros(d_out * r)?,
        };
        ops::lora::lora_bwd(
            gpu,
            &mut dxg,
            Some(&mut gr),
            &mut sc,
            &dyd,
            &xd,
            &lin,
            n,
            seed,
            false,
        )?;
        ck.check(
            &format!("lora_bwd nf4 dropout={p} dA"),
            &down(gpu, &gr.da)?,
            &da,
            tg,
        );
        ck.check(
            &format!("lora_bwd nf4 dropout={p} dB"),
            &down(gpu, &gr.db)?,
            &db,
            tg,
        );
        ck.check(
            &format!("lora_bwd nf4 dropout={p} dX"),
            &down(gpu, &dxg)?,
            &dx,
            t,
        );
    }
    // SwiGLU MLP with LoRA on gate/up/down (no dropout): forward output and input gradient.
    let (n, d, ff, r) = (40usize, 128usize, 320usize, 8usize);
    let (hg, pg, ag) = HostLora::new(rng, ff, d, r, 0.0);
    let (hu, pu, au) = HostLora::new(rng, ff, d, r, 0.0);
    let (hd, pd, adn) = HostLora::new(rng, d, ff, r, 0.0);
    let mlp = ops::lora::LoraMlp {
        gate: hg.upload(gpu, &pg, &ag)?,
        up: hu.upload(gpu, &pu, &au)?,
        down: hd.upload(gpu, &pd, &adn)?,
    };
    let x = rounded::<bf16>(&rng.normals(n * d, 1.0));
    let dy = rounded::<bf16>(&rng.normals(n * d, 1.0));
    let e = hg.fwd(&x, n, 0);
    let g = hu.fwd(&x, n, 0);
    let mut a = vec![0f32; n * ff];
    twins::act::swiglu_fwd(&mut a, &e, &g, n, ff, ff);
    let a = rounded::<bf16>(&a);
    let y = hd.fwd(&a, n, 0);
    let (da, _, _) = hd.bwd(&dy, &a, n, 0);
    let (mut de, mut dg) = (vec![0f32; n * ff], vec![0f32; n * ff]);
    twins::act::swiglu_bwd(&mut de, &mut dg, &da, &e, &g, n, ff, ff);
    let (de, dg) = (rounded::<bf16>(&de), rounded::<bf16>(&dg));
    let (dx_up, _, _) = hu.bwd(&dg, &x, n, 0);
    let (dx_gate, _, _) = hg.bwd(&de, &x, n, 0);
    let dx: Vec<f32> = dx_up.iter().zip(&dx_gate).map(|(a, b)| a + b).collect();
    let alloc = |len: usize| -> Result<DevBuf<bf16>> { Ok(gpu.alloc_zeros::<bf16>(len)?) };
    let mut sc = ops::lora::LoraScratch::new(gpu, n, r, ff, false)?;
    let (xd, dyd) = (up::<bf16>(gpu, &x)?, up::<bf16>(gpu, &dy)?);
    let (mut yg, mut eg, mut gg, mut ag2) = (
        alloc(n * d)?,
        alloc(n * ff)?,
        alloc(n * ff)?,
        alloc(n * ff)?,
    );
    ops::lora::lora_mlp_fwd(
        gpu, &mut yg, &mut eg, &mut gg, &mut ag2, &mut sc, &xd, &mlp, n, 0,
    )?;
    ck.check(
        "lora_mlp_fwd swiglu n=40 128->320->128",
        &down(gpu, &yg)?,
        &y,
        t,
    );
    let grads = |fin: usize, fout: usize| -> Result<ops::lora::LoraGrads> {
        Ok(ops::lora::LoraGrads {
            da: alloc(r * fin)?,
            db: alloc(fout * r)?,
        })
    };
    let mut gr = ops::lora::LoraMlpGrads {
        gate: grads(d, ff)?,
        up: grads(d, ff)?,
        down: grads(ff, d)?,
    };
    let (mut dxg, mut dag, mut deg, mut dgg) = (
        alloc(n * d)?,
        alloc(n * ff)?,
        alloc(n * ff)?,
        alloc(n * ff)?,
    );
    ops::lora::lora_mlp_bwd(
        gpu, &mut dxg, &mut gr, &mut ag2, &mut dag, &mut deg, &mut dgg, &mut sc, &dyd, &xd, &eg,
        &gg, &mlp, n, 0,
    )?;
    ck.check(
        "lora_mlp_bwd swiglu dX",
        &down(gpu, &dxg)?,
        &dx,
        Tol {
            atol: 1e-1,
            rtol: 5e-2,
        },
    );
    Ok(())
}
