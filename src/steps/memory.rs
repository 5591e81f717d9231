//! Plan-time estimates from config.json alone, on the description training itself uses: the
//! `Arch` built from `formats::config::HfConfig`, LoRA adapters on the modules
//! `lora::Targets::from_keys` + `Targets::matches` select (names, `target_regex` or
//! all-linear, over every layer's module names), and the activations the engine allocates
//! (`model::train_activation_floats`).
//!
//! The numbers are the engine's layout: weights are held as f32, except that a `quantize`
//! step's 4-bit linears stay packed and a frozen 16-bit (bf16 / f16) checkpoint's layer linears
//! stay 16-bit (`LoadOptions::keep_16bit`, which the train step sets; a linear made trainable,
//! by full fine-tuning or `modules_to_save`, is widened to f32; Conv1D linears, embeddings,
//! norms, biases and the output head are f32). Adapters, gradients and optimizer state are
//! f32. `BENCHMARKS.md` compares them with measured peak RSS.

use crate::formats::config::HfConfig;
use crate::model::lora::Targets;
use crate::model::Arch;
use crate::steps::{Estimate, EstimateCtx, Params};
use crate::util::human_bytes;

/// The config and architecture of a `load.model` step's `path`, when they parse (a config that
/// does not is reported by `plan::preflight`, not here).
fn model_of(p: &Params) -> Option<(HfConfig, Arch)> {
    let cfg = HfConfig::read(&p.path("path")?).ok()?;
    let arch = Arch::from_config(&cfg).ok()?;
    Some((cfg, arch))
}

/// Weights of the layer linears (what a `quantize` step packs), biases left out.
fn linear_weights(a: &Arch) -> u64 {
    let per_layer: u64 = a
        .layer_linears(0)
        .iter()
        .map(|(_, i, o, _)| (i * o) as u64)
        .sum();
    a.layers as u64 * per_layer
}

/// Whether a module named `name` is in `modules_to_save` (a suffix of its full name, as
/// `lora::set_modules_to_save` matches).
fn saved_whole(modules_to_save: &[String], name: &str) -> bool {
    modules_to_save.iter().any(|t| name.ends_with(t.as_str()))
}

/// The 16-bit name of the checkpoint's dtype (`bf16`, `f16`) when its layer linears load as
/// `quant::half::Linear16`: a bf16 / f16 `torch_dtype` (the loader reads each tensor's own
/// dtype; the plan has only config.json, and a config without a dtype counts as f32) and no
/// Conv1D layout (GPT-2's linears load as f32 whatever their dtype).
fn half_dtype(cfg: &HfConfig, a: &Arch) -> Option<&'static str> {
    match cfg.dtype() {
        _ if a.conv1d => None,
        Some("bfloat16") => Some("bf16"),
        Some("float16") => Some("f16"),
        _ => None,
    }
}

/// Weights of the layer linears a LoRA train step keeps 16-bit on a 16-bit checkpoint: every
/// layer linear but those `modules_to_save` trains whole (widened to f32).
fn half_linear_weights(a: &Arch, modules_to_save: &[String]) -> u64 {
    let each = a.layers.min(MAX_LAYERS_NAMED);
    let mut n = 0u64;
    for i in 0..each {
        for (name, d_in, d_out, _) in a.layer_linears(i) {
            if !saved_whole(modules_to_save, &name) {
                n += (d_in * d_out) as u64;
            }
        }
    }
    if a.layers > each {
        n = n / each.max(1) as u64 * a.layers as u64;
    }
    n
}

/// `load.model`: the checkpoint's size in its storage dtype (it maps the weights, nothing more).
pub fn model_estimate(p: &Params) -> Option<Estimate> {
    let (cfg, a) = model_of(p)?;
    let n = a.param_counts().total();
    let bytes = cfg.dtype_bytes();
    Some(Estimate {
        summary: format!(
            "{}: {:.2}B params, {} layers, hidden {}, weights {} ({}-bit)",
            a.family.name(),
            n as f64 / 1e9,
            a.layers,
            a.hidden,
            human_bytes(n * bytes),
            bytes * 8
        ),
        peak_bytes: Some(n * bytes),
        rows: Vec::new(),
    })
}

/// Bytes of an NF4 weight of `n` elements: packed nibbles + absmax (u8 with
/// double quant, else f32) + nested absmax per 256 blocks.
pub fn nf4_bytes(n: u64, blocksize: u64, double_quant: bool) -> u64 {
    let blocks = n.div_ceil(blocksize);
    let absmax = if double_quant {
        blocks + 4 * blocks.div_ceil(256) + 4
    } else {
        4 * blocks
    };
    n.div_ceil(2) + absmax
}

/// In-memory bytes of a model whose layer linears are 4-bit (each weight quantized on its own,
/// as the `quantize` step does) and everything else f32.
fn quantized_bytes(a: &Arch, q: &Params) -> u64 {
    let (bs, dq) = (q.usize("blocksize").max(1) as u64, q.bool("double_quant"));
    let per_layer: u64 = a
        .layer_linears(0)
        .iter()
        .map(|(_, i, o, _)| nf4_bytes((i * o) as u64, bs, dq))
        .sum();
    a.layers as u64 * per_layer + 4 * (a.param_counts().total() - linear_weights(a))
}

pub fn quantize_estimate(e: &EstimateCtx) -> Option<Estimate> {
    let (_, a) = model_of(e.upstream("model", "load.model")?)?;
    let total = quantized_bytes(&a, e.params);
    let rest = 4 * (a.param_counts().total() - linear_weights(&a));
    let q = total - rest;
    Some(Estimate {
        summary: format!(
            "weights {} ({} 4-bit linear + {} other)",
            human_bytes(total),
            human_bytes(q),
            human_bytes(rest)
        ),
        peak_bytes: Some(total),
        rows: Vec::new(),
    })
}

/// Layers whose module names `lora_params` builds one by one.
const MAX_LAYERS_NAMED: usize = 4096;

/// Parameters of the LoRA adapters a train step attaches: rank r on every layer linear its
/// targets match (`Targets::matches` over the full module names, as `lora::apply` does), plus
/// `modules_to_save` trained whole (matched by name suffix, as `lora::set_modules_to_save`).
pub fn lora_params(a: &Arch, r: u64, targets: &Targets, modules_to_save: &[String]) -> u64 {
    let re = targets.compile().ok().flatten();
    let hit = |n: &str| saved_whole(modules_to_save, n);
    // Layer by layer (a regex may pick layers by index); an absurd layer count (a config
    // mistake the run would refuse) counts layer 0's adapters for every layer.
    let each = a.layers.min(MAX_LAYERS_NAMED);
    let mut n = 0u64;
    for i in 0..each {
        for (name, d_in, d_out, bias) in a.layer_linears(i) {
            if targets.matches(&name, re.as_ref()) {
                n += r * (d_in + d_out) as u64;
            }
            if hit(&name) {
                n += (d_in * d_out + if bias { d_out } else { 0 }) as u64;
            }
        }
    }
    if a.layers > each {
        n = n / each.max(1) as u64 * a.layers as u64;
    }
    let names = a.names();
    let (v, h) = (a.vocab as u64, a.hidden as u64);
    if hit(&names.emb) {
        n += v * h;
    }
    if names.head.as_deref().is_some_and(hit) {
        n += v * h;
    }
    n
}

/// Memory of a train step: frozen weights, trainable params, their grads,
/// optimizer state and activations at the recipe's batch and length.
/// `CudaBackend`'s working buffers (bytes) for a train step on an explicit `cuda[:N]` device, and
/// the row's label. bf16 compute (`dtype` auto or bf16): the two bf16 operands of the largest
/// product (A: n tokens × the widest activation; B: the largest weight, the head included),
/// and past head dim 128, where attention runs as GEMMs instead of the fused kernels (which
/// need no T×T buffer), their four f32 [heads, seq, seq rounded up to 8] buffers of one batch
/// row. f32 compute: the f32 copy of the largest frozen 4-bit or 16-bit linear (none for an f32
/// base).
fn cuda_scratch(a: &Arch, n: f64, seq: u64, bf16: bool, frozen_packed: bool) -> (String, u64) {
    let (h, kv) = (a.heads as u64, a.kv_heads as u64);
    let wide = (a.hidden as u64)
        .max(2 * a.ffn as u64)
        .max((h + 2 * kv) * a.head_dim as u64);
    let hidden = a.hidden as u64;
    if bf16 {
        let operands = (2.0 * n * wide as f64) as u64 + 2 * (a.vocab as u64).max(wide) * hidden;
        if a.head_dim <= crate::cuda::ops::flash::FLASH_DMAX {
            return ("CUDA scratch (bf16 operands)".into(), operands);
        }
        let scores = 16 * h * seq * seq.next_multiple_of(8);
        (
            "CUDA scratch (bf16 operands, attention scores)".into(),
            operands.saturating_add(scores),
        )
    } else if frozen_packed {
        (
            "CUDA scratch (f32 widened weight)".into(),
            4 * wide * hidden,
        )
    } else {
        ("CUDA scratch".into(), 0)
    }
}

pub fn train_estimate(e: &EstimateCtx) -> Option<Estimate> {
    let p = e.params;
    let (cfg, a) = model_of(e.upstream("model", "load.model")?)?;
    let quant = e.upstream("model", "quantize");
    let total_params = a.param_counts().total();
    let full = p.str("method") == "full";
    // A frozen 16-bit base (LoRA, no quantize step) keeps its layer linears 16-bit.
    let half = half_dtype(&cfg, &a).filter(|_| !full && quant.is_none());
    let weights = match (quant, half) {
        (Some(q), _) => quantized_bytes(&a, q),
        (None, Some(_)) => {
            let h = half_linear_weights(&a, &p.strs("modules_to_save"));
            2 * h + 4 * (total_params - h)
        }
        (None, None) => 4 * total_params,
    };
    let trainable = if full {
        total_params
    } else {
        let targets = Targets::from_keys(
            p.strs("target_modules"),
            p.opt_str("target_regex"),
            a.family,
        );
        lora_params(
            &a,
            p.usize("r") as u64,
            &targets,
            &p.strs("modules_to_save"),
        )
    };
    // Full fine-tuning trains the f32 weights in place: no second copy.
    let train_bytes = if full { 0 } else { trainable * 4 };
    let grads = trainable * 4;
    let optim = match p.str("optim") {
        "adamw" => trainable * 8,
        _ => trainable * 2 + (trainable / 256) * 8,
    };
    // Activations at (batch, seq): max_length of the tokenize step, else 512.
    let seq = e
        .upstream("data", "tokenize")
        .and_then(|t| {
            t.opt_usize("max_length").or_else(|| {
                Some(t.opt_usize("max_input_length")? + t.opt_usize("max_output_length")?)
            })
        })
        .unwrap_or(512) as u64;
    let b = p.usize("batch_size") as u64;
    // In f64 (exact below 2^53), cast back saturating: a recipe's batch × length may be absurd
    // (the estimate then says so), but never overflows.
    let n = b as f64 * seq as f64;
    let dropout = !full && p.f64("lora_dropout") > 0.0;
    let on_cuda = p
        .opt_str("device")
        .is_some_and(|d| d == "cuda" || d.starts_with("cuda:"));
    let bf16 = on_cuda && p.opt_str("dtype").is_none_or(|d| d != "f32");
    let act = |ckpt: bool| {
        (4.0 * crate::model::train_activation_floats(&a, n, ckpt, dropout, bf16)) as u64
    };
    let (act_ckpt, act_full) = (act(true), act(false));
    let ckpt = p.bool("gradient_checkpointing");
    let scratch =
        on_cuda.then(|| cuda_scratch(&a, n, seq, bf16, quant.is_some() || half.is_some()));
    let total = (weights + train_bytes + grads + optim)
        .saturating_add(if ckpt { act_ckpt } else { act_full })
        .saturating_add(scratch.as_ref().map_or(0, |s| s.1));
    let wlabel = match (quant, half) {
        (Some(q), _) => format!("weights ({})", q.str("quant_type")),
        (None, Some(h)) => format!("weights ({h} layer linears, the rest f32)"),
        (None, None) => "weights (f32 in memory)".into(),
    };
    Some(Estimate {
        summary: format!(
            "memory ≈ {} at batch {b} × seq {seq} ({} trainable params{})",
            human_bytes(total),
            trainable,
            if ckpt { ", checkpointing" } else { "" }
        ),
        peak_bytes: Some(total),
        rows: [
            (wlabel, weights),
            (
                if full {
                    "trainable (the weights, in place)".into()
                } else {
                    "adapters (f32)".into()
                },
                train_bytes,
            ),
            ("gradients".into(), grads),
            (format!("optimizer ({})", p.str("optim")), optim),
            ("activations, checkpointing".into(), act_ckpt),
            ("activations, no checkpointing".into(), act_full),
        ]
        .into_iter()
        .chain(scratch)
        .chain([("total".into(), total)])
        .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use indexmap::IndexMap;
    use serde_json::json;

    fn params(v: serde_json::Value) -> Params {
        Params {
            map: v
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }
    }

    /// The train estimate of a 4-layer LLaMA (hidden 64, heads 4, ffn 128, vocab 100) with
    /// these train keys.
    fn train_rows(keys: serde_json::Value) -> Vec<(String, u64)> {
        llama_rows("", keys)
    }

    /// [`train_rows`] with `extra` config keys (e.g. `, "torch_dtype": "bfloat16"`).
    fn llama_rows(extra: &str, keys: serde_json::Value) -> Vec<(String, u64)> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"model_type":"llama","hidden_size":64,"num_hidden_layers":4,"num_attention_heads":4,
                "intermediate_size":128,"vocab_size":100{extra}}}"#
            ),
        )
        .unwrap();
        rows_in(dir.path(), keys)
    }

    /// The train estimate of the model dir `dir` with these train keys.
    fn rows_in(dir: &std::path::Path, keys: serde_json::Value) -> Vec<(String, u64)> {
        let mut all: IndexMap<String, (&'static str, Params)> = IndexMap::new();
        all.insert("base".into(), ("load.model", params(json!({"path": dir}))));
        all.insert(
            "tok".into(),
            ("tokenize", params(json!({"max_length": 16}))),
        );
        let mut train = json!({"model": "base", "data": "tok", "method": "lora", "r": 8,
            "optim": "adamw", "batch_size": 2, "lora_dropout": 0.0});
        for (k, v) in keys.as_object().unwrap() {
            train[k] = v.clone();
        }
        let train = params(train);
        let mut inputs = IndexMap::new();
        inputs.insert("model".to_string(), ("load.model", &all["base"].1));
        inputs.insert("data".to_string(), ("tokenize", &all["tok"].1));
        let e = EstimateCtx {
            params: &train,
            inputs,
            all: &all,
        };
        train_estimate(&e).unwrap().rows
    }

    #[test]
    fn adapters_follow_the_same_target_matching_as_training() {
        let adapters = |keys| train_rows(keys)[1].1;
        // Default (llama: q_proj, v_proj): 4 layers × 2 × r 8 × (64 + 64) f32.
        assert_eq!(adapters(json!({})), 4 * 2 * 8 * 128 * 4);
        // A regex picks layer 1's q_proj only (the old plan ignored target_regex).
        assert_eq!(
            adapters(json!({"target_regex": r".*\.1\.self_attn\.q_proj"})),
            8 * 128 * 4
        );
        // Names match by suffix of the full module name, as PEFT; gate/up/down are 64->128.
        assert_eq!(
            adapters(json!({"target_modules": ["mlp.down_proj"]})),
            4 * 8 * (128 + 64) * 4
        );
        assert_eq!(
            adapters(json!({"target_modules": "all-linear"})),
            4 * 8 * (4 * 128 + 3 * 192) * 4
        );
    }

    #[test]
    fn activations_count_what_the_engine_keeps() {
        let rows = train_rows(json!({}));
        // n = 2 × 16 tokens. Acts per layer: 3h + 2q + 2kv + NH + 3F + 2 stats = 838 floats a
        // token (the lse [B,T,NH], not probabilities [B,NH,T,T]).
        let n = 32u64;
        let acts = 838 * n;
        // Layer inputs (L + 1) + the embedding's pre-norm copy, the final norm's output and
        // gradient; then the backward's dx, dprev and scratch: da/de/dg 3F, dh2/dx2/dh1 3h,
        // datt q, dq/dk/dv and the per-group copies 2(q + 2kv) = 1024 floats a token. Under
        // test the head chunk is 100 logits: ceil(100/100) = 1 row (200 floats), smaller.
        let scratch = (2 * 64 + 1024) * n;
        let full = (6 * 64 + 2 * 64) * n + 4 * acts + scratch;
        assert_eq!(rows[5], ("activations, no checkpointing".into(), 4 * full));
        let ckpt = (6 * 64 + 2 * 64) * n + scratch + acts + 64 * n;
        assert_eq!(rows[4], ("activations, checkpointing".into(), 4 * ckpt));
    }

    /// On `device = "cuda"` the plan adds `CudaBackend`'s scratch: in bf16 compute the operands
    /// of the largest product (the fused attention of head dims up to 128 needs no scores), in
    /// f32 compute the widened copy of a frozen 16-bit or 4-bit linear (none for an f32 base).
    /// bf16 compute also halves the bf16 activations.
    #[test]
    fn a_cuda_step_plans_the_backend_scratch() {
        let total = |rows: &[(String, u64)]| rows.last().unwrap().1;
        let cpu = train_rows(json!({}));
        let bf16 = train_rows(json!({"device": "cuda"}));
        // widest activation 2·ffn = 256; A: n 32 × 256 bf16; B: vocab 100 < 256 → 256 × 64
        // bf16.
        let want = 2 * 32 * 256 + 2 * 256 * 64;
        assert_eq!(bf16[6], ("CUDA scratch (bf16 operands)".into(), want));
        // bf16 activations: h1, h2, q, k, v, att, e, g, a are half a float each in every layer
        // (0.5·(2h + 2q + 2kv + 3F) = 384 a token), and so are the backward's da, de, dg and
        // datt (0.5·(3F + q) = 224).
        let saved = 4 * 32 * (4 * 384 + 224);
        assert_eq!(total(&bf16), total(&cpu) + want - saved);
        assert_eq!(bf16.len(), cpu.len() + 1);
        let f32_rows = train_rows(json!({"device": "cuda:1", "dtype": "f32"}));
        assert_eq!(f32_rows[6], ("CUDA scratch".into(), 0));
        let half = llama_rows(
            r#", "torch_dtype": "bfloat16""#,
            json!({"device": "cuda", "dtype": "f32"}),
        );
        assert_eq!(
            half[6],
            ("CUDA scratch (f32 widened weight)".into(), 4 * 256 * 64)
        );
        assert_eq!(train_rows(json!({"device": "auto"})).len(), cpu.len());
    }

    /// A frozen bf16 / f16 base keeps its layer linears 16-bit: 2 bytes a weight; embeddings,
    /// norms and the (untied) head stay f32, and so does every weight of a full fine-tune or a
    /// linear in `modules_to_save`.
    #[test]
    fn a_16bit_base_holds_its_layer_linears_as_16bit() {
        let weights = |extra: &str, keys| llama_rows(extra, keys)[0].clone();
        // 4 layers × (4 × 64·64 attention + 3 × 64·128 MLP) = 163840 linear weights; 13376
        // others: embedding and head 100·64 each, 9 norms of 64.
        let (lin, other) = (163_840u64, 13_376u64);
        let bf16 = r#", "torch_dtype": "bfloat16""#;
        let half = "weights (bf16 layer linears, the rest f32)".to_string();
        assert_eq!(weights(bf16, json!({})), (half, 2 * lin + 4 * other));
        assert_eq!(
            weights(r#", "torch_dtype": "float16""#, json!({})),
            (
                "weights (f16 layer linears, the rest f32)".into(),
                2 * lin + 4 * other
            )
        );
        let f32 = ("weights (f32 in memory)".to_string(), 4 * (lin + other));
        assert_eq!(weights(r#", "torch_dtype": "float32""#, json!({})), f32);
        // Without a dtype the plan cannot tell: f32, the upper bound.
        assert_eq!(weights("", json!({})), f32);
        // Full fine-tuning widens every weight it trains.
        assert_eq!(weights(bf16, json!({"method": "full"})), f32);
        // down_proj (4 × 64·128) trained whole: widened.
        let down = 4 * 64 * 128;
        assert_eq!(
            weights(bf16, json!({"modules_to_save": ["down_proj"]})).1,
            2 * (lin - down) + 4 * (other + down)
        );
    }

    /// The plan's 16-bit weights are those the train step's load holds as 16-bit: a bf16 copy of
    /// tests/fixtures/engine/llama loaded as `steps::train` loads it (`keep_16bit`), then with
    /// `modules_to_save` applied.
    #[test]
    fn the_16bit_plan_matches_what_the_loader_holds() {
        use crate::model::{lora, LinearWeight, LoadOptions, Model};
        let d = tempfile::tempdir().unwrap();
        let src =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine/llama");
        crate::formats::safetensors::bf16_copy(&src, d.path()).unwrap();
        // bf16_copy keeps the config's dtype (float32): say what the tensors are.
        let cfg_path = d.path().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        cfg["dtype"] = json!("bfloat16");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let opts = LoadOptions {
            keep_16bit: true,
            ..Default::default()
        };
        let mut m = Model::load(d.path(), &opts).unwrap();
        let total = Arch::from_config(&HfConfig::read(d.path()).unwrap())
            .unwrap()
            .param_counts()
            .total();
        let held_16bit = |m: &mut Model| -> u64 {
            let lin = m.linears_mut();
            lin.iter()
                .filter(|l| matches!(l.weight, LinearWeight::Quant(_)))
                .map(|l| (l.d_in * l.d_out) as u64)
                .sum()
        };
        let h = held_16bit(&mut m);
        // 2 layers × (16·16 + 2 × 16·8 + 16·16 + 3 × 16·32).
        assert_eq!(h, 2 * (256 + 2 * 128 + 256 + 3 * 512));
        assert_eq!(rows_in(d.path(), json!({}))[0].1, 2 * h + 4 * (total - h));
        let keys = json!({"modules_to_save": ["mlp.up_proj"]});
        lora::set_modules_to_save(&mut m, &["mlp.up_proj".into()]).unwrap();
        let h = held_16bit(&mut m);
        assert_eq!(h, 2 * (256 + 2 * 128 + 256 + 2 * 512));
        assert_eq!(rows_in(d.path(), keys)[0].1, 2 * h + 4 * (total - h));
    }
}
