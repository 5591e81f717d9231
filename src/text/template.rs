//! Prompt templates: an `Example` -> segments (text or special token, role,
//! trainable flag).
//!
//! Built-ins (exact strings from the workflows in the seeds):
//! - `chatglm3`: [gMASK] sop, then per message <|role|>, metadata + "\n",
//!   content; every piece encoded separately; messages other than system and
//!   user trainable (as finetune_demo: observation too), with the shifted mask (see `MaskRule::Shifted`) and eos appended.
//! - `chatglm` (ChatGLM-6B v1): prompt (the query alone for one turn, else
//!   "[Round i]\n问：q\n答：r\n"… "[Round n]\n问：q\n答："), [gMASK] <sop>
//!   at the end of the prompt, answer, <eop>; trained from <sop> on.
//! - `alpaca` (Chinese-LLaMA PROMPT_TEMPLATE), `human_assistant`
//!   (alpaca_zh on BLOOM), `raft_label` (PEFT's RAFT example, ends with the
//!   pad token), `sharp_human` (Qwen CSV `text` column), `plain`.
//! - `chatml` (Qwen2-Instruct's ChatML template), `qwen` (Qwen2.5's, with
//!   tools), `llama3` (LLaMA-3-Instruct's), and `model` (the
//!   tokenizer's own chat_template), plus any inline or file Jinja: these
//!   render the whole conversation to one string (tokenized once, as
//!   apply_chat_template does) and mark trainable byte ranges: the
//!   `{% generation %}` blocks if the template has them, else for each
//!   assistant message k the text between render(messages[..k],
//!   add_generation_prompt=true) and render(messages[..=k]).
//!
//! Alpaca-like templates read `instruction` / `input` / `output` from
//! `Example::extra` when present, else the first user message (as the
//! instruction, empty input) and the last assistant message.

use super::jinja::{ChatContext, ChatTemplate};
use super::segment::{Piece, Segment};
use super::tokenizer::TokenizerBundle;
use crate::data::example::{Example, Role};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

pub const ALPACA_PROMPT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response: ";

/// Qwen2-Instruct's template (ChatML with a default system prompt).
const CHATML_JINJA: &str = include_str!("templates/chatml.jinja");
/// Qwen2.5-Instruct's template (tools, tool calls and responses).
const QWEN2_JINJA: &str = include_str!("templates/qwen2.jinja");
const LLAMA3_JINJA: &str = include_str!("templates/llama3.jinja");

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Builtin {
    ChatGlm3,
    ChatGlm,
    Alpaca,
    HumanAssistant,
    SharpHuman,
    RaftLabel,
    Plain,
}

/// How segment flags become labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskRule {
    /// label = id where the token's segment is trainable.
    Direct,
    /// ChatGLM3 finetune_demo: label[i] = id[i] where token i-1 is
    /// trainable, so the role token opening a reply is -100 and the token
    /// after each reply (next <|user|>, or the final eos) is trained.
    Shifted,
}

/// The token appended after the last segment by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndToken {
    None,
    Eos,
    Pad,
}

#[derive(Clone)]
pub enum Template {
    Builtin(Builtin),
    /// The tokenizer's chat_template, compiled when a renderer is made.
    Model,
    /// Jinja source; `name` is the built-in name or the file it came from.
    Jinja {
        name: String,
        source: String,
    },
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Template({})", self.name())
    }
}

pub const BUILTIN_NAMES: &[&str] = &[
    "chatglm3",
    "chatglm",
    "alpaca",
    "human_assistant",
    "sharp_human",
    "raft_label",
    "plain",
    "chatml",
    "qwen",
    "llama3",
    "model",
];

impl Template {
    /// A built-in name, `model`, or inline Jinja (anything containing `{{` or `{%`).
    /// Never a file: a recipe's file goes through the template step's `file` key (its
    /// content is in the cache key), the CLI's through [`Template::from_file`].
    /// `_base_dir` is kept for callers; nothing is read from it.
    pub fn from_name_or_source(s: &str, _base_dir: Option<&Path>) -> Result<Template> {
        let b = |x| Ok(Template::Builtin(x));
        match s {
            "chatglm3" => return b(Builtin::ChatGlm3),
            "chatglm" => return b(Builtin::ChatGlm),
            "alpaca" => return b(Builtin::Alpaca),
            "human_assistant" => return b(Builtin::HumanAssistant),
            "sharp_human" => return b(Builtin::SharpHuman),
            "raft_label" => return b(Builtin::RaftLabel),
            "plain" => return b(Builtin::Plain),
            "model" => return Ok(Template::Model),
            "chatml" => {
                return Ok(Template::Jinja {
                    name: s.into(),
                    source: CHATML_JINJA.into(),
                })
            }
            "qwen" => {
                return Ok(Template::Jinja {
                    name: s.into(),
                    source: QWEN2_JINJA.into(),
                })
            }
            "llama3" => {
                return Ok(Template::Jinja {
                    name: s.into(),
                    source: LLAMA3_JINJA.into(),
                })
            }
            _ => {}
        }
        if s.contains("{{") || s.contains("{%") {
            return Ok(Template::Jinja {
                name: "inline".into(),
                source: s.into(),
            });
        }
        bail!(
            "unknown template {:?}: expected one of {}, or inline Jinja",
            super::jinja::excerpt(s, 120),
            BUILTIN_NAMES.join(", ")
        )
    }

    /// A Jinja template file. Errors name the file and quote none of it (a wrong path may
    /// point at anything, e.g. `/etc/passwd`).
    pub fn from_file(path: &Path) -> Result<Template> {
        let source = std::fs::read_to_string(path)
            .with_context(|| format!("reading template file `{}`", path.display()))?;
        if !(source.contains("{{") || source.contains("{%")) {
            bail!(
                "template file `{}` has no `{{{{` or `{{%`: not a Jinja chat template",
                path.display()
            );
        }
        Ok(Template::Jinja {
            name: path.display().to_string(),
            source,
        })
    }

    /// A path-looking spec (`x.jinja`, `x.j2`, or with a `/`) that is not inline Jinja:
    /// what the CLI's `--template` reads as a file.
    pub fn looks_like_file(s: &str) -> bool {
        !(s.contains("{{") || s.contains("{%"))
            && (s.ends_with(".jinja") || s.ends_with(".j2") || s.contains('/'))
    }

    pub fn name(&self) -> String {
        match self {
            Template::Builtin(b) => match b {
                Builtin::ChatGlm3 => "chatglm3",
                Builtin::ChatGlm => "chatglm",
                Builtin::Alpaca => "alpaca",
                Builtin::HumanAssistant => "human_assistant",
                Builtin::SharpHuman => "sharp_human",
                Builtin::RaftLabel => "raft_label",
                Builtin::Plain => "plain",
            }
            .into(),
            Template::Model => "model".into(),
            Template::Jinja { name, .. } => name.clone(),
        }
    }

    pub fn mask_rule(&self) -> MaskRule {
        match self {
            Template::Builtin(Builtin::ChatGlm3) => MaskRule::Shifted,
            _ => MaskRule::Direct,
        }
    }

    pub fn default_end(&self) -> EndToken {
        match self {
            Template::Builtin(
                Builtin::ChatGlm3
                | Builtin::Alpaca
                | Builtin::HumanAssistant
                | Builtin::SharpHuman
                | Builtin::Plain,
            ) => EndToken::Eos,
            Template::Builtin(Builtin::RaftLabel) => EndToken::Pad,
            _ => EndToken::None,
        }
    }

    /// Whether the prompt is tokenized with special tokens added (the
    /// tokenizer's bos / prefix), as `tokenizer(prompt)` does in the seeds.
    pub fn adds_prefix(&self) -> bool {
        matches!(
            self,
            Template::Builtin(
                Builtin::Alpaca
                    | Builtin::HumanAssistant
                    | Builtin::SharpHuman
                    | Builtin::RaftLabel
                    | Builtin::Plain
            )
        )
    }
}

/// What `render` produces.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub segments: Vec<Segment>,
    /// Tokenize the concatenated text once (with offsets) instead of
    /// segment by segment.
    pub whole_string: bool,
}

impl Rendered {
    pub fn text(&self) -> String {
        self.segments
            .iter()
            .map(|s| match &s.piece {
                Piece::Text(t) | Piece::Special(t) => t.as_str(),
            })
            .collect()
    }
}

/// A template ready to render many examples (Jinja compiled once).
pub struct Renderer {
    pub template: Template,
    jinja: Option<Arc<ChatTemplate>>,
    vars: serde_json::Map<String, Value>,
}

fn seg(piece: Piece, role: Role, trainable: bool) -> Segment {
    Segment {
        piece,
        role,
        trainable,
    }
}
fn text(s: impl Into<String>, role: Role, trainable: bool) -> Segment {
    seg(Piece::Text(s.into()), role, trainable)
}
fn special(s: &str, role: Role, trainable: bool) -> Segment {
    seg(Piece::Special(s.into()), role, trainable)
}

fn extra_str<'a>(ex: &'a Example, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| ex.extra.get(*k).and_then(Value::as_str))
}

fn where_(ex: &Example) -> String {
    if ex.source.is_empty() {
        String::new()
    } else {
        format!("{}: ", ex.source)
    }
}

/// The first user message and the last assistant message, if any.
fn first_user_last_assistant(ex: &Example) -> (Option<&str>, Option<&str>) {
    let user = ex.messages.iter().find(|m| m.role == Role::User);
    let asst = ex.messages.iter().rev().find(|m| m.role == Role::Assistant);
    (
        user.map(|m| m.content.as_str()),
        asst.map(|m| m.content.as_str()),
    )
}

/// (instruction, input, output) for alpaca-like templates.
fn alpaca_parts(ex: &Example) -> Result<(String, String, String)> {
    let (user, asst) = first_user_last_assistant(ex);
    let instruction = extra_str(ex, &["instruction"]).or(user);
    // A missing output renders as "" (a prompt for generation); training
    // on it fails later with "no trained tokens".
    let o = extra_str(ex, &["output"]).or(asst).unwrap_or("");
    let Some(i) = instruction else {
        bail!(
            "{}example needs an instruction (or a user message)",
            where_(ex)
        );
    };
    let input = if extra_str(ex, &["instruction"]).is_some() {
        extra_str(ex, &["input"]).unwrap_or("")
    } else {
        ""
    };
    Ok((i.to_string(), input.to_string(), o.to_string()))
}

fn glm_role(r: Role, ex: &Example) -> Result<&'static str> {
    Ok(match r {
        Role::System => "<|system|>",
        Role::User => "<|user|>",
        Role::Assistant => "<|assistant|>",
        Role::Observation | Role::Tool => "<|observation|>",
        Role::Text => bail!(
            "{}chatglm3 template has no role for plain text messages",
            where_(ex)
        ),
    })
}

impl Renderer {
    pub fn new(template: Template, bundle: Option<&TokenizerBundle>) -> Result<Renderer> {
        let mut vars = serde_json::Map::new();
        if let Some(b) = bundle {
            for (k, v) in [
                ("bos_token", &b.bos_token),
                ("eos_token", &b.eos_token),
                ("pad_token", &b.pad_token),
                ("unk_token", &b.unk_token),
            ] {
                if let Some(v) = v {
                    vars.insert(k.into(), json!(v));
                }
            }
        }
        let jinja = match &template {
            Template::Builtin(_) => None,
            Template::Model => {
                let b = bundle.context("template \"model\" needs the model's tokenizer")?;
                let src = b.chat_template.as_deref().with_context(|| {
                    format!("template \"model\": {} has no chat_template (tokenizer_config.json or chat_template.jinja)", b.dir.display())
                })?;
                Some(Arc::new(
                    ChatTemplate::new(src).context("the model's chat_template")?,
                ))
            }
            Template::Jinja { name, source } => Some(Arc::new(
                ChatTemplate::new(source).with_context(|| format!("template {name}"))?,
            )),
        };
        Ok(Renderer {
            template,
            jinja,
            vars,
        })
    }

    pub fn render(&self, ex: &Example) -> Result<Rendered> {
        if let Some(j) = &self.jinja {
            return self.render_jinja(j, ex);
        }
        let Template::Builtin(b) = &self.template else {
            unreachable!("non-builtin templates have a compiled jinja")
        };
        let segments = match b {
            Builtin::ChatGlm3 => {
                let mut s = vec![
                    special("[gMASK]", Role::System, false),
                    special("sop", Role::System, false),
                ];
                for m in &ex.messages {
                    // finetune_demo: every role but system/user is trained
                    // (observation included).
                    let t = !matches!(m.role, Role::System | Role::User);
                    s.push(special(glm_role(m.role, ex)?, m.role, t));
                    s.push(text(format!("{}\n", m.metadata), m.role, t));
                    s.push(text(m.content.clone(), m.role, t));
                }
                s
            }
            Builtin::ChatGlm => {
                let sys: String = ex
                    .messages
                    .iter()
                    .filter(|m| m.role == Role::System)
                    .map(|m| m.content.as_str())
                    .collect();
                let turns: Vec<_> = ex
                    .messages
                    .iter()
                    .filter(|m| m.role != Role::System)
                    .collect();
                let n = turns.len();
                if n < 2
                    || n % 2 != 0
                    || turns.iter().enumerate().any(|(i, m)| {
                        m.role
                            != if i % 2 == 0 {
                                Role::User
                            } else {
                                Role::Assistant
                            }
                    })
                {
                    bail!("{}chatglm template needs alternating user/assistant messages ending with an assistant reply", where_(ex));
                }
                let mut prompt = sys;
                if n == 2 {
                    prompt.push_str(&turns[0].content);
                } else {
                    for (i, p) in turns[..n - 2].chunks(2).enumerate() {
                        prompt.push_str(&format!(
                            "[Round {}]\n问：{}\n答：{}\n",
                            i, p[0].content, p[1].content
                        ));
                    }
                    prompt.push_str(&format!(
                        "[Round {}]\n问：{}\n答：",
                        n / 2 - 1,
                        turns[n - 2].content
                    ));
                }
                vec![
                    text(prompt, Role::User, false),
                    special("[gMASK]", Role::User, false),
                    special("<sop>", Role::Assistant, true),
                    text(turns[n - 1].content.clone(), Role::Assistant, true),
                    special("<eop>", Role::Assistant, true),
                ]
            }
            Builtin::Alpaca => {
                let (mut ins, input, out) = alpaca_parts(ex)?;
                if !input.is_empty() {
                    ins = format!("{ins}\n{input}");
                }
                vec![
                    text(
                        ALPACA_PROMPT.replace("{instruction}", &ins),
                        Role::User,
                        false,
                    ),
                    text(out, Role::Assistant, true),
                ]
            }
            Builtin::HumanAssistant => {
                let (ins, input, out) = alpaca_parts(ex)?;
                let p = format!("Human: {ins}\n{input}");
                vec![
                    text(format!("{}\n\nAssistant: ", p.trim()), Role::User, false),
                    text(out, Role::Assistant, true),
                ]
            }
            Builtin::SharpHuman => {
                let (ins, input, out) = alpaca_parts(ex)?;
                let ins = if input.is_empty() {
                    ins
                } else {
                    format!("{ins}\n{input}")
                };
                vec![
                    text(
                        format!("###Human:\n{ins}\n\n### Assistant:\n"),
                        Role::User,
                        false,
                    ),
                    text(out, Role::Assistant, true),
                ]
            }
            Builtin::RaftLabel => {
                let (user, asst) = first_user_last_assistant(ex);
                let l = extra_str(ex, &["text_label", "label"])
                    .or(asst)
                    .unwrap_or("");
                let Some(t) = extra_str(ex, &["Tweet text", "text"]).or(user) else {
                    bail!(
                        "{}raft_label template needs a text (or a user message)",
                        where_(ex)
                    );
                };
                vec![
                    text(format!("Tweet text : {t} Label : "), Role::User, false),
                    text(l, Role::Assistant, true),
                ]
            }
            Builtin::Plain => ex
                .messages
                .iter()
                .map(|m| {
                    text(
                        m.content.clone(),
                        m.role,
                        matches!(m.role, Role::Assistant | Role::Text),
                    )
                })
                .collect(),
        };
        let whole_string = matches!(b, Builtin::SharpHuman | Builtin::Plain);
        Ok(Rendered {
            segments,
            whole_string,
        })
    }

    /// The prompt for generation (all masked) and the reference reply:
    /// everything before the last assistant message (when the example ends
    /// with one) plus the generation prompt (chatglm3: <|assistant|>;
    /// chatglm: [gMASK] <sop>; Jinja: add_generation_prompt=true).
    pub fn render_prompt(&self, ex: &Example) -> Result<(Rendered, Option<String>)> {
        let ends_with_reply = ex
            .messages
            .last()
            .is_some_and(|m| m.role == Role::Assistant);
        let reference = ends_with_reply.then(|| ex.messages[ex.messages.len() - 1].content.clone());
        let mut head = ex.clone();
        if ends_with_reply {
            head.messages.pop();
        }
        if let Some(j) = &self.jinja {
            let msgs = messages_json(&head);
            let ctx = self.chat_context(&head, true);
            let s = j
                .render(&msgs, &ctx)
                .with_context(|| format!("{}template {}", where_(ex), self.template.name()))?;
            let r = Rendered {
                segments: vec![text(s, Role::User, false)],
                whole_string: true,
            };
            return Ok((r, reference));
        }
        let Template::Builtin(b) = &self.template else {
            unreachable!("non-builtin templates have a compiled jinja")
        };
        let mut r = match b {
            Builtin::ChatGlm3 | Builtin::Plain => self.render(&head)?,
            _ => self.render(ex)?,
        };
        match b {
            Builtin::ChatGlm3 => r
                .segments
                .push(special("<|assistant|>", Role::Assistant, false)),
            Builtin::ChatGlm => r.segments.truncate(3),
            Builtin::Plain => {}
            _ => r.segments.truncate(1),
        }
        r.segments.iter_mut().for_each(|s| s.trainable = false);
        Ok((r, reference))
    }

    fn chat_context(&self, ex: &Example, add_generation_prompt: bool) -> ChatContext {
        ChatContext {
            add_generation_prompt,
            tools: ex.extra.get("tools").cloned(),
            vars: self.vars.clone(),
        }
    }

    fn render_jinja(&self, j: &ChatTemplate, ex: &Example) -> Result<Rendered> {
        let msgs = messages_json(ex);
        let ctx = |agp: bool| self.chat_context(ex, agp);
        let ctxerr = || format!("{}template {}", where_(ex), self.template.name());
        let (full, mut ranges) = j.render_marked(&msgs, &ctx(false)).with_context(ctxerr)?;
        if !j.has_generation {
            ranges.clear();
            for (k, m) in ex.messages.iter().enumerate() {
                if m.role != Role::Assistant {
                    continue;
                }
                let before = match j.render(&msgs[..k], &ctx(true)) {
                    Ok(s) => s,
                    Err(_) if k == 0 => String::new(),
                    Err(e) => return Err(e).with_context(ctxerr),
                };
                let upto = j.render(&msgs[..=k], &ctx(false)).with_context(ctxerr)?;
                if !upto.starts_with(&before) || !full.starts_with(&upto) {
                    bail!(
                        "{}: template {} does not render conversations prefix by prefix (message {k}); \
                         mark the trained text with {{% generation %}} blocks",
                        ex.source,
                        self.template.name()
                    );
                }
                ranges.push((before.len(), upto.len()));
            }
        }
        // Cut the string at range edges.
        let mut segments = Vec::new();
        let mut pos = 0;
        for (s, e) in ranges {
            if s > pos {
                segments.push(text(&full[pos..s], Role::User, false));
            }
            if e > s.max(pos) {
                segments.push(text(&full[s.max(pos)..e], Role::Assistant, true));
            }
            pos = pos.max(e);
        }
        if pos < full.len() {
            segments.push(text(&full[pos..], Role::User, false));
        }
        Ok(Rendered {
            segments,
            whole_string: true,
        })
    }
}

/// Messages as the chat template sees them: {role, content[, metadata]}.
fn messages_json(ex: &Example) -> Vec<Value> {
    ex.messages
        .iter()
        .map(|m| {
            let mut o = json!({"role": m.role.as_str(), "content": m.content});
            if !m.metadata.is_empty() {
                o["metadata"] = json!(m.metadata);
            }
            o
        })
        .collect()
}

/// One-off rendering (compiles Jinja each call; use `Renderer` in loops).
pub fn render(
    template: &Template,
    ex: &Example,
    bundle: Option<&TokenizerBundle>,
) -> Result<Rendered> {
    Renderer::new(template.clone(), bundle)?.render(ex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::example::Message;

    fn rend(name: &str, ex: &Example) -> Rendered {
        render(
            &Template::from_name_or_source(name, None).unwrap(),
            ex,
            None,
        )
        .unwrap()
    }

    fn conv(ms: &[(Role, &str)]) -> Example {
        Example {
            messages: ms
                .iter()
                .map(|(r, c)| Message {
                    role: *r,
                    content: c.to_string(),
                    metadata: String::new(),
                })
                .collect(),
            source: "data.jsonl:3".into(),
            ..Default::default()
        }
    }

    #[test]
    fn chatglm3_segments() {
        let ex = conv(&[(Role::User, "你好"), (Role::Assistant, "hi")]);
        let r = rend("chatglm3", &ex);
        assert!(!r.whole_string);
        let got: Vec<(Piece, bool)> = r
            .segments
            .into_iter()
            .map(|s| (s.piece, s.trainable))
            .collect();
        let sp = |s: &str| Piece::Special(s.into());
        let tx = |s: &str| Piece::Text(s.into());
        assert_eq!(
            got,
            vec![
                (sp("[gMASK]"), false),
                (sp("sop"), false),
                (sp("<|user|>"), false),
                (tx("\n"), false),
                (tx("你好"), false),
                (sp("<|assistant|>"), true),
                (tx("\n"), true),
                (tx("hi"), true)
            ]
        );
    }

    #[test]
    fn chatglm_v1_rounds() {
        let ex = conv(&[
            (Role::User, "q0"),
            (Role::Assistant, "r0"),
            (Role::User, "q1"),
            (Role::Assistant, "r1"),
        ]);
        let r = rend("chatglm", &ex);
        assert_eq!(
            r.text(),
            "[Round 0]\n问：q0\n答：r0\n[Round 1]\n问：q1\n答：[gMASK]<sop>r1<eop>"
        );
        let one = conv(&[(Role::User, "q"), (Role::Assistant, "r")]);
        let r = rend("chatglm", &one);
        assert_eq!(r.text(), "q[gMASK]<sop>r<eop>");
        assert_eq!(
            r.segments.iter().map(|s| s.trainable).collect::<Vec<_>>(),
            vec![false, false, true, true, true]
        );
    }

    #[test]
    fn alpaca_like_texts() {
        let mut ex = conv(&[]);
        ex.extra.insert("instruction".into(), json!("Translate"));
        ex.extra.insert("input".into(), json!("今天"));
        ex.extra.insert("output".into(), json!("Today"));
        let t = |n: &str, ex: &Example| rend(n, ex).text();
        assert_eq!(
            t("alpaca", &ex),
            ALPACA_PROMPT.replace("{instruction}", "Translate\n今天") + "Today"
        );
        assert_eq!(
            t("human_assistant", &ex),
            "Human: Translate\n今天\n\nAssistant: Today"
        );
        assert_eq!(
            t("sharp_human", &ex),
            "###Human:\nTranslate\n今天\n\n### Assistant:\nToday"
        );
        ex.extra.insert("input".into(), json!(""));
        assert_eq!(
            t("human_assistant", &ex),
            "Human: Translate\n\nAssistant: Today"
        );
        let raft = conv(&[(Role::User, "I hate this"), (Role::Assistant, "complaint")]);
        let r = rend("raft_label", &raft);
        assert_eq!(r.text(), "Tweet text : I hate this Label : complaint");
    }

    #[test]
    fn jinja_ranges_prefix_and_generation() {
        let ex = conv(&[
            (Role::User, "a"),
            (Role::Assistant, "b"),
            (Role::User, "c"),
            (Role::Assistant, "d"),
        ]);
        let r = rend("chatml", &ex);
        assert!(r.whole_string);
        let trained: Vec<&str> = r
            .segments
            .iter()
            .filter(|s| s.trainable)
            .map(|s| match &s.piece {
                Piece::Text(t) => t.as_str(),
                _ => "",
            })
            .collect();
        assert_eq!(trained, vec!["b<|im_end|>\n", "d<|im_end|>\n"]);
        let g = "{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}{% generation %}{{ m.content }};{% endgeneration %}{% else %}{{ m.content }};{% endif %}{% endfor %}";
        let r = rend(g, &ex);
        assert_eq!(r.text(), "user: a;assistant: b;user: c;assistant: d;");
        let trained: Vec<String> = r
            .segments
            .iter()
            .filter(|s| s.trainable)
            .map(|s| format!("{:?}", s.piece))
            .collect();
        assert_eq!(trained, vec!["Text(\"b;\")", "Text(\"d;\")"]);
        // A template that is not prefix-stable without generation blocks.
        let bad = "{% for m in messages %}{{ m.content }}{% if not loop.last %},{% endif %}{% endfor %}{% if add_generation_prompt %}>{% endif %}";
        let e = render(
            &Template::from_name_or_source(bad, None).unwrap(),
            &ex,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("data.jsonl:3") && e.contains("generation"),
            "{e}"
        );
    }

    #[test]
    fn files_are_read_only_through_from_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.jinja");
        std::fs::write(&p, "root:x:0:0\nsecond line").unwrap();
        // A path given as a name is not read.
        let e = Template::from_name_or_source(&p.display().to_string(), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("unknown template"), "{e}");
        assert!(!e.contains("root:x"), "{e}");
        let e = Template::from_file(&p).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "template file `{}` has no `{{{{` or `{{%`: not a Jinja chat template",
                p.display()
            )
        );
        std::fs::write(&p, "{{ messages[0].content }}").unwrap();
        assert!(matches!(
            Template::from_file(&p).unwrap(),
            Template::Jinja { .. }
        ));
        // A long unknown spec is quoted as a short excerpt.
        let long = format!("{}\nmore", "z".repeat(300));
        let e = Template::from_name_or_source(&long, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("unknown template \"{}...\"", "z".repeat(120))),
            "{e}"
        );
    }

    #[test]
    fn unknown_name() {
        let e = Template::from_name_or_source("chatgml3", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("unknown template \"chatgml3\": expected one of chatglm3,"),
            "{e}"
        );
    }
}
