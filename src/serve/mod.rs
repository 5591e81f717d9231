//! `recipe serve`: an OpenAI-compatible HTTP server for a model dir (+ adapter) on the CPU or
//! CUDA backend. `POST /v1/chat/completions` (streaming or not), `POST /v1/completions`,
//! `GET /v1/models`.
//!
//! Threads: one per connection reads the request ([`http`]), validates it ([`openai`]) and
//! queues a job; one worker owns the model and answers jobs in arrival order, sending text
//! deltas back over a channel as tokens are chosen. A full queue is a 503 at once; a job that
//! waited longer than `--timeout` in the queue is a 503 too. Generation stops at a stop id, a
//! `stop` string, `max_tokens`, or when the client has gone away.

pub mod http;
pub mod openai;

use crate::eval::generate::{generate, CausalLm, FinishReason, GenConfig};
use crate::eval::lm::EngineLm;
use crate::eval::session::{message, Session};
use crate::gen_cli::{ModelArgs, TextStream};
use anyhow::{Context, Result};
use clap::Args;
use openai::{ApiError, GenRequest, Kind, Meta, Prompt};
use std::cell::Cell;
use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const SERVE_HELP: &str = "\
Examples:
  recipe serve --model output/quickstart/merged
  recipe serve --model /models/chatglm3-6b --adapter output/chatglm3/adapter --port 8080 --device cuda

Then, from any OpenAI client:
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{\"model\": \"merged\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}'
  python -c 'import openai; c = openai.OpenAI(base_url=\"http://127.0.0.1:8000/v1\", api_key=\"-\");
             print(c.chat.completions.create(model=\"merged\", messages=[{\"role\": \"user\", \"content\": \"hi\"}]))'

Requests: temperature (0 = greedy), top_p, max_tokens (capped at --max-new-tokens, its default),
seed, stop (up to 4 strings), stream. Unset sampling fields take generation_config.json's values
or the flags below. The `model` field is not checked. Listens on 127.0.0.1 unless --host says
otherwise; there is no authentication, so expose it only behind a proxy that has some.";

/// `recipe serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// How chat messages are rendered (auto: the model's chat template, else raw text).
    #[arg(long, default_value = "auto")]
    pub template: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the line printed at start says which).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model id reported to clients [default: the model dir's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Requests that may wait for the model; more are answered 503 at once.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Seconds allowed to send a request, and to wait in the queue.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// What the worker sends back for one job.
enum Event {
    Delta(String),
    Done {
        finish: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(ApiError),
}

struct Job {
    req: GenRequest,
    queued: Instant,
    tx: Sender<Event>,
}

/// Read-only state the connection threads share.
struct Shared {
    name: String,
    created: u64,
    max_body: usize,
    timeout: Duration,
    queue: usize,
    jobs: SyncSender<Job>,
    open_conns: AtomicUsize,
    next_id: AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn serve_cmd(args: &ServeArgs) -> i32 {
    match serve(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn serve(args: &ServeArgs) -> Result<()> {
    anyhow::ensure!(args.queue >= 1, "--queue must be at least 1");
    let addr = format!("{}:{}", args.host, args.port);
    let listener = TcpListener::bind(&addr).with_context(|| format!("listening on {addr}"))?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.m
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });

    // The worker loads the model and owns it; it says when it is ready (or why it is not).
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(args.queue);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let worker_args = args.clone();
    std::thread::spawn(move || worker(&worker_args, jobs_rx, ready_tx));
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => anyhow::bail!("the model worker stopped while loading"),
    }

    let shared = Arc::new(Shared {
        name,
        created: now_secs(),
        max_body: args.max_body,
        timeout: Duration::from_secs(args.timeout.max(1)),
        queue: args.queue,
        jobs: jobs_tx,
        open_conns: AtomicUsize::new(0),
        next_id: AtomicU64::new(0),
    });
    let local = listener.local_addr()?;
    println!(
        "serving {} on http://{local} (POST /v1/chat/completions, POST /v1/completions, GET /v1/models)",
        shared.name
    );
    let _ = std::io::Write::flush(&mut std::io::stdout());
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let shared = shared.clone();
        // Connections beyond the queue (plus some reading requests) are refused at once.
        if shared.open_conns.fetch_add(1, Ordering::SeqCst) >= shared.queue + 16 {
            shared.open_conns.fetch_sub(1, Ordering::SeqCst);
            let mut c = conn;
            let _ = http::write_json(
                &mut c,
                503,
                &ApiError::new(503, "too many connections").body(),
            );
            continue;
        }
        std::thread::spawn(move || {
            handle(conn, &shared);
            shared.open_conns.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}

fn worker(args: &ServeArgs, jobs: Receiver<Job>, ready: Sender<Result<()>>) {
    let s = match args.m.open(&args.template) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let base = args.m.config(&s);
    if let Err(e) = base.sampling.validate() {
        let _ = ready.send(Err(anyhow::anyhow!(e)));
        return;
    }
    let _ = ready.send(Ok(()));
    let timeout = Duration::from_secs(args.timeout.max(1));
    for (n, job) in jobs.into_iter().enumerate() {
        if job.queued.elapsed() > timeout {
            let msg = format!(
                "the request waited over {}s for the model (--timeout)",
                timeout.as_secs()
            );
            let _ = job.tx.send(Event::Error(ApiError::new(503, msg)));
            continue;
        }
        let ev = match answer(&s, &base, args.m.system.as_deref(), n as u64, &job) {
            Ok(done) => done,
            Err(e) => Event::Error(ApiError::new(500, format!("{e:#}"))),
        };
        let _ = job.tx.send(ev);
    }
}

/// A model whose decode fails once `stop` is set: how the generation loop is ended early
/// (stop string found, client gone).
struct Stoppable<'a, M> {
    lm: M,
    stop: &'a Cell<bool>,
}

impl<M: CausalLm> CausalLm for Stoppable<'_, M> {
    fn vocab(&self) -> usize {
        self.lm.vocab()
    }
    fn prefill(&mut self, batch_ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.lm.prefill(batch_ids)
    }
    fn decode(&mut self, next: &[u32], active: &[bool]) -> Result<Vec<Vec<f32>>> {
        anyhow::ensure!(!self.stop.get(), "stopped");
        self.lm.decode(next, active)
    }
}

/// Runs one job, streaming deltas to `job.tx`; returns the final event.
fn answer(s: &Session, base: &GenConfig, system: Option<&str>, n: u64, job: &Job) -> Result<Event> {
    let req = &job.req;
    let ids = match &req.prompt {
        Prompt::Chat(msgs) => {
            let mut msgs = msgs.clone();
            if let (Some(sys), false) = (
                system,
                msgs.iter()
                    .any(|m| m.role == crate::data::example::Role::System),
            ) {
                msgs.insert(0, message(crate::data::example::Role::System, sys));
            }
            s.conversation_ids(&msgs)?
        }
        Prompt::Text(t) => s.text_ids(t)?,
    };
    let mut cfg = base.clone();
    cfg.max_new_tokens = req
        .max_tokens
        .unwrap_or(base.max_new_tokens)
        .min(base.max_new_tokens);
    match req.temperature {
        Some(t) if t == 0.0 => cfg.sampling.do_sample = false,
        Some(t) => {
            cfg.sampling.do_sample = true;
            cfg.sampling.temperature = t;
        }
        None => {}
    }
    if let Some(p) = req.top_p {
        cfg.sampling.top_p = p;
    }
    cfg.seed = req.seed.unwrap_or(base.seed.wrapping_add(n));
    if let Err(e) = cfg.sampling.validate() {
        return Ok(Event::Error(ApiError::new(400, e)));
    }

    let stop = Cell::new(false);
    let mut stream = TextStream::new(&s.bundle);
    let mut text = String::new();
    let (mut sent, mut tokens, mut hit_stop) = (0usize, 0usize, false);
    let mut err = None;
    let mut lm = Stoppable {
        lm: EngineLm::new(&s.model, s.pad_id, cfg.max_new_tokens),
        stop: &stop,
    };
    let out = generate(&mut lm, std::slice::from_ref(&ids), &cfg, |_, id| {
        if stop.get() {
            return;
        }
        tokens += 1;
        match stream.push(id) {
            Ok(d) => text.push_str(&d),
            Err(e) => {
                err = Some(e);
                stop.set(true);
                return;
            }
        }
        if openai::cut_at_stop(&mut text, &req.stop) {
            hit_stop = true;
            stop.set(true);
        }
        let upto = text.len()
            - if hit_stop {
                0
            } else {
                openai::stop_prefix_len(&text, &req.stop)
            };
        if req.stream && upto > sent {
            if job
                .tx
                .send(Event::Delta(text[sent..upto].to_string()))
                .is_err()
            {
                stop.set(true); // the client has gone
            }
            sent = upto;
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let finish = if stop.get() {
        "stop" // a stop string, or the client went away (the loop was ended on purpose)
    } else {
        let g = out?;
        text.push_str(&stream.finish()?);
        hit_stop |= openai::cut_at_stop(&mut text, &req.stop);
        match g.first().map(|g| g.finish) {
            Some(FinishReason::Length) if !hit_stop => "length",
            _ => "stop",
        }
    };
    if req.stream && text.len() > sent {
        let _ = job.tx.send(Event::Delta(text[sent..].to_string()));
    } else if !req.stream {
        let _ = job.tx.send(Event::Delta(text));
    }
    Ok(Event::Done {
        finish,
        prompt_tokens: ids.len(),
        completion_tokens: tokens,
    })
}

fn handle(conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(shared.timeout));
    let _ = conn.set_write_timeout(Some(shared.timeout));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut out = conn;
    let req = match http::read_request(&mut BufReader::new(read_half), shared.max_body) {
        Ok(r) => r,
        Err(http::ReadError::Respond(status, msg)) => {
            let _ = http::write_json(&mut out, status, &ApiError::new(status, msg).body());
            return;
        }
        Err(http::ReadError::Gone) => return,
    };
    let routed = match (req.method.as_str(), req.path.trim_end_matches('/')) {
        ("GET", "/v1/models") => {
            let _ = http::write_json(&mut out, 200, &openai::models(&shared.name, shared.created));
            return;
        }
        ("GET", "" | "/health") => {
            let _ = http::write_json(&mut out, 200, &serde_json::json!({"status": "ok"}));
            return;
        }
        ("POST", "/v1/chat/completions") => {
            openai::chat_request(&req.body).map(|r| (Kind::Chat, r))
        }
        ("POST", "/v1/completions") => {
            openai::completion_request(&req.body).map(|r| (Kind::Completion, r))
        }
        (m, p @ ("/v1/models" | "/v1/chat/completions" | "/v1/completions")) => {
            Err(ApiError::new(405, format!("{m} is not allowed on {p}")))
        }
        (m, p) => Err(ApiError::new(404, format!("no route for {m} {p}"))),
    };
    let (kind, req) = match routed {
        Ok(x) => x,
        Err(e) => {
            let _ = http::write_json(&mut out, e.status, &e.body());
            return;
        }
    };
    let (tx, rx) = mpsc::channel();
    let stream = req.stream;
    let job = Job {
        req,
        queued: Instant::now(),
        tx,
    };
    match shared.jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            let msg = format!(
                "the server is busy: {} requests are waiting (--queue)",
                shared.queue
            );
            let _ = http::write_json(&mut out, 503, &ApiError::new(503, msg).body());
            return;
        }
        Err(TrySendError::Disconnected(_)) => {
            let _ = http::write_json(
                &mut out,
                500,
                &ApiError::new(500, "the model worker stopped").body(),
            );
            return;
        }
    }
    let n = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let id = format!(
        "{}-{:x}{n}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        now_secs()
    );
    let meta = Meta {
        id: &id,
        created: now_secs(),
        model: &shared.name,
    };
    respond(out, kind, &meta, stream, rx);
}

/// Turns the worker's events into the HTTP answer.
fn respond(out: TcpStream, kind: Kind, meta: &Meta, stream: bool, rx: Receiver<Event>) {
    let mut out = out;
    let mut events = rx.into_iter();
    let first = match events.next() {
        Some(e) => e,
        None => Event::Error(ApiError::new(500, "the model worker stopped")),
    };
    if let Event::Error(e) = &first {
        let _ = http::write_json(&mut out, e.status, &e.body());
        return;
    }
    if !stream {
        let mut text = String::new();
        for ev in std::iter::once(first).chain(events) {
            match ev {
                Event::Delta(d) => text.push_str(&d),
                Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    let body = openai::full_response(
                        kind,
                        meta,
                        &text,
                        finish,
                        prompt_tokens,
                        completion_tokens,
                    );
                    let _ = http::write_json(&mut out, 200, &body);
                    return;
                }
                Event::Error(e) => {
                    let _ = http::write_json(&mut out, e.status, &e.body());
                    return;
                }
            }
        }
        return;
    }
    let Ok(mut sse) = http::EventStream::start(out) else {
        return;
    };
    for ev in std::iter::once(first).chain(events) {
        let r = match ev {
            Event::Delta(d) => sse.event(&openai::chunk(kind, meta, Some(&d), None)),
            Event::Done { finish, .. } => {
                let _ = sse.event(&openai::chunk(kind, meta, None, Some(finish)));
                let _ = sse.done();
                return;
            }
            // Mid-stream errors: OpenAI's shape as one event, then the end marker.
            Event::Error(e) => {
                let _ = sse.event(&e.body());
                let _ = sse.done();
                return;
            }
        };
        if r.is_err() {
            return; // client gone: dropping `rx` tells the worker
        }
    }
}
