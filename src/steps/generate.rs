//! `generate`: sample continuations from a model (+ adapter) for a list of
//! prompts or a templated dataset; writes generations.jsonl.

use super::{def, opt, req, ParamSpec, Step, Ty};

pub struct Generate;

static PARAMS: &[ParamSpec] = &[
    req("model", Ty::Step(&["load.model", "quantize", "merge", "export"]), "the model"),
    opt("adapter", Ty::Step(&["train"]), "a train step whose adapter is applied"),
    opt("prompts", Ty::StrList, "prompts, rendered with the model's template"),
    opt("data", Ty::Step(&["template"]), "or: templated examples whose prompts are used"),
    opt("system", Ty::Str, "system message"),
    def("max_new_tokens", Ty::Int, "64", "tokens to generate per prompt"),
    def("do_sample", Ty::Bool, "false", "sample (true) or greedy (false)"),
    def("temperature", Ty::Float, "1.0", "sampling temperature"),
    def("top_k", Ty::Int, "50", "keep the k most likely tokens (0 = off)"),
    def("top_p", Ty::Float, "1.0", "nucleus sampling mass"),
    def("repetition_penalty", Ty::Float, "1.0", "penalise tokens already present (>1)"),
    def("num_return_sequences", Ty::Int, "1", "continuations per prompt"),
    def("seed", Ty::Int, "42", "sampling seed"),
    def("device", Ty::Str, "\"auto\"", "auto, cpu, cuda or cuda:N"),
];

impl Step for Generate {
    fn kind(&self) -> &'static str {
        "generate"
    }
    fn about(&self) -> &'static str {
        "generate continuations (greedy, top-k, top-p, temperature)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn check(&self, c: &mut super::CheckCtx) {
        if c.params.get("prompts").is_none() && c.params.get("data").is_none() {
            c.error("prompts", "give `prompts = [...]` or `data = \"<template step>\"`");
        }
    }
}
