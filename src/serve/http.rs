//! Just enough HTTP/1.1 for `recipe serve`: read one request (request line, headers, a body of
//! `Content-Length` bytes, capped), write one response (JSON, or a server-sent event stream),
//! then close the connection. No keep-alive, no chunked request bodies.

use std::io::{BufRead, Write};

/// Longest request line or header line accepted.
const MAX_LINE: usize = 16 * 1024;
/// Most header lines accepted.
const MAX_HEADERS: usize = 100;

/// One parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be read: the status to answer with and a message, or nothing to
/// answer (the peer went away or timed out before sending a request).
#[derive(Debug)]
pub enum ReadError {
    Respond(u16, String),
    Gone,
}

/// Reads one line ending in `\n` (at most `MAX_LINE` bytes), without the line ending.
fn read_line(r: &mut impl BufRead, first: bool) -> Result<String, ReadError> {
    let mut buf = Vec::new();
    let n = std::io::Read::take(&mut *r, MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut if !first => {
                ReadError::Respond(408, "timed out reading the request".into())
            }
            _ => ReadError::Gone,
        })?;
    if n == 0 {
        return Err(if first {
            ReadError::Gone
        } else {
            ReadError::Respond(400, "request ended inside the headers".into())
        });
    }
    if buf.last() != Some(&b'\n') {
        return Err(ReadError::Respond(
            431,
            "request line or header too long".into(),
        ));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf).map_err(|_| ReadError::Respond(400, "header is not UTF-8".into()))
}

/// Reads one request; a body longer than `max_body` bytes is refused with 413 unread.
pub fn read_request(r: &mut impl BufRead, max_body: usize) -> Result<Request, ReadError> {
    let line = read_line(r, true)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Respond(
            400,
            format!("malformed request line {line:?}"),
        ));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Respond(
            505,
            format!("unsupported version {version:?}"),
        ));
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let h = read_line(r, false)?;
        if h.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(ReadError::Respond(431, "too many headers".into()));
        }
        let Some((k, v)) = h.split_once(':') else {
            return Err(ReadError::Respond(400, format!("malformed header {h:?}")));
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        path,
        headers,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Err(ReadError::Respond(
            411,
            "chunked request bodies are not supported; send Content-Length".into(),
        ));
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ReadError::Respond(400, format!("bad Content-Length {v:?}")))?,
    };
    if len > max_body {
        return Err(ReadError::Respond(
            413,
            format!("request body of {len} bytes is over the limit of {max_body} (--max-body)"),
        ));
    }
    req.body = vec![0; len];
    r.read_exact(&mut req.body).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ReadError::Respond(408, "timed out reading the request body".into())
        }
        _ => ReadError::Respond(400, "request body shorter than Content-Length".into()),
    })?;
    Ok(req)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Writes a complete JSON response and flushes.
pub fn write_json(
    w: &mut impl Write,
    status: u16,
    body: &serde_json::Value,
) -> std::io::Result<()> {
    let text = body.to_string();
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        reason(status),
        text.len()
    )?;
    w.flush()
}

/// A server-sent event stream (`text/event-stream`), as OpenAI streams completions.
pub struct EventStream<W: Write> {
    w: W,
}

impl<W: Write> EventStream<W> {
    /// Writes the response head.
    pub fn start(mut w: W) -> std::io::Result<Self> {
        w.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        )?;
        w.flush()?;
        Ok(EventStream { w })
    }

    /// `data: <json>` and a blank line, flushed.
    pub fn event(&mut self, data: &serde_json::Value) -> std::io::Result<()> {
        write!(self.w, "data: {data}\n\n")?;
        self.w.flush()
    }

    /// `data: [DONE]`, OpenAI's end marker.
    pub fn done(mut self) -> std::io::Result<()> {
        self.w.write_all(b"data: [DONE]\n\n")?;
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &str, max: usize) -> Result<Request, ReadError> {
        read_request(&mut std::io::BufReader::new(raw.as_bytes()), max)
    }

    #[test]
    fn reads_a_post_with_body() {
        let r = read(
            "POST /v1/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            100,
        )
        .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/completions")
        );
        assert_eq!(r.header("content-LENGTH"), Some("5"));
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let status = |raw: &str, max| match read(raw, max) {
            Err(ReadError::Respond(s, m)) => (s, m),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            status(
                "POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world",
                10
            ),
            (
                413,
                "request body of 11 bytes is over the limit of 10 (--max-body)".into()
            )
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 10).0,
            411
        );
        assert_eq!(status("GARBAGE\r\n\r\n", 10).0, 400);
        assert_eq!(status("GET / HTTP/1.1\r\nno colon\r\n\r\n", 10).0, 400);
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 10).0,
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort", 10).1,
            "request body shorter than Content-Length"
        );
        assert!(matches!(read("", 10), Err(ReadError::Gone)));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_LINE + 10));
        assert_eq!(status(&long, 10).0, 431);
    }
}
