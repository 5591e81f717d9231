//! `template`: render each example into segments (text or special token,
//! role, trainable) with a built-in template, the model's chat_template,
//! or an inline / file Jinja template.

use super::{def, opt, req, CheckCtx, ParamSpec, Step, Ty};

pub struct Template;

pub static BUILTIN: &[&str] = &[
    "chatglm3",
    "chatglm",
    "alpaca",
    "human_assistant",
    "sharp_human",
    "raft_label",
    "chatml",
    "qwen",
    "llama3",
    "plain",
    "model",
];

static PARAMS: &[ParamSpec] = &[
    req("data", Ty::Step(&["load.dataset"]), "the dataset step"),
    opt("model", Ty::Step(&["load.model"]), "model whose chat_template / special tokens are used"),
    def("template", Ty::Str, "\"model\"", "a built-in name, or \"model\" for the model's own chat_template"),
    opt("source", Ty::Str, "an inline Jinja chat template (overrides `template`)"),
    opt("file", Ty::Path, "a Jinja chat template file (overrides `template`)"),
    opt("system", Ty::Str, "default system message for conversations without one"),
];

impl Step for Template {
    fn kind(&self) -> &'static str {
        "template"
    }
    fn about(&self) -> &'static str {
        "render examples into prompt segments with a chat template"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn check(&self, c: &mut CheckCtx) {
        let t = c.params.str("template").to_string();
        if c.params.get("source").is_none() && c.params.get("file").is_none() && !BUILTIN.contains(&t.as_str()) {
            let mut msg = format!("unknown template `{t}`");
            if let Some(s) = crate::diag::did_you_mean(&t, BUILTIN.iter().copied()) {
                msg.push_str(&format!(" (did you mean `{s}`?)"));
            }
            c.error("template", msg).expected = Some(format!("one of {}", BUILTIN.join(", ")));
        }
        if t == "model" && c.params.get("model").is_none() && c.params.get("source").is_none() && c.params.get("file").is_none() {
            c.error("model", "template = \"model\" needs `model = \"<load.model step>\"` to read its chat_template");
        }
    }
}
