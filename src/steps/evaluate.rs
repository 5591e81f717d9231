//! `evaluate`: eval loss / perplexity / token accuracy, and generation
//! metrics (BLEU-4, ROUGE with jieba segmentation, exact match, label
//! accuracy). Writes metrics.json and predictions.jsonl.

use super::{def, io, opt, req, CheckCtx, Kind, ParamSpec, RunCtx, Ty};
use crate::eval::generate::GenConfig;
use crate::eval::report::{
    example_scores_map, render_comparison, write_metrics_json, write_predictions_jsonl,
};
use crate::eval::sampling::SamplingParams;
use crate::eval::session::Session;
use crate::eval::{compute_generation_metrics, PredictionRecord};
use crate::model::{Batch, EvalSums};
use crate::text::TokenDataset;
use anyhow::Context;
use indexmap::IndexMap;

pub struct Evaluate;

/// The keys of an `evaluate` step.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // step references: the run reads those steps through `ctx.input`
pub struct EvaluateParams {
    pub model: String,
    pub adapter: Option<String>,
    pub data: Option<String>,
    pub prompts: Option<String>,
    pub split: String,
    pub metrics: Vec<String>,
    pub compare_base: bool,
    pub limit: Option<usize>,
    /// Checked (`check`): positive.
    pub batch_size: i64,
    pub max_new_tokens: usize,
    pub do_sample: bool,
    pub device: String,
    pub dtype: String,
}

pub static METRICS: &[&str] = &[
    "loss",
    "perplexity",
    "token_accuracy",
    "bleu",
    "rouge",
    "exact_match",
    "label_accuracy",
];

static PARAMS: &[ParamSpec] = &[
    req(
        "model",
        Ty::Step(&["load.model", "quantize", "merge"]),
        "the base (or merged) model",
    ),
    opt(
        "adapter",
        Ty::Step(&["train"]),
        "a train step whose adapter is applied",
    ),
    opt(
        "data",
        Ty::Step(&["tokenize"]),
        "tokenized data for loss metrics",
    ),
    opt(
        "prompts",
        Ty::Step(&["template"]),
        "templated data for generation metrics",
    ),
    def("split", Ty::Str, "\"test\"", "which split to evaluate"),
    def(
        "metrics",
        Ty::StrList,
        "[\"loss\", \"perplexity\"]",
        "metrics to compute",
    ),
    def(
        "compare_base",
        Ty::Bool,
        "false",
        "also evaluate the base without the adapter (before/after table)",
    ),
    opt("limit", Ty::Int, "evaluate at most N examples"),
    def("batch_size", Ty::Int, "8", "examples per forward pass"),
    def(
        "max_new_tokens",
        Ty::Int,
        "128",
        "generation length for generation metrics",
    ),
    def(
        "do_sample",
        Ty::Bool,
        "false",
        "sample instead of greedy decoding",
    ),
    def("device", Ty::Str, "\"auto\"", "auto, cpu, cuda or cuda:N"),
    def(
        "dtype",
        Ty::Enum(crate::backend::DTYPES),
        "\"auto\"",
        "what matrix products compute in on CUDA: auto (bf16 on a GPU), bf16 (tensor cores, f32 accumulation) or f32; the CPU computes in f32",
    ),
];

impl Kind for Evaluate {
    type Params = EvaluateParams;
    const KIND: &'static str = "evaluate";
    const ABOUT: &'static str =
        "eval loss/perplexity and generation metrics (BLEU-4, ROUGE, accuracy)";
    const PARAMS: &'static [ParamSpec] = PARAMS;
    fn check(&self, p: &EvaluateParams, c: &mut CheckCtx) {
        if p.batch_size <= 0 {
            c.error("batch_size", "must be positive").got = Some(p.batch_size.to_string());
        }
        let ms = &p.metrics;
        for m in ms {
            if !METRICS.contains(&m.as_str()) {
                c.error("metrics", format!("unknown metric `{m}`")).expected =
                    Some(format!("any of {}", METRICS.join(", ")));
            }
        }
        let needs_gen = ms.iter().any(|m| {
            matches!(
                m.as_str(),
                "bleu" | "rouge" | "exact_match" | "label_accuracy"
            )
        });
        if needs_gen && p.prompts.is_none() {
            c.error(
                "prompts",
                "generation metrics need `prompts = \"<template step>\"`",
            );
        }
        let needs_loss = ms
            .iter()
            .any(|m| matches!(m.as_str(), "loss" | "perplexity" | "token_accuracy"));
        if needs_loss && p.data.is_none() {
            c.error("data", "loss metrics need `data = \"<tokenize step>\"`");
        }
    }

    /// Writes `metrics.json` (the evaluated model's metrics; with `compare_base` also the
    /// base's under "base"), `predictions.jsonl` (generation metrics) and, with
    /// `compare_base`, `comparison.txt` (the before/after table).
    fn run(&self, p: &EvaluateParams, ctx: &RunCtx) -> anyhow::Result<()> {
        let backend = ctx.backend(&p.device, &p.dtype)?;
        let dirs = io::model_dirs(ctx.input("model")?)?;
        let metrics = &p.metrics;
        let want = |m: &str| metrics.iter().any(|x| x == m);
        let template = match ctx.opt_input("prompts") {
            Some(t) => super::generate::template_spec(&t.dir)?,
            None => "none".to_string(),
        };
        let mut s = Session::open_on(
            backend,
            &dirs.weights,
            Some(&dirs.tokenizer),
            None,
            &template,
        )?;
        let adapter = ctx.opt_input("adapter").map(|a| a.dir.clone());
        let plan = Plan::new(p, ctx)?;
        ctx.info(format!(
            "model {}{}: {} loss rows, {} generation examples",
            dirs.weights.display(),
            adapter
                .as_ref()
                .map(|a| format!(" + adapter {}", a.display()))
                .unwrap_or_default(),
            plan.rows.len(),
            plan.examples.len()
        ));
        let base = match (&adapter, p.compare_base) {
            (Some(_), true) => Some(evaluate(ctx, &s, &plan, "base")?),
            _ => None,
        };
        if let Some(a) = &adapter {
            crate::eval::lm::attach_adapter(&mut s.model, a)?;
            let ad = crate::eval::lm::adapter_dir(a)?;
            if let Some(w) = crate::formats::peft::other_base_warning(&ad, &dirs.weights) {
                ctx.info(format!("WARNING: {w}"));
            }
        }
        let label = if adapter.is_some() {
            "fine-tuned"
        } else {
            "model"
        };
        let (tuned, preds) = evaluate(ctx, &s, &plan, label)?;
        let mut out = serde_json::Map::new();
        for (k, v) in &tuned {
            out.insert(k.clone(), serde_json::json!(v));
        }
        if let Some((b, _)) = &base {
            out.insert("base".into(), serde_json::to_value(b)?);
            let table = render_comparison(b, &tuned);
            std::fs::write(ctx.out.join("comparison.txt"), &table)?;
            for line in table.lines() {
                ctx.info(line);
            }
        } else {
            for (k, v) in &tuned {
                ctx.info(format!("{k}: {v:.4}"));
            }
        }
        write_metrics_json(&ctx.out.join("metrics.json"), &out)?;
        if want("bleu") || want("rouge") || want("exact_match") || want("label_accuracy") {
            write_predictions_jsonl(&ctx.out.join("predictions.jsonl"), &preds)?;
        }
        Ok(())
    }
}

/// One token row for loss metrics: (ids, labels, mask, packed-example index per token).
type LossRow = (Vec<u32>, Vec<i64>, Vec<u8>, Vec<u32>);

/// What to evaluate, read once (the base and the fine-tuned model see the same data).
struct Plan {
    metrics: Vec<String>,
    rows: Vec<LossRow>,
    /// Generation examples.
    examples: Vec<crate::data::example::Example>,
    batch_size: usize,
    gen: GenConfig,
}

impl Plan {
    fn new(p: &EvaluateParams, ctx: &RunCtx) -> anyhow::Result<Plan> {
        let metrics = &p.metrics;
        let split = &p.split;
        let limit = p.limit.unwrap_or(usize::MAX);
        let want = |m: &str| metrics.iter().any(|x| x == m);
        let mut rows = Vec::new();
        if want("loss") || want("perplexity") || want("token_accuracy") {
            let d = ctx.input("data")?;
            let f = d.dir.join(format!("{split}.tokens"));
            let ds = TokenDataset::open(&f)
                .with_context(|| format!("step `{}` has no `{split}` split", d.step))?;
            for r in ds.iter().take(limit) {
                let mut seg = Vec::with_capacity(r.input_ids.len());
                let mut k = 0u32;
                for t in 0..r.input_ids.len() as u32 {
                    if r.boundaries.iter().filter(|&&b| b <= t).count() as u32 > k + 1 {
                        k += 1;
                    }
                    seg.push(k);
                }
                rows.push((
                    r.input_ids.to_vec(),
                    r.labels.iter().map(|&l| l as i64).collect(),
                    r.attention_mask.to_vec(),
                    seg,
                ));
            }
        }
        let mut examples = Vec::new();
        if want("bleu") || want("rouge") || want("exact_match") || want("label_accuracy") {
            let d = ctx.input("prompts")?;
            let f = d.dir.join(format!("{split}.jsonl"));
            if !f.is_file() {
                anyhow::bail!(
                    "step `{}` has no `{split}` split ({} is missing)",
                    d.step,
                    f.display()
                );
            }
            examples = io::read_examples(&f)?.into_iter().take(limit).collect();
        }
        Ok(Plan {
            metrics: metrics.to_vec(),
            rows,
            examples,
            batch_size: p.batch_size.max(1) as usize,
            gen: GenConfig {
                max_new_tokens: p.max_new_tokens,
                stop_ids: Vec::new(),
                sampling: SamplingParams {
                    do_sample: p.do_sample,
                    ..Default::default()
                },
                seed: 42,
            },
        })
    }
}

/// Evaluates `s.model` as it is now: metrics in the order asked, and the predictions.
fn evaluate(
    ctx: &RunCtx,
    s: &Session,
    plan: &Plan,
    label: &str,
) -> anyhow::Result<(IndexMap<String, f64>, Vec<PredictionRecord>)> {
    let want = |m: &str| plan.metrics.iter().any(|x| x == m);
    let mut out = IndexMap::new();
    if !plan.rows.is_empty() {
        let EvalSums {
            nll,
            tokens: count,
            correct: hits,
        } = loss_metrics(ctx, s, plan, label)?;
        let loss = if count > 0 {
            nll / count as f64
        } else {
            f64::NAN
        };
        if want("loss") {
            out.insert("loss".to_string(), loss);
        }
        if want("perplexity") {
            out.insert("perplexity".to_string(), loss.exp());
        }
        if want("token_accuracy") {
            out.insert(
                "token_accuracy".to_string(),
                if count > 0 {
                    hits as f64 / count as f64
                } else {
                    f64::NAN
                },
            );
        }
    }
    let mut preds = Vec::new();
    if !plan.examples.is_empty() {
        let bar = ctx.bar(plan.examples.len() as u64, &format!("{label}: generating"));
        let mut prompts = Vec::new();
        let mut refs = Vec::new();
        for ex in &plan.examples {
            let (ids, reference) = s
                .example_prompt(ex)
                .with_context(|| format!("prompt of {}", ex.source))?;
            prompts.push(ids);
            refs.push(reference.unwrap_or_default());
        }
        let mut texts = Vec::new();
        for (b, chunk) in prompts.chunks(plan.batch_size).enumerate() {
            let c = GenConfig {
                seed: plan.gen.seed.wrapping_add((b * plan.batch_size) as u64),
                ..plan.gen.clone()
            };
            for g in s.generate(chunk, &c, |_, _| {})? {
                texts.push(s.decode(&g.tokens)?);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        let gm = compute_generation_metrics(&texts, &refs);
        if want("rouge") {
            out.insert("rouge-1".to_string(), gm.mean.rouge1);
            out.insert("rouge-2".to_string(), gm.mean.rouge2);
            out.insert("rouge-l".to_string(), gm.mean.rougel);
        }
        if want("bleu") {
            out.insert("bleu-4".to_string(), gm.mean.bleu4);
        }
        if want("exact_match") {
            out.insert(
                "exact_match".to_string(),
                crate::eval::exact_match(&texts, &refs),
            );
        }
        if want("label_accuracy") {
            out.insert(
                "label_accuracy".to_string(),
                crate::eval::label_accuracy(&texts, &refs),
            );
        }
        for (i, (t, r)) in texts.iter().zip(&refs).enumerate() {
            preds.push(PredictionRecord {
                prompt: s.bundle.decode(&prompts[i], false)?,
                prediction: t.clone(),
                reference: r.clone(),
                scores: example_scores_map(&gm.per_example[i]),
            });
        }
    }
    Ok((out, preds))
}

/// Σ token NLL, predicted tokens and argmax hits over the plan's token rows
/// ([`crate::model::Model::eval_loss`], the one evaluation path).
fn loss_metrics(ctx: &RunCtx, s: &Session, plan: &Plan, label: &str) -> anyhow::Result<EvalSums> {
    let bar = ctx.bar(plan.rows.len() as u64, &format!("{label}: loss"));
    let mut sums = EvalSums::default();
    for chunk in plan.rows.chunks(plan.batch_size) {
        let t = chunk.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let b = chunk.len();
        let mut batch = Batch {
            b,
            t,
            input_ids: vec![s.pad_id; b * t],
            attention_mask: vec![0; b * t],
            labels: Some(vec![-100; b * t]),
            segments: Some(vec![u32::MAX; b * t]),
        };
        for (r, (ids, labels, mask, seg)) in chunk.iter().enumerate() {
            let o = r * t;
            batch.input_ids[o..o + ids.len()].copy_from_slice(ids);
            batch.attention_mask[o..o + ids.len()].copy_from_slice(mask);
            if let Some(l) = &mut batch.labels {
                l[o..o + ids.len()].copy_from_slice(labels);
            }
            if let Some(sg) = &mut batch.segments {
                sg[o..o + ids.len()].copy_from_slice(seg);
            }
        }
        sums.add(s.model.eval_loss(&batch)?);
        bar.inc(b as u64);
    }
    bar.finish_and_clear();
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::example::{Example, Role};
    use crate::eval::session::message;
    use crate::steps::{InputRef, Params};
    use crate::text::{Renderer, Template, TokenizeOptions, TokenizerBundle};
    use serde_json::{json, Value};
    use std::path::{Path, PathBuf};

    fn base_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart/base-init")
    }

    fn input(step: &str, kind: &'static str, dir: &Path) -> InputRef {
        InputRef {
            step: step.into(),
            kind,
            dir: dir.to_path_buf(),
            params: Params::default(),
        }
    }

    /// The quickstart base + a random (nonzero) LoRA adapter: compare_base evaluates the base,
    /// then the adapter; every loss number equals a per-row `Model::eval_loss` reference
    /// (rel 1e-5), token accuracy a per-row `causal_token_accuracy` over `Model::forward`, and
    /// each prediction the batch-1 greedy generation of its prompt.
    #[test]
    fn evaluate_with_adapter_and_compare_base() {
        let tmp = tempfile::tempdir().expect("tmp");
        let t = tmp.path();
        // adapter
        let mut m = crate::eval::lm::load_model(&base_dir(), None).expect("load");
        let cfg = crate::model::lora::LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: crate::model::lora::Targets::AllLinear,
            use_rslora: false,
            modules_to_save: vec![],
            seed: 3,
        };
        crate::model::lora::apply(&mut m, &cfg).expect("apply");
        let mut rng = crate::rng::SplitMix64(9);
        for l in m.linears_mut() {
            if let Some(lw) = &mut l.lora {
                lw.b.host_mut()
                    .iter_mut()
                    .for_each(|x| *x = 0.3 * rng.uniform());
            }
        }
        let ad = t.join("train");
        crate::model::lora::save_peft(&m, &cfg, "base", &ad).expect("save");
        // template + tokenize outputs
        let exs: Vec<Example> = [
            ("What color is the sky?", "The sky is blue."),
            ("Hi", "Hello there."),
            ("2+2?", "4"),
        ]
        .iter()
        .map(|(u, a)| Example {
            messages: vec![message(Role::User, u), message(Role::Assistant, a)],
            ..Default::default()
        })
        .collect();
        let pd = t.join("prompts");
        std::fs::create_dir_all(&pd).expect("mkdir");
        std::fs::write(
            pd.join("template.json"),
            json!({"template": "human_assistant"}).to_string(),
        )
        .expect("w");
        let lines: Vec<String> = exs
            .iter()
            .map(|e| serde_json::to_string(e).expect("json"))
            .collect();
        std::fs::write(pd.join("test.jsonl"), lines.join("\n") + "\n").expect("w");
        let bundle = TokenizerBundle::from_dir(base_dir()).expect("tok");
        let renderer = Renderer::new(
            Template::from_name_or_source("human_assistant", None).expect("t"),
            Some(&bundle),
        )
        .expect("r");
        let dd = t.join("tokens");
        std::fs::create_dir_all(&dd).expect("mkdir");
        let opts = TokenizeOptions {
            add_eos: Some(true),
            ..Default::default()
        };
        crate::text::tokenize(
            exs.clone(),
            &renderer,
            &bundle,
            &opts,
            &dd.join("test.tokens"),
        )
        .expect("tokenize");

        let mut params = Params::default();
        for (k, v) in [
            ("model", json!("base")),
            ("adapter", json!("train")),
            ("data", json!("tokens")),
            ("prompts", json!("prompts")),
            ("split", json!("test")),
            (
                "metrics",
                json!([
                    "loss",
                    "perplexity",
                    "token_accuracy",
                    "exact_match",
                    "bleu",
                    "rouge"
                ]),
            ),
            ("compare_base", json!(true)),
            ("batch_size", json!(2)),
            ("max_new_tokens", json!(5)),
            ("do_sample", json!(false)),
        ] {
            params.map.insert(k.into(), v);
        }
        let mut inputs = IndexMap::new();
        inputs.insert(
            "model".to_string(),
            input("base", "load.model", &base_dir()),
        );
        inputs.insert("adapter".to_string(), input("train", "train", &ad));
        inputs.insert("data".to_string(), input("tokens", "tokenize", &dd));
        inputs.insert("prompts".to_string(), input("prompts", "template", &pd));
        let out = t.join("out");
        std::fs::create_dir_all(&out).expect("mkdir");
        let progress = crate::steps::Progress::new(false);
        let ctx = RunCtx {
            id: "eval",
            params: &params,
            inputs: &inputs,
            out: &out,
            work: t,
            recipe_dir: t,
            device: "cpu",
            planned_peak: None,
            progress: &progress,
        };
        crate::steps::Step::run(&Evaluate, &ctx).expect("run");

        let got: Value =
            serde_json::from_slice(&std::fs::read(out.join("metrics.json")).expect("metrics"))
                .expect("json");
        let ds = TokenDataset::open(dd.join("test.tokens")).expect("ds");
        let check = |model: &crate::model::Model, m: &Value, what: &str| {
            let (mut sum, mut n, mut hits, mut preds) = (0.0, 0usize, 0.0, 0usize);
            for r in ds.iter() {
                let labels: Vec<i64> = r.labels.iter().map(|&l| l as i64).collect();
                let b = Batch::padded(&[(r.input_ids.to_vec(), labels.clone())], 0, false);
                let e = model.eval_loss(&b).expect("loss");
                let (l, c) = (e.nll, e.tokens);
                sum += l;
                n += c;
                let o = model.forward(&b).expect("fwd");
                let v = model.arch.vocab;
                let ids: Vec<u32> = o.logits.chunks(v).map(crate::util::argmax).collect();
                let acc = crate::eval::causal_token_accuracy(&ids, &labels).expect("acc");
                hits += acc * c as f64;
                preds += c;
            }
            let close = |k: &str, want: f64| {
                let g = m[k].as_f64().expect(k);
                assert!(
                    (g - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{what} {k}: got {g} want {want}"
                );
            };
            close("loss", sum / n as f64);
            close("perplexity", (sum / n as f64).exp());
            close("token_accuracy", hits / preds as f64);
        };
        let mut model = crate::eval::lm::load_model(&base_dir(), None).expect("load");
        check(&model, &got["base"], "base");
        crate::eval::lm::attach_adapter(&mut model, &ad).expect("adapter");
        check(&model, &got, "fine-tuned");
        assert_ne!(
            got["loss"], got["base"]["loss"],
            "the adapter changes the loss"
        );

        // comparison table and predictions
        let table = std::fs::read_to_string(out.join("comparison.txt")).expect("table");
        assert!(table.starts_with("metric"), "{table}");
        assert!(table.contains("token_accuracy"), "{table}");
        let s = Session::open(&base_dir(), None, Some(&ad), "human_assistant").expect("session");
        let preds = std::fs::read_to_string(out.join("predictions.jsonl")).expect("preds");
        let preds: Vec<Value> = preds
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(preds.len(), 3);
        let gcfg = GenConfig {
            max_new_tokens: 5,
            ..Default::default()
        };
        for (p, ex) in preds.iter().zip(&exs) {
            let (ids, reference) = s.example_prompt(ex).expect("prompt");
            let g = s.generate(&[ids], &gcfg, |_, _| {}).expect("gen");
            assert_eq!(
                p["prediction"],
                json!(s.decode(&g[0].tokens).expect("decode"))
            );
            assert_eq!(p["reference"], json!(reference.expect("reference")));
        }
    }
}
