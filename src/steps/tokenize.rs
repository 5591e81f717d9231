//! `tokenize`: encode segments, mask labels (-100 on what is not trained),
//! truncate, pad or pack. Output: a token-dataset file the trainer mmaps.

use super::{def, opt, req, CheckCtx, ParamSpec, Step, Ty};

pub struct Tokenize;

static PARAMS: &[ParamSpec] = &[
    req("data", Ty::Step(&["template"]), "the template step"),
    req("model", Ty::Step(&["load.model"]), "model whose tokenizer is used"),
    def(
        "train_on",
        Ty::Enum(&["completion", "assistant", "last_assistant", "all"]),
        "\"assistant\"",
        "which tokens get labels: completion (after the prompt), every assistant turn, the last one, or all",
    ),
    def(
        "mask",
        Ty::Enum(&["standard", "chatglm3"]),
        "\"standard\"",
        "chatglm3 = finetune_demo's shifted mask (the token after each reply is trained)",
    ),
    opt("max_length", Ty::Int, "truncate each example to this many tokens"),
    opt("max_input_length", Ty::Int, "truncate the prompt part to this many tokens"),
    opt("max_output_length", Ty::Int, "truncate the response part to this many tokens"),
    def("truncation", Ty::Enum(&["right", "left"]), "\"right\"", "which end to cut"),
    def(
        "padding",
        Ty::Enum(&["none", "left", "right", "model"]),
        "\"none\"",
        "pad every example to `pad_to` (none: the trainer pads each batch)",
    ),
    opt("pad_to", Ty::Int, "padded length (default: max_length)"),
    def("pack", Ty::Bool, "false", "pack several examples into one max_length sequence"),
    def("add_eos", Ty::Bool, "true", "append EOS to the response and train on it"),
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
        for k in ["max_length", "max_input_length", "max_output_length", "pad_to"] {
            if let Some(v) = c.params.opt_i64(k) {
                if v <= 0 {
                    c.error(k, "must be positive").got = Some(v.to_string());
                }
            }
        }
        if c.params.bool("pack") && c.params.get("max_length").is_none() {
            c.error("pack", "packing needs `max_length`");
        }
        let pad = c.params.str("padding");
        if pad != "none" && c.params.get("pad_to").is_none() && c.params.get("max_length").is_none() {
            c.error("padding", "padding to a fixed length needs `pad_to` or `max_length`");
        }
    }
}
