//! Step kinds. Each kind lives in its own file and implements [`Kind`] (and through it the
//! object-safe [`Step`] the runner and planner use); the closed list [`KINDS`] maps
//! `kind = "..."` in a recipe to its type.
//!
//! A kind declares its parameters ([`ParamSpec`]) with types and defaults, and a typed struct
//! ([`Kind::Params`]) with one field per key. The recipe validator checks every key before
//! anything runs, fills in the defaults and builds a canonical [`Params`] map (with step
//! references replaced by the inputs' cache keys, that map is what the cache key hashes); then
//! it deserializes the map into the typed struct, so a key the struct cannot take is an error
//! on that key ([`params`]). `check` and `run` only ever see the typed struct.

mod evaluate;
mod export;
mod generate;
pub mod io;
mod load_dataset;
mod load_model;
pub mod memory;
mod merge;
pub mod params;
mod progress;
pub mod quantize;
mod template;
mod tokenize;
pub mod train;

use crate::diag::{Diagnostic, Span};
use indexmap::IndexMap;
pub use params::{def, opt, req, ParamError, ParamSpec, Params, Ty, COMMON};
pub use progress::Progress;
use serde::de::DeserializeOwned;
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
    /// The params as the typed struct `T` of a kind with keys `specs`; every key that does not
    /// fit is reported as an error on that key.
    pub fn typed<T: DeserializeOwned>(&mut self, specs: &[ParamSpec]) -> Option<T> {
        match self.params.typed(specs) {
            Ok(t) => Some(t),
            Err(errors) => {
                for e in errors {
                    let d = self.error(&e.key, e.message);
                    d.expected = e.expected;
                    d.got = e.got;
                }
                None
            }
        }
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
    /// The plan's peak memory estimate for this step (named if the device runs out).
    pub planned_peak: Option<u64>,
    pub progress: &'a crate::steps::Progress,
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
    /// The step's params as the typed struct `T` of a kind with keys `specs` (validated
    /// already when the recipe was checked; an error here names the step and key).
    pub fn typed<T: DeserializeOwned>(&self, specs: &[ParamSpec]) -> anyhow::Result<T> {
        self.params.typed(specs).map_err(|errors| {
            let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("step `{}`: {}", self.id, all.join("; "))
        })
    }
    pub fn info(&self, msg: impl AsRef<str>) {
        self.progress
            .println(&format!("  [{}] {}", self.id, msg.as_ref()));
    }
    pub fn bar(&self, len: u64, msg: &str) -> indicatif::ProgressBar {
        self.progress.bar(self.id, len, msg)
    }
    /// The backend for the step's `device` key (or the run's `--device` when the key is
    /// `auto`) computing products in `dtype`; logs which device runs and why. `cuda` without a
    /// usable GPU is an error.
    pub fn backend(
        &self,
        key: &str,
        dtype: &str,
    ) -> anyhow::Result<std::sync::Arc<dyn crate::backend::Backend>> {
        let spec = crate::backend::step_device(key, self.device);
        let (be, line) = crate::backend::backend_for_spec(spec, dtype)?;
        self.info(line);
        if let Some(bytes) = self.planned_peak {
            be.set_planned_peak(bytes);
        }
        Ok(be)
    }
}

/// A step kind with typed parameters: what each step file implements (unit structs listed in
/// [`KINDS`]). The blanket [`Step`] impl deserializes [`Kind::Params`] from the canonical
/// params and hands it to `check`, `check_inputs` and `run`.
pub trait Kind: Sync + Send {
    /// One field per key of [`Kind::PARAMS`] (serde names = recipe keys), deny_unknown_fields.
    type Params: DeserializeOwned;
    /// The `kind = "..."` string.
    const KIND: &'static str;
    /// One line for `recipe explain` and `--help`.
    const ABOUT: &'static str;
    /// The keys, their types, defaults and docs.
    const PARAMS: &'static [ParamSpec];
    /// Bump when the output format changes: old cache entries stop matching.
    const FORMAT_VERSION: u32 = 1;
    /// Checks beyond types (e.g. `warmup_ratio` in [0, 1)).
    fn check(&self, _p: &Self::Params, _c: &mut CheckCtx) {}
    /// Plan-time checks against the params of upstream steps.
    fn check_inputs(&self, _p: &Self::Params, _e: &EstimateCtx, _c: &mut CheckCtx) {}
    /// Plan-time estimate from configs and file headers only.
    fn estimate(&self, _e: &EstimateCtx) -> Option<Estimate> {
        None
    }
    /// Does the real work, writing into `ctx.out`.
    fn run(&self, p: &Self::Params, ctx: &RunCtx) -> anyhow::Result<()>;
}

impl<K: Kind> Step for K {
    fn kind(&self) -> &'static str {
        K::KIND
    }
    fn about(&self) -> &'static str {
        K::ABOUT
    }
    fn params(&self) -> &'static [ParamSpec] {
        K::PARAMS
    }
    fn format_version(&self) -> u32 {
        K::FORMAT_VERSION
    }
    fn check(&self, c: &mut CheckCtx) {
        if let Some(p) = c.typed::<K::Params>(K::PARAMS) {
            Kind::check(self, &p, c);
        }
    }
    fn check_inputs(&self, e: &EstimateCtx, c: &mut CheckCtx) {
        // Type errors were reported by `check`.
        if let Ok(p) = c.params.typed::<K::Params>(K::PARAMS) {
            Kind::check_inputs(self, &p, e, c);
        }
    }
    fn estimate(&self, e: &EstimateCtx) -> Option<Estimate> {
        Kind::estimate(self, e)
    }
    fn run(&self, ctx: &RunCtx) -> anyhow::Result<()> {
        Kind::run(self, &ctx.typed::<K::Params>(K::PARAMS)?, ctx)
    }
}

/// What the runner and planner see of a step kind (object-safe; see [`Kind`]).
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
