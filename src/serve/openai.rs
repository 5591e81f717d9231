//! The OpenAI API's request and response shapes for `recipe serve`: `/v1/chat/completions`,
//! `/v1/completions` and `/v1/models`, as the `openai` clients send and expect them. Fields we do
//! not implement (`logprobs`, `tools`, penalties, ...) are ignored, except where ignoring them
//! would change the answer silently (`n` > 1, tool messages): those are a 400.

use crate::data::example::{Message, Role};
use serde::Deserialize;
use serde_json::{json, Value};

/// A 4xx/5xx answer in OpenAI's error shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }

    pub fn bad(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            param: Some(param),
        }
    }

    pub fn body(&self) -> Value {
        let kind = match self.status {
            400..=499 => "invalid_request_error",
            503 => "server_busy",
            _ => "server_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": null}})
    }
}

/// `content` is a string or a list of `{"type": "text", "text": ...}` parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// `stop` is a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
struct Common {
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    n: Option<u64>,
    stop: Option<Stop>,
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct CompletionBody {
    prompt: Value,
    #[serde(flatten)]
    common: Common,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Rendered with the served template (generation prompt appended).
    Chat(Vec<Message>),
    /// Raw text, tokenized as is (with the tokenizer's prefix).
    Text(String),
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenRequest {
    pub prompt: Prompt,
    pub stream: bool,
    /// None: the server's `--max-new-tokens`.
    pub max_tokens: Option<usize>,
    /// 0 = greedy; None = the server's default.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    /// Text stops: the reply ends before the first occurrence of any of them.
    pub stop: Vec<String>,
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("invalid JSON body: {e}")))
}

fn common(c: Common, prompt: Prompt) -> Result<GenRequest, ApiError> {
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("n", "only n = 1 is supported"));
    }
    if let Some(t) = c.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad(
                "temperature",
                format!("temperature {t} is outside 0..=2"),
            ));
        }
    }
    if let Some(p) = c.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad(
                "top_p",
                format!("top_p {p} is outside (0, 1]"),
            ));
        }
    }
    let max = c.max_completion_tokens.or(c.max_tokens);
    if max == Some(0) {
        return Err(ApiError::bad("max_tokens", "max_tokens must be at least 1"));
    }
    let stop = match c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::bad(
            "stop",
            "stop takes up to 4 non-empty strings",
        ));
    }
    Ok(GenRequest {
        prompt,
        stream: c.stream,
        max_tokens: max.map(|m| m.min(u32::MAX as u64) as usize),
        temperature: c.temperature,
        top_p: c.top_p,
        seed: c.seed,
        stop,
    })
}

/// Parses a `/v1/chat/completions` body.
pub fn chat_request(body: &[u8]) -> Result<GenRequest, ApiError> {
    let b: ChatBody = parse_json(body)?;
    if b.messages.is_empty() {
        return Err(ApiError::bad("messages", "messages is empty"));
    }
    let mut msgs = Vec::new();
    for (i, m) in b.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            r => {
                return Err(ApiError::bad(
                    "messages",
                    format!("messages[{i}]: role {r:?} is not supported (system, user, assistant)"),
                ))
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut t = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::bad(
                            "messages",
                            format!(
                                "messages[{i}]: content part {:?} is not supported (text only)",
                                p.kind
                            ),
                        ));
                    }
                    t.push_str(&p.text);
                }
                t
            }
        };
        msgs.push(Message {
            role,
            content,
            metadata: String::new(),
        });
    }
    common(b.common, Prompt::Chat(msgs))
}

/// Parses a `/v1/completions` body (`prompt`: one string).
pub fn completion_request(body: &[u8]) -> Result<GenRequest, ApiError> {
    let b: CompletionBody = parse_json(body)?;
    let prompt = match b.prompt {
        Value::String(s) => s,
        Value::Array(a) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or("").into(),
        _ => return Err(ApiError::bad("prompt", "prompt must be one string")),
    };
    common(b.common, Prompt::Text(prompt))
}

/// Cuts `text` before the earliest stop string; returns whether one was found.
pub fn cut_at_stop(text: &mut String, stop: &[String]) -> bool {
    match stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(i) => {
            text.truncate(i);
            true
        }
        None => false,
    }
}

/// The longest suffix of `text` that could be the start of a stop string: held back while
/// streaming so a stop split across tokens is never sent.
pub fn stop_prefix_len(text: &str, stop: &[String]) -> usize {
    let mut best = 0;
    for s in stop {
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                best = best.max(i);
            }
        }
    }
    best
}

/// Which endpoint a response is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// Identity of one response.
pub struct Meta<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

/// The whole (non-streamed) answer.
pub fn full_response(
    kind: Kind,
    m: &Meta,
    text: &str,
    finish: &str,
    prompt_tokens: usize,
    completion_tokens: usize,
) -> Value {
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    match kind {
        Kind::Chat => json!({
            "id": m.id, "object": "chat.completion", "created": m.created, "model": m.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": null, "finish_reason": finish}],
            "usage": usage,
        }),
        Kind::Completion => json!({
            "id": m.id, "object": "text_completion", "created": m.created, "model": m.model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
            "usage": usage,
        }),
    }
}

/// One streamed chunk: a text delta, or (with `finish`) the last chunk.
pub fn chunk(kind: Kind, m: &Meta, delta: Option<&str>, finish: Option<&str>) -> Value {
    match kind {
        Kind::Chat => {
            let d = match delta {
                Some(t) => json!({"role": "assistant", "content": t}),
                None => json!({}),
            };
            json!({
                "id": m.id, "object": "chat.completion.chunk", "created": m.created,
                "model": m.model,
                "choices": [{"index": 0, "delta": d, "logprobs": null, "finish_reason": finish}],
            })
        }
        Kind::Completion => json!({
            "id": m.id, "object": "text_completion", "created": m.created, "model": m.model,
            "choices": [{"index": 0, "text": delta.unwrap_or(""), "logprobs": null,
                         "finish_reason": finish}],
        }),
    }
}

/// `/v1/models`.
pub fn models(name: &str, created: u64) -> Value {
    json!({"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "recipe"}
    ]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_bodies() {
        let r = chat_request(
            br#"{"model":"x","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi"}]}],
                "temperature":0,"max_tokens":5,"stop":"\n","stream":true,"user":"ignored"}"#,
        )
        .unwrap();
        let Prompt::Chat(m) = &r.prompt else { panic!() };
        assert_eq!((m[0].role, m[1].content.as_str()), (Role::System, "hi"));
        assert_eq!(
            (r.max_tokens, r.temperature, r.stream),
            (Some(5), Some(0.0), true)
        );
        assert_eq!(r.stop, vec!["\n".to_string()]);
    }

    #[test]
    fn bad_bodies_are_400s_naming_the_field() {
        let e = |b: &[u8]| chat_request(b).unwrap_err();
        assert_eq!(
            e(b"{nope").message,
            "invalid JSON body: key must be a string at line 1 column 2"
        );
        assert_eq!(
            e(br#"{"messages":[]}"#),
            ApiError::bad("messages", "messages is empty")
        );
        assert_eq!(
            e(br#"{"messages":[{"role":"tool","content":"x"}]}"#).message,
            "messages[0]: role \"tool\" is not supported (system, user, assistant)"
        );
        assert_eq!(
            e(br#"{"messages":[{"role":"user","content":"x"}],"n":2}"#),
            ApiError::bad("n", "only n = 1 is supported")
        );
        assert_eq!(
            e(br#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#).message,
            "temperature 3 is outside 0..=2"
        );
        assert_eq!(
            completion_request(br#"{"prompt":[1,2]}"#).unwrap_err(),
            ApiError::bad("prompt", "prompt must be one string")
        );
    }

    #[test]
    fn stops() {
        let stop = vec!["</s>".to_string(), "\n\n".to_string()];
        let mut t = "a\n\nb</s>".to_string();
        assert!(cut_at_stop(&mut t, &stop));
        assert_eq!(t, "a");
        assert_eq!(stop_prefix_len("abc</", &stop), 2);
        assert_eq!(stop_prefix_len("abc\n", &stop), 1);
        assert_eq!(stop_prefix_len("abc", &stop), 0);
    }
}
