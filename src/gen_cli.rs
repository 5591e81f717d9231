//! `recipe generate` and `recipe chat`: the command-line front end over
//! [`crate::eval::session::Session`] (model + optional PEFT adapter on `--device`, prompts
//! rendered with a template): flags, replies streamed to stdout as tokens are chosen, the chat
//! REPL. [`TextStream`] turns a growing id list into printable text deltas.

use crate::data::example::{Message, Role};
use crate::eval::generate::GenConfig;
use crate::eval::session::{message, Session};
use crate::text::TokenizerBundle;
use anyhow::Result;
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

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
    /// A Hugging Face model dir (config.json, *.safetensors or pytorch_model*.bin, tokenizer files).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// A PEFT LoRA adapter dir (adapter_config.json + adapter_model.safetensors or .bin), e.g. a train
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
    /// What matrix products compute in on CUDA: auto (bf16), bf16 (tensor cores, f32
    /// accumulation) or f32. The CPU computes in f32.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bf16", "f32"])]
    pub dtype: String,
}

impl ModelArgs {
    /// Opens the session on `--device` (resolved first, so a bad device fails before loading),
    /// printing which device runs to stderr.
    pub fn open(&self, template: &str) -> Result<Session> {
        let (backend, line) = crate::backend::backend_for_spec(&self.device, &self.dtype)?;
        eprintln!("{line}");
        Session::open_on(
            backend,
            &self.model,
            self.tokenizer.as_deref(),
            self.adapter.as_deref(),
            template,
        )
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

/// How long one reply took: tokens generated, seconds to the first one (prefill + one step)
/// and to the last.
struct ReplyTimes {
    tokens: usize,
    first: f64,
    total: f64,
}

impl ReplyTimes {
    /// "12 tokens in 0.84 s: first after 0.21 s, then 17.5 tok/s".
    fn line(&self) -> String {
        let rest = self.tokens.saturating_sub(1);
        let rate = if rest > 0 && self.total > self.first {
            format!(
                ", then {:.1} tok/s",
                rest as f64 / (self.total - self.first)
            )
        } else {
            String::new()
        };
        format!(
            "{} tokens in {:.2} s: first after {:.2} s{rate}",
            self.tokens, self.total, self.first
        )
    }
}

/// Generates one reply for `prompt`, writing text to `out` as it is produced. Returns the
/// full reply text and its timing.
fn stream_reply(
    s: &Session,
    prompt: Vec<u32>,
    cfg: &GenConfig,
    out: &mut dyn Write,
) -> Result<(String, ReplyTimes)> {
    let mut stream = TextStream::new(&s.bundle);
    let mut err: Option<anyhow::Error> = None;
    let start = std::time::Instant::now();
    let mut times = ReplyTimes {
        tokens: 0,
        first: 0.0,
        total: 0.0,
    };
    s.generate(&[prompt], cfg, |_, id| {
        times.tokens += 1;
        times.total = start.elapsed().as_secs_f64();
        if times.tokens == 1 {
            times.first = times.total;
        }
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
    Ok((stream.text().to_string(), times))
}

pub fn generate_cmd(args: &GenerateArgs) -> i32 {
    let run = || -> Result<()> {
        let m = &args.m;
        let s = m.open(&args.template)?;
        let cfg = m.config(&s);
        cfg.sampling.validate().map_err(|e| anyhow::anyhow!(e))?;
        let prompt = s.prompt(m.system.as_deref(), &args.prompt)?;
        let mut out = std::io::stdout().lock();
        let (_, times) = stream_reply(&s, prompt, &cfg, &mut out)?;
        writeln!(out)?;
        eprintln!("{}", times.line());
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
        let (reply, _) = stream_reply(s, ids, &turn_cfg, out)?;
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
    use std::path::Path;

    fn quickstart() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart/base-init")
    }

    /// The timing line `recipe generate` prints on stderr: the rate counts the tokens after
    /// the first (the first one pays for the prompt).
    #[test]
    fn reply_times_line() {
        let t = |tokens, first, total| ReplyTimes {
            tokens,
            first,
            total,
        };
        assert_eq!(
            t(12, 0.2, 1.3).line(),
            "12 tokens in 1.30 s: first after 0.20 s, then 10.0 tok/s"
        );
        assert_eq!(
            t(1, 0.5, 0.5).line(),
            "1 tokens in 0.50 s: first after 0.50 s"
        );
        assert_eq!(
            t(0, 0.0, 0.0).line(),
            "0 tokens in 0.00 s: first after 0.00 s"
        );
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
        let (text, times) = stream_reply(&s, prompt.clone(), &cfg, &mut out).expect("reply");
        assert_eq!(String::from_utf8(out).expect("utf8"), text);
        let g = s.generate(&[prompt], &cfg, |_, _| {}).expect("gen");
        assert_eq!(text, s.decode(&g[0].tokens).expect("decode"));
        assert_eq!(times.tokens, g[0].tokens.len());
        assert!(times.first <= times.total);

        let mut input = std::io::Cursor::new("hello\n\n/reset\nhello\n/exit\nignored\n");
        let mut out = Vec::new();
        chat_loop(&s, &cfg, None, &mut input, &mut out, &mut std::io::sink()).expect("chat");
        let out = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out:?}");
        assert_eq!(lines[1], "(history cleared)");
        assert_eq!(lines[0], lines[2]);
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
