//! `export`: write a Hugging Face model dir (config, generation config,
//! sharded safetensors + index, tokenizer files) that transformers loads,
//! or with `format = "gguf"` a `model.gguf` + Ollama `Modelfile` for
//! llama.cpp / Ollama (see `export::gguf`).

use super::{def, io, opt, req, ParamSpec, RunCtx, Step, Ty};
use anyhow::{Context, Result};
use std::path::Path;

pub struct Export;

static PARAMS: &[ParamSpec] = &[
    req(
        "model",
        Ty::Step(&["merge", "load.model", "quantize", "train"]),
        "the model to export (a train step with method = \"full\" is a model)",
    ),
    opt(
        "adapter",
        Ty::Step(&["train"]),
        "the adapter, to compare merged logits with base + adapter",
    ),
    def(
        "max_shard_size",
        Ty::Str,
        "\"5GB\"",
        "largest safetensors shard, e.g. \"2GB\", \"500MB\"",
    ),
    def(
        "format",
        Ty::Enum(&["hf", "gguf"]),
        "\"hf\"",
        "hf: a Hugging Face dir; gguf: model.gguf + an Ollama Modelfile (llama, qwen2, bloom, gpt2)",
    ),
    def(
        "gguf_dtype",
        Ty::Enum(crate::export::gguf::GgufDtype::NAMES),
        "\"f16\"",
        "weight type of a GGUF export (norms and biases stay f32)",
    ),
    def(
        "verify",
        Ty::Bool,
        "true",
        "compare logits of the export with base + adapter on a few inputs",
    ),
];

impl Step for Export {
    fn kind(&self) -> &'static str {
        "export"
    }
    fn about(&self) -> &'static str {
        "write a Hugging Face model dir that transformers loads, or GGUF for llama.cpp / Ollama"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    /// Writes the Hugging Face dir; with `verify`, compares its logits with
    /// base + adapter and prints the largest difference.
    fn run(&self, ctx: &RunCtx) -> Result<()> {
        let input = ctx.input("model")?;
        let dirs = io::model_dirs(input)?;
        let model = crate::export::HfModel::load(&dirs.weights)
            .with_context(|| format!("reading the model of step `{}`", input.step))?;
        if ctx.params.str("format") == "gguf" {
            return export_gguf(ctx, &model, &dirs.tokenizer);
        }
        let max =
            crate::util::parse_size(ctx.params.str("max_shard_size")).unwrap_or(5_000_000_000);
        let opts = crate::export::ExportOptions {
            max_shard_size: max,
            dtype: crate::export::OutDtype::Auto,
        };
        let report =
            crate::export::write_hf_dir(&model, &[&dirs.weights, &dirs.tokenizer], ctx.out, &opts)?;
        ctx.info(format!(
            "wrote {} shard(s), {}{}",
            report.shards,
            crate::util::human_bytes(report.total_size),
            report
                .dtype
                .and_then(crate::export::dtype::hf_name)
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ));
        // A converted SentencePiece tokenizer is also written as tokenizer.json.
        if !ctx.out.join("tokenizer.json").exists() && ctx.out.join("tokenizer.model").exists() {
            if let Ok(b) = crate::text::TokenizerBundle::from_dir(ctx.out) {
                let _ = b.tok.save(ctx.out.join("tokenizer.json"), false);
            }
        }
        if ctx.params.bool("verify") {
            let merge_meta = dirs.weights.join("merge.json");
            match std::fs::read(&merge_meta)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            {
                Some(m) if m["base_kind"] == "load.model" => {
                    let base = Path::new(m["base"].as_str().unwrap_or(""));
                    let adapter = Path::new(m["adapter"].as_str().unwrap_or(""));
                    let d = max_logit_diff(base, adapter, ctx.out)?;
                    ctx.info(format!(
                        "verify: max |logits(export) - logits(base + adapter)| = {d:.3e}"
                    ));
                }
                Some(_) => ctx.info("verify: skipped (the base is quantized)"),
                None => ctx.info("verify: skipped (no adapter to compare with)"),
            }
        }
        Ok(())
    }
    fn check(&self, c: &mut super::CheckCtx) {
        if crate::util::parse_size(c.params.str("max_shard_size")).is_none() {
            c.error("max_shard_size", "not a size").expected =
                Some("e.g. \"2GB\", \"500MB\", \"1GiB\"".into());
        }
    }
}

/// `format = "gguf"`: model.gguf + Modelfile in the step's output dir; `verify` re-reads the file.
fn export_gguf(ctx: &RunCtx, model: &crate::export::HfModel, tokenizer: &Path) -> Result<()> {
    use crate::export::gguf;
    let name = ctx.params.str("gguf_dtype");
    let dtype = gguf::GgufDtype::parse(name)
        .with_context(|| format!("gguf_dtype `{name}`: expected f16, bf16, q8_0 or q4_0"))?;
    let path = ctx.out.join("model.gguf");
    let r = gguf::export_gguf(model, tokenizer, &path, dtype)?;
    ctx.info(format!(
        "wrote model.gguf ({}, {name}, {} tensors, {}) and Modelfile{}",
        r.arch,
        r.tensors,
        crate::util::human_bytes(r.bytes),
        if r.template {
            ""
        } else {
            " (fill in its TEMPLATE)"
        }
    ));
    if !r.f16_fallback.is_empty() {
        ctx.info(format!(
            "{} tensor(s) written as f16: rows not a multiple of 32",
            r.f16_fallback.len()
        ));
    }
    if ctx.params.bool("verify") {
        let f = gguf::read_gguf(&path)?;
        ctx.info(format!(
            "verify: re-read model.gguf: {} metadata keys, {} tensors",
            f.kv.len(),
            f.tensors.len()
        ));
    }
    Ok(())
}

/// Largest absolute logit difference between `exported` and base + adapter
/// on two seeded rows of 16 tokens.
pub fn max_logit_diff(base: &Path, adapter: &Path, exported: &Path) -> Result<f32> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let mut a = crate::model::Model::load(base, &Default::default()).map_err(|e| err(&e))?;
    crate::lora::load_peft(&mut a, adapter).map_err(|e| err(&e))?;
    let b = crate::model::Model::load(exported, &Default::default()).map_err(|e| err(&e))?;
    let vocab = a.arch.vocab as u64;
    let mut rng = crate::train::rng::Rng::new(7);
    let ids: Vec<u32> = (0..32).map(|_| (rng.next_u64() % vocab) as u32).collect();
    let batch = crate::model::Batch {
        b: 2,
        t: 16,
        input_ids: ids,
        attention_mask: vec![1; 32],
        labels: None,
        segments: None,
    };
    let la = a.forward(&batch).map_err(|e| err(&e))?.logits;
    let lb = b.forward(&batch).map_err(|e| err(&e))?.logits;
    Ok(la
        .iter()
        .zip(&lb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max))
}
