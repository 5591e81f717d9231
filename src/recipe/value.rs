//! A TOML value tree that remembers where every key and value came from.
//!
//! `toml`'s spanned parser gives byte ranges into one text; a recipe is
//! assembled from several texts (includes, `--set`), so each node carries a
//! `Span` with the index of its source file.

use crate::diag::{Diagnostic, Span};
use indexmap::IndexMap;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Dates are legal TOML but meaningless in a recipe; kept as text so the
    /// type check can name them.
    Datetime(String),
    Array(Vec<Node>),
    Table(Table),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub v: V,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key_span: Span,
    pub node: Node,
}

pub type Table = IndexMap<String, Entry>;

impl V {
    pub fn type_name(&self) -> &'static str {
        match self {
            V::Str(_) => "string",
            V::Int(_) => "integer",
            V::Float(_) => "float",
            V::Bool(_) => "boolean",
            V::Datetime(_) => "datetime",
            V::Array(_) => "array",
            V::Table(_) => "table",
        }
    }
}

impl Node {
    /// Short text of the value for "got: ..." lines.
    pub fn show(&self) -> String {
        match &self.v {
            V::Str(s) => format!("{s:?}"),
            V::Int(i) => i.to_string(),
            V::Float(f) => f.to_string(),
            V::Bool(b) => b.to_string(),
            V::Datetime(d) => d.clone(),
            V::Array(a) => format!(
                "[{}]",
                a.iter().map(Node::show).collect::<Vec<_>>().join(", ")
            ),
            V::Table(t) => format!("{{{}}}", t.keys().cloned().collect::<Vec<_>>().join(", ")),
        }
    }

    /// Plain JSON, spans dropped.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.v {
            V::Str(s) => J::String(s.clone()),
            V::Int(i) => J::from(*i),
            V::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            V::Bool(b) => J::Bool(*b),
            V::Datetime(d) => J::String(d.clone()),
            V::Array(a) => J::Array(a.iter().map(Node::to_json).collect()),
            V::Table(t) => J::Object(
                t.iter()
                    .map(|(k, e)| (k.clone(), e.node.to_json()))
                    .collect(),
            ),
        }
    }
}

fn span(file: usize, r: std::ops::Range<usize>) -> Span {
    Span {
        file,
        start: r.start,
        end: r.end,
    }
}

/// Parse one TOML text into a spanned table. Syntax errors become
/// diagnostics pointing at the offending position.
pub fn parse_toml(text: &str, file: usize) -> Result<Table, Diagnostic> {
    match DeTable::parse(text) {
        Ok(t) => convert_table(t.get_ref(), file),
        Err(e) => {
            let r = e.span().unwrap_or(0..0);
            Err(
                Diagnostic::error(format!("invalid TOML: {}", e.message().trim()))
                    .at(span(file, r)),
            )
        }
    }
}

/// Parse a single value as written after `--set key=`. Anything that is not
/// valid TOML is taken as a bare string, so `--set vars.name=run1` works.
pub fn parse_set_value(text: &str, file: usize, offset: usize) -> Node {
    let whole = Span {
        file,
        start: offset,
        end: offset + text.len(),
    };
    match DeValue::parse(text) {
        Ok(v) => match convert_value(&v, file) {
            Ok(mut n) => {
                shift(&mut n, offset);
                n
            }
            Err(_) => Node {
                v: V::Str(text.to_string()),
                span: whole,
            },
        },
        Err(_) => Node {
            v: V::Str(text.to_string()),
            span: whole,
        },
    }
}

fn shift(n: &mut Node, by: usize) {
    n.span.start += by;
    n.span.end += by;
    match &mut n.v {
        V::Array(a) => a.iter_mut().for_each(|c| shift(c, by)),
        V::Table(t) => t.values_mut().for_each(|e| {
            e.key_span.start += by;
            e.key_span.end += by;
            shift(&mut e.node, by)
        }),
        _ => {}
    }
}

fn convert_table(t: &DeTable<'_>, file: usize) -> Result<Table, Diagnostic> {
    let mut out = Table::new();
    for (k, v) in t.iter() {
        let node = convert_value(v, file)?;
        out.insert(
            k.get_ref().to_string(),
            Entry {
                key_span: span(file, k.span()),
                node,
            },
        );
    }
    Ok(out)
}

fn convert_value(v: &Spanned<DeValue<'_>>, file: usize) -> Result<Node, Diagnostic> {
    let sp = span(file, v.span());
    let bad = |what: &str| Diagnostic::error(format!("invalid {what}")).at(sp);
    let val = match v.get_ref() {
        DeValue::String(s) => V::Str(s.to_string()),
        DeValue::Integer(i) => {
            let digits: String = i.as_str().chars().filter(|c| *c != '_').collect();
            let (neg, body) = match digits.strip_prefix('-') {
                Some(b) => (true, b.to_string()),
                None => (false, digits.trim_start_matches('+').to_string()),
            };
            let body = body
                .trim_start_matches("0x")
                .trim_start_matches("0o")
                .trim_start_matches("0b");
            let n = i64::from_str_radix(body, i.radix()).map_err(|_| bad("integer"))?;
            V::Int(if neg { -n } else { n })
        }
        DeValue::Float(f) => {
            let s: String = f.as_str().chars().filter(|c| *c != '_').collect();
            let x = match s.trim_start_matches('+') {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                "nan" | "-nan" => f64::NAN,
                t => t.parse::<f64>().map_err(|_| bad("float"))?,
            };
            V::Float(x)
        }
        DeValue::Boolean(b) => V::Bool(*b),
        DeValue::Datetime(d) => V::Datetime(d.to_string()),
        DeValue::Array(a) => V::Array(
            a.iter()
                .map(|x| convert_value(x, file))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(t) => V::Table(convert_table(t, file)?),
    };
    Ok(Node { v: val, span: sp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_keys_and_values() {
        let text = "[steps.a]\nkind = \"x\"\nr = 8\n";
        let t = parse_toml(text, 0).unwrap();
        let steps = match &t["steps"].node.v {
            V::Table(t) => t,
            _ => panic!(),
        };
        let a = match &steps["a"].node.v {
            V::Table(t) => t,
            _ => panic!(),
        };
        assert_eq!(&text[a["r"].key_span.start..a["r"].key_span.end], "r");
        assert_eq!(&text[a["r"].node.span.start..a["r"].node.span.end], "8");
        assert_eq!(a["r"].node.v, V::Int(8));
    }

    #[test]
    fn set_values() {
        assert_eq!(parse_set_value("1e-4", 0, 0).v, V::Float(1e-4));
        assert_eq!(parse_set_value("10", 0, 0).v, V::Int(10));
        assert_eq!(parse_set_value("run1", 0, 0).v, V::Str("run1".into()));
        assert_eq!(parse_set_value("\"a b\"", 0, 0).v, V::Str("a b".into()));
    }
}
