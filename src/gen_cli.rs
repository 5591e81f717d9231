//! `recipe generate` and `recipe chat`: a model (+ optional PEFT adapter) on `--device`, prompts
//! rendered with a template, replies streamed to stdout as tokens are chosen.
//!
//! [`Session`] is the shared front end (also used by the `generate` and `evaluate` steps):
//! model + tokenizer + template, prompt ids for a conversation, stop ids, batched generation.
//! [`TextStream`] turns a growing id list into printable text deltas.

use crate::data::example::{Example, Message, Role};
use crate::eval::generate::{generate, GenConfig, Generation};
use crate::eval::lm::{load_model, pad_id, stop_ids, EngineLm};
use crate::eval::sampling::SamplingParams;
use crate::model::Model;
use crate::text::{prompt_ids, Renderer, Template, TokenizeOptions, TokenizerBundle};
use anyhow::{Context, Result};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

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
    /// (default: the model dir).
    pub fn open(
        weights: &Path,
        tokenizer: Option<&Path>,
        adapter: Option<&Path>,
        template: &str,
    ) -> Result<Session> {
        let tok_dir = tokenizer.unwrap_or(weights);
        let bundle = TokenizerBundle::from_dir(tok_dir)
            .with_context(|| format!("loading the tokenizer from `{}`", tok_dir.display()))?;
        let renderer = renderer_for(template, &bundle)?;
        let model = load_model(weights, adapter)?;
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
                let mut ids = self.bundle.prefix_ids.clone();
                ids.extend(self.bundle.encode(&text.join("\n"))?);
                Ok(ids)
            }
        }
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

/// Incremental detokenization: decode the whole id list each step and emit the new suffix.
/// Text ending in U+FFFD (a byte-fallback character not complete yet) is held back.
pub struct TextStream<'a> {
    bundle: &'a TokenizerBundle,
    ids: Vec<u32>,
    printed: String,
}

impl<'a> TextStream<'a> {
    pub fn new(bundle: &'a TokenizerBundle) -> Self {
        TextStream {
            bundle,
            ids: Vec::new(),
            printed: String::new(),
        }
    }

    /// Adds one id; returns the text that became printable.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.bundle.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let delta = match text.strip_prefix(self.printed.as_str()) {
            Some(d) => d.to_string(),
            // The decoder rewrote earlier text (rare: merged pieces); print what is new by length.
            None => text.chars().skip(self.printed.chars().count()).collect(),
        };
        self.printed = text;
        Ok(delta)
    }

    /// Whatever is still held back (an incomplete character at the end).
    pub fn finish(&mut self) -> Result<String> {
        let text = self.bundle.decode(&self.ids, true)?;
        let delta: String = text.chars().skip(self.printed.chars().count()).collect();
        self.printed = text;
        Ok(delta)
    }

    pub fn text(&self) -> &str {
        &self.printed
    }
}

/// Options shared by `generate` and `chat`.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A Hugging Face model dir (config.json, *.safetensors, tokenizer files).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// A PEFT LoRA adapter dir (adapter_config.json + adapter_model.safetensors), e.g. a train
    /// step's output.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Tokenizer dir if not the model dir.
    #[arg(long, value_name = "DIR")]
    pub tokenizer: Option<PathBuf>,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    /// Tokens to generate per reply.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Greedy decoding (argmax) instead of sampling.
    #[arg(long)]
    pub greedy: bool,
    /// Sampling temperature [default: generation_config.json's, else 1.0].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens, 0 = off [default: generation_config.json's, else 50].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling mass [default: generation_config.json's, else 1.0].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Penalise tokens already present (> 1).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Sampling seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// auto, cpu, cuda or cuda:N (auto: CUDA when a driver and GPU are present, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl ModelArgs {
    /// Opens the session on `--device` (resolved first, so a bad device fails before loading),
    /// printing which device runs to stderr.
    pub fn open(&self, template: &str) -> Result<Session> {
        let (backend, line) = crate::backend::backend_for_spec(&self.device)?;
        eprintln!("{line}");
        let mut s = Session::open(
            &self.model,
            self.tokenizer.as_deref(),
            self.adapter.as_deref(),
            template,
        )?;
        s.model.backend = backend;
        Ok(s)
    }

    pub fn config(&self, s: &Session) -> GenConfig {
        let mut sampling = s.default_sampling();
        sampling.do_sample = !self.greedy;
        if let Some(t) = self.temperature {
            sampling.temperature = t;
        }
        if let Some(k) = self.top_k {
            sampling.top_k = k;
        }
        if let Some(p) = self.top_p {
            sampling.top_p = p;
        }
        if let Some(r) = self.repetition_penalty {
            sampling.repetition_penalty = r;
        }
        GenConfig {
            max_new_tokens: self.max_new_tokens,
            stop_ids: s.stop_ids.clone(),
            sampling,
            seed: self.seed,
        }
    }
}

pub const GENERATE_HELP: &str = "\
Examples:
  recipe generate --model output/quickstart/merged --prompt \"What color is the sky?\" --greedy
  recipe generate --model base --adapter output/run/adapter --prompt \"你好\" --template chatglm3
  recipe generate --model base --prompt \"Once upon a time\" --template none --top-p 0.9 --seed 1
  recipe generate --model base --prompt \"你好\" --device cuda      on GPU 0 (auto: GPU if present)

--template: auto (the model's chat template if it has one, else raw text), model, none (raw
text), or a built-in: chatglm3, chatglm, alpaca, human_assistant, sharp_human, chatml, qwen,
llama3, plain. Generation stops on the model's eos ids (generation_config.json, config.json,
the tokenizer; ChatGLM3 also <|user|> and <|observation|>) or after --max-new-tokens.";

/// `recipe generate`: one prompt, the reply streamed to stdout.
#[derive(Args, Clone, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// The user message (or raw text with --template none).
    #[arg(long)]
    pub prompt: String,
    /// How the prompt is rendered.
    #[arg(long, default_value = "auto")]
    pub template: String,
}

pub const CHAT_HELP: &str = "\
Examples:
  recipe chat --model /models/chatglm3-6b --adapter output/chatglm3/adapter
  recipe chat --model output/quickstart/merged --template human_assistant --greedy

Type a message and press Enter; the reply streams as it is generated. The conversation is
kept and rendered with the template each turn. Commands: /reset clears the history, /exit
(or end of input, Ctrl-D) quits.";

/// `recipe chat`: a multi-turn REPL on stdin.
#[derive(Args, Clone, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// How the conversation is rendered (model = the tokenizer's chat template).
    #[arg(long, default_value = "model")]
    pub template: String,
}

fn report(e: anyhow::Error) -> i32 {
    eprintln!("error: {e:#}");
    1
}

/// Generates one reply for `prompt`, writing text to `out` as it is produced. Returns the
/// full reply text.
fn stream_reply(
    s: &Session,
    prompt: Vec<u32>,
    cfg: &GenConfig,
    out: &mut dyn Write,
) -> Result<String> {
    let mut stream = TextStream::new(&s.bundle);
    let mut err: Option<anyhow::Error> = None;
    s.generate(&[prompt], cfg, |_, id| {
        if err.is_some() {
            return;
        }
        match stream.push(id) {
            Ok(d) => {
                let _ = out.write_all(d.as_bytes());
                let _ = out.flush();
            }
            Err(e) => err = Some(e),
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    let rest = stream.finish()?;
    out.write_all(rest.as_bytes())?;
    out.flush()?;
    Ok(stream.text().to_string())
}

pub fn generate_cmd(args: &GenerateArgs) -> i32 {
    let run = || -> Result<()> {
        let m = &args.m;
        let s = m.open(&args.template)?;
        let cfg = m.config(&s);
        cfg.sampling.validate().map_err(|e| anyhow::anyhow!(e))?;
        let prompt = s.prompt(m.system.as_deref(), &args.prompt)?;
        let mut out = std::io::stdout().lock();
        stream_reply(&s, prompt, &cfg, &mut out)?;
        writeln!(out)?;
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => report(e),
    }
}

/// The chat REPL over any input/output (stdin/stdout in `chat_cmd`). `prompt_marker` is
/// written to `marker` before each turn (stderr on a terminal).
pub fn chat_loop(
    s: &Session,
    cfg: &GenConfig,
    system: Option<&str>,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    marker: &mut dyn Write,
) -> Result<()> {
    let mut history: Vec<Message> = Vec::new();
    let reset = |h: &mut Vec<Message>| {
        h.clear();
        if let Some(sys) = system {
            h.push(message(Role::System, sys));
        }
    };
    reset(&mut history);
    let mut line = String::new();
    let mut turn = 0u64;
    loop {
        let _ = write!(marker, ">>> ");
        let _ = marker.flush();
        line.clear();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        let msg = line.trim();
        match msg {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                reset(&mut history);
                writeln!(out, "(history cleared)")?;
                continue;
            }
            _ => {}
        }
        history.push(message(Role::User, msg));
        let ids = s.conversation_ids(&history)?;
        // Each turn samples with its own seed so replies differ across turns.
        let turn_cfg = GenConfig {
            seed: cfg.seed.wrapping_add(turn),
            ..cfg.clone()
        };
        turn += 1;
        let reply = stream_reply(s, ids, &turn_cfg, out)?;
        writeln!(out)?;
        history.push(message(Role::Assistant, reply.trim()));
    }
    Ok(())
}

pub fn chat_cmd(args: &ChatArgs) -> i32 {
    let run = || -> Result<()> {
        let m = &args.m;
        let s = m.open(&args.template)?;
        let cfg = m.config(&s);
        cfg.sampling.validate().map_err(|e| anyhow::anyhow!(e))?;
        let stdin = std::io::stdin();
        let tty = stdin.is_terminal();
        let mut marker: Box<dyn Write> = if tty {
            eprintln!(
                "chat with {} (/reset clears the history, /exit quits)",
                m.model.display()
            );
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::sink())
        };
        chat_loop(
            &s,
            &cfg,
            m.system.as_deref(),
            &mut stdin.lock(),
            &mut std::io::stdout().lock(),
            &mut marker,
        )
    };
    match run() {
        Ok(()) => 0,
        Err(e) => report(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quickstart() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart/base-init")
    }

    /// Streaming deltas concatenate to the full decode, for any id sequence.
    #[test]
    fn text_stream_concatenates_to_decode() {
        let bundle = TokenizerBundle::from_dir(quickstart()).expect("tokenizer");
        let ids: Vec<u32> = (0..60u32).map(|i| (i * 37 + 11) % 380).collect();
        let mut st = TextStream::new(&bundle);
        let mut all = String::new();
        for &i in &ids {
            all.push_str(&st.push(i).expect("push"));
        }
        all.push_str(&st.finish().expect("finish"));
        assert_eq!(all, bundle.decode(&ids, true).expect("decode"));
    }

    /// Streaming generate prints exactly the decoded greedy reply; in the chat loop empty
    /// lines are skipped, /reset clears the history (the same first turn gives the same greedy
    /// reply), /exit stops before later input.
    #[test]
    fn generate_stream_and_chat_history() {
        let s = Session::open(&quickstart(), None, None, "human_assistant").expect("session");
        let cfg = GenConfig {
            max_new_tokens: 6,
            stop_ids: s.stop_ids.clone(),
            ..Default::default()
        };
        let prompt = s.prompt(None, "What color is the sky?").expect("prompt");
        let mut out = Vec::new();
        let text = stream_reply(&s, prompt.clone(), &cfg, &mut out).expect("reply");
        assert_eq!(String::from_utf8(out).expect("utf8"), text);
        let g = s.generate(&[prompt], &cfg, |_, _| {}).expect("gen");
        assert_eq!(text, s.decode(&g[0].tokens).expect("decode"));

        let mut input = std::io::Cursor::new("hello\n\n/reset\nhello\n/exit\nignored\n");
        let mut out = Vec::new();
        chat_loop(&s, &cfg, None, &mut input, &mut out, &mut std::io::sink()).expect("chat");
        let out = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out:?}");
        assert_eq!(lines[1], "(history cleared)");
        assert_eq!(lines[0], lines[2]);
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
            model: load_model(&weights, None).expect("model"),
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

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        #[command(after_help = GENERATE_HELP)]
        Generate(GenerateArgs),
        #[command(after_help = CHAT_HELP)]
        Chat(ChatArgs),
    }

    #[test]
    fn flags_parse() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "recipe",
            "generate",
            "--model",
            "m",
            "--adapter",
            "a",
            "--prompt",
            "hi",
            "--greedy",
            "--top-k",
            "5",
            "--max-new-tokens",
            "7",
            "--template",
            "chatglm3",
            "--system",
            "be brief",
        ])
        .expect("parse");
        let Cmd::Generate(g) = c.cmd else {
            panic!("generate")
        };
        assert_eq!((g.prompt.as_str(), g.template.as_str()), ("hi", "chatglm3"));
        assert!(g.m.greedy);
        assert_eq!((g.m.top_k, g.m.max_new_tokens, g.m.seed), (Some(5), 7, 42));
        assert_eq!(g.m.adapter.as_deref(), Some(Path::new("a")));
        assert_eq!(g.m.system.as_deref(), Some("be brief"));
        assert_eq!(g.m.device, "auto");
        let c = Cli::try_parse_from(["recipe", "chat", "--model", "m", "--temperature", "0.7"])
            .expect("parse");
        let Cmd::Chat(ch) = c.cmd else { panic!("chat") };
        assert_eq!(
            (ch.template.as_str(), ch.m.temperature),
            ("model", Some(0.7))
        );
        assert!(
            Cli::try_parse_from(["recipe", "generate", "--model", "m"]).is_err(),
            "--prompt is required"
        );
    }
}
