//! `tokenize`: encode segments, mask labels (-100 on what is not trained),
//! truncate, pad or pack. Output: a token-dataset file the trainer mmaps.

use super::{def, io, opt, req, CheckCtx, Kind, ParamSpec, RunCtx, Ty};
use crate::text::{OnEmpty, PaddingSide, TokenizeOptions, TrainOn};
use serde::Deserialize;

pub struct Tokenize;

/// The keys of a `tokenize` step.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // step references: the run reads those steps through `ctx.input`
pub struct TokenizeParams {
    pub data: String,
    pub model: String,
    pub train_on: TrainOn,
    pub mask: Mask,
    /// Checked positive (`check`), with the historical message.
    pub max_length: Option<i64>,
    pub max_input_length: Option<i64>,
    pub max_output_length: Option<i64>,
    pub padding: Padding,
    pub pack: bool,
    pub add_eos: Option<bool>,
    pub pad_token: Option<String>,
    pub on_empty: OnEmpty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mask {
    Auto,
    Standard,
    Chatglm3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    None,
    Left,
    Right,
    Model,
}

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

impl Kind for Tokenize {
    type Params = TokenizeParams;
    const KIND: &'static str = "tokenize";
    const ABOUT: &'static str = "tokenize segments and mask labels (-100 on what is not trained)";
    const PARAMS: &'static [ParamSpec] = PARAMS;
    fn check(&self, p: &TokenizeParams, c: &mut CheckCtx) {
        let lengths = [
            ("max_length", p.max_length),
            ("max_input_length", p.max_input_length),
            ("max_output_length", p.max_output_length),
        ];
        for (k, v) in lengths {
            if let Some(v) = v {
                if v <= 0 {
                    c.error(k, "must be positive").got = Some(v.to_string());
                }
            }
        }
        if p.pack && p.max_length.is_none() {
            c.error("pack", "packing needs `max_length`");
        }
        let o = options(p);
        for problem in o.problems() {
            c.error("max_length", problem);
        }
    }
    /// Writes `<split>.tokens` (the token-dataset file) and `stats.json`.
    fn run(&self, p: &TokenizeParams, ctx: &RunCtx) -> anyhow::Result<()> {
        let bundle = io::tokenizer(ctx, "model")?;
        let data = ctx.input("data")?;
        let template = io::template_of(&data.dir)?;
        let renderer = crate::text::Renderer::new(template, Some(&bundle))?;
        let opts = options(p);
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
pub fn options(p: &TokenizeParams) -> TokenizeOptions {
    let len = |v: Option<i64>| v.map(|v| v.max(0) as usize);
    TokenizeOptions {
        train_on: p.train_on,
        mask_rule: match p.mask {
            Mask::Standard => Some(crate::text::MaskRule::Direct),
            Mask::Chatglm3 => Some(crate::text::MaskRule::Shifted),
            Mask::Auto => None,
        },
        add_eos: p.add_eos,
        add_prefix: None,
        max_length: len(p.max_length),
        max_input_length: len(p.max_input_length),
        max_output_length: len(p.max_output_length),
        pad_to_max_length: p.padding != Padding::None,
        padding_side: match p.padding {
            Padding::Left => Some(PaddingSide::Left),
            Padding::Right => Some(PaddingSide::Right),
            Padding::None | Padding::Model => None,
        },
        pad_token: p.pad_token.clone(),
        packing: p.pack,
        on_empty: p.on_empty,
    }
}
