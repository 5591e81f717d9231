//! How steps read each other's outputs: the splits of a dataset, the model
//! and tokenizer dirs behind a model step, the template of a template step.

use super::{InputRef, RunCtx};
use crate::data::example::Example;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Dataset splits a step may have written, in this order.
pub const SPLITS: &[&str] = &["train", "test"];

/// Files `<split>.jsonl` present in a step's output.
pub fn splits(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    SPLITS
        .iter()
        .map(|s| (*s, dir.join(format!("{s}.jsonl"))))
        .filter(|(_, p)| p.is_file())
        .collect()
}

pub fn read_examples(path: &Path) -> Result<Vec<Example>> {
    crate::data::read_examples(path)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading `{}`", path.display()))
}

/// What a model step resolves to: the weights dir and the tokenizer dir.
#[derive(Debug, Clone)]
pub struct ModelDirs {
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
    pub family: String,
}

/// Resolve the model behind a `load.model`, `quantize`, `merge`, `export`
/// or `train` (full) step output.
pub fn model_dirs(input: &InputRef) -> Result<ModelDirs> {
    let summary = input.dir.join("model.json");
    if summary.is_file() {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary)?)
            .with_context(|| format!("bad `{}`", summary.display()))?;
        let get = |k: &str| v.get(k).and_then(|x| x.as_str()).map(PathBuf::from);
        let weights = get("path").unwrap_or_else(|| input.dir.clone());
        return Ok(ModelDirs {
            tokenizer: get("tokenizer").unwrap_or_else(|| weights.clone()),
            weights: if weights.is_relative() {
                input.dir.join(weights)
            } else {
                weights
            },
            family: v
                .get("family")
                .and_then(|x| x.as_str())
                .unwrap_or("")
                .to_string(),
        });
    }
    if input.dir.join("config.json").is_file() {
        let cfg = crate::formats::config::HfConfig::read(&input.dir)?;
        return Ok(ModelDirs {
            weights: input.dir.clone(),
            tokenizer: input.dir.clone(),
            family: crate::model::Family::of(&cfg)
                .map_or("", crate::model::Family::name)
                .to_string(),
        });
    }
    bail!(
        "step `{}` ({}) did not produce a model",
        input.step,
        input.kind
    )
}

pub fn tokenizer(ctx: &RunCtx, param: &str) -> Result<crate::text::TokenizerBundle> {
    let m = model_dirs(ctx.input(param)?)?;
    crate::text::TokenizerBundle::from_dir(&m.tokenizer)
        .with_context(|| format!("loading the tokenizer from `{}`", m.tokenizer.display()))
}

/// The template a `template` step used, as it wrote it into `template.json`.
pub fn template_of(dir: &Path) -> Result<crate::text::Template> {
    let p = dir.join("template.json");
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("cannot read `{}`", p.display()))?,
    )?;
    let spec = v
        .get("template")
        .and_then(|x| x.as_str())
        .unwrap_or("plain");
    crate::text::Template::from_name_or_source(spec, None)
}
