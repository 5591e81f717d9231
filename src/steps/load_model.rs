//! `load.model`: a Hugging Face model dir (config.json + safetensors +
//! tokenizer files). The output records the resolved architecture; weights
//! stay where they are and are memory-mapped by the steps that need them.

use super::{def, opt, req, Estimate, EstimateCtx, ParamSpec, RunCtx, Step, Ty};

pub struct LoadModel;

pub static FAMILIES: &[&str] = &[
    "auto", "llama", "qwen2", "qwen3", "qwen", "chatglm", "bloom", "gpt2",
];

static PARAMS: &[ParamSpec] = &[
    req(
        "path",
        Ty::ModelPath,
        "a Hugging Face model dir: config.json, *.safetensors, tokenizer files",
    ),
    def(
        "family",
        Ty::Enum(FAMILIES),
        "\"auto\"",
        "model family; auto reads config.json's model_type",
    ),
    def(
        "dtype",
        Ty::Enum(&["auto", "f32", "bf16", "f16"]),
        "\"auto\"",
        "storage dtype of the frozen weights",
    ),
    opt("tokenizer", Ty::Path, "tokenizer dir if not the model dir"),
];

impl Step for LoadModel {
    fn kind(&self) -> &'static str {
        "load.model"
    }
    fn about(&self) -> &'static str {
        "a Hugging Face model dir (llama, qwen2, qwen3, qwen, chatglm, bloom, gpt2)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn estimate(&self, e: &EstimateCtx) -> Option<Estimate> {
        crate::plan::memory::model_estimate(e.params)
    }
    fn run(&self, ctx: &RunCtx) -> anyhow::Result<()> {
        crate::plan::memory::write_model_summary(ctx)
    }
}
