//! `load.model`: a Hugging Face model dir (config.json + safetensors + tokenizer files). Its
//! output, `model.json`, records the dirs and the family that config.json's `model_type` maps
//! to (`model::family`); weights stay where they are and are memory-mapped by the steps that
//! need them, which hold dense weights as f32 whatever their storage dtype.
//!
//! The step has no `dtype` or `family` key: nothing honoured them (the engine computes in f32
//! and the family always comes from config.json), so a recipe that sets one gets the unknown
//! key error naming it.

use super::{opt, req, Estimate, EstimateCtx, Kind, ParamSpec, RunCtx, Ty};
use crate::formats::config::HfConfig;
use crate::model::Family;
use anyhow::{bail, Result};
use std::path::PathBuf;

pub struct LoadModel;

static PARAMS: &[ParamSpec] = &[
    req(
        "path",
        Ty::ModelPath,
        "a Hugging Face model dir: config.json, *.safetensors (or pytorch_model*.bin), tokenizer files",
    ),
    opt("tokenizer", Ty::Path, "tokenizer dir if not the model dir"),
];

/// The step's parameters, typed.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadModelParams {
    pub path: PathBuf,
    pub tokenizer: Option<PathBuf>,
}

impl Kind for LoadModel {
    type Params = LoadModelParams;
    const KIND: &'static str = "load.model";
    const ABOUT: &'static str =
        "a Hugging Face model dir (llama, qwen2, qwen3, gemma3, qwen, chatglm, bloom, gpt2)";
    const PARAMS: &'static [ParamSpec] = PARAMS;
    fn estimate(&self, e: &EstimateCtx) -> Option<Estimate> {
        super::memory::model_estimate(e.params)
    }
    fn run(&self, p: &LoadModelParams, ctx: &RunCtx) -> Result<()> {
        if !p.path.is_dir() {
            bail!("model dir `{}` does not exist", p.path.display());
        }
        let cfg = HfConfig::read(&p.path)?;
        let family = Family::of(&cfg)?.name();
        let summary = serde_json::json!({
            "path": p.path.display().to_string(),
            "family": family,
            "tokenizer": p.tokenizer.as_ref().unwrap_or(&p.path).display().to_string(),
            "config": cfg.raw,
        });
        std::fs::write(
            ctx.out.join("model.json"),
            serde_json::to_vec_pretty(&summary)?,
        )?;
        ctx.info(format!("{family} model at {}", p.path.display()));
        Ok(())
    }
}
