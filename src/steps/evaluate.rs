//! `evaluate`: eval loss / perplexity / token accuracy, and generation
//! metrics (BLEU-4, ROUGE with jieba segmentation, exact match, label
//! accuracy). Writes metrics.json and predictions.jsonl.

use super::{def, opt, req, ParamSpec, Step, Ty};

pub struct Evaluate;

pub static METRICS: &[&str] =
    &["loss", "perplexity", "token_accuracy", "bleu", "rouge", "exact_match", "label_accuracy"];

static PARAMS: &[ParamSpec] = &[
    req("model", Ty::Step(&["load.model", "quantize", "merge"]), "the base (or merged) model"),
    opt("adapter", Ty::Step(&["train"]), "a train step whose adapter is applied"),
    opt("data", Ty::Step(&["tokenize"]), "tokenized data for loss metrics"),
    opt("prompts", Ty::Step(&["template"]), "templated data for generation metrics"),
    def("split", Ty::Str, "\"test\"", "which split to evaluate"),
    def("metrics", Ty::StrList, "[\"loss\", \"perplexity\"]", "metrics to compute"),
    def("compare_base", Ty::Bool, "false", "also evaluate the base without the adapter (before/after table)"),
    opt("limit", Ty::Int, "evaluate at most N examples"),
    def("batch_size", Ty::Int, "8", "examples per forward pass"),
    def("max_new_tokens", Ty::Int, "128", "generation length for generation metrics"),
    def("do_sample", Ty::Bool, "false", "sample instead of greedy decoding"),
    def("device", Ty::Str, "\"auto\"", "auto, cpu, cuda or cuda:N"),
];

impl Step for Evaluate {
    fn kind(&self) -> &'static str {
        "evaluate"
    }
    fn about(&self) -> &'static str {
        "eval loss/perplexity and generation metrics (BLEU-4, ROUGE, accuracy)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn check(&self, c: &mut super::CheckCtx) {
        let ms = c.params.strs("metrics");
        for m in &ms {
            if !METRICS.contains(&m.as_str()) {
                c.error("metrics", format!("unknown metric `{m}`")).expected = Some(format!("any of {}", METRICS.join(", ")));
            }
        }
        let needs_gen = ms.iter().any(|m| matches!(m.as_str(), "bleu" | "rouge" | "exact_match" | "label_accuracy"));
        if needs_gen && c.params.get("prompts").is_none() {
            c.error("prompts", "generation metrics need `prompts = \"<template step>\"`");
        }
        let needs_loss = ms.iter().any(|m| matches!(m.as_str(), "loss" | "perplexity" | "token_accuracy"));
        if needs_loss && c.params.get("data").is_none() {
            c.error("data", "loss metrics need `data = \"<tokenize step>\"`");
        }
    }
}
