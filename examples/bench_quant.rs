//! Quantization and QLoRA on the CPU: quantize throughput, QLoRA vs LoRA train-step tokens/s,
//! and measured peak RSS (VmHWM, each run in a child process) next to the plan's estimate, for
//! LoRA / QLoRA on q_proj, v_proj and for LoRA with a `target_regex` (with and without
//! gradient checkpointing).
//!
//!     cargo run --example bench_quant            # BENCHMARKS.md "Quantization and QLoRA"
//!     cargo run --example bench_quant -- small   # a smaller model (quick check)
//!
//! The model is a synthetic LLaMA (f32, seeded weights) written to a temp dir; QLoRA loads its
//! pre-quantized NF4 + double-quant save (what a `quantize` step hands to `train`).

use indexmap::IndexMap;
use recipe::model::quantized::{load_quantized_model, save_quantized, QuantizeSpec};
use recipe::model::{Batch, LoadOptions, Model, TrainOptions};
use recipe::optim::{OptimConfig, OptimKind};
use recipe::steps::{EstimateCtx, Params};
use recipe::train::optimizer::Optimizer;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

const BATCH: usize = 4;
const SEQ: usize = 128;
const STEPS: usize = 3;

/// One measured run: its name, base, LoRA rank and targets (target_modules or target_regex).
struct Run {
    name: &'static str,
    quantized: bool,
    r: usize,
    regex: Option<&'static str>,
    checkpointing: bool,
}

const RUNS: &[Run] = &[
    Run {
        name: "lora",
        quantized: false,
        r: 8,
        regex: None,
        checkpointing: false,
    },
    Run {
        name: "qlora",
        quantized: true,
        r: 8,
        regex: None,
        checkpointing: false,
    },
    // Every linear of layers 0-2, rank 64: adapters the q/v-name rule would not see.
    Run {
        name: "lora-regex",
        quantized: false,
        r: 64,
        regex: Some(r".*\.[0-2]\..*_proj"),
        checkpointing: false,
    },
    Run {
        name: "lora-regex-ckpt",
        quantized: false,
        r: 64,
        regex: Some(r".*\.[0-2]\..*_proj"),
        checkpointing: true,
    },
];

impl Run {
    fn targets(&self) -> recipe::model::lora::Targets {
        match self.regex {
            Some(re) => recipe::model::lora::Targets::Regex(re.into()),
            None => recipe::model::lora::Targets::Names(vec!["q_proj".into(), "v_proj".into()]),
        }
    }
}

struct Size {
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    vocab: usize,
}

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// config.json + model.safetensors (f32) of a random LLaMA.
fn write_model(dir: &Path, s: &Size) {
    let shape = recipe::model::random::RandomLlama {
        hidden: s.hidden,
        ffn: s.inter,
        layers: s.layers,
        heads: s.heads,
        kv_heads: s.heads,
        vocab: s.vocab,
        max_positions: 2048,
    };
    let mut seed = 7u64;
    shape
        .write(dir, |n| (0..n).map(|_| lcg(&mut seed) * 0.035).collect())
        .unwrap();
}

fn vm_hwm() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Child: load (dense or 4-bit), LoRA as the run says, AdamW, 1 warm-up + STEPS steps.
fn child(run: &Run, dir: &Path) {
    let opts = LoadOptions::default();
    let mut m: Model = if run.quantized {
        load_quantized_model(dir, &opts).unwrap()
    } else {
        Model::load(dir, &opts).unwrap()
    };
    let cfg = recipe::model::lora::LoraConfig {
        r: run.r,
        alpha: 16.0,
        dropout: 0.0,
        targets: run.targets(),
        use_rslora: false,
        modules_to_save: vec![],
        seed: 1,
    };
    // Peak while loading (a dense load holds the mapped file and its f32 copy), then reset the
    // peak (Linux: `5` > clear_refs) so VmHWM measures the training steps alone.
    let load_hwm = vm_hwm();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    recipe::model::lora::apply(&mut m, &cfg).unwrap();
    let sizes: Vec<usize> = m.params_mut().iter().map(|p| p.value.len()).collect();
    let mut opt = Optimizer::new(
        m.backend.clone(),
        OptimKind::AdamW,
        &OptimConfig::default(),
        &sizes,
    );
    let mut seed = 3u64;
    let vocab = m.arch.vocab as u32;
    let rows: Vec<(Vec<u32>, Vec<i64>)> = (0..BATCH)
        .map(|_| {
            let ids: Vec<u32> = (0..SEQ)
                .map(|_| ((lcg(&mut seed) + 1.0) * 0.5 * (vocab - 1) as f32) as u32)
                .collect();
            let labels = ids.iter().map(|&i| i as i64).collect();
            (ids, labels)
        })
        .collect();
    let batch = Batch::padded(&rows, 0, true);
    let mut t = Instant::now();
    for step in 0..=STEPS {
        if step == 1 {
            t = Instant::now();
        }
        m.zero_grad();
        let o = TrainOptions {
            checkpointing: run.checkpointing,
            ..TrainOptions::default()
        };
        m.forward_backward(&batch, o).unwrap();
        let mut ps = m.params_mut();
        let (mut vals, grads): (
            Vec<&mut recipe::backend::Tensor>,
            Vec<&recipe::backend::Tensor>,
        ) = ps.iter_mut().map(|p| (&mut *p.value, &*p.grad)).unzip();
        opt.step(&mut vals, &grads, 1e-4);
    }
    let tps = (STEPS * BATCH * SEQ) as f64 / t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"tokens_per_s": tps, "vm_hwm": vm_hwm(), "load_hwm": load_hwm})
    );
}

fn params(v: serde_json::Value) -> Params {
    Params {
        map: v.as_object().unwrap().clone().into_iter().collect(),
    }
}

/// The plan's train estimate for this model, batch and run.
fn plan_bytes(dir: &Path, run: &Run) -> u64 {
    let mut all: IndexMap<String, (&'static str, Params)> = IndexMap::new();
    all.insert(
        "base".into(),
        (
            "load.model",
            params(json!({"path": dir.display().to_string()})),
        ),
    );
    all.insert(
        "q".into(),
        ("quantize", params(json!({"model": "base", "quant_type": "nf4", "blocksize": 64, "double_quant": true}))),
    );
    all.insert(
        "tok".into(),
        ("tokenize", params(json!({"max_length": SEQ}))),
    );
    let model = if run.quantized { "q" } else { "base" };
    let mut train = json!({
        "model": model, "data": "tok", "method": "lora", "r": run.r, "optim": "adamw",
        "batch_size": BATCH, "gradient_checkpointing": run.checkpointing
    });
    match run.regex {
        Some(re) => train["target_regex"] = json!(re),
        None => train["target_modules"] = json!(["q_proj", "v_proj"]),
    }
    let train = params(train);
    let mut inputs = IndexMap::new();
    inputs.insert("model".to_string(), (all[model].0, &all[model].1));
    inputs.insert("data".to_string(), ("tokenize", &all["tok"].1));
    let e = EstimateCtx {
        params: &train,
        inputs,
        all: &all,
    };
    let est = recipe::steps::memory::train_estimate(&e).expect("estimate");
    for (name, b) in &est.rows {
        eprintln!("    plan {name:<32} {:>10.1} MiB", *b as f64 / 1048576.0);
    }
    est.peak_bytes.unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        let run = RUNS.iter().find(|r| r.name == args[2]).expect("run name");
        return child(run, Path::new(&args[3]));
    }
    let small = args.get(1).map(String::as_str) == Some("small");
    let s = if small {
        Size {
            hidden: 256,
            inter: 688,
            layers: 2,
            heads: 4,
            vocab: 2048,
        }
    } else {
        Size {
            hidden: 1024,
            inter: 2752,
            layers: 6,
            heads: 16,
            vocab: 8192,
        }
    };
    println!("threads: {}", rayon::current_num_threads());
    let n = 1 << 24;
    println!(
        "quantize_4bit nf4+dq, 64 MiB f32: {:.3} GB/s",
        recipe::devtools::quant_bench::quantize_throughput(n, 3)
    );
    let tmp = tempfile::tempdir().unwrap();
    let dense = tmp.path().join("dense");
    let q = tmp.path().join("nf4");
    write_model(&dense, &s);
    let t = Instant::now();
    let spec = QuantizeSpec {
        compute_dtype: "float32".into(),
        ..QuantizeSpec::default()
    };
    let st = save_quantized(&dense, &q, &spec, &mut |_, _, _| {}).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "save_quantized (read, quantize, write): {} linears, {:.1} MiB f32 -> file {:.1} MiB -> {:.1} MiB in {:.2}s = {:.3} GB/s of f32 linear input",
        st.quantized,
        st.f32_bytes_quantized as f64 / 1048576.0,
        st.bytes_in as f64 / 1048576.0,
        st.bytes_out as f64 / 1048576.0,
        secs,
        st.f32_bytes_quantized as f64 / secs / 1e9
    );
    let exe = std::env::current_exe().unwrap();
    for run in RUNS {
        let dir = if run.quantized { &q } else { &dense };
        let method = run.name;
        let out = std::process::Command::new(&exe)
            .args(["child", method, &dir.display().to_string()])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| {
            panic!(
                "child {method} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let hwm = v["vm_hwm"].as_u64().unwrap();
        println!(
            "{method}: batch {BATCH} x seq {SEQ}, r {} {}{}: {:.0} tokens/s, peak RSS while loading {:.1} MiB, while training {:.1} MiB",
            run.r,
            run.regex.unwrap_or("q/v"),
            if run.checkpointing { ", checkpointing" } else { "" },
            v["tokens_per_s"].as_f64().unwrap(),
            v["load_hwm"].as_u64().unwrap() as f64 / 1048576.0,
            hwm as f64 / 1048576.0
        );
        let plan = plan_bytes(&dense, run);
        println!(
            "    plan {:.1} MiB vs measured {:.1} MiB: {:+.1}%",
            plan as f64 / 1048576.0,
            hwm as f64 / 1048576.0,
            (plan as f64 / hwm as f64 - 1.0) * 100.0
        );
    }
}
