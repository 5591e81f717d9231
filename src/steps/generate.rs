//! `generate`: sample continuations from a model (+ adapter) for a list of
//! prompts or a templated dataset; writes generations.jsonl.

use super::{def, io, opt, req, CheckCtx, Kind, ParamSpec, RunCtx, Ty};
use crate::eval::generate::{FinishReason, GenConfig};
use crate::eval::sampling::SamplingParams;
use crate::eval::session::Session;
use anyhow::Context;
use std::io::Write;

pub struct Generate;

/// The keys of a `generate` step.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // step references: the run reads those steps through `ctx.input`
pub struct GenerateParams {
    pub model: String,
    pub adapter: Option<String>,
    pub prompts: Option<Vec<String>>,
    pub template: String,
    pub data: Option<String>,
    pub system: Option<String>,
    pub max_new_tokens: usize,
    pub do_sample: bool,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub repetition_penalty: f64,
    /// Checked (`check`): at least 1.
    pub num_return_sequences: i64,
    pub seed: u64,
    pub device: String,
    pub dtype: String,
}

static PARAMS: &[ParamSpec] = &[
    req(
        "model",
        Ty::Step(&["load.model", "quantize", "merge", "export"]),
        "the model",
    ),
    opt(
        "adapter",
        Ty::Step(&["train"]),
        "a train step whose adapter is applied",
    ),
    opt(
        "prompts",
        Ty::StrList,
        "user messages, rendered with `template`",
    ),
    def(
        "template",
        Ty::Str,
        "\"model\"",
        "how prompts are rendered: a built-in template name, \"model\", or \"none\" (raw text)",
    ),
    opt(
        "data",
        Ty::Step(&["template"]),
        "or: templated examples whose prompts are used",
    ),
    opt("system", Ty::Str, "system message"),
    def(
        "max_new_tokens",
        Ty::Int,
        "64",
        "tokens to generate per prompt",
    ),
    def(
        "do_sample",
        Ty::Bool,
        "false",
        "sample (true) or greedy (false)",
    ),
    def("temperature", Ty::Float, "1.0", "sampling temperature"),
    def(
        "top_k",
        Ty::Int,
        "50",
        "keep the k most likely tokens (0 = off)",
    ),
    def("top_p", Ty::Float, "1.0", "nucleus sampling mass"),
    def(
        "repetition_penalty",
        Ty::Float,
        "1.0",
        "penalise tokens already present (>1)",
    ),
    def(
        "num_return_sequences",
        Ty::Int,
        "1",
        "continuations per prompt",
    ),
    def("seed", Ty::Int, "42", "sampling seed"),
    def("device", Ty::Str, "\"auto\"", "auto, cpu, cuda or cuda:N"),
    def(
        "dtype",
        Ty::Enum(crate::backend::DTYPES),
        "\"auto\"",
        "what matrix products compute in on CUDA: auto (bf16 on a GPU), bf16 (tensor cores, f32 accumulation) or f32; the CPU computes in f32",
    ),
];

impl Kind for Generate {
    type Params = GenerateParams;
    const KIND: &'static str = "generate";
    const ABOUT: &'static str = "generate continuations (greedy, top-k, top-p, temperature)";
    const PARAMS: &'static [ParamSpec] = PARAMS;
    fn check(&self, p: &GenerateParams, c: &mut CheckCtx) {
        if p.prompts.is_none() && p.data.is_none() {
            c.error(
                "prompts",
                "give `prompts = [...]` or `data = \"<template step>\"`",
            );
        }
        if p.num_return_sequences < 1 {
            c.error("num_return_sequences", "must be at least 1");
        }
        let s = sampling(p);
        if let Err(e) = s.validate() {
            let key = e.split(':').next().unwrap_or("temperature").to_string();
            c.error(&key, e);
        }
    }
    /// Writes `generations.jsonl`: one {prompt, generation, tokens, finish} per continuation.
    fn run(&self, p: &GenerateParams, ctx: &RunCtx) -> anyhow::Result<()> {
        let backend = ctx.backend(&p.device, &p.dtype)?;
        let dirs = io::model_dirs(ctx.input("model")?)?;
        let adapter = ctx.opt_input("adapter").map(|a| a.dir.clone());
        // Prompts: the user messages rendered with `template`, or a template step's test split.
        let (template, examples) = match ctx.opt_input("data") {
            Some(d) => {
                let split = ["test", "train"]
                    .iter()
                    .map(|s| d.dir.join(format!("{s}.jsonl")))
                    .find(|f| f.is_file())
                    .with_context(|| {
                        format!("step `{}` wrote no test.jsonl or train.jsonl", d.step)
                    })?;
                let spec = template_spec(&d.dir)?;
                (spec, io::read_examples(&split)?)
            }
            None => {
                let exs = p
                    .prompts
                    .iter()
                    .flatten()
                    .map(|u| {
                        let mut msgs = Vec::new();
                        if let Some(sys) = &p.system {
                            msgs.push(crate::eval::session::message(
                                crate::data::example::Role::System,
                                sys,
                            ));
                        }
                        msgs.push(crate::eval::session::message(
                            crate::data::example::Role::User,
                            u,
                        ));
                        crate::data::example::Example {
                            messages: msgs,
                            ..Default::default()
                        }
                    })
                    .collect();
                (p.template.clone(), exs)
            }
        };
        let s = Session::open_on(
            backend,
            &dirs.weights,
            Some(&dirs.tokenizer),
            adapter.as_deref(),
            &template,
        )?;
        if let Some(a) = &adapter {
            let a = crate::eval::lm::adapter_dir(a)?;
            if let Some(w) = crate::formats::peft::other_base_warning(&a, &dirs.weights) {
                ctx.info(format!("WARNING: {w}"));
            }
        }
        ctx.info(format!(
            "model {}{}, template {template}, {} prompts",
            dirs.weights.display(),
            adapter
                .as_ref()
                .map(|a| format!(" + adapter {}", a.display()))
                .unwrap_or_default(),
            examples.len()
        ));
        let n_ret = p.num_return_sequences.max(1) as usize;
        let mut prompts = Vec::new();
        for ex in &examples {
            let (ids, _) = s
                .example_prompt(ex)
                .with_context(|| format!("prompt of {}", ex.source))?;
            for _ in 0..n_ret {
                prompts.push(ids.clone());
            }
        }
        let cfg = GenConfig {
            max_new_tokens: p.max_new_tokens,
            stop_ids: s.stop_ids.clone(),
            sampling: sampling(p),
            seed: p.seed,
        };
        let bar = ctx.bar(prompts.len() as u64, "generating");
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(ctx.out.join("generations.jsonl"))?);
        const BATCH: usize = 8;
        for (b, chunk) in prompts.chunks(BATCH).enumerate() {
            // Row seeds stay seed + global row index whatever the batching.
            let c = GenConfig {
                seed: cfg.seed.wrapping_add((b * BATCH) as u64),
                ..cfg.clone()
            };
            let gens = s.generate(chunk, &c, |_, _| {})?;
            for (i, g) in gens.iter().enumerate() {
                let row = b * BATCH + i;
                let text = s.decode(&g.tokens)?;
                let prompt = s.bundle.decode(&chunk[i], false)?;
                ctx.info(format!("[{}] {}", row / n_ret, text.trim()));
                let finish = match g.finish {
                    FinishReason::Stop(id) => format!("stop:{id}"),
                    FinishReason::Length => "length".to_string(),
                };
                serde_json::to_writer(
                    &mut out,
                    &serde_json::json!({"index": row / n_ret, "prompt": prompt, "generation": text,
                                        "tokens": g.tokens, "finish": finish}),
                )?;
                out.write_all(b"\n")?;
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        out.flush()?;
        Ok(())
    }
}

/// The template spec a template step recorded (`template.json`).
pub fn template_spec(dir: &std::path::Path) -> anyhow::Result<String> {
    let p = dir.join("template.json");
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("cannot read `{}`", p.display()))?,
    )?;
    Ok(v.get("template")
        .and_then(|x| x.as_str())
        .unwrap_or("plain")
        .to_string())
}

/// The sampling keys of a step's params.
pub fn sampling(p: &GenerateParams) -> SamplingParams {
    SamplingParams {
        do_sample: p.do_sample,
        temperature: p.temperature as f32,
        top_k: p.top_k,
        top_p: p.top_p as f32,
        repetition_penalty: p.repetition_penalty as f32,
    }
}
