//! `recipe serve` over real sockets on 127.0.0.1: the shipped tiny model answers the OpenAI
//! endpoints; greedy replies equal `recipe generate --greedy`; streaming carries the same text;
//! bad requests get OpenAI-shaped errors with exact messages.

mod common;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let base = common::root().join("examples/quickstart/base");
    let mut child = common::bin()
        .args(["serve", "--model"])
        .arg(&base)
        .args([
            "--port",
            "0",
            "--device",
            "cpu",
            "--template",
            "human_assistant",
        ])
        .args(["--max-new-tokens", "12"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn recipe serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "serving base on http://127.0.0.1:PORT (...)"
    assert!(
        line.starts_with("serving base on http://127.0.0.1:"),
        "{line}"
    );
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    Server {
        child,
        addr: addr.to_string(),
    }
}

/// Sends raw bytes, returns (status, body).
fn raw(addr: &str, req: &[u8]) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(req).unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn post(addr: &str, path: &str, body: &str) -> (u16, String) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw(addr, req.as_bytes())
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// The text of `recipe generate --greedy` for the same prompt and template.
fn generate_cli(prompt: &str, template: &str) -> String {
    let base = common::root().join("examples/quickstart/base");
    let o = common::bin()
        .args(["generate", "--model"])
        .arg(&base)
        .args(["--prompt", prompt, "--greedy", "--max-new-tokens", "12"])
        .args(["--template", template, "--device", "cpu"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let t = String::from_utf8(o.stdout).unwrap();
    t.strip_suffix('\n').unwrap_or(&t).to_string()
}

#[test]
fn serves_the_openai_endpoints() {
    let s = start(&[]);
    let want = generate_cli("What color is the sky?", "human_assistant");
    assert!(!want.is_empty());

    let (st, body) = raw(&s.addr, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(st, 200);
    assert_eq!(json_of(&body)["data"][0]["id"], "base");

    // Chat, greedy: the same text as the CLI, OpenAI's shape, usage counted.
    let req = json!({"model": "anything", "temperature": 0,
        "messages": [{"role": "user", "content": "What color is the sky?"}]});
    let (st, body) = post(&s.addr, "/v1/chat/completions", &req.to_string());
    assert_eq!(st, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "base");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    assert!(u["completion_tokens"].as_u64().unwrap() <= 12);

    // Streaming: chunks whose deltas concatenate to the same text, then [DONE].
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let (st, body) = post(&s.addr, "/v1/chat/completions", &sreq.to_string());
    assert_eq!(st, 200);
    let events: Vec<&str> = body
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| json_of(e))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, want);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");

    // A stop string ends the reply before it.
    if let Some(cut) = want.char_indices().nth(3).map(|(i, _)| i) {
        let stop = &want[cut..want[cut..]
            .char_indices()
            .nth(2)
            .map_or(want.len(), |(i, _)| cut + i)];
        let first = want.find(stop).unwrap();
        let mut r = req.clone();
        r["stop"] = json!(stop);
        let (st, body) = post(&s.addr, "/v1/chat/completions", &r.to_string());
        assert_eq!(st, 200);
        let v = json_of(&body);
        assert_eq!(v["choices"][0]["message"]["content"], &want[..first]);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    // Completions: raw text, as `recipe generate --template none`.
    let want_raw = generate_cli("Once upon a time", "none");
    let (st, body) = post(
        &s.addr,
        "/v1/completions",
        r#"{"model": "base", "prompt": "Once upon a time", "temperature": 0}"#,
    );
    assert_eq!(st, 200, "{body}");
    let v = json_of(&body);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want_raw.as_str());
}

#[test]
fn bad_requests_get_openai_errors() {
    let s = start(&["--max-body", "200"]);
    let err = |(st, body): (u16, String)| {
        let v = json_of(&body);
        (st, v["error"]["message"].as_str().unwrap().to_string())
    };
    assert_eq!(
        err(post(&s.addr, "/v1/chat/completions", "{\"messages\": [")),
        (
            400,
            "invalid JSON body: EOF while parsing a list at line 1 column 14".into()
        )
    );
    assert_eq!(
        err(post(&s.addr, "/v1/chat/completions", r#"{"messages": []}"#)),
        (400, "messages is empty".into())
    );
    let (st, body) = post(
        &s.addr,
        "/v1/chat/completions",
        r#"{"messages": [], "n": 3}"#,
    );
    assert_eq!(st, 400);
    assert_eq!(json_of(&body)["error"]["type"], "invalid_request_error");
    let big = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(300));
    assert_eq!(
        err(post(&s.addr, "/v1/completions", &big)),
        (
            413,
            "request body of 314 bytes is over the limit of 200 (--max-body)".into()
        )
    );
    assert_eq!(
        err(raw(&s.addr, b"GET /v2/nothing HTTP/1.1\r\n\r\n")),
        (404, "no route for GET /v2/nothing".into())
    );
    assert_eq!(
        err(raw(&s.addr, b"GET /v1/completions HTTP/1.1\r\n\r\n")),
        (405, "GET is not allowed on /v1/completions".into())
    );
    assert_eq!(err(raw(&s.addr, b"NONSENSE\r\n\r\n")).0, 400);
    // The server is still up after all that.
    let (st, _) = raw(&s.addr, b"GET /health HTTP/1.1\r\n\r\n");
    assert_eq!(st, 200);
}

#[test]
fn a_missing_model_is_one_error_before_listening() {
    let o = common::bin()
        .args([
            "serve",
            "--model",
            "/nonexistent/model",
            "--port",
            "0",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let (out, err) = common::text(&o);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "device: cpu (requested)\nerror: loading the tokenizer from `/nonexistent/model`: \
         /nonexistent/model: no tokenizer.json or tokenizer.model\n"
    );
}
