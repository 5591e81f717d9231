//! Plan-time estimates from config.json alone: parameter counts, weight
//! bytes per dtype / quantization, and the memory of a train step.
//!
//! The numbers are for the CPU backend's layout (f32 compute, frozen
//! weights kept in their storage dtype or 4-bit) and are meant to be within
//! ~15% of measured peak RSS; `BENCHMARKS.md` records the comparison.

use crate::steps::{Estimate, EstimateCtx, Params, RunCtx};
use crate::util::human_bytes;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// Model families and the config.json `model_type`s that map to them.
pub const FAMILY_TYPES: &[(&str, &[&str])] = &[
    ("llama", &["llama", "mistral"]),
    ("qwen2", &["qwen2"]),
    ("qwen3", &["qwen3"]),
    ("qwen", &["qwen"]),
    ("chatglm", &["chatglm", "glm"]),
    ("bloom", &["bloom"]),
    ("gpt2", &["gpt2"]),
];

/// The shape facts a memory estimate needs.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub hidden: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub inter: u64,
    pub vocab: u64,
    pub tied: bool,
    pub gated: bool,
    pub dtype_bytes: u64,
    pub family: &'static str,
}

impl Shape {
    pub fn from_config(cfg: &Value) -> Option<Shape> {
        let g = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| cfg.get(*k).and_then(Value::as_u64))
        };
        let hidden = g(&["hidden_size", "n_embd", "d_model"])?;
        let layers = g(&["num_hidden_layers", "num_layers", "n_layer"])?;
        let heads = g(&["num_attention_heads", "n_head"])?;
        let mt = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
        let mq = cfg
            .get("multi_query_attention")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let kv_heads = if mq {
            g(&["multi_query_group_num"])
        } else {
            g(&["num_key_value_heads"])
        }
        .unwrap_or(heads);
        let head_dim = g(&["head_dim", "kv_channels"]).unwrap_or(hidden / heads.max(1));
        let gated = !matches!(mt, "bloom" | "gpt2");
        let inter = match mt {
            // Qwen v1's intermediate_size counts both w1 and w2.
            "qwen" => g(&["intermediate_size"])
                .map(|i| i / 2)
                .unwrap_or(hidden * 4),
            _ => g(&["intermediate_size", "ffn_hidden_size", "n_inner"]).unwrap_or(hidden * 4),
        };
        let vocab = g(&["padded_vocab_size", "vocab_size"])?;
        let tied = match mt {
            "bloom" | "gpt2" => true,
            "chatglm" => false,
            _ => cfg
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        let dtype_bytes = match cfg
            .get("torch_dtype")
            .or(cfg.get("dtype"))
            .and_then(Value::as_str)
        {
            Some("float32") => 4,
            _ => 2,
        };
        let family = family_of(cfg).ok()?;
        Some(Shape {
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            inter,
            vocab,
            tied,
            gated,
            dtype_bytes,
            family,
        })
    }

    /// Parameters of all linear layers inside the blocks (what gets quantized).
    pub fn linear_params(&self) -> u64 {
        let h = self.hidden;
        let q = self.heads * self.head_dim;
        let kv = self.kv_heads * self.head_dim;
        let attn = h * (q + 2 * kv) + q * h;
        let mlp = if self.gated {
            3 * h * self.inter
        } else {
            2 * h * self.inter
        };
        self.layers * (attn + mlp)
    }
    pub fn embed_params(&self) -> u64 {
        self.vocab * self.hidden * if self.tied { 1 } else { 2 }
    }
    pub fn total_params(&self) -> u64 {
        self.linear_params() + self.embed_params() + self.layers * 2 * self.hidden
    }
    /// Linear modules of one block as the family names them: (name, d_in, d_out).
    pub fn module_shapes(&self) -> Vec<(&'static str, u64, u64)> {
        let (h, i) = (self.hidden, self.inter);
        let q = self.heads * self.head_dim;
        let kv = self.kv_heads * self.head_dim;
        match self.family {
            "chatglm" => vec![
                ("query_key_value", h, q + 2 * kv),
                ("dense", q, h),
                ("dense_h_to_4h", h, 2 * i),
                ("dense_4h_to_h", i, h),
            ],
            "bloom" => vec![
                ("query_key_value", h, 3 * h),
                ("dense", h, h),
                ("dense_h_to_4h", h, i),
                ("dense_4h_to_h", i, h),
            ],
            "gpt2" => vec![
                ("c_attn", h, 3 * h),
                ("c_proj", h, h),
                ("c_fc", h, i),
                ("c_proj", i, h),
            ],
            "qwen" => vec![
                ("c_attn", h, 3 * h),
                ("c_proj", h, h),
                ("w1", h, i),
                ("w2", h, i),
                ("c_proj", i, h),
            ],
            _ => vec![
                ("q_proj", h, q),
                ("k_proj", h, kv),
                ("v_proj", h, kv),
                ("o_proj", q, h),
                ("gate_proj", h, i),
                ("up_proj", h, i),
                ("down_proj", i, h),
            ],
        }
    }
    /// LoRA parameters of rank r on the targeted modules (names, or "all-linear").
    pub fn lora_params(&self, r: u64, targets: &[String]) -> u64 {
        let all = targets.iter().any(|t| t == "all-linear");
        let defaults: Vec<String> = crate::steps::train::default_targets(self.family)
            .iter()
            .map(|s| s.to_string())
            .collect();
        let targets = if targets.is_empty() {
            &defaults
        } else {
            targets
        };
        let per_layer: u64 = self
            .module_shapes()
            .iter()
            .filter(|(n, _, _)| all || targets.iter().any(|t| t.rsplit('.').next() == Some(*n)))
            .map(|(_, i, o)| r * (i + o))
            .sum();
        self.layers * per_layer
    }
}

pub fn read_config(dir: &Path) -> Result<Value> {
    let p = dir.join("config.json");
    let b = std::fs::read(&p).with_context(|| format!("cannot read `{}`", p.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("`{}` is not valid JSON", p.display()))
}

/// Map config.json's model_type onto a supported family.
pub fn family_of(cfg: &Value) -> Result<&'static str> {
    let mt = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    for (fam, types) in FAMILY_TYPES {
        if types.contains(&mt) {
            return Ok(fam);
        }
    }
    bail!(
        "unsupported model_type `{mt}`; supported families: {}",
        FAMILY_TYPES
            .iter()
            .map(|(f, _)| *f)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn config_of(p: &Params) -> Option<Value> {
    read_config(&p.path("path")?).ok()
}

pub fn model_estimate(p: &Params) -> Option<Estimate> {
    let cfg = config_of(p)?;
    let s = Shape::from_config(&cfg)?;
    let fam = family_of(&cfg).unwrap_or("?");
    let n = s.total_params();
    Some(Estimate {
        summary: format!(
            "{fam}: {:.2}B params, {} layers, hidden {}, weights {} ({}-bit)",
            n as f64 / 1e9,
            s.layers,
            s.hidden,
            human_bytes(n * s.dtype_bytes),
            s.dtype_bytes * 8
        ),
        peak_bytes: Some(n * s.dtype_bytes),
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

pub fn quantize_estimate(e: &EstimateCtx) -> Option<Estimate> {
    let mp = e.upstream("model", "load.model")?;
    let s = Shape::from_config(&config_of(mp)?)?;
    let q = nf4_bytes(
        s.linear_params(),
        e.params.usize("blocksize") as u64,
        e.params.bool("double_quant"),
    );
    let rest = (s.embed_params() + s.layers * 2 * s.hidden) * s.dtype_bytes;
    Some(Estimate {
        summary: format!(
            "weights {} ({} 4-bit linear + {} other)",
            human_bytes(q + rest),
            human_bytes(q),
            human_bytes(rest)
        ),
        peak_bytes: Some(q + rest),
        rows: Vec::new(),
    })
}

/// Memory of a train step: frozen weights, trainable params, their grads,
/// optimizer state and activations at the recipe's batch and length.
pub fn train_estimate(e: &EstimateCtx) -> Option<Estimate> {
    let p = e.params;
    let mp = e.upstream("model", "load.model")?;
    let s = Shape::from_config(&config_of(mp)?)?;
    let quant = e.upstream("model", "quantize");
    let weights = match quant {
        Some(q) => {
            nf4_bytes(
                s.linear_params(),
                q.usize("blocksize") as u64,
                q.bool("double_quant"),
            ) + (s.embed_params() + s.layers * 2 * s.hidden) * s.dtype_bytes
        }
        None => s.total_params() * s.dtype_bytes,
    };
    let full = p.str("method") == "full";
    let r = p.usize("r") as u64;
    let trainable = if full {
        s.total_params()
    } else {
        s.lora_params(r, &p.strs("target_modules"))
    };
    let train_bytes = trainable * 4;
    let grads = trainable * 4;
    let optim = match p.str("optim") {
        "adamw" => trainable * 8,
        _ => trainable * 2 + (trainable / 256) * 8,
    };
    // Activations at (batch, seq): max_length of the tokenize step, else 512.
    let seq = e
        .upstream("data", "tokenize")
        .and_then(|t| {
            t.opt_usize("max_length")
                .or(t.opt_usize("pad_to"))
                .or_else(|| {
                    Some(t.opt_usize("max_input_length")? + t.opt_usize("max_output_length")?)
                })
        })
        .unwrap_or(512) as u64;
    let b = p.usize("batch_size") as u64;
    // Activations in f64 (exact below 2^53), cast back saturating: a
    // recipe's batch × length may be absurd (the estimate then says so), but
    // never overflows.
    let f = |x: u64| x as f64;
    let bt = f(b) * f(seq);
    let h = s.hidden;
    let (q, kv) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    // Per layer, f32, as the CPU engine keeps it (`Arch::activation_floats_per_layer`): x, h1,
    // q, k, v, attention output, x2, h2, MLP e/g/a, norm stats, and the probs [B, NH, T, T].
    let per_layer = 4.0
        * (bt * f(4 * h + 2 * q + 2 * kv + 3 * s.inter + 4) + f(b) * f(s.heads) * f(seq) * f(seq));
    // The head + cross-entropy run in row chunks of at most HEAD_CHUNK logits (and their
    // gradient): the full [B, T, V] logits are never live.
    const HEAD_CHUNK: f64 = (1u64 << 22) as f64;
    let logits = 4.0 * (bt * f(s.vocab)).min(HEAD_CHUNK) * 2.0;
    let act_full = (f(s.layers) * per_layer + logits) as u64;
    let act_ckpt = (f(s.layers) * 4.0 * bt * f(h) + per_layer + logits) as u64;
    let act = if p.bool("gradient_checkpointing") {
        act_ckpt
    } else {
        act_full
    };
    let total = (weights + train_bytes + grads + optim).saturating_add(act);
    let wlabel = match quant {
        Some(q) => format!("weights ({})", q.str("quant_type")),
        None => format!("weights ({}-bit)", s.dtype_bytes * 8),
    };
    Some(Estimate {
        summary: format!(
            "memory ≈ {} at batch {b} × seq {seq} ({} trainable params{})",
            human_bytes(total),
            trainable,
            if p.bool("gradient_checkpointing") {
                ", checkpointing"
            } else {
                ""
            }
        ),
        peak_bytes: Some(total),
        rows: vec![
            (wlabel, weights),
            (
                if full {
                    "trainable (f32 copy)".into()
                } else {
                    "adapters (f32)".into()
                },
                train_bytes,
            ),
            ("gradients".into(), grads),
            (format!("optimizer ({})", p.str("optim")), optim),
            ("activations, checkpointing".into(), act_ckpt),
            ("activations, no checkpointing".into(), act_full),
            ("total".into(), total),
        ],
    })
}

/// `load.model`'s output: the resolved family and config (weights stay in
/// place and are memory-mapped by the steps that read them).
pub fn write_model_summary(ctx: &RunCtx) -> Result<()> {
    let dir = ctx
        .params
        .path("path")
        .context("load.model: `path` is not set")?;
    if !dir.is_dir() {
        bail!("model dir `{}` does not exist", dir.display());
    }
    let cfg = read_config(&dir)?;
    let family = match ctx.params.str("family") {
        "auto" | "" => family_of(&cfg)?,
        f => FAMILY_TYPES
            .iter()
            .find(|(n, _)| *n == f)
            .map(|(n, _)| *n)
            .unwrap_or("llama"),
    };
    let summary = serde_json::json!({
        "path": dir.display().to_string(),
        "family": family,
        "tokenizer": ctx.params.path("tokenizer").unwrap_or(dir.clone()).display().to_string(),
        "dtype": ctx.params.str("dtype"),
        "config": cfg,
    });
    std::fs::write(
        ctx.out.join("model.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    ctx.info(format!("{family} model at {}", dir.display()));
    Ok(())
}
