//! `export`: write a Hugging Face model dir (config, generation config,
//! sharded safetensors + index, tokenizer files) that transformers loads,
//! or with `format = "gguf"` a `model.gguf` + Ollama `Modelfile` for
//! llama.cpp / Ollama (see `export::gguf`).

use super::{def, io, opt, req, CheckCtx, Kind, ParamSpec, RunCtx, Ty};
use anyhow::{Context, Result};
use std::path::Path;

pub struct Export;

/// The keys of an `export` step.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // step references: the run reads those steps through `ctx.input`
pub struct ExportParams {
    pub model: String,
    pub adapter: Option<String>,
    pub max_shard_size: String,
    pub format: Format,
    pub gguf_dtype: String,
    pub verify: bool,
    pub verify_tolerance: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Hf,
    Gguf,
}

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
    opt(
        "verify_tolerance",
        Ty::Float,
        "largest allowed |logit difference| in the check (default: 1e-3 x the largest |logit| \
         for f32 weights, 5e-2 x for bf16 / f16)",
    ),
];

impl Kind for Export {
    type Params = ExportParams;
    const KIND: &'static str = "export";
    const ABOUT: &'static str =
        "write a Hugging Face model dir that transformers loads, or GGUF for llama.cpp / Ollama";
    const PARAMS: &'static [ParamSpec] = PARAMS;
    /// Writes the Hugging Face dir; with `verify`, compares its logits with
    /// base + adapter and prints the largest difference.
    fn run(&self, p: &ExportParams, ctx: &RunCtx) -> Result<()> {
        let input = ctx.input("model")?;
        let dirs = io::model_dirs(input)?;
        let model = crate::export::HfModel::load(&dirs.weights)
            .with_context(|| format!("reading the model of step `{}`", input.step))?;
        crate::export::check_finite(&model.tensors, &dirs.weights.display().to_string())
            .with_context(|| format!("the model of step `{}`", input.step))?;
        if p.format == Format::Gguf {
            return export_gguf(p, ctx, &model, &dirs.tokenizer);
        }
        let max = crate::util::parse_size(&p.max_shard_size)
            .with_context(|| format!("key `max_shard_size`: not a size: {:?}", p.max_shard_size))?;
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
                .and_then(crate::formats::safetensors::hf_name)
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ));
        // A converted SentencePiece tokenizer is also written as tokenizer.json.
        if !ctx.out.join("tokenizer.json").exists() && ctx.out.join("tokenizer.model").exists() {
            if let Ok(b) = crate::text::TokenizerBundle::from_dir(ctx.out) {
                let _ = b.tok.save(ctx.out.join("tokenizer.json"), false);
            }
        }
        if p.verify {
            let merge_meta = dirs.weights.join("merge.json");
            match std::fs::read(&merge_meta)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            {
                Some(m) if m["base_kind"] == "load.model" => {
                    let base = Path::new(m["base"].as_str().unwrap_or(""));
                    let adapter = Path::new(m["adapter"].as_str().unwrap_or(""));
                    let (d, scale) = max_logit_diff(base, adapter, ctx.out)?;
                    let tol = p.verify_tolerance.unwrap_or_else(|| {
                        let rel = match report.dtype {
                            Some(safetensors::Dtype::F32) | Some(safetensors::Dtype::F64) => 1e-3,
                            _ => 5e-2,
                        };
                        rel * scale.max(1.0) as f64
                    });
                    let msg =
                        format!("verify: max |logits(export) - logits(base + adapter)| = {d:.3e}");
                    if d.is_nan() || (d as f64) > tol {
                        anyhow::bail!(
                            "{msg}, above the tolerance {tol:.3e}: the exported model does not \
                             compute what base + adapter does (key `verify_tolerance` sets the \
                             limit)"
                        );
                    }
                    ctx.info(msg);
                }
                Some(_) => ctx.info("verify: skipped (the base is quantized)"),
                None => ctx.info("verify: skipped (no adapter to compare with)"),
            }
        }
        Ok(())
    }
    fn check(&self, p: &ExportParams, c: &mut CheckCtx) {
        if let Some(t) = p.verify_tolerance {
            if !(t >= 0.0 && t.is_finite()) {
                c.error("verify_tolerance", "must be a finite number >= 0")
                    .got = Some(t.to_string());
            }
        }
        if crate::util::parse_size(&p.max_shard_size).is_none() {
            c.error("max_shard_size", "not a size").expected =
                Some("e.g. \"2GB\", \"500MB\", \"1GiB\"".into());
        }
    }
}

/// `format = "gguf"`: model.gguf + Modelfile in the step's output dir; `verify` re-reads the file.
fn export_gguf(
    p: &ExportParams,
    ctx: &RunCtx,
    model: &crate::export::HfModel,
    tokenizer: &Path,
) -> Result<()> {
    use crate::export::gguf;
    let name = p.gguf_dtype.as_str();
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
    for n in &r.notes {
        ctx.info(format!("note: {n}"));
    }
    if !r.f16_fallback.is_empty() {
        ctx.info(format!(
            "{} tensor(s) written as f16: rows not a multiple of 32",
            r.f16_fallback.len()
        ));
    }
    if p.verify {
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
/// on two seeded rows of 16 tokens, and the largest |logit| of base + adapter
/// (the scale a tolerance is relative to). A NaN or inf on either side gives a
/// NaN difference: it is never folded away.
pub fn max_logit_diff(base: &Path, adapter: &Path, exported: &Path) -> Result<(f32, f32)> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let mut a = crate::model::Model::load(base, &Default::default()).map_err(|e| err(&e))?;
    crate::model::lora::load_peft(&mut a, adapter).map_err(|e| err(&e))?;
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
    let scale = la.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let mut d = 0.0f32;
    for (x, y) in la.iter().zip(&lb) {
        let e = (x - y).abs();
        if !e.is_finite() {
            return Ok((f32::NAN, scale));
        }
        d = d.max(e);
    }
    Ok((d, scale))
}
