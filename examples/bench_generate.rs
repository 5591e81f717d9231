//! Generation throughput on the CPU: greedy decoding with the KV cache for a ~27M-parameter
//! random LLaMA (hidden 512, 6 layers, 8 heads, FFN 1408, vocab 8000), batch 1 and batch 8,
//! 16 prompt tokens + 64 new tokens per row. The transformers twin is
//! tests/reference/bench_generate_hf.py; results go in BENCHMARKS.md.
//!
//!   RAYON_NUM_THREADS=2 CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo run --example bench_generate
//!   (or --release)

use recipe::eval::generate::{generate, GenConfig};
use recipe::eval::lm::EngineLm;
use recipe::model::{LoadOptions, Model};
use std::time::Instant;

const H: usize = 512;
const L: usize = 6;
const NH: usize = 8;
const FF: usize = 1408;
const V: usize = 8000;
const PROMPT: usize = 16;
const NEW: usize = 64;

/// Writes config.json + model.safetensors with seeded random weights (std ≈ 0.02).
fn make_model(dir: &std::path::Path) {
    let shape = recipe::model::random::RandomLlama {
        hidden: H,
        ffn: FF,
        layers: L,
        heads: NH,
        kv_heads: NH,
        vocab: V,
        max_positions: 512,
    };
    let mut rng = recipe::rng::SplitMix64(1);
    shape
        .write(dir, |n| (0..n).map(|_| rng.uniform() * 0.035).collect())
        .expect("writing the model");
}

fn main() {
    let dir = tempfile_dir();
    make_model(&dir);
    let model = Model::load(&dir, &LoadOptions::default()).expect("load");
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!("llama h{H} l{L} ff{FF} v{V}; prompt {PROMPT} + {NEW} new tokens, greedy, threads {threads}");
    for batch in [1usize, 8] {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|r| {
                (0..PROMPT)
                    .map(|i| ((r * 131 + i * 17) % (V - 3) + 3) as u32)
                    .collect()
            })
            .collect();
        let cfg = GenConfig {
            max_new_tokens: NEW,
            stop_ids: vec![],
            ..Default::default()
        };
        let mut best = f64::MAX;
        for rep in 0..4 {
            let mut lm = EngineLm::new(&model, 0, NEW);
            let t0 = Instant::now();
            let g = generate(&mut lm, &prompts, &cfg, |_, _| {}).expect("generate");
            let dt = t0.elapsed().as_secs_f64();
            assert!(g.iter().all(|x| x.tokens.len() == NEW));
            if rep > 0 {
                best = best.min(dt);
            }
        }
        let toks = (batch * NEW) as f64;
        println!(
            "batch {batch}: {:.3} s for {} tokens = {:.1} tokens/s (best of 3 after warmup)",
            best,
            batch * NEW,
            toks / best
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bench_generate_{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}
