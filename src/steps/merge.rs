//! `merge`: fold LoRA (and modules_to_save) into the base weights. An NF4
//! base is dequantized to bf16/f16 first; never merged into 4-bit silently.

use super::{def, io, req, Kind, ParamSpec, RunCtx, Ty};
use anyhow::{Context, Result};

pub struct Merge;

/// The keys of a `merge` step.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // step references: the run reads those steps through `ctx.input`
pub struct MergeParams {
    pub model: String,
    pub adapter: String,
    pub dtype: String,
    pub requantize: bool,
}

static PARAMS: &[ParamSpec] = &[
    req(
        "model",
        Ty::Step(&["load.model", "quantize"]),
        "the base model",
    ),
    req(
        "adapter",
        Ty::Step(&["train"]),
        "the train step whose adapter is merged",
    ),
    def(
        "dtype",
        Ty::Enum(&["auto", "f32", "bf16", "f16"]),
        "\"auto\"",
        "dtype of the merged weights",
    ),
    def(
        "requantize",
        Ty::Bool,
        "false",
        "re-quantize the merged model to NF4 (bitsandbytes layout)",
    ),
];

impl Kind for Merge {
    type Params = MergeParams;
    const KIND: &'static str = "merge";
    const ABOUT: &'static str = "merge a LoRA adapter into its base model";
    const PARAMS: &'static [ParamSpec] = PARAMS;
    /// Writes the merged model as a Hugging Face dir, plus `merge.json`
    /// (base and adapter dirs, for the export step's logit check).
    fn run(&self, p: &MergeParams, ctx: &RunCtx) -> Result<()> {
        let base = io::model_dirs(ctx.input("model")?)?;
        let adapter = ctx.input("adapter")?;
        let dtype = crate::export::OutDtype::parse(&p.dtype)
            .with_context(|| format!("key `dtype`: unknown dtype `{}`", p.dtype))?;
        let opts = crate::export::MergeOptions {
            dtype,
            requantize: p.requantize,
        };
        let merged = crate::export::merge_adapter(&base.weights, &adapter.dir, &opts)
            .with_context(|| {
                format!(
                    "merging the adapter of step `{}` into `{}`",
                    adapter.step,
                    base.weights.display()
                )
            })?;
        if let Some(w) = crate::export::adapter::other_base_warning(&adapter.dir, &base.weights) {
            ctx.info(format!("WARNING: {w}"));
        }
        let r = &merged.report;
        ctx.info(format!(
            "merged LoRA into {} weights{}{}",
            r.merged.len(),
            if r.replaced.is_empty() {
                String::new()
            } else {
                format!(", replaced {} (modules_to_save)", r.replaced.len())
            },
            if r.dequantized.is_empty() {
                String::new()
            } else {
                format!(", dequantized {} 4-bit weights first", r.dequantized.len())
            }
        ));
        let eopts = crate::export::ExportOptions {
            max_shard_size: u64::MAX,
            dtype,
        };
        crate::export::write_hf_dir(
            &merged.model,
            &[&adapter.dir, &base.tokenizer, &base.weights],
            ctx.out,
            &eopts,
        )?;
        let meta = serde_json::json!({
            "base": base.weights.display().to_string(),
            "base_kind": ctx.input("model")?.kind,
            "adapter": adapter.dir.display().to_string(),
            "tokenizer": base.tokenizer.display().to_string(),
        });
        std::fs::write(
            ctx.out.join("merge.json"),
            serde_json::to_vec_pretty(&meta)?,
        )?;
        Ok(())
    }
}
