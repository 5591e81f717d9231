//! Step parameters: the schema a kind declares ([`ParamSpec`]: name, [`Ty`], default, doc),
//! the canonical [`Params`] map the recipe validator builds from it (every key, defaults
//! filled, paths absolute; what the cache key hashes), and the one way a step reads its keys:
//! [`Params::typed`] deserializes the map into the kind's typed struct (see
//! [`super::Kind::Params`]), so a key that does not fit (missing, a negative count, a value
//! the struct does not know) is a validation error on that key, never a silent 0 or default.

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// The type of a parameter, as the validator checks it.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Str,
    Int,
    /// Integer or float (a float param accepts `3`, stored as 3.0).
    Float,
    /// Integer or float, kept as written (e.g. `test_size`: 0.2 or 100).
    Number,
    Bool,
    Enum(&'static [&'static str]),
    StrList,
    /// A string or a list of strings (e.g. `target_modules`).
    StrOrList,
    /// Free-form table (e.g. a column mapping); values are kept as given.
    Table,
    /// An input file or directory, resolved relative to the file that
    /// names it; must exist and its content is part of the cache key.
    Path,
    /// Like `Path`, but under `--plan` a missing path is only a warning
    /// (a model dir that will be downloaded later).
    ModelPath,
    /// A path this step writes; not hashed.
    OutPath,
    /// The id of another step, of one of these kinds (empty: any kind).
    Step(&'static [&'static str]),
}

impl Ty {
    pub fn describe(&self) -> String {
        match self {
            Ty::Str => "a string".into(),
            Ty::Int => "an integer".into(),
            Ty::Float | Ty::Number => "a number".into(),
            Ty::Bool => "true or false".into(),
            Ty::Enum(v) => format!(
                "one of {}",
                v.iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Ty::StrList => "an array of strings".into(),
            Ty::StrOrList => "a string or an array of strings".into(),
            Ty::Table => "a table".into(),
            Ty::Path | Ty::ModelPath => "a path (string)".into(),
            Ty::OutPath => "an output path (string)".into(),
            Ty::Step(k) if k.is_empty() => "the id of a step".into(),
            Ty::Step(k) => format!("the id of a {} step", k.join(" or ")),
        }
    }
}

/// One parameter of a step kind.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: Ty,
    /// Default as a JSON literal; `None` = optional with no value.
    pub default: Option<&'static str>,
    pub required: bool,
    pub doc: &'static str,
}

pub const fn req(name: &'static str, ty: Ty, doc: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        ty,
        default: None,
        required: true,
        doc,
    }
}
pub const fn opt(name: &'static str, ty: Ty, doc: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        ty,
        default: None,
        required: false,
        doc,
    }
}
pub const fn def(
    name: &'static str,
    ty: Ty,
    default: &'static str,
    doc: &'static str,
) -> ParamSpec {
    ParamSpec {
        name,
        ty,
        default: Some(default),
        required: false,
        doc,
    }
}

/// Keys every step accepts besides its own.
pub static COMMON: &[ParamSpec] = &[
    opt(
        "output",
        Ty::OutPath,
        "copy this step's result here when it finishes (relative to the recipe)",
    ),
    opt("description", Ty::Str, "free text shown by `recipe plan`"),
    opt(
        "after",
        Ty::StrList,
        "extra step ids this step must wait for",
    ),
];

/// Canonical parameters: every declared key, defaults filled, paths absolute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pub map: BTreeMap<String, Value>,
}

impl Params {
    pub fn get(&self, k: &str) -> Option<&Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }
    pub fn opt_str(&self, k: &str) -> Option<&str> {
        self.get(k).and_then(Value::as_str)
    }
    pub fn path(&self, k: &str) -> Option<PathBuf> {
        self.opt_str(k).map(PathBuf::from)
    }

    // Untyped reads, for plan-time code that looks at another step's keys (`steps::memory`);
    // a step reads its own keys through its typed struct ([`Params::typed`]).
    pub fn str(&self, k: &str) -> &str {
        self.opt_str(k).unwrap_or("")
    }
    pub fn i64(&self, k: &str) -> i64 {
        self.get(k).and_then(Value::as_i64).unwrap_or(0)
    }
    pub fn usize(&self, k: &str) -> usize {
        self.i64(k).max(0) as usize
    }
    pub fn opt_usize(&self, k: &str) -> Option<usize> {
        self.get(k)
            .and_then(Value::as_i64)
            .map(|v| v.max(0) as usize)
    }
    pub fn f64(&self, k: &str) -> f64 {
        self.get(k).and_then(Value::as_f64).unwrap_or(0.0)
    }
    pub fn bool(&self, k: &str) -> bool {
        self.get(k).and_then(Value::as_bool).unwrap_or(false)
    }
    /// A list of strings; a single string counts as a one-element list.
    pub fn strs(&self, k: &str) -> Vec<String> {
        match self.get(k) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The params as the kind's typed struct `T`: the keys of `specs` (absent ones take their
    /// declared default, as the validator fills them), without the [`COMMON`] keys. Every key
    /// that does not fit is reported, not only the first.
    pub fn typed<T: DeserializeOwned>(&self, specs: &[ParamSpec]) -> Result<T, Vec<ParamError>> {
        let mut map: BTreeMap<&str, Value> = BTreeMap::new();
        for s in specs {
            match self.get(s.name) {
                Some(v) => {
                    map.insert(s.name, v.clone());
                }
                None => {
                    if let Some(d) = s.default_value() {
                        map.insert(s.name, d);
                    }
                }
            }
        }
        let mut errors: Vec<ParamError> = Vec::new();
        // serde stops at the first error: put the declared default in place of the value it
        // names (or drop the key) and try again, so that every bad key is reported.
        loop {
            match T::deserialize(MapDe(&map)) {
                Ok(t) if errors.is_empty() => return Ok(t),
                Ok(_) => return Err(errors),
                Err(e) => {
                    // A key reported already (its default does not fit either), or none:
                    // a consequence of an earlier error.
                    if e.key.is_empty() || errors.iter().any(|x| x.key == e.key) {
                        if errors.is_empty() {
                            errors.push(e);
                        }
                        return Err(errors);
                    }
                    let slot = specs
                        .iter()
                        .find(|s| s.name == e.key)
                        .map(|s| (s.name, s.default_value()));
                    match slot {
                        Some((name, Some(d))) if map.get(name) != Some(&d) => {
                            map.insert(name, d);
                        }
                        _ => {
                            map.remove(e.key.as_str());
                        }
                    }
                    errors.push(e);
                }
            }
        }
    }
}

impl ParamSpec {
    /// The declared default as JSON (`None`: no default).
    pub fn default_value(&self) -> Option<Value> {
        self.default.and_then(|d| serde_json::from_str(d).ok())
    }
}

/// A key whose value does not fit the kind's typed struct.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    pub key: String,
    pub message: String,
    pub expected: Option<String>,
    pub got: Option<String>,
}

impl ParamError {
    fn new(message: impl Into<String>) -> Self {
        ParamError {
            key: String::new(),
            message: message.into(),
            expected: None,
            got: None,
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}`: {}", self.key, self.message)?;
        if let Some(e) = &self.expected {
            write!(f, " (expected {e})")?;
        }
        if let Some(g) = &self.got {
            write!(f, " (got {g})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParamError {}

impl de::Error for ParamError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        ParamError::new(msg.to_string())
    }
    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        let mut e = ParamError::new("wrong type");
        e.expected = Some(exp.to_string());
        e.got = Some(unexp.to_string());
        e
    }
    fn invalid_value(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        let exp = exp.to_string();
        let unsigned = matches!(exp.as_str(), "usize" | "u64" | "u32" | "u16" | "u8");
        let mut e = match unexp {
            de::Unexpected::Signed(_) if unsigned => return ParamError::new("must be >= 0"),
            _ => ParamError::new("invalid value"),
        };
        e.expected = Some(exp);
        e
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let mut e = ParamError::new(format!("invalid value \"{variant}\""));
        e.expected = Some(format!(
            "one of {}",
            expected
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        e
    }
    fn unknown_field(field: &str, _expected: &'static [&'static str]) -> Self {
        let mut e = ParamError::new("unknown key");
        e.key = field.to_string();
        e
    }
    fn missing_field(field: &'static str) -> Self {
        let mut e = ParamError::new(format!("missing required key `{field}`"));
        e.key = field.to_string();
        e
    }
}

/// The params map as a serde map; an error in a value is tagged with its key and the value.
struct MapDe<'a>(&'a BTreeMap<&'a str, Value>);

impl<'de> de::Deserializer<'de> for MapDe<'de> {
    type Error = ParamError;
    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ParamError> {
        v.visit_map(Entries {
            iter: self.0.iter(),
            value: None,
        })
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

struct Entries<'a> {
    iter: std::collections::btree_map::Iter<'a, &'a str, Value>,
    value: Option<(&'a str, &'a Value)>,
}

impl<'de> de::MapAccess<'de> for Entries<'de> {
    type Error = ParamError;
    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ParamError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some((k, v));
                let key: de::value::BorrowedStrDeserializer<'de, ParamError> =
                    de::value::BorrowedStrDeserializer::new(k);
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<S: de::DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, ParamError> {
        let (k, v) = self
            .value
            .take()
            .ok_or_else(|| ParamError::new("value without key"))?;
        seed.deserialize(ValueDe(v)).map_err(|mut e| {
            if e.key.is_empty() {
                e.key = k.to_string();
            }
            if e.got.is_none() {
                e.got = Some(v.to_string());
            }
            e
        })
    }
}

/// One JSON value as a serde deserializer with [`ParamError`]s.
#[derive(Clone, Copy)]
struct ValueDe<'a>(&'a Value);

impl<'de> IntoDeserializer<'de, ParamError> for ValueDe<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for ValueDe<'de> {
    type Error = ParamError;
    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ParamError> {
        match self.0 {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => v.visit_u64(u),
                (_, Some(i), _) => v.visit_i64(i),
                (_, _, Some(f)) => v.visit_f64(f),
                _ => Err(ParamError::new("not a number")),
            },
            Value::String(s) => v.visit_borrowed_str(s),
            Value::Array(a) => {
                let mut seq: de::value::SeqDeserializer<_, ParamError> =
                    de::value::SeqDeserializer::new(a.iter().map(ValueDe));
                let out = v.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Object(o) => {
                let mut map: de::value::MapDeserializer<'de, _, ParamError> =
                    de::value::MapDeserializer::new(
                        o.iter()
                            .map(|(k, x)| (de::value::BorrowedStrDeserializer::new(k), ValueDe(x))),
                    );
                let out = v.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
        }
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ParamError> {
        match self.0 {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ParamError> {
        match self.0 {
            Value::String(s) => {
                v.visit_enum(de::value::BorrowedStrDeserializer::<ParamError>::new(s))
            }
            _ => self.deserialize_any(v),
        }
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, ParamError> {
        v.visit_newtype_struct(self)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A value of the declared type for every key.
    fn sample(ty: &Ty) -> Value {
        match ty {
            Ty::Str => json!("x"),
            Ty::Int | Ty::Number => json!(1),
            Ty::Float => json!(0.5),
            Ty::Bool => json!(true),
            Ty::Enum(v) => json!(v[v.len() - 1]),
            Ty::StrList => json!(["x"]),
            Ty::StrOrList => json!("x"),
            Ty::Table => json!({}),
            Ty::Path | Ty::ModelPath | Ty::OutPath => json!("/nonexistent/x"),
            Ty::Step(_) => json!("s"),
        }
    }

    /// Every kind's typed struct takes exactly its declared keys: with only the required keys
    /// (defaults filled) and with every key set, `check` reports no key the struct rejects.
    #[test]
    fn every_kind_struct_matches_its_keys() {
        for step in crate::steps::KINDS {
            for all in [false, true] {
                let mut p = Params::default();
                for s in step.params() {
                    if s.required || all {
                        p.map.insert(s.name.into(), sample(&s.ty));
                    } else if let Some(d) = s.default_value() {
                        p.map.insert(s.name.into(), d);
                    }
                }
                let mut diags = Vec::new();
                let spans = indexmap::IndexMap::new();
                let mut c = crate::steps::CheckCtx {
                    step: "s",
                    params: &p,
                    spans: &spans,
                    header: crate::diag::Span::default(),
                    plan_only: true,
                    diags: &mut diags,
                };
                step.check(&mut c);
                let typed: Vec<_> = diags
                    .iter()
                    .filter(|d| {
                        [
                            "wrong type",
                            "unknown key",
                            "missing required",
                            "invalid value",
                            "must be >= 0",
                        ]
                        .iter()
                        .any(|m| d.message.starts_with(m))
                    })
                    .map(|d| format!("{:?}: {}", d.key, d.message))
                    .collect();
                assert!(
                    typed.is_empty(),
                    "{} (all keys: {all}): {typed:?}",
                    step.kind()
                );
            }
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Demo {
        n: usize,
        seed: u64,
        mode: Mode,
        name: String,
        limit: Option<usize>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Fast,
        Slow,
    }

    static DEMO: &[ParamSpec] = &[
        def("n", Ty::Int, "4", ""),
        def("seed", Ty::Int, "42", ""),
        def("mode", Ty::Enum(&["fast", "slow"]), "\"fast\"", ""),
        req("name", Ty::Str, ""),
        opt("limit", Ty::Int, ""),
    ];

    /// Every key that does not fit is reported (not only the first), on its key, with the
    /// value written; a required key that is absent is named; common keys are not the kind's.
    #[test]
    fn typed_reports_every_bad_key() {
        let mut p = Params::default();
        for (k, v) in [
            ("n", json!(-1)),
            ("seed", json!(-7)),
            ("mode", json!("warp")),
            ("limit", json!(3)),
            ("output", json!("/tmp/o")),
        ] {
            p.map.insert(k.into(), v);
        }
        let errs = p.typed::<Demo>(DEMO).unwrap_err();
        let got: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            got,
            [
                "key `mode`: invalid value \"warp\" (expected one of \"fast\", \"slow\") (got \"warp\")",
                "key `n`: must be >= 0 (got -1)",
                "key `seed`: must be >= 0 (got -7)",
                "key `name`: missing required key `name`",
            ]
        );
        p.map.insert("name".into(), json!("a"));
        for k in ["n", "seed", "mode"] {
            p.map.remove(k);
        }
        let d = p.typed::<Demo>(DEMO).expect("defaults fill the rest");
        assert_eq!(
            (d.n, d.seed, d.limit, d.name.as_str()),
            (4, 42, Some(3), "a")
        );
        assert!(matches!(d.mode, Mode::Fast));
    }
}
