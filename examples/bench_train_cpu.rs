//! CPU LoRA train-step benchmark (issue 4): a random ~23M-parameter LLaMA-shaped model, LoRA r 8
//! (alpha 16) on q_proj and v_proj, batch 4 × seq 256 with every label trained, timed over
//! forward_backward + an inline AdamW update of the adapter weights.
//!
//! `cargo run --release --example bench_train_cpu [-- --steps N --warmup W]`
//! The PyTorch + peft twin is `tests/reference/bench_train_torch.py` (same shape and batch).

use recipe::model::lora::{self, LoraConfig, Targets};
use recipe::model::random::RandomLlama;
use recipe::model::{Batch, LoadOptions, Model, TrainOptions};
use std::time::Instant;

const HIDDEN: usize = 512;
const LAYERS: usize = 6;
const HEADS: usize = 8;
const FFN: usize = 1376;
const VOCAB: usize = 8000;
const BATCH: usize = 4;
const SEQ: usize = 256;

/// splitmix64: deterministic random numbers without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [−bound, bound).
    fn uniform(&mut self, bound: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size in MiB (VmHWM from /proc/self/status; 0 where unavailable).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Writes config.json + model.safetensors of a random LLaMA (std ≈ 0.02 weights, unit norms).
fn write_model(dir: &std::path::Path) -> anyhow::Result<usize> {
    let shape = RandomLlama {
        hidden: HIDDEN,
        ffn: FFN,
        layers: LAYERS,
        heads: HEADS,
        kv_heads: HEADS,
        vocab: VOCAB,
        max_positions: 2048,
    };
    let mut rng = Rng(42);
    let bound = 0.02 * 3f32.sqrt(); // uniform with std 0.02
    shape.write(dir, |n| (0..n).map(|_| rng.uniform(bound)).collect())
}

/// AdamW (torch defaults: betas 0.9/0.999, eps 1e-8) over every trainable tensor, in place.
struct AdamW {
    lr: f32,
    wd: f32,
    t: i32,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl AdamW {
    fn step(&mut self, model: &mut Model) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        self.t += 1;
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for (i, p) in model.params_mut().into_iter().enumerate() {
            if self.m.len() <= i {
                self.m.push(vec![0.0; p.value.len()]);
                self.v.push(vec![0.0; p.value.len()]);
            }
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            let (value, grad) = (p.value.host_mut(), p.grad.host());
            for j in 0..value.len() {
                let g = grad[j];
                m[j] = b1 * m[j] + (1.0 - b1) * g;
                v[j] = b2 * v[j] + (1.0 - b2) * g * g;
                value[j] -= self.lr * self.wd * value[j];
                value[j] -= self.lr * (m[j] / c1) / ((v[j] / c2).sqrt() + eps);
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let warmup = arg("--warmup", 2);
    let steps = arg("--steps", 5);
    let dir = tempfile::tempdir()?;
    let params = write_model(dir.path())?;
    let mut model = Model::load(dir.path(), &LoadOptions::default())?;
    let cfg = LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: Targets::Names(vec!["q_proj".into(), "v_proj".into()]),
        use_rslora: false,
        modules_to_save: vec![],
        seed: 0,
    };
    lora::apply(&mut model, &cfg)?;
    let trainable: usize = model.params_mut().iter().map(|p| p.value.len()).sum();
    let mut rng = Rng(7);
    let ids: Vec<u32> = (0..BATCH * SEQ)
        .map(|_| (rng.next() % VOCAB as u64) as u32)
        .collect();
    let batch = Batch {
        b: BATCH,
        t: SEQ,
        input_ids: ids.clone(),
        attention_mask: vec![1; BATCH * SEQ],
        labels: Some(ids.iter().map(|&i| i as i64).collect()),
        segments: None,
    };
    let mut opt = AdamW {
        lr: 1e-4,
        wd: 0.0,
        t: 0,
        m: vec![],
        v: vec![],
    };
    println!(
        "shape: llama hidden {HIDDEN}, layers {LAYERS}, heads {HEADS}, ffn {FFN}, vocab {VOCAB} \
         (untied), {:.1}M params; LoRA r 8 alpha 16 on q_proj,v_proj ({trainable} trainable); \
         batch {BATCH} x seq {SEQ}; threads {}",
        params as f64 / 1e6,
        rayon::current_num_threads()
    );
    let mut times = Vec::new();
    for s in 0..warmup + steps {
        let t0 = Instant::now();
        model.zero_grad();
        let loss = model.forward_backward(
            &batch,
            TrainOptions {
                checkpointing: false,
                dropout_seed: s as u64,
            },
        )?;
        opt.step(&mut model);
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "step {s}{}: loss {loss:.4}  {:.0} ms",
            if s < warmup { " (warmup)" } else { "" },
            dt * 1e3
        );
        if s >= warmup {
            times.push(dt);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let med = times[times.len() / 2];
    let tokens = (BATCH * SEQ) as f64;
    println!(
        "RESULT engine=recipe tokens_per_s={:.1} ms_per_step={:.1} peak_rss_mib={:.0}",
        tokens / med,
        med * 1e3,
        peak_rss_mib()
    );
    Ok(())
}
