//! HF-compatible chat-template rendering (transformers' apply_chat_template).
//!
//! minijinja 3 with trim_blocks + lstrip_blocks, Python string/dict/list
//! methods (minijinja-contrib pycompat), `raise_exception(msg)`,
//! `strftime_now(fmt)`, and `tojson` as Python's
//! `json.dumps(x, ensure_ascii=False, indent=indent)` (", " and ": "
//! separators, no HTML escaping, key order kept).
//!
//! `{% generation %}…{% endgeneration %}` blocks are rewritten to emit two
//! private-use marker characters; `render_marked` strips them and returns
//! the byte ranges they enclosed (transformers' assistant masks).

use anyhow::{anyhow, bail, Result};
use minijinja::value::{Kwargs, Value as JValue, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value;
use std::fmt::Write;

/// Marks the start / end of a `{% generation %}` block in rendered output.
pub const GEN_START: char = '\u{E000}';
pub const GEN_END: char = '\u{E001}';

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Whether the source had `{% generation %}` blocks.
    pub has_generation: bool,
}

/// Everything the template sees besides `messages`.
#[derive(Clone, Debug, Default)]
pub struct ChatContext {
    pub add_generation_prompt: bool,
    pub tools: Option<Value>,
    /// bos_token, eos_token, pad_token, unk_token, and extra variables.
    pub vars: serde_json::Map<String, Value>,
}

/// serde_json -> minijinja value, keeping map order.
pub fn to_jvalue(v: &Value) -> JValue {
    match v {
        Value::Null => JValue::from(()),
        Value::Bool(b) => JValue::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                JValue::from(i)
            } else if let Some(u) = n.as_u64() {
                JValue::from(u)
            } else {
                JValue::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => JValue::from(s.as_str()),
        Value::Array(a) => a.iter().map(to_jvalue).collect(),
        Value::Object(o) => JValue::from_pairs(
            o.iter()
                .map(|(k, v)| (JValue::from(k.as_str()), to_jvalue(v))),
        ),
    }
}

/// Python `json.dumps` string escaping with ensure_ascii=False.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python float repr for the common cases.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let s = format!("{f:?}");
    // Rust "1e20" vs Python "1e+20".
    match s.split_once('e') {
        Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
        _ => s,
    }
}

/// Python `json.dumps(v, ensure_ascii=False, indent=indent)`.
pub fn py_json(
    v: &JValue,
    indent: Option<usize>,
    level: usize,
    out: &mut String,
) -> Result<(), Error> {
    let nl = |out: &mut String, lvl: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * lvl));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Ok(f) = f64::try_from(v.clone()) {
                out.push_str(&py_float(f));
            } else {
                out.push_str(&v.to_string());
            }
        }
        ValueKind::String => push_json_str(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JValue> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                py_json(x, indent, level + 1, out)?;
            }
            nl(out, level);
            out.push(']');
        }
        ValueKind::Map | ValueKind::Plain => {
            let keys: Vec<JValue> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                match k.as_str() {
                    Some(s) => push_json_str(out, s),
                    None => push_json_str(out, &k.to_string()),
                }
                out.push_str(": ");
                py_json(&v.get_item(k)?, indent, level + 1, out)?;
            }
            nl(out, level);
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize {}", v.kind()),
            ))
        }
    }
    Ok(())
}

fn tojson(v: JValue, kwargs: Kwargs) -> Result<JValue, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted for compatibility; Python's defaults are what we emit.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<JValue> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    py_json(&v, indent, 0, &mut out)?;
    Ok(JValue::from_safe_string(out))
}

fn raise_exception(msg: String) -> Result<JValue, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    ))
}

/// `strftime_now(fmt)`: the current UTC time; supports the common
/// directives (%Y %m %d %H %M %S %B %b %A %a %y %j %p %I %%).
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, &fmt)
}

/// Formats unix seconds (UTC) with a strftime subset.
pub fn strftime(secs: i64, fmt: &str) -> String {
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    let (h, mi, s) = (tod / 3600, tod % 3600 / 60, tod % 60);
    // Civil-from-days (Howard Hinnant).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let wd = DAYS[days.rem_euclid(7) as usize];
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let jday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('j') => out.push_str(&format!("{jday:03}")),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('A') => out.push_str(wd),
            Some('a') => out.push_str(&wd[..3]),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Rewrites `{% generation %}` / `{% endgeneration %}` (with optional `-`
/// whitespace control) into blocks that print the marker characters.
fn rewrite_generation(src: &str) -> (String, bool) {
    let re =
        regex::Regex::new(r"\{%(-?)\s*(generation|endgeneration)\s*(-?)%\}").expect("static regex");
    let mut found = false;
    let out = re.replace_all(src, |c: &regex::Captures| {
        found = true;
        let m = if &c[2] == "generation" {
            GEN_START
        } else {
            GEN_END
        };
        format!(
            "{{%{} if true %}}{{{{ '{m}' }}}}{{% endif {}%}}",
            &c[1], &c[3]
        )
    });
    (out.into_owned(), found)
}

/// Work budget of one render (minijinja fuel: one unit per instruction, plus one per 64
/// bytes of strings and list slots built). Real chat templates use a few thousand.
pub const RENDER_FUEL: u64 = 2_000_000;

/// Largest rendered text of one example.
pub const MAX_RENDER_BYTES: usize = 16 << 20;

/// At most `max` characters of `s`'s first line, with "..." when cut: what an error may
/// quote of a user's file.
pub fn excerpt(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let mut out: String = line.chars().take(max).collect();
    if out.len() < line.len() || s.lines().nth(1).is_some() {
        out.push_str("...");
    }
    out
}

/// A minijinja error without its debug dump of the template: the message, the detail and
/// at most the offending line (truncated).
fn describe(e: &Error, src: &str) -> String {
    let mut s = format!("{}", e.kind());
    if let Some(d) = e.detail() {
        let _ = write!(s, ": {d}");
    }
    if e.line().is_some() {
        let _ = write!(s, " ({})", describe_line(e, src));
    }
    s
}

fn describe_line(e: &Error, src: &str) -> String {
    let n = e.line().unwrap_or(0);
    let text = src.lines().nth(n.saturating_sub(1)).unwrap_or("").trim();
    format!("line {n}: `{}`", excerpt(text, 120))
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<ChatTemplate> {
        let (src, has_generation) = rewrite_generation(source);
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| anyhow!("{e}"))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        // Bounded work and memory per render: a template that loops or keeps doubling a
        // string stops with an error instead of taking the machine down.
        env.set_fuel(Some(RENDER_FUEL));
        env.add_template_owned("chat", src.clone())
            .map_err(|e| anyhow!("chat template: {}", describe(&e, &src)))?;
        Ok(ChatTemplate {
            env,
            has_generation,
        })
    }

    /// The rendered text, markers included when the template has
    /// generation blocks.
    pub fn render_raw(&self, messages: &[Value], ctx: &ChatContext) -> Result<String> {
        let mut pairs: Vec<(JValue, JValue)> = Vec::new();
        for (k, v) in &ctx.vars {
            pairs.push((JValue::from(k.as_str()), to_jvalue(v)));
        }
        pairs.push((
            JValue::from("messages"),
            messages.iter().map(to_jvalue).collect(),
        ));
        pairs.push((
            JValue::from("add_generation_prompt"),
            JValue::from(ctx.add_generation_prompt),
        ));
        pairs.push((
            JValue::from("tools"),
            ctx.tools
                .as_ref()
                .map(to_jvalue)
                .unwrap_or(JValue::from(())),
        ));
        let t = self.env.get_template("chat").map_err(|e| anyhow!("{e}"))?;
        let src = t.source();
        let out = t.render(JValue::from_pairs(pairs)).map_err(|e| {
            if e.kind() == ErrorKind::OutOfFuel {
                return anyhow!(
                    "rendering chat template: stopped after its work limit ({RENDER_FUEL} \
                     instructions, or {} MiB of strings built): does it loop or keep growing a \
                     string?{}",
                    (RENDER_FUEL * 64) >> 20,
                    e.line()
                        .map(|_| format!(" ({})", describe_line(&e, src)))
                        .unwrap_or_default()
                );
            }
            anyhow!("rendering chat template: {}", describe(&e, src))
        })?;
        if out.len() > MAX_RENDER_BYTES {
            bail!(
                "rendering chat template: the output is {:.1} MiB, above the limit of {} MiB per \
                 example",
                out.len() as f64 / (1u64 << 20) as f64,
                MAX_RENDER_BYTES >> 20
            );
        }
        Ok(out)
    }

    /// The text as transformers renders it (markers removed).
    pub fn render(&self, messages: &[Value], ctx: &ChatContext) -> Result<String> {
        Ok(self.render_marked(messages, ctx)?.0)
    }

    /// Rendered text and the byte ranges inside `{% generation %}` blocks.
    pub fn render_marked(
        &self,
        messages: &[Value],
        ctx: &ChatContext,
    ) -> Result<(String, Vec<(usize, usize)>)> {
        let raw = self.render_raw(messages, ctx)?;
        let mut out = String::with_capacity(raw.len());
        let mut ranges = Vec::new();
        let mut open: Option<usize> = None;
        for c in raw.chars() {
            match c {
                GEN_START => open = Some(out.len()),
                GEN_END => match open.take() {
                    Some(s) => ranges.push((s, out.len())),
                    None => bail!("chat template: endgeneration without generation"),
                },
                c => out.push(c),
            }
        }
        Ok((out, ranges))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runaway_templates_stop_with_a_clear_error() {
        let ctx = ChatContext::default();
        // Doubling a string: stopped by the work budget long before memory runs out.
        let t = ChatTemplate::new(
            "{% set ns = namespace(s='xy') %}\n{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        )
        .unwrap();
        let e = t.render(&[], &ctx).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "rendering chat template: stopped after its work limit (2000000 instructions, \
                 or 122 MiB of strings built): does it loop or keep growing a string?"
            ),
            "{e}"
        );
        // An endless-looking loop.
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        )
        .unwrap();
        let e = t.render(&[], &ctx).unwrap_err().to_string();
        assert!(e.contains("stopped after its work limit"), "{e}");
        // Within the budget but above the output limit.
        let t = ChatTemplate::new("{{ 'x' * 17000000 }}").unwrap();
        let e = t.render(&[], &ctx).unwrap_err().to_string();
        assert_eq!(
            e,
            "rendering chat template: the output is 16.2 MiB, above the limit of 16 MiB per example"
        );
        // A normal template is far below the budget.
        let t =
            ChatTemplate::new("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
                .unwrap();
        let msgs: Vec<Value> = (0..200)
            .map(|i| serde_json::json!({"role": "user", "content": format!("message {i}")}))
            .collect();
        assert_eq!(t.render(&msgs, &ctx).unwrap().lines().count(), 200);
    }

    #[test]
    fn errors_quote_one_line_of_the_template() {
        let src = "{% for m in messages %}\nSECRET ONE\n{{ m.content }\n{% endfor %}\nSECRET TWO";
        let e = ChatTemplate::new(src).err().unwrap().to_string();
        assert!(!e.contains("SECRET"), "{e}");
        assert!(e.starts_with("chat template: syntax error"), "{e}");
        assert!(e.contains("(line 3: `{{ m.content }`)"), "{e}");
        assert_eq!(
            excerpt(&"a".repeat(200), 120),
            format!("{}...", "a".repeat(120))
        );
        assert_eq!(excerpt("one\ntwo", 120), "one...");
        assert_eq!(excerpt("short", 120), "short");
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        assert_eq!(
            strftime(1709211909, "%Y-%m-%d %H:%M:%S %A %b %j %I%p %%"),
            "2024-02-29 13:05:09 Thursday Feb 060 01PM %"
        );
        assert_eq!(strftime(0, "%d %B %Y"), "01 January 1970");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ [] | tojson }}")
            .unwrap();
        let x: Value = serde_json::from_str(
            r#"{"b": [1, 2.5, "<a & 'b'>"], "a": {"z": null, "y": true}, "c": "中\n\u0001"}"#,
        )
        .unwrap();
        let mut ctx = ChatContext::default();
        ctx.vars.insert("x".into(), x);
        let s = t.render(&[], &ctx).unwrap();
        let want = concat!(
            r#"{"b": [1, 2.5, "<a & 'b'>"], "a": {"z": null, "y": true}, "c": "中\n\u0001"}|"#,
            "{\n  \"b\": [\n    1,\n    2.5,\n    \"<a & 'b'>\"\n  ],\n  \"a\": {\n    \"z\": null,\n    \"y\": true\n  },\n  \"c\": \"中\\n\\u0001\"\n}|[]"
        );
        assert_eq!(s, want);
    }

    #[test]
    fn generation_blocks_give_ranges() {
        let src = "{% for m in messages %}{% if m.role == 'assistant' %}A: {%- generation -%}  {{ m.content }}|{% endgeneration %}\n{% else %}U: {{ m.content }}\n{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        assert!(t.has_generation);
        let msgs: Vec<Value> = serde_json::from_str(
            r#"[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]"#,
        )
        .unwrap();
        let (s, r) = t.render_marked(&msgs, &ChatContext::default()).unwrap();
        assert_eq!(s, "U: hi\nA:yo|");
        assert_eq!(r, vec![(8, 11)]);
        assert_eq!(&s[8..11], "yo|");
    }

    #[test]
    fn raise_exception_message() {
        let t = ChatTemplate::new("{{ raise_exception('only user/assistant roles') }}").unwrap();
        let e = t
            .render(&[], &ChatContext::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("only user/assistant roles"), "{e}");
    }

    /// transformers' apply_chat_template(tokenize=False) output
    /// (tests/fixtures/text/jinja_cases.json, from text_make_fixtures.py).
    #[test]
    fn matches_transformers_apply_chat_template() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/text/jinja_cases.json");
        let f: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let mut n = 0;
        for c in f["cases"].as_array().unwrap() {
            let name = c["template"].as_str().unwrap();
            let t = ChatTemplate::new(f["templates"][name].as_str().unwrap()).unwrap();
            let mut ctx = ChatContext {
                add_generation_prompt: c["add_generation_prompt"].as_bool().unwrap(),
                tools: if c["tools"].is_null() {
                    None
                } else {
                    Some(c["tools"].clone())
                },
                vars: Default::default(),
            };
            ctx.vars.insert("bos_token".into(), f["bos_token"].clone());
            ctx.vars.insert("eos_token".into(), f["eos_token"].clone());
            let got = t.render(c["messages"].as_array().unwrap(), &ctx).unwrap();
            assert_eq!(
                got,
                c["expected"].as_str().unwrap(),
                "template {name}, case {c}"
            );
            n += 1;
        }
        assert!(n >= 20, "{n} cases");
    }
}

#[cfg(test)]
mod builtin_sources {
    /// The built-in template files are the ones the fixtures were rendered
    /// with by transformers.
    #[test]
    fn builtins_equal_fixture_templates() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/text/jinja_cases.json");
        let f: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(
            f["templates"]["chatml"],
            include_str!("templates/chatml.jinja")
        );
        assert_eq!(
            f["templates"]["qwen25"],
            include_str!("templates/qwen2.jinja")
        );
        assert_eq!(
            f["templates"]["llama3"],
            include_str!("templates/llama3.jinja")
        );
    }
}
