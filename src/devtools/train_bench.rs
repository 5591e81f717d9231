//! `recipe bench --device cuda --model NAME`: whole-model QLoRA training speed (issue 15).
//!
//! Builds a model of a named shape ([`SHAPES`]: LLaMA-7B, ChatGLM3-6B, and tiny copies of both
//! for tests) with random weights and trains it as `recipe run` would:
//! - the frozen base is random NF4 with double quantization (random codes, random 8-bit
//!   scales), made straight in bitsandbytes' packed form, never as dense weights;
//! - embeddings, norms, biases and the head go into a bf16 safetensors file in a temp dir, so
//!   the model comes from the same `Model::load` as a real checkpoint;
//! - LoRA on the shape's target modules, paged 8-bit AdamW, gradient checkpointing, bf16
//!   products; every step is `train::optimizer_step`, the train step's own code (clipping and
//!   the finite check included), on random full-length rows (every token trained).
//!
//! `warmup` steps, then `steps` timed ones. A step's time is its wall time, which ends with the
//! step's one download (so the device has finished it). Reported: tokens/s (median timed
//! step), MFU = 6 · base params · tokens/s over the bf16 peak measured here (cuBLAS 8192³),
//! peak device memory (the allocator's most-live bytes, and the driver's used memory sampled
//! after every step), and with `RECIPE_CUDA_PROFILE=1` the per-op table (GEMM rows with their
//! TFLOP/s). The JSON file is rewritten (atomically) after loading and after every step, so a
//! run cut short still reports.
//!
//! Under `RECIPE_TEST_EMULATED_CUDA=dry` (the dry emulated device: nothing computed, every
//! allocation made as on a GPU) it says what a model of any size holds on the device, in
//! seconds and without a GPU.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::backend::{Backend, CudaBackend};
use ::safetensors::Dtype;

use crate::formats::safetensors::{write_file, Tensor as StTensor};
use crate::model::arch::{Arch, NormKind, Positions};
use crate::model::lora::{self, LoraConfig, Targets};
use crate::model::random::RandomLlama;
use crate::model::{Batch, LoadOptions, Model, PrequantHook};
use crate::optim::{OptimConfig, OptimKind};
use crate::quant::four_bit::{Absmax, QuantState, Quantized4, NESTED_BLOCKSIZE};
use crate::quant::linear::{Linear4bit, QuantLinear};
use crate::quant::QuantType;
use crate::train::engine::{EngineModel, EngineOptim, Saved};
use crate::train::optimizer::Optimizer;
use crate::train::optimizer_step;

/// A model shape and its QLoRA settings.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    /// LLaMA (`false`) or ChatGLM3 (`true`) config and tensor names.
    pub glm: bool,
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    /// KV heads (ChatGLM3: `multi_query_group_num`).
    pub kv_heads: usize,
    pub vocab: usize,
    pub seq: usize,
    pub batch: usize,
    pub r: usize,
    pub alpha: f32,
    pub dropout: f32,
    /// None: every linear layer ("all-linear").
    pub targets: Option<&'static str>,
    pub max_grad_norm: f64,
}

/// LLaMA-7B as issue 15 times it (seq 2048, batch 4, r 16 on all linear layers), ChatGLM3-6B
/// with `recipes/chatglm3_qlora.toml`'s settings at seq 1024, and tiny copies for tests.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "llama-7b",
        glm: false,
        hidden: 4096,
        ffn: 11008,
        layers: 32,
        heads: 32,
        kv_heads: 32,
        vocab: 32000,
        seq: 2048,
        batch: 4,
        r: 16,
        alpha: 32.0,
        dropout: 0.0,
        targets: None,
        max_grad_norm: 1.0,
    },
    Shape {
        name: "chatglm3-6b",
        glm: true,
        hidden: 4096,
        ffn: 13696,
        layers: 28,
        heads: 32,
        kv_heads: 2,
        vocab: 65024,
        seq: 1024,
        batch: 4,
        r: 64,
        alpha: 16.0,
        dropout: 0.05,
        targets: Some("query_key_value"),
        max_grad_norm: 0.3,
    },
    Shape {
        name: "tiny-llama",
        glm: false,
        hidden: 64,
        ffn: 160,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 96,
        seq: 24,
        batch: 2,
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: None,
        max_grad_norm: 1.0,
    },
    Shape {
        name: "tiny-chatglm3",
        glm: true,
        hidden: 64,
        ffn: 96,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 96,
        seq: 24,
        batch: 2,
        r: 8,
        alpha: 16.0,
        dropout: 0.05,
        targets: Some("query_key_value"),
        max_grad_norm: 0.3,
    },
];

/// The shape called `name`, or an error listing them.
pub fn shape(name: &str) -> Result<Shape> {
    SHAPES
        .iter()
        .find(|s| s.name == name)
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
            anyhow::anyhow!(
                "--model {name}: unknown shape (expected one of {})",
                names.join(", ")
            )
        })
}

impl Shape {
    /// The checkpoint's config.json.
    pub fn config(&self) -> Value {
        let (h, nh) = (self.hidden, self.heads);
        if self.glm {
            json!({
                "architectures": ["ChatGLMModel"],
                "model_type": "chatglm",
                "num_layers": self.layers,
                "padded_vocab_size": self.vocab,
                "hidden_size": h,
                "ffn_hidden_size": self.ffn,
                "kv_channels": h / nh,
                "num_attention_heads": nh,
                "seq_length": 8192,
                "layernorm_epsilon": 1e-5,
                "rmsnorm": true,
                "apply_residual_connection_post_layernorm": false,
                "post_layer_norm": true,
                "add_bias_linear": false,
                "add_qkv_bias": true,
                "multi_query_attention": true,
                "multi_query_group_num": self.kv_heads,
                "original_rope": true,
                "tie_word_embeddings": false,
                "eos_token_id": 2,
                "pad_token_id": 0,
                "torch_dtype": "bfloat16",
            })
        } else {
            RandomLlama {
                hidden: h,
                ffn: self.ffn,
                layers: self.layers,
                heads: nh,
                kv_heads: self.kv_heads,
                vocab: self.vocab,
                max_positions: 4096,
            }
            .config()
        }
    }

    fn lora(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            targets: match self.targets {
                Some(t) => Targets::Names(vec![t.to_string()]),
                None => Targets::AllLinear,
            },
            use_rslora: false,
            modules_to_save: vec![],
            seed: 0,
        }
    }
}

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct TrainBenchOptions {
    pub shape: Shape,
    pub warmup: usize,
    pub steps: usize,
    /// Rewritten after loading and after every step.
    pub json: Option<PathBuf>,
    /// Skip the cuBLAS peak measurement (MFU is then not reported); always skipped on the
    /// emulated device.
    pub no_peak: bool,
}

/// The report (also the JSON document).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrainBenchReport {
    pub device: String,
    pub model: String,
    pub layers: usize,
    pub batch: usize,
    pub seq: usize,
    /// Every weight of the base (embeddings, head and norms included): MFU's N.
    pub base_params: u64,
    pub trainable_params: u64,
    pub lora: String,
    pub load_s: f64,
    pub warmup: usize,
    /// Wall ms of every step, warm-up first.
    pub step_ms: Vec<f64>,
    /// Mean token loss of every step.
    pub losses: Vec<f64>,
    /// Tokens per step over the median timed step.
    pub tokens_per_s: Option<f64>,
    pub peak_tflops_bf16: Option<f64>,
    /// 6 · base_params · tokens_per_s / peak.
    pub mfu: Option<f64>,
    /// The device allocator's most-live bytes.
    pub peak_bytes_live: u64,
    /// Driver allocations so far after each step (constant after the first step: the loop
    /// allocates nothing new).
    pub driver_allocations: Vec<u64>,
    /// What the allocator holds from the driver after the last step (live + cached blocks).
    pub bytes_held: u64,
    /// The driver's used memory (whole GPU), the most seen after a step (real GPU only).
    pub peak_bytes_device_used: Option<u64>,
    /// `RECIPE_CUDA_PROFILE=1`: every op (each synchronized, so small ops are inflated).
    pub ops: Vec<OpRow>,
    /// Every step ran.
    pub done: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OpRow {
    pub op: String,
    pub calls: u64,
    pub ms_per_call: f64,
    /// GEMM rows: 2·m·n·k over the time.
    pub tflops: Option<f64>,
}

/// The 4-bit base of one `[d_out, d_in]` linear: random nibbles, random 8-bit scale codes (so
/// blocks' absmax lie in [0.02, 0.04]), NF4, blocksize 64, double quantization.
fn random_nf4(seed: u64, d_in: usize, d_out: usize) -> Box<dyn QuantLinear> {
    let n = d_in * d_out;
    let blocks = n.div_ceil(64);
    let q = Quantized4 {
        packed: random_bytes(seed, n.div_ceil(2)),
        state: QuantState {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            shape: vec![d_out, d_in],
            dtype: "bfloat16".into(),
            absmax: Absmax::Nested {
                codes: random_bytes(seed ^ 0x5bd1_e995, blocks),
                absmax2: vec![0.01; blocks.div_ceil(NESTED_BLOCKSIZE)],
                offset: 0.03,
                code: crate::quant::codes::dynamic_map(true),
                blocksize: NESTED_BLOCKSIZE,
            },
            code: crate::quant::codes::NF4,
        },
    };
    Box::new(Linear4bit::new(q).expect("a 2-D shape"))
}

/// splitmix64 of (seed, i).
fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    v.par_chunks_mut(8).enumerate().for_each(|(i, c)| {
        let r = mix(seed, i as u64).to_le_bytes();
        c.copy_from_slice(&r[..c.len()]);
    });
    v
}

/// n uniform values with standard deviation `std`.
fn random_f32(seed: u64, n: usize, std: f32) -> Vec<f32> {
    let half_width = std * 3f32.sqrt();
    (0..n)
        .into_par_iter()
        .map(|i| {
            let u = (mix(seed, i as u64) >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * u - 1.0) * half_width
        })
        .collect()
}

/// How a base tensor starts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    /// Uniform with standard deviation 0.02.
    Random,
    /// A norm's scale: 1 (0 for Gemma's (1 + w) RMSNorm).
    Scale,
    Zeros,
}

/// Every tensor `Model::load` reads from the checkpoint besides the layer linears' weights
/// (those come from [`random_nf4`]), and the number of those linear weights.
fn base_tensors(arch: &Arch) -> (Vec<(String, Vec<usize>, Init)>, u64) {
    let (h, v) = (arch.hidden, arch.vocab);
    let mut t = Vec::new();
    let norm = |t: &mut Vec<(String, Vec<usize>, Init)>, name: &str, d: usize| {
        t.push((format!("{name}.weight"), vec![d], Init::Scale));
        if arch.norm == NormKind::Layer {
            t.push((format!("{name}.bias"), vec![d], Init::Zeros));
        }
    };
    let names = arch.names();
    t.push((format!("{}.weight", names.emb), vec![v, h], Init::Random));
    if let (Positions::Learned { max }, Some(p)) = (arch.positions, &names.pos_emb) {
        t.push((format!("{p}.weight"), vec![max, h], Init::Random));
    }
    if let Some(n) = &names.emb_norm {
        norm(&mut t, n, h);
    }
    let mut linear_weights = 0u64;
    for i in 0..arch.layers {
        let ln = arch.layer_names(i);
        norm(&mut t, &ln.ln1, h);
        norm(&mut t, &ln.ln2, h);
        for p in ln.post_norms.iter().flatten() {
            norm(&mut t, p, h);
        }
        if let Some((q, k)) = arch.qk_norm_names(i) {
            norm(&mut t, &q, arch.head_dim);
            norm(&mut t, &k, arch.head_dim);
        }
        for (name, d_in, d_out, bias) in arch.layer_linears(i) {
            linear_weights += (d_in * d_out) as u64;
            if bias {
                t.push((format!("{name}.bias"), vec![d_out], Init::Random));
            }
        }
    }
    norm(&mut t, &names.final_norm, h);
    if let Some(head) = &names.head {
        t.push((format!("{head}.weight"), vec![v, h], Init::Random));
    }
    (t, linear_weights)
}

/// The base's parameter count: MFU's N.
fn base_params(arch: &Arch) -> u64 {
    let (t, linear) = base_tensors(arch);
    linear
        + t.iter()
            .map(|(_, s, _)| s.iter().product::<usize>() as u64)
            .sum::<u64>()
}

/// Writes `dir`: config.json and a bf16 model.safetensors of [`base_tensors`]. Returns the
/// architecture.
fn write_base(dir: &std::path::Path, shape: &Shape) -> Result<Arch> {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&shape.config())?,
    )?;
    let arch = Arch::from_dir(dir)?;
    let scale = if arch.norm == NormKind::RmsPlusOne {
        0.0
    } else {
        1.0
    };
    let (list, _) = base_tensors(&arch);
    let tensors = list
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape, init))| {
            let n = shape.iter().product();
            let data = match init {
                Init::Random => random_f32(i as u64, n, 0.02),
                Init::Scale => vec![scale; n],
                Init::Zeros => vec![0.0; n],
            };
            Ok((name, StTensor::from_f32(Dtype::BF16, shape, &data)?))
        })
        .collect::<std::result::Result<Vec<_>, crate::formats::FormatError>>()?;
    write_file(
        &dir.join("model.safetensors"),
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
    )?;
    Ok(arch)
}

/// A batch of `b` full rows of `t` random tokens, every token trained.
fn random_batch(step: usize, b: usize, t: usize, vocab: usize) -> Batch {
    let ids: Vec<u32> = (0..b * t)
        .map(|i| 3 + (mix(1000 + step as u64, i as u64) % (vocab as u64 - 3)) as u32)
        .collect();
    Batch {
        b,
        t,
        labels: Some(ids.iter().map(|&x| x as i64).collect()),
        input_ids: ids,
        attention_mask: vec![1; b * t],
        segments: None,
    }
}

/// 6.74B, 3.1M, 74304.
fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n => n.to_string(),
    }
}

/// TFLOP/s of a profile row named `gemm_bf16 MxNxK ..` (None for other ops).
fn gemm_tflops(op: &str, ms: f64) -> Option<f64> {
    let dims = op.strip_prefix("gemm_bf16 ")?.split(' ').next()?;
    let d: Vec<f64> = dims
        .split('x')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [m, n, k] = d[..] else { return None };
    Some(2.0 * m * n * k / (ms * 1e-3) / 1e12)
}

/// Runs the benchmark on `be`, printing progress to `out`. On the dry emulated device
/// (`Gpu::emulated_dry`) only the memory numbers mean anything: tokens/s is not reported.
pub fn train_bench(
    be: CudaBackend,
    out: &mut dyn Write,
    o: &TrainBenchOptions,
) -> Result<TrainBenchReport> {
    let shape = o.shape;
    let mut r = TrainBenchReport {
        device: be.label().to_string(),
        model: shape.name.to_string(),
        layers: shape.layers,
        batch: shape.batch,
        seq: shape.seq,
        warmup: o.warmup,
        lora: format!(
            "r {} alpha {} dropout {} on {}",
            shape.r,
            shape.alpha,
            shape.dropout,
            shape.targets.unwrap_or("all linear layers")
        ),
        ..Default::default()
    };
    let save = |r: &TrainBenchReport| -> Result<()> {
        if let Some(p) = &o.json {
            crate::util::write_atomic(p, serde_json::to_string_pretty(r)?.as_bytes())
                .with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    };
    if !o.no_peak && !be.gpu().is_emulated() {
        let bo = crate::devtools::bench::BenchOptions::default();
        r.peak_tflops_bf16 = Some(crate::devtools::bench::peak_tflops(be.gpu(), &bo)?);
        // Its operands go back to the driver, so the device's used memory is the model's.
        be.gpu().synchronize()?;
        be.gpu().release_cached();
    }
    let _ = writeln!(
        out,
        "bench {} ({} layers, batch {} x seq {}, LoRA {}) on {}{}",
        shape.name,
        shape.layers,
        shape.batch,
        shape.seq,
        r.lora,
        r.device,
        r.peak_tflops_bf16.map_or(String::new(), |p| format!(
            ", measured bf16 peak {p:.0} TFLOP/s"
        ))
    );

    let t0 = Instant::now();
    let dir = super::train_check::TempDir::new()?;
    r.base_params = base_params(&write_base(dir.path(), &shape)?);
    let hook: PrequantHook = Arc::new(|_files, name: &str, d_in, d_out| {
        let seed = name.bytes().fold(7u64, |h, b| mix(h, b as u64));
        Ok(Some(random_nf4(seed, d_in, d_out)))
    });
    let be: Arc<CudaBackend> = Arc::new(be);
    let dyn_be: Arc<dyn Backend> = be.clone();
    let opts = LoadOptions {
        backend: Some(dyn_be.clone()),
        prequantized: Some(hook),
        ..Default::default()
    };
    let mut model = Model::load(dir.path(), &opts)?;
    drop(dir);
    let cfg = shape.lora();
    lora::apply(&mut model, &cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sizes: Vec<usize> = model.params_mut().iter().map(|p| p.value.len()).collect();
    r.trainable_params = sizes.iter().map(|&s| s as u64).sum();
    let optim = Optimizer::new(
        dyn_be,
        OptimKind::PagedAdamW8bit,
        &OptimConfig::default(),
        &sizes,
    );
    let mut optim = EngineOptim(optim);
    let mut model = EngineModel {
        model,
        saved: Saved::Lora {
            cfg,
            base_name: shape.name.into(),
        },
        checkpointing: true,
        copy_from: None,
    };
    r.load_s = t0.elapsed().as_secs_f64();
    let _ = writeln!(
        out,
        "built in {:.1} s: {} base params (random NF4 + double quant), {} trainable",
        r.load_s,
        count(r.base_params),
        count(r.trainable_params)
    );
    save(&r)?;

    let tokens = (shape.batch * shape.seq) as f64;
    let mut used_peak = 0u64;
    for s in 0..o.warmup + o.steps {
        let batch = random_batch(s, shape.batch, shape.seq, shape.vocab);
        let scale = 1.0 / batch.trained_tokens() as f32;
        let t = Instant::now();
        let step = optimizer_step(
            &mut model,
            &mut optim,
            std::slice::from_ref(&batch),
            &[s as u64],
            scale,
            shape.max_grad_norm,
            1e-4,
        )?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let loss = step.loss_sum / batch.trained_tokens() as f64;
        if !be.gpu().is_emulated() {
            if let Ok((free, total)) = cudarc::driver::result::mem_get_info() {
                used_peak = used_peak.max((total - free) as u64);
                r.peak_bytes_device_used = Some(used_peak);
            }
        }
        r.step_ms.push(ms);
        r.losses.push(loss);
        let pool = be.pool_stats();
        r.peak_bytes_live = pool.peak_in_use as u64;
        r.bytes_held = (pool.in_use + pool.cached) as u64;
        r.driver_allocations.push(pool.fresh);
        let timed: Vec<f64> = r.step_ms.iter().skip(o.warmup).copied().collect();
        // The dry device computes nothing: its step times mean nothing.
        if !timed.is_empty() && !be.gpu().is_dry() {
            let mut v = timed.clone();
            v.sort_by(f64::total_cmp);
            let tps = tokens / (v[v.len() / 2] * 1e-3);
            r.tokens_per_s = Some(tps);
            r.mfu = r
                .peak_tflops_bf16
                .map(|p| 6.0 * r.base_params as f64 * tps / (p * 1e12));
        }
        let speed = match be.gpu().is_dry() {
            true => "(dry: nothing computed)".to_string(),
            false => format!("{ms:9.1} ms {:9.0} tok/s", tokens / (ms * 1e-3)),
        };
        let _ = writeln!(
            out,
            "step {}/{}{} {speed} loss {loss:.4} grad_norm {:.3}",
            s + 1,
            o.warmup + o.steps,
            if s < o.warmup { " (warm-up)" } else { "" },
            step.grad_norm
        );
        if !loss.is_finite() {
            save(&r)?;
            anyhow::bail!("step {}: the loss is {loss}", s + 1);
        }
        save(&r)?;
    }
    r.ops = be
        .profile_table()
        .into_iter()
        .map(|(op, calls, secs)| {
            let ms = 1e3 * secs / calls as f64;
            OpRow {
                tflops: gemm_tflops(&op, ms),
                op,
                calls,
                ms_per_call: ms,
            }
        })
        .collect();
    r.done = true;
    save(&r)?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let _ = writeln!(
        out,
        "{}: {} tok/s (median of {} steps), MFU {}, peak {:.2} GiB live ({:.2} GiB held){}",
        shape.name,
        r.tokens_per_s.map_or("-".into(), |t| format!("{t:.0}")),
        o.steps,
        r.mfu.map_or("- (no peak measured)".into(), |m| format!(
            "{:.1}%",
            100.0 * m
        )),
        gib(r.peak_bytes_live),
        gib(r.bytes_held),
        r.peak_bytes_device_used.map_or(String::new(), |u| format!(
            ", {:.2} GiB used on the device",
            gib(u)
        ))
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_parses_and_unknown_names_list_them() {
        for s in SHAPES {
            let a = Arch::from_config_json(&s.config().to_string(), s.name).unwrap();
            assert_eq!((a.hidden, a.layers, a.vocab), (s.hidden, s.layers, s.vocab));
            assert_eq!(a.kv_heads, s.kv_heads, "{}", s.name);
        }
        let e = shape("llama-70b").unwrap_err().to_string();
        assert_eq!(
            e,
            "--model llama-70b: unknown shape (expected one of llama-7b, chatglm3-6b, \
             tiny-llama, tiny-chatglm3)"
        );
    }

    #[test]
    fn gemm_rows_get_their_rate() {
        let t = gemm_tflops("gemm_bf16 8192x4096x4096 NT", 0.35).unwrap();
        assert!((t - 785.3).abs() < 0.1, "{t}");
        assert_eq!(gemm_tflops("rmsnorm_fwd 8192x4096", 0.1), None);
    }

    /// LLaMA-7B's base is 6.74B parameters: transformers counts 6,738,415,616.
    #[test]
    fn base_params_count_every_weight() {
        let s = shape("llama-7b").unwrap();
        let arch = Arch::from_config_json(&s.config().to_string(), "x").unwrap();
        assert_eq!(base_params(&arch), 6_738_415_616);
    }
}
