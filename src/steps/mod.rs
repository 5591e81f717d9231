//! Step kinds. Each kind lives in its own file and implements [`Step`]; the
//! closed list [`KINDS`] maps `kind = "..."` in a recipe to its type.
//!
//! A step declares its parameters ([`ParamSpec`]) with types and defaults.
//! The recipe validator checks them all before anything runs, fills in the
//! defaults, and hands the step a canonical [`Params`] map; that map (with
//! step references replaced by the inputs' cache keys) is what the cache key
//! hashes.

mod evaluate;
mod export;
mod generate;
pub mod io;
mod load_dataset;
mod load_model;
mod merge;
pub mod quantize;
mod template;
mod tokenize;
pub mod train;

use crate::diag::{Diagnostic, Span};
use indexmap::IndexMap;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every step kind, in the order `recipe explain` lists them.
pub static KINDS: &[&dyn Step] = &[
    &load_dataset::LoadDataset,
    &load_model::LoadModel,
    &template::Template,
    &tokenize::Tokenize,
    &quantize::Quantize,
    &train::Train,
    &evaluate::Evaluate,
    &merge::Merge,
    &export::Export,
    &generate::Generate,
];

pub fn find(kind: &str) -> Option<&'static dyn Step> {
    KINDS.iter().copied().find(|s| s.kind() == kind)
}

pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|s| s.kind()).collect()
}

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
    pub fn str(&self, k: &str) -> &str {
        self.opt_str(k).unwrap_or("")
    }
    pub fn opt_i64(&self, k: &str) -> Option<i64> {
        self.get(k).and_then(Value::as_i64)
    }
    pub fn i64(&self, k: &str) -> i64 {
        self.opt_i64(k).unwrap_or(0)
    }
    pub fn usize(&self, k: &str) -> usize {
        self.opt_i64(k).unwrap_or(0).max(0) as usize
    }
    pub fn opt_usize(&self, k: &str) -> Option<usize> {
        self.opt_i64(k).map(|v| v.max(0) as usize)
    }
    pub fn opt_f64(&self, k: &str) -> Option<f64> {
        self.get(k).and_then(Value::as_f64)
    }
    pub fn f64(&self, k: &str) -> f64 {
        self.opt_f64(k).unwrap_or(0.0)
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
    pub fn path(&self, k: &str) -> Option<PathBuf> {
        self.opt_str(k).map(PathBuf::from)
    }
    pub fn table(&self, k: &str) -> serde_json::Map<String, Value> {
        self.get(k)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }
    /// The step's own keys (set ones, `COMMON` keys left out) deserialized into its typed
    /// parameter struct.
    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        let map: serde_json::Map<String, Value> = self
            .map
            .iter()
            .filter(|(k, v)| !v.is_null() && !COMMON.iter().any(|c| c.name == k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        serde_json::from_value(Value::Object(map))
    }
}

/// What a step's `check` sees: its params plus where each key was written.
pub struct CheckCtx<'a> {
    pub step: &'a str,
    pub params: &'a Params,
    pub spans: &'a IndexMap<String, Span>,
    pub header: Span,
    pub plan_only: bool,
    pub diags: &'a mut Vec<Diagnostic>,
}

impl CheckCtx<'_> {
    /// An error on `key` (or on the step header if the key is not written).
    pub fn error(&mut self, key: &str, msg: impl Into<String>) -> &mut Diagnostic {
        let span = self.spans.get(key).copied().unwrap_or(self.header);
        self.diags
            .push(Diagnostic::error(msg).at(span).step(self.step).key(key));
        let n = self.diags.len() - 1;
        &mut self.diags[n]
    }
    pub fn warn(&mut self, key: &str, msg: impl Into<String>) {
        let span = self.spans.get(key).copied().unwrap_or(self.header);
        self.diags
            .push(Diagnostic::warning(msg).at(span).step(self.step).key(key));
    }
}

/// Plan-time view of a step: its params and its inputs' params, no outputs.
pub struct EstimateCtx<'a> {
    pub params: &'a Params,
    /// param name -> (input step kind, input step params)
    pub inputs: IndexMap<String, (&'static str, &'a Params)>,
    /// All steps of the recipe by id, to walk further up the DAG.
    pub all: &'a IndexMap<String, (&'static str, Params)>,
}

impl EstimateCtx<'_> {
    /// Follow `param` up the DAG until a step of `kind`; returns its params.
    pub fn upstream(&self, param: &str, kind: &str) -> Option<&Params> {
        let (k, p) = self.inputs.get(param)?;
        let mut cur: (&str, &Params) = (k, p);
        for _ in 0..32 {
            if cur.0 == kind {
                return Some(cur.1);
            }
            let next = ["model", "data", "base"]
                .iter()
                .find_map(|n| cur.1.opt_str(n))?;
            let (k, p) = self.all.get(next)?;
            cur = (k, p);
        }
        None
    }
}

/// A plan-time resource estimate, printed by `recipe plan`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Estimate {
    /// One line, e.g. "weights 3.4 GiB (nf4) + adapters 15 MiB + ...".
    pub summary: String,
    /// Peak memory in bytes, where known.
    pub peak_bytes: Option<u64>,
    /// Detailed rows (name, bytes) for the memory table.
    pub rows: Vec<(String, u64)>,
}

/// One input of a running step: the producing step and its cached output dir.
#[derive(Debug, Clone)]
pub struct InputRef {
    pub step: String,
    pub kind: &'static str,
    pub dir: PathBuf,
    pub params: Params,
}

/// Everything a step needs while it runs.
pub struct RunCtx<'a> {
    pub id: &'a str,
    pub params: &'a Params,
    /// param name -> input
    pub inputs: &'a IndexMap<String, InputRef>,
    /// Where to write outputs (a temporary dir, published atomically after `run`).
    pub out: &'a Path,
    /// Scratch that survives a killed run (checkpoints), keyed by cache key.
    pub work: &'a Path,
    pub recipe_dir: &'a Path,
    pub device: &'a str,
    pub progress: &'a crate::run::Progress,
}

impl RunCtx<'_> {
    pub fn input(&self, name: &str) -> anyhow::Result<&InputRef> {
        self.inputs
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("step `{}`: input `{name}` is not set", self.id))
    }
    pub fn opt_input(&self, name: &str) -> Option<&InputRef> {
        self.inputs.get(name)
    }
    pub fn info(&self, msg: impl AsRef<str>) {
        self.progress
            .println(&format!("  [{}] {}", self.id, msg.as_ref()));
    }
    pub fn bar(&self, len: u64, msg: &str) -> indicatif::ProgressBar {
        self.progress.bar(self.id, len, msg)
    }
    /// The backend for this step's `device` key (or the run's `--device` when the key is
    /// `auto`); logs which device runs and why. `cuda` without a usable GPU is an error.
    pub fn backend(&self) -> anyhow::Result<std::sync::Arc<dyn crate::backend::Backend>> {
        let key = self.params.opt_str("device").unwrap_or("auto");
        let spec = crate::backend::step_device(key, self.device);
        let (be, line) = crate::backend::backend_for_spec(spec)?;
        self.info(line);
        Ok(be)
    }
}

/// A step kind. Implementations are unit structs listed in [`KINDS`].
pub trait Step: Sync + Send {
    /// The `kind = "..."` string.
    fn kind(&self) -> &'static str;
    /// One line for `recipe explain` and `--help`.
    fn about(&self) -> &'static str;
    fn params(&self) -> &'static [ParamSpec];
    /// Bump when the output format changes: old cache entries stop matching.
    fn format_version(&self) -> u32 {
        1
    }
    /// Cross-key checks beyond types (e.g. `warmup_ratio` in [0, 1)).
    fn check(&self, _c: &mut CheckCtx) {}
    /// Plan-time checks against the params of upstream steps (run after every step's own
    /// `check`), e.g. train's `target_modules` against the model's config.json.
    fn check_inputs(&self, _e: &EstimateCtx, _c: &mut CheckCtx) {}
    /// Plan-time estimate from configs and file headers only.
    fn estimate(&self, _e: &EstimateCtx) -> Option<Estimate> {
        None
    }
    /// Does the real work, writing into `ctx.out`.
    fn run(&self, _ctx: &RunCtx) -> anyhow::Result<()> {
        anyhow::bail!(
            "step kind `{}` is not implemented yet in this version of recipe (its parameters validate, \
             `recipe plan` works, but it cannot run)",
            self.kind()
        )
    }
}
