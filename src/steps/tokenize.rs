//! `tokenize`: encode segments, mask labels (-100 on what is not trained),
//! truncate, pad or pack. Output: a token-dataset file the trainer mmaps.

use super::{def, io, opt, req, CheckCtx, ParamSpec, Params, RunCtx, Step, Ty};
use crate::text::{OnEmpty, PaddingSide, TokenizeOptions, TrainOn};

pub struct Tokenize;

static PARAMS: &[ParamSpec] = &[
    req("data", Ty::Step(&["template"]), "the template step"),
    req("model", Ty::Step(&["load.model"]), "model whose tokenizer is used"),
    def(
        "train_on",
        Ty::Enum(&["completion", "assistant", "last_assistant", "all"]),
        "\"completion\"",
        "which tokens get labels: completion (after the prompt), every assistant turn, the last one, or all",
    ),
    def(
        "mask",
        Ty::Enum(&["auto", "standard", "chatglm3"]),
        "\"auto\"",
        "chatglm3 = finetune_demo's shifted mask (the token after each reply is trained); auto = the template's rule",
    ),
    opt("max_length", Ty::Int, "truncate each example to this many tokens"),
    opt("max_input_length", Ty::Int, "truncate the prompt part to this many tokens"),
    opt("max_output_length", Ty::Int, "truncate the response part to this many tokens"),
    def(
        "padding",
        Ty::Enum(&["none", "left", "right", "model"]),
        "\"none\"",
        "pad every example to max_length on this side (none: the trainer pads each batch; model: the tokenizer's side)",
    ),
    def("pack", Ty::Bool, "false", "pack several examples into one max_length sequence"),
    opt("add_eos", Ty::Bool, "append EOS to the response and train on it (default: the template's rule)"),
    opt("pad_token", Ty::Str, "pad token when the tokenizer has none (e.g. \"</s>\")"),
    def("on_empty", Ty::Enum(&["error", "skip"]), "\"error\"", "an example with no trained token"),
];

impl Step for Tokenize {
    fn kind(&self) -> &'static str {
        "tokenize"
    }
    fn about(&self) -> &'static str {
        "tokenize segments and mask labels (-100 on what is not trained)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn check(&self, c: &mut CheckCtx) {
        for k in ["max_length", "max_input_length", "max_output_length"] {
            if let Some(v) = c.params.opt_i64(k) {
                if v <= 0 {
                    c.error(k, "must be positive").got = Some(v.to_string());
                }
            }
        }
        if c.params.bool("pack") && c.params.get("max_length").is_none() {
            c.error("pack", "packing needs `max_length`");
        }
        let o = options(c.params);
        for problem in o.problems() {
            c.error("max_length", problem);
        }
    }
    /// Writes `<split>.tokens` (the token-dataset file) and `stats.json`.
    fn run(&self, ctx: &RunCtx) -> anyhow::Result<()> {
        let bundle = io::tokenizer(ctx, "model")?;
        let data = ctx.input("data")?;
        let template = io::template_of(&data.dir)?;
        let renderer = crate::text::Renderer::new(template, Some(&bundle))?;
        let opts = options(ctx.params);
        let mut all = serde_json::Map::new();
        for (split, path) in io::splits(&data.dir) {
            let examples = io::read_examples(&path)?;
            let stats = crate::text::tokenize(
                examples,
                &renderer,
                &bundle,
                &opts,
                &ctx.out.join(format!("{split}.tokens")),
            )?;
            for line in stats.summary().lines() {
                ctx.info(format!("{split}: {line}"));
            }
            for w in &stats.warnings {
                ctx.info(format!("warning: {w}"));
            }
            all.insert(split.to_string(), serde_json::to_value(&stats)?);
        }
        std::fs::write(ctx.out.join("stats.json"), serde_json::to_vec_pretty(&all)?)?;
        Ok(())
    }
}

/// The step's params as the text library's options.
pub fn options(p: &Params) -> TokenizeOptions {
    TokenizeOptions {
        train_on: match p.str("train_on") {
            "assistant" => TrainOn::Assistant,
            "last_assistant" => TrainOn::LastAssistant,
            "all" => TrainOn::All,
            _ => TrainOn::Completion,
        },
        mask_rule: match p.str("mask") {
            "standard" => Some(crate::text::MaskRule::Direct),
            "chatglm3" => Some(crate::text::MaskRule::Shifted),
            _ => None,
        },
        add_eos: p.get("add_eos").and_then(|v| v.as_bool()),
        add_prefix: None,
        max_length: p.opt_usize("max_length"),
        max_input_length: p.opt_usize("max_input_length"),
        max_output_length: p.opt_usize("max_output_length"),
        pad_to_max_length: p.str("padding") != "none",
        padding_side: match p.str("padding") {
            "left" => Some(PaddingSide::Left),
            "right" => Some(PaddingSide::Right),
            _ => None,
        },
        pad_token: p.opt_str("pad_token").map(str::to_string),
        packing: p.bool("pack"),
        on_empty: if p.str("on_empty") == "skip" {
            OnEmpty::Skip
        } else {
            OnEmpty::Error
        },
    }
}
