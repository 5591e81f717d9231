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
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
        "intermediate_size": FF, "num_hidden_layers": L, "num_attention_heads": NH,
        "num_key_value_heads": NH, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": false, "vocab_size": V,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float32"
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("config");
    let mut rng = recipe::lora::SplitMix(1);
    let mut rand = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| rng.uniform() * s).collect() };
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![V, H],
            rand(V * H, 0.035),
        ),
        ("lm_head.weight".into(), vec![V, H], rand(V * H, 0.035)),
        ("model.norm.weight".into(), vec![H], vec![1.0; H]),
    ];
    for i in 0..L {
        let p = format!("model.layers.{i}.");
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            t.push((
                format!("{p}self_attn.{n}.weight"),
                vec![H, H],
                rand(H * H, 0.035),
            ));
        }
        t.push((
            format!("{p}mlp.gate_proj.weight"),
            vec![FF, H],
            rand(FF * H, 0.035),
        ));
        t.push((
            format!("{p}mlp.up_proj.weight"),
            vec![FF, H],
            rand(FF * H, 0.035),
        ));
        t.push((
            format!("{p}mlp.down_proj.weight"),
            vec![H, FF],
            rand(FF * H, 0.035),
        ));
        t.push((format!("{p}input_layernorm.weight"), vec![H], vec![1.0; H]));
        t.push((
            format!("{p}post_attention_layernorm.weight"),
            vec![H],
            vec![1.0; H],
        ));
    }
    let views: Vec<(String, Vec<usize>, &[f32])> = t
        .iter()
        .map(|(n, s, d)| (n.clone(), s.clone(), &d[..]))
        .collect();
    recipe::model::load::write_f32(&dir.join("model.safetensors"), &views).expect("weights");
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
