//! Check every step of a recipe against its kind's schema: unknown keys,
//! types, enums, required keys, step references, input files. Fills in
//! defaults and resolves paths, giving canonical `Params`; then each kind's
//! `check` reads them as its typed struct (`steps::params`), so a value the
//! struct cannot take is reported here too, on its key.

use super::value::{Node, V};
use super::{Recipe, StepDef};
use crate::diag::{did_you_mean, Diagnostic, Span};
use crate::steps::{self, CheckCtx, ParamSpec, Params, Step, Ty, COMMON};
use indexmap::IndexMap;
use serde_json::Value;
use std::path::PathBuf;

pub struct CheckedStep {
    pub id: String,
    pub step: &'static dyn Step,
    pub params: Params,
    /// param name -> referenced step id (`after` entries as `after[i]`).
    pub refs: IndexMap<String, String>,
    /// Input files and dirs whose contents are part of the cache key.
    pub files: Vec<PathBuf>,
    /// Where each key's value was written.
    pub spans: IndexMap<String, Span>,
    pub header: Span,
}

impl CheckedStep {
    pub fn kind(&self) -> &'static str {
        self.step.kind()
    }
}

pub struct Checked {
    pub recipe: Recipe,
    pub steps: IndexMap<String, CheckedStep>,
}

/// Check all steps; returns only the steps whose kind is known.
pub fn check(recipe: Recipe, plan_only: bool, diags: &mut Vec<Diagnostic>) -> Checked {
    let mut steps = IndexMap::new();
    for def in recipe.steps.values() {
        if let Some(cs) = check_step(&recipe, def, plan_only, diags) {
            steps.insert(cs.id.clone(), cs);
        }
    }
    // References: exist and have an accepted kind.
    let kinds: IndexMap<&str, Option<&str>> = recipe
        .steps
        .values()
        .map(|d| {
            (
                d.id.as_str(),
                steps.get(&d.id).map(|s: &CheckedStep| s.kind()),
            )
        })
        .collect();
    for s in steps.values() {
        for (param, target) in &s.refs {
            let span = s.spans.get(param).copied().unwrap_or(s.header);
            let base = param.split('[').next().unwrap_or(param);
            match kinds.get(target.as_str()) {
                None => {
                    let mut d = Diagnostic::error(format!("no step named `{target}`"))
                        .at(span)
                        .step(&s.id)
                        .key(base)
                        .expected(format!(
                            "one of the recipe's steps: {}",
                            recipe
                                .steps
                                .keys()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    if let Some(m) = did_you_mean(target, recipe.steps.keys().map(String::as_str)) {
                        d = d.help(format!("did you mean `{m}`?"));
                    }
                    diags.push(d);
                }
                Some(Some(kind)) => {
                    let spec = s.step.params().iter().find(|p| p.name == base);
                    if let Some(ParamSpec {
                        ty: Ty::Step(allowed),
                        ..
                    }) = spec
                    {
                        if !allowed.is_empty() && !allowed.contains(kind) {
                            diags.push(
                                Diagnostic::error(format!("`{target}` is a `{kind}` step"))
                                    .at(span)
                                    .step(&s.id)
                                    .key(base)
                                    .expected(Ty::Step(allowed).describe())
                                    .got(format!("a `{kind}` step")),
                            );
                        }
                    }
                }
                Some(None) => {} // its unknown kind is reported already
            }
        }
    }
    // Two steps writing the same output would replace each other.
    let mut outs: IndexMap<PathBuf, &str> = IndexMap::new();
    for s in steps.values() {
        if let Some(out) = s.params.path("output") {
            if let Some(first) = outs.get(&out) {
                let span = s.spans.get("output").copied().unwrap_or(s.header);
                diags.push(
                    Diagnostic::error(format!(
                        "`{}` is also the output of step `{first}`",
                        out.display()
                    ))
                    .at(span)
                    .step(&s.id)
                    .key("output"),
                );
            } else {
                outs.insert(out, &s.id);
            }
        }
    }
    check_inputs(&steps, plan_only, diags);
    Checked { recipe, steps }
}

/// Each step's `check_inputs`, with its inputs' params (as `plan` estimates see them).
fn check_inputs(
    steps: &IndexMap<String, CheckedStep>,
    plan_only: bool,
    diags: &mut Vec<Diagnostic>,
) {
    let all: IndexMap<String, (&'static str, Params)> = steps
        .iter()
        .map(|(k, s)| (k.clone(), (s.kind(), s.params.clone())))
        .collect();
    for s in steps.values() {
        let inputs = s
            .refs
            .iter()
            .filter_map(|(p, t)| all.get(t).map(|(k, tp)| (p.clone(), (*k, tp))))
            .collect();
        let e = crate::steps::EstimateCtx {
            params: &s.params,
            inputs,
            all: &all,
        };
        let mut c = CheckCtx {
            step: &s.id,
            params: &s.params,
            spans: &s.spans,
            header: s.header,
            plan_only,
            diags,
        };
        s.step.check_inputs(&e, &mut c);
    }
}

fn check_step(
    recipe: &Recipe,
    def: &StepDef,
    plan_only: bool,
    diags: &mut Vec<Diagnostic>,
) -> Option<CheckedStep> {
    let Some((kind, kind_span)) = &def.kind else {
        let reported = diags
            .iter()
            .any(|d| d.step.as_deref() == Some(&def.id) && d.key.as_deref() == Some("kind"));
        if reported {
            return None; // `kind` of the wrong type
        }
        diags.push(
            Diagnostic::error("missing `kind`")
                .at(def.span)
                .step(&def.id)
                .key("kind")
                .expected(format!("one of {}", steps::kind_names().join(", "))),
        );
        return None;
    };
    let Some(step) = steps::find(kind) else {
        let mut d = Diagnostic::error(format!("unknown step kind `{kind}`"))
            .at(*kind_span)
            .step(&def.id)
            .key("kind")
            .expected(format!("one of {}", steps::kind_names().join(", ")))
            .got(format!("\"{kind}\""));
        if let Some(m) = did_you_mean(kind, steps::kind_names()) {
            d = d.help(format!("did you mean `{m}`?"));
        }
        diags.push(d);
        return None;
    };
    let specs: Vec<&ParamSpec> = step.params().iter().chain(COMMON.iter()).collect();
    let mut params = Params::default();
    let mut refs = IndexMap::new();
    let mut files = Vec::new();
    let mut spans = IndexMap::new();
    let before = diags.iter().filter(|d| d.is_error()).count();

    for (key, entry) in &def.params {
        // Errors about a value point at the value.
        spans.insert(key.clone(), entry.node.span);
        let Some(spec) = specs.iter().find(|s| s.name == key) else {
            let mut d = Diagnostic::error("unknown key")
                .at(entry.key_span)
                .step(&def.id)
                .key(key)
                .expected(format!("a key of `{kind}` (see `recipe explain {kind}`)"))
                .got(format!("`{key}`"));
            if let Some(m) = did_you_mean(key, specs.iter().map(|s| s.name)) {
                d = d.help(format!("did you mean `{m}`?"));
            }
            diags.push(d);
            continue;
        };
        match convert(recipe, spec, &entry.node) {
            Ok(v) => {
                match spec.ty {
                    Ty::Step(_) => {
                        if let Some(t) = v.as_str() {
                            refs.insert(key.clone(), t.to_string());
                        }
                    }
                    Ty::Path | Ty::ModelPath => {
                        if let Some(p) = v.as_str() {
                            let pb = PathBuf::from(p);
                            if pb.exists() {
                                files.push(pb);
                            } else if p.contains("${") {
                                // An unknown var or a var cycle, reported already.
                            } else {
                                let what = if matches!(spec.ty, Ty::ModelPath) {
                                    "model dir"
                                } else {
                                    "input path"
                                };
                                let d = Diagnostic::error(format!("{what} `{p}` does not exist"))
                                    .at(entry.node.span)
                                    .step(&def.id)
                                    .key(key);
                                if matches!(spec.ty, Ty::ModelPath) && plan_only {
                                    diags.push(Diagnostic { level: crate::diag::Level::Warning, ..d }.help(
                                        "fine for a dry run; put the model there (or `--set steps.<id>.path=DIR`) before `recipe run`",
                                    ));
                                } else {
                                    diags.push(d);
                                }
                            }
                        }
                    }
                    _ => {}
                }
                if key == "after" {
                    for (i, a) in v.as_array().into_iter().flatten().enumerate() {
                        if let Some(t) = a.as_str() {
                            refs.insert(format!("after[{i}]"), t.to_string());
                            spans.insert(format!("after[{i}]"), entry.node.span);
                        }
                    }
                }
                params.map.insert(key.clone(), v);
            }
            Err(d) => diags.push(d.step(&def.id).key(key)),
        }
    }
    for spec in step.params() {
        if params.map.contains_key(spec.name) {
            continue;
        }
        if spec.required {
            diags.push(
                Diagnostic::error(format!("missing required key `{}`", spec.name))
                    .at(def.span)
                    .step(&def.id)
                    .key(spec.name)
                    .expected(format!("{} ({})", spec.ty.describe(), spec.doc)),
            );
        } else if let Some(d) = spec.default_value() {
            params.map.insert(spec.name.to_string(), d);
        }
    }
    if let (Some(out), Some(span)) = (params.path("output"), spans.get("output")) {
        check_output_path(recipe, &def.id, &out, &files, *span, diags);
    }
    // The typed struct and the step-specific checks only make sense when the types are right.
    if diags.iter().filter(|d| d.is_error()).count() == before {
        let mut c = CheckCtx {
            step: &def.id,
            params: &params,
            spans: &spans,
            header: def.span,
            plan_only,
            diags,
        };
        step.check(&mut c);
    }
    Some(CheckedStep {
        id: def.id.clone(),
        step,
        params,
        refs,
        files,
        spans,
        header: def.span,
    })
}

/// `output` may only be a new path or this step's own earlier output, and
/// never a dir that holds the recipe or one of the step's inputs.
fn check_output_path(
    recipe: &Recipe,
    step: &str,
    out: &std::path::Path,
    inputs: &[PathBuf],
    span: Span,
    diags: &mut Vec<Diagnostic>,
) {
    let err = |msg: String| Diagnostic::error(msg).at(span).step(step).key("output");
    let help = "an output must not hold the recipe or the step's inputs; choose a new path";
    let recipe_file = normalize(&recipe.path);
    if recipe_file.starts_with(out) {
        let msg = format!(
            "`{}` holds the recipe `{}`",
            out.display(),
            recipe_file.display()
        );
        diags.push(err(msg).help(help));
        return;
    }
    if let Some(input) = inputs.iter().find(|p| p.starts_with(out)) {
        let msg = if input == out {
            format!("`{}` is an input of this step", out.display())
        } else {
            format!(
                "`{}` holds `{}`, an input of this step",
                out.display(),
                input.display()
            )
        };
        diags.push(err(msg).help(help));
        return;
    }
    if let Err(msg) = super::output::check_output(out, &recipe.path, step) {
        diags.push(err(msg).help(format!(
            "recipe only replaces an output it wrote (marked by `{}`); choose a path that does not exist, or remove this one",
            super::output::OUTPUT_MARKER
        )));
    }
}

/// Type-check one value and turn it into canonical JSON.
fn convert(recipe: &Recipe, spec: &ParamSpec, node: &Node) -> Result<Value, Diagnostic> {
    let wrong = || {
        Diagnostic::error("wrong type")
            .at(node.span)
            .expected(spec.ty.describe())
            .got(format!("{} {}", node.v.type_name(), node.show()))
    };
    Ok(match (&spec.ty, &node.v) {
        (Ty::Str | Ty::Step(_), V::Str(s)) => Value::String(s.clone()),
        (Ty::Int, V::Int(i)) => Value::from(*i),
        (Ty::Float, V::Int(i)) => Value::from(*i as f64),
        (Ty::Float | Ty::Number, V::Float(f)) if f.is_finite() => Value::from(*f),
        (Ty::Number, V::Int(i)) => Value::from(*i),
        (Ty::Bool, V::Bool(b)) => Value::Bool(*b),
        (Ty::Enum(allowed), V::Str(s)) => {
            if !allowed.contains(&s.as_str()) {
                let mut d = Diagnostic::error(format!("invalid value \"{s}\""))
                    .at(node.span)
                    .expected(spec.ty.describe())
                    .got(format!("\"{s}\""));
                if let Some(m) = did_you_mean(s, allowed.iter().copied()) {
                    d = d.help(format!("did you mean \"{m}\"?"));
                }
                return Err(d);
            }
            Value::String(s.clone())
        }
        (Ty::StrList | Ty::StrOrList, V::Array(a)) => {
            let mut out = Vec::new();
            for n in a {
                match &n.v {
                    V::Str(s) => out.push(Value::String(s.clone())),
                    _ => {
                        return Err(Diagnostic::error("wrong type in array")
                            .at(n.span)
                            .expected("strings")
                            .got(format!("{} {}", n.v.type_name(), n.show())))
                    }
                }
            }
            Value::Array(out)
        }
        (Ty::StrOrList, V::Str(s)) => Value::String(s.clone()),
        (Ty::Table, V::Table(_)) => node.to_json(),
        (Ty::Path | Ty::ModelPath | Ty::OutPath, V::Str(s)) => {
            let p = PathBuf::from(s);
            let abs = if p.is_absolute() {
                p
            } else {
                recipe.sources.base_dir(node.span.file).join(p)
            };
            Value::String(normalize(&abs).display().to_string())
        }
        _ => return Err(wrong()),
    })
}

/// Make a path absolute and drop `.`/`..` without touching the disk.
pub fn normalize(p: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
