//! Diagnostics: recipe errors that point at `file:LINE:COL` with a caret line.
//!
//! Every check appends to a `Vec<Diagnostic>`; nothing stops at the first
//! error. `render` prints them in the order they were found, rustc-style:
//!
//! ```text
//! error: step `train`, key `lerning_rate`: unknown key
//!   --> recipes/bad.toml:12:1
//!    |
//! 12 | lerning_rate = 1e-4
//!    | ^^^^^^^^^^^^
//!    = expected: a key of `train` (see `recipe explain train`)
//!    = help: did you mean `learning_rate`?
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One source text the recipe was assembled from: a TOML file or a `--set`.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// How the file is shown in messages (as given on the command line,
    /// or relative to the including file's directory).
    pub display: String,
    pub path: PathBuf,
    pub text: String,
}

/// All sources of one recipe, addressed by index.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, display: String, path: PathBuf, text: String) -> usize {
        self.files.push(SourceFile {
            display,
            path,
            text,
        });
        self.files.len() - 1
    }
    pub fn get(&self, id: usize) -> Option<&SourceFile> {
        self.files.get(id)
    }
    /// Directory that relative paths written in file `id` are resolved from.
    pub fn base_dir(&self, id: usize) -> PathBuf {
        let Some(f) = self.files.get(id) else {
            return PathBuf::from(".");
        };
        let p = &f.path;
        if p.is_dir() {
            return p.clone();
        }
        p.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
    /// 1-based line and column (in chars) of a byte offset.
    pub fn line_col(&self, id: usize, offset: usize) -> (usize, usize) {
        let Some(f) = self.files.get(id) else {
            return (1, 1);
        };
        let text = &f.text;
        let offset = offset.min(text.len());
        let before = &text[..floor_char(text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A byte range in one of the recipe's sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: usize,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
}

#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub level: Level,
    pub message: String,
    pub span: Option<Span>,
    pub step: Option<String>,
    pub key: Option<String>,
    pub expected: Option<String>,
    pub got: Option<String>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic {
            level: Level::Error,
            message: message.into(),
            span: None,
            step: None,
            key: None,
            expected: None,
            got: None,
            help: None,
        }
    }
    pub fn warning(message: impl Into<String>) -> Self {
        Diagnostic {
            level: Level::Warning,
            ..Diagnostic::error(message)
        }
    }
    pub fn at(mut self, span: Span) -> Self {
        self.span = Some(span);
        self
    }
    pub fn step(mut self, step: &str) -> Self {
        self.step = Some(step.to_string());
        self
    }
    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(key.to_string());
        self
    }
    pub fn expected(mut self, e: impl Into<String>) -> Self {
        self.expected = Some(e.into());
        self
    }
    pub fn got(mut self, g: impl Into<String>) -> Self {
        self.got = Some(g.into());
        self
    }
    pub fn help(mut self, h: impl Into<String>) -> Self {
        self.help = Some(h.into());
        self
    }
    pub fn is_error(&self) -> bool {
        self.level == Level::Error
    }

    /// `file:LINE:COL` of the span, if any.
    pub fn location(&self, sources: &Sources) -> Option<String> {
        let span = self.span?;
        let (line, col) = sources.line_col(span.file, span.start);
        Some(format!(
            "{}:{}:{}",
            sources.get(span.file)?.display,
            line,
            col
        ))
    }

    pub fn render(&self, sources: &Sources, color: bool) -> String {
        let (label, code) = match self.level {
            Level::Error => ("error", "1;31"),
            Level::Warning => ("warning", "1;33"),
        };
        let paint = |s: &str, c: &str| {
            if color {
                format!("\x1b[{c}m{s}\x1b[0m")
            } else {
                s.to_string()
            }
        };
        let mut head = String::new();
        match (&self.step, &self.key) {
            (Some(s), Some(k)) => write!(head, "step `{s}`, key `{k}`: ").ok(),
            (Some(s), None) => write!(head, "step `{s}`: ").ok(),
            (None, Some(k)) => write!(head, "key `{k}`: ").ok(),
            (None, None) => None,
        };
        let mut out = format!("{}: {}{}\n", paint(label, code), head, self.message);
        // A span into a source that is not there (a bug) drops the excerpt, not the message.
        let span = self.span.filter(|s| sources.get(s.file).is_some());
        if let (Some(span), Some(src)) = (span, span.and_then(|s| sources.get(s.file))) {
            let (line, col) = sources.line_col(span.file, span.start);
            let gutter = line.to_string().len();
            let pad = " ".repeat(gutter);
            let _ = writeln!(out, "{pad}--> {}:{}:{}", src.display, line, col);
            let text_line = src.text.lines().nth(line - 1).unwrap_or("");
            let width = {
                let end = span.end.max(span.start + 1).min(src.text.len());
                let seg = &src.text[floor_char(&src.text, span.start)..floor_char(&src.text, end)];
                let seg = seg.split('\n').next().unwrap_or("");
                seg.chars().count().max(1)
            };
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{line} | {text_line}");
            let caret = format!("{}{}", " ".repeat(col - 1), "^".repeat(width));
            let _ = writeln!(out, "{pad} | {}", paint(&caret, code));
        }
        let pad = match span {
            Some(s) => " ".repeat(sources.line_col(s.file, s.start).0.to_string().len()),
            None => String::new(),
        };
        if let Some(e) = &self.expected {
            let _ = writeln!(out, "{pad} = expected: {e}");
        }
        if let Some(g) = &self.got {
            let _ = writeln!(out, "{pad} = got: {g}");
        }
        if let Some(h) = &self.help {
            let _ = writeln!(out, "{pad} = help: {h}");
        }
        out
    }
}

/// Render all diagnostics plus a closing count line.
pub fn render_all(diags: &[Diagnostic], sources: &Sources, color: bool) -> String {
    let mut out = String::new();
    for d in diags {
        out.push_str(&d.render(sources, color));
        out.push('\n');
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    if errors > 0 {
        let _ = writeln!(
            out,
            "{} error{}{} in recipe",
            errors,
            if errors == 1 { "" } else { "s" },
            if warnings > 0 {
                format!(
                    ", {warnings} warning{}",
                    if warnings == 1 { "" } else { "s" }
                )
            } else {
                String::new()
            }
        );
    }
    out
}

/// The closest candidate by edit distance, if it is close enough to suggest.
pub fn did_you_mean<'a>(
    got: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = levenshtein(got, c);
        if d <= (got.len().max(c.len()) / 3).max(1) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_under_span() {
        let mut s = Sources::default();
        let f = s.add(
            "r.toml".into(),
            "r.toml".into(),
            "[steps.a]\nkindd = \"x\"\n".into(),
        );
        let d = Diagnostic::error("unknown key")
            .at(Span {
                file: f,
                start: 10,
                end: 15,
            })
            .step("a")
            .key("kindd");
        assert_eq!(
            d.render(&s, false),
            "error: step `a`, key `kindd`: unknown key\n --> r.toml:2:1\n  |\n2 | kindd = \"x\"\n  | ^^^^^\n"
        );
    }

    #[test]
    fn span_into_a_missing_source_renders_without_excerpt() {
        let d = Diagnostic::error("invalid TOML").at(Span {
            file: 3,
            start: 0,
            end: 1,
        });
        assert_eq!(
            d.render(&Sources::default(), false),
            "error: invalid TOML\n"
        );
        assert_eq!(d.location(&Sources::default()), None);
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("lerning_rate", ["learning_rate", "seed"]),
            Some("learning_rate")
        );
        assert_eq!(did_you_mean("zzz", ["learning_rate"]), None);
    }
}
