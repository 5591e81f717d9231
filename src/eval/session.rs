//! The generation session: a loaded model (+ optional unmerged PEFT adapter), its tokenizer and
//! template, the prompt ids of a conversation, stop and pad ids, and batched generation with
//! them. The `generate` and `evaluate` steps and the `recipe generate` / `recipe chat` CLI
//! (`gen_cli`) all generate through a [`Session`].

use super::generate::{generate, GenConfig, Generation};
use super::lm::{load_model_on, pad_id, stop_ids, EngineLm};
use super::sampling::SamplingParams;
use crate::backend::Backend;
use crate::data::example::{Example, Message, Role};
use crate::model::Model;
use crate::text::{prompt_ids, Renderer, Template, TokenizeOptions, TokenizerBundle};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded model ready to answer prompts.
pub struct Session {
    pub model: Model,
    pub bundle: TokenizerBundle,
    /// None: raw text prompts (template "none").
    pub renderer: Option<Renderer>,
    pub stop_ids: Vec<u32>,
    pub pad_id: u32,
    /// The model dir (generation_config.json defaults).
    pub weights: PathBuf,
}

/// Resolves a template spec against a tokenizer: "auto" = the model's chat template if it has
/// one, else raw text; "model" = the chat template (an error without one); "none" = raw text;
/// anything else = a built-in name, a .jinja file or inline Jinja.
pub fn renderer_for(spec: &str, bundle: &TokenizerBundle) -> Result<Option<Renderer>> {
    let spec = match spec {
        "auto" if bundle.chat_template.is_some() => "model",
        "auto" | "none" => return Ok(None),
        s => s,
    };
    let t = if Template::looks_like_file(spec) {
        Template::from_file(std::path::Path::new(spec))?
    } else {
        Template::from_name_or_source(spec, None)?
    };
    Ok(Some(Renderer::new(t, Some(bundle)).with_context(|| {
        if spec == "model" {
            "use --template NAME (e.g. chatml, chatglm3, human_assistant) or --template none"
                .to_string()
        } else {
            format!("template {spec:?}")
        }
    })?))
}

impl Session {
    /// Loads `weights` (+ the adapter in `adapter`, unmerged) and the tokenizer in `tokenizer`
    /// (default: the model dir), on the CPU.
    pub fn open(
        weights: &Path,
        tokenizer: Option<&Path>,
        adapter: Option<&Path>,
        template: &str,
    ) -> Result<Session> {
        let cpu: Arc<dyn Backend> = Arc::new(crate::backend::CpuBackend);
        Self::open_on(cpu, weights, tokenizer, adapter, template)
    }

    /// [`Session::open`] with the model's weights on `backend` (uploaded once, at load).
    pub fn open_on(
        backend: Arc<dyn Backend>,
        weights: &Path,
        tokenizer: Option<&Path>,
        adapter: Option<&Path>,
        template: &str,
    ) -> Result<Session> {
        let tok_dir = tokenizer.unwrap_or(weights);
        let bundle = TokenizerBundle::from_dir(tok_dir)
            .with_context(|| format!("loading the tokenizer from `{}`", tok_dir.display()))?;
        let renderer = renderer_for(template, &bundle)?;
        let model = load_model_on(backend, weights, adapter)?;
        Ok(Session {
            stop_ids: stop_ids(weights, &bundle.stop_ids),
            pad_id: pad_id(weights, bundle.pad_id, bundle.eos_id),
            model,
            bundle,
            renderer,
            weights: weights.to_path_buf(),
        })
    }

    /// Prompt ids for a conversation ending with a user turn (the template's generation prompt
    /// appended). Raw text: the tokenizer's prefix (bos) + the messages' text joined by "\n".
    pub fn conversation_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        match &self.renderer {
            Some(r) => {
                let ex = Example {
                    messages: messages.to_vec(),
                    ..Default::default()
                };
                Ok(prompt_ids(r, &self.bundle, &ex, &TokenizeOptions::default())?.0)
            }
            None => {
                let text: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
                self.text_ids(&text.join("\n"))
            }
        }
    }

    /// Prompt ids of raw text: the tokenizer's prefix (bos) + the text's ids.
    pub fn text_ids(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.bundle.prefix_ids.clone();
        ids.extend(self.bundle.encode(text)?);
        Ok(ids)
    }

    /// An example's generation prompt (everything before its last assistant reply, plus the
    /// generation prompt) and that reply as the reference, if it ends with one.
    pub fn example_prompt(&self, ex: &Example) -> Result<(Vec<u32>, Option<String>)> {
        match &self.renderer {
            Some(r) => prompt_ids(r, &self.bundle, ex, &TokenizeOptions::default()),
            None => {
                let mut head = ex.messages.clone();
                let reference = match head.last() {
                    Some(m) if m.role == Role::Assistant => head.pop().map(|m| m.content),
                    _ => None,
                };
                Ok((self.conversation_ids(&head)?, reference))
            }
        }
    }

    /// Prompt ids of one user message with an optional system message.
    pub fn prompt(&self, system: Option<&str>, user: &str) -> Result<Vec<u32>> {
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(message(Role::System, s));
        }
        msgs.push(message(Role::User, user));
        self.conversation_ids(&msgs)
    }

    /// Generates for a batch of prompts with this session's stop ids (`cfg.stop_ids` is
    /// replaced when empty). `on_token(row, id)` streams.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        cfg: &GenConfig,
        on_token: impl FnMut(usize, u32),
    ) -> Result<Vec<Generation>> {
        let mut cfg = cfg.clone();
        if cfg.stop_ids.is_empty() {
            cfg.stop_ids = self.stop_ids.clone();
        }
        let mut lm = EngineLm::new(&self.model, self.pad_id, cfg.max_new_tokens);
        generate(&mut lm, prompts, &cfg, on_token)
    }

    /// Text of generated ids (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.bundle.decode(ids, true)
    }

    /// Sampling defaults from the model dir's generation_config.json (do_sample, temperature,
    /// top_k, top_p, repetition_penalty), transformers' defaults otherwise.
    pub fn default_sampling(&self) -> SamplingParams {
        let mut s = SamplingParams::default();
        let g: Option<serde_json::Value> =
            std::fs::read(self.weights.join("generation_config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(g) = g {
            let f = |k: &str| g.get(k).and_then(|v| v.as_f64());
            if let Some(b) = g.get("do_sample").and_then(|v| v.as_bool()) {
                s.do_sample = b;
            }
            if let Some(t) = f("temperature") {
                s.temperature = t as f32;
            }
            if let Some(k) = g.get("top_k").and_then(|v| v.as_u64()) {
                s.top_k = k as usize;
            }
            if let Some(p) = f("top_p") {
                s.top_p = p as f32;
            }
            if let Some(r) = f("repetition_penalty") {
                s.repetition_penalty = r as f32;
            }
        }
        s
    }
}

pub fn message(role: Role, content: &str) -> Message {
    Message {
        role,
        content: content.to_string(),
        metadata: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quickstart() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart/base-init")
    }

    #[test]
    fn model_template_missing_is_a_clear_error() {
        let err = Session::open(&quickstart(), None, None, "model")
            .err()
            .expect("no chat template");
        let msg = format!("{err:#}");
        assert!(msg.contains("has no chat_template"), "{msg}");
        assert!(msg.contains("--template"), "{msg}");
        // auto falls back to raw text.
        let s = Session::open(&quickstart(), None, None, "auto").expect("auto");
        assert!(s.renderer.is_none());
    }

    /// ChatGLM3: the tokenizer's stop ids (eos, <|user|>, <|observation|>) plus the config's eos;
    /// a multi-turn prompt is [gMASK] sop, <|role|> per turn, and ends with <|assistant|>.
    #[test]
    fn chatglm3_stops_and_multi_turn_prompt() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let weights = root.join("tests/fixtures/engine/chatglm");
        let bundle =
            TokenizerBundle::from_dir(root.join("tests/fixtures/text/glm3")).expect("glm3");
        let (user, asst, obs) = (706, 707, 708);
        let stops = stop_ids(&weights, &bundle.stop_ids);
        let eos = bundle.eos_id.expect("eos");
        assert_eq!(
            stops,
            [eos, user, obs],
            "eos first, then <|user|> <|observation|>; config eos 2 = eos"
        );
        let s = Session {
            model: crate::eval::lm::load_model(&weights, None).expect("model"),
            renderer: renderer_for("chatglm3", &bundle).expect("template"),
            pad_id: 0,
            stop_ids: stops,
            weights: weights.clone(),
            bundle,
        };
        let msgs = [
            message(Role::User, "hi"),
            message(Role::Assistant, "yo"),
            message(Role::User, "again"),
        ];
        let ids = s.conversation_ids(&msgs).expect("ids");
        assert_eq!(&ids[..3], &[701, 703, user]);
        assert_eq!(*ids.last().expect("last"), asst);
        assert_eq!(ids.iter().filter(|&&i| i == user).count(), 2);
        assert_eq!(ids.iter().filter(|&&i| i == asst).count(), 2);
    }
}
