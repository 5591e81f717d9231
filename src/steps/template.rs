//! `template`: render each example into segments (text or special token,
//! role, trainable) with a built-in template, the model's chat_template,
//! or an inline / file Jinja template.

use super::{def, io, opt, req, CheckCtx, Kind, ParamSpec, RunCtx, Ty};
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;

pub struct Template;

/// The keys of a `template` step.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // step references: the run reads those steps through `ctx.input`
pub struct TemplateParams {
    pub data: String,
    pub model: Option<String>,
    pub template: String,
    pub source: Option<String>,
    pub file: Option<PathBuf>,
    pub system: Option<String>,
}

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
    opt(
        "model",
        Ty::Step(&["load.model"]),
        "model whose chat_template / special tokens are used",
    ),
    def(
        "template",
        Ty::Str,
        "\"model\"",
        "a built-in name, or \"model\" for the model's own chat_template",
    ),
    opt(
        "source",
        Ty::Str,
        "an inline Jinja chat template (overrides `template`); never a file name: use `file`",
    ),
    opt(
        "file",
        Ty::Path,
        "a Jinja chat template file (overrides `template`; its content is in the cache key)",
    ),
    opt(
        "system",
        Ty::Str,
        "default system message for conversations without one",
    ),
];

impl Kind for Template {
    type Params = TemplateParams;
    const KIND: &'static str = "template";
    const ABOUT: &'static str = "render examples into prompt segments with a chat template";
    const PARAMS: &'static [ParamSpec] = PARAMS;
    fn check(&self, p: &TemplateParams, c: &mut CheckCtx) {
        if let Some(src) = &p.source {
            if !(src.contains("{{") || src.contains("{%")) {
                let looks_like_file = crate::text::Template::looks_like_file(src);
                let e = c.error(
                    "source",
                    "`source` is inline Jinja, and this has no `{{` or `{%`",
                );
                if looks_like_file {
                    e.help = Some(format!("for a template file write `file = {src:?}`"));
                }
            }
            if p.file.is_some() {
                c.error("file", "give either `source` or `file`, not both");
            }
        }
        let t = &p.template;
        if p.source.is_none() && p.file.is_none() && !BUILTIN.contains(&t.as_str()) {
            let mut msg = format!("unknown template `{t}`");
            if let Some(s) = crate::diag::did_you_mean(t, BUILTIN.iter().copied()) {
                msg.push_str(&format!(" (did you mean `{s}`?)"));
            }
            c.error("template", msg).expected = Some(format!("one of {}", BUILTIN.join(", ")));
        }
        if t == "model" && p.model.is_none() && p.source.is_none() && p.file.is_none() {
            c.error("model", "template = \"model\" needs `model = \"<load.model step>\"` to read its chat_template");
        }
    }
    /// Writes `template.json` (the resolved template), and per split the
    /// examples (`<split>.jsonl`) and their segments (`<split>.segments.jsonl`).
    fn run(&self, p: &TemplateParams, ctx: &RunCtx) -> anyhow::Result<()> {
        // `file` is resolved (and hashed into the cache key) by the recipe loader.
        let (spec, template) = match (&p.source, &p.file) {
            (Some(src), _) => (
                src.to_string(),
                crate::text::Template::from_name_or_source(src, None)?,
            ),
            (None, Some(f)) => {
                let t = crate::text::Template::from_file(f)?;
                let src = match &t {
                    crate::text::Template::Jinja { source, .. } => source.clone(),
                    _ => String::new(),
                };
                (src, t)
            }
            (None, None) => {
                let s = p.template.clone();
                let t = crate::text::Template::from_name_or_source(&s, None)?;
                (s, t)
            }
        };
        let bundle = match ctx.opt_input("model") {
            Some(_) => Some(io::tokenizer(ctx, "model")?),
            None => None,
        };
        let renderer = crate::text::Renderer::new(template, bundle.as_ref())?;
        let data = ctx.input("data")?;
        let mut counts = Vec::new();
        for (split, path) in io::splits(&data.dir) {
            let mut examples = io::read_examples(&path)?;
            if let Some(sys) = &p.system {
                for ex in &mut examples {
                    if !ex
                        .messages
                        .iter()
                        .any(|m| m.role == crate::data::example::Role::System)
                    {
                        let m = crate::data::example::Message {
                            role: crate::data::example::Role::System,
                            content: sys.clone(),
                            metadata: String::new(),
                        };
                        ex.messages.insert(0, m);
                    }
                }
            }
            let mut ex_out = std::io::BufWriter::new(std::fs::File::create(
                ctx.out.join(format!("{split}.jsonl")),
            )?);
            let mut seg_out = std::io::BufWriter::new(std::fs::File::create(
                ctx.out.join(format!("{split}.segments.jsonl")),
            )?);
            for ex in &examples {
                let r = renderer
                    .render(ex)
                    .with_context(|| format!("rendering example {}", ex.source))?;
                serde_json::to_writer(&mut ex_out, ex)?;
                ex_out.write_all(b"\n")?;
                serde_json::to_writer(
                    &mut seg_out,
                    &serde_json::json!({"source": ex.source, "whole_string": r.whole_string, "segments": r.segments}),
                )?;
                seg_out.write_all(b"\n")?;
            }
            ex_out.flush()?;
            seg_out.flush()?;
            counts.push(format!("{} {split}", examples.len()));
        }
        std::fs::write(
            ctx.out.join("template.json"),
            serde_json::to_vec_pretty(
                &serde_json::json!({ "template": spec, "system": p.system }),
            )?,
        )?;
        ctx.info(format!("rendered {} examples", counts.join(", ")));
        Ok(())
    }
}
