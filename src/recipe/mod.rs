//! Recipes: TOML files with a `[recipe]` header, `[vars]` and one
//! `[steps.<id>]` table per step.
//!
//! Loading assembles the text (includes, `--set` overrides), interpolates
//! `${var}` references, and checks every step against its kind's schema
//! (`validate.rs`). All problems are collected as diagnostics; nothing stops
//! at the first one.

pub mod validate;
pub mod value;

use crate::diag::{did_you_mean, Diagnostic, Sources, Span};
use indexmap::IndexMap;
use std::path::{Path, PathBuf};
use value::{parse_set_value, parse_toml, Entry, Node, Table, V};

/// A recipe as written: tables merged, vars interpolated, not yet checked
/// against the step schemas.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub sources: Sources,
    pub name: String,
    pub description: String,
    pub vars: Table,
    pub steps: IndexMap<String, StepDef>,
}

#[derive(Debug, Clone)]
pub struct StepDef {
    pub id: String,
    /// Span of the `[steps.<id>]` header (the id key).
    pub span: Span,
    pub kind: Option<(String, Span)>,
    /// Every key but `kind`.
    pub params: Table,
}

/// Load a recipe file, apply includes and `--set` overrides. Returns the
/// recipe (possibly partial) and every diagnostic found on the way.
pub fn load(path: &Path, sets: &[String]) -> (Option<Recipe>, Vec<Diagnostic>) {
    let mut sources = Sources::default();
    let mut diags = Vec::new();
    let display = path.display().to_string();
    let Some(mut root) = load_file(path, display, &mut sources, &mut diags, &mut Vec::new()) else {
        return (None, diags);
    };
    for s in sets {
        apply_set(&mut root, s, &mut sources, &mut diags);
    }

    let mut recipe = Recipe {
        path: path.to_path_buf(),
        dir: path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        sources,
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default(),
        description: String::new(),
        vars: Table::new(),
        steps: IndexMap::new(),
    };
    if recipe.dir.as_os_str().is_empty() {
        recipe.dir = PathBuf::from(".");
    }

    for (key, e) in root {
        match key.as_str() {
            "recipe" => read_header(&mut recipe, e, &mut diags),
            "vars" => match e.node.v {
                V::Table(t) => recipe.vars = t,
                _ => diags.push(type_err(None, "vars", "a table", &e.node)),
            },
            "steps" => match e.node.v {
                V::Table(t) => {
                    for (id, se) in t {
                        match se.node.v {
                            V::Table(mut params) => {
                                let kind =
                                    params.shift_remove("kind").and_then(|k| match k.node.v {
                                        V::Str(s) => Some((s, k.node.span)),
                                        _ => {
                                            diags.push(type_err(
                                                Some(&id),
                                                "kind",
                                                "a string",
                                                &k.node,
                                            ));
                                            None
                                        }
                                    });
                                recipe.steps.insert(
                                    id.clone(),
                                    StepDef {
                                        id,
                                        span: se.key_span,
                                        kind,
                                        params,
                                    },
                                );
                            }
                            _ => diags.push(type_err(
                                Some(&id),
                                &id,
                                "a table `[steps.<id>]`",
                                &se.node,
                            )),
                        }
                    }
                }
                _ => diags.push(type_err(None, "steps", "a table", &e.node)),
            },
            other => {
                let mut d = Diagnostic::error(format!("unknown top-level key `{other}`"))
                    .at(e.key_span)
                    .key(other)
                    .expected("one of `recipe`, `vars`, `steps`, `include`")
                    .got(format!("`{other}`"));
                if let Some(s) = did_you_mean(other, ["recipe", "vars", "steps", "include"]) {
                    d = d.help(format!("did you mean `{s}`?"));
                }
                diags.push(d);
            }
        }
    }
    if recipe.steps.is_empty() && !diags.iter().any(Diagnostic::is_error) {
        diags.push(
            Diagnostic::error("the recipe has no steps")
                .help("add a `[steps.<id>]` table with a `kind`"),
        );
    }
    interpolate_vars(&mut recipe, &mut diags);
    (Some(recipe), diags)
}

fn read_header(recipe: &mut Recipe, e: Entry, diags: &mut Vec<Diagnostic>) {
    let V::Table(t) = e.node.v else {
        diags.push(type_err(None, "recipe", "a table", &e.node));
        return;
    };
    for (k, v) in t {
        match (k.as_str(), &v.node.v) {
            ("name", V::Str(s)) => recipe.name = s.clone(),
            ("description", V::Str(s)) => recipe.description = s.clone(),
            ("name" | "description", _) => {
                diags.push(type_err(None, &format!("recipe.{k}"), "a string", &v.node))
            }
            _ => diags.push(
                Diagnostic::error(format!("unknown key `{k}` in [recipe]"))
                    .at(v.key_span)
                    .key(&format!("recipe.{k}"))
                    .expected("`name` or `description`"),
            ),
        }
    }
}

pub(crate) fn type_err(step: Option<&str>, key: &str, expected: &str, got: &Node) -> Diagnostic {
    let mut d = Diagnostic::error("wrong type")
        .at(got.span)
        .key(key)
        .expected(expected.to_string())
        .got(format!("{} {}", got.v.type_name(), got.show()));
    if let Some(s) = step {
        d = d.step(s);
    }
    d
}

/// Read and parse one file, then its includes (relative to it); the file's
/// own keys win over included ones.
fn load_file(
    path: &Path,
    display: String,
    sources: &mut Sources,
    diags: &mut Vec<Diagnostic>,
    stack: &mut Vec<PathBuf>,
) -> Option<Table> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            diags.push(Diagnostic::error(format!(
                "cannot read recipe `{}`: {e}",
                path.display()
            )));
            return None;
        }
    };
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let file = sources.add(display, path.to_path_buf(), text);
    let mut table = match parse_toml(&sources.get(file).text, file) {
        Ok(t) => t,
        Err(d) => {
            diags.push(d);
            return None;
        }
    };
    let Some(inc) = table.shift_remove("include") else {
        return Some(table);
    };
    let items = match inc.node.v {
        V::Array(a) => a,
        V::Str(_) => vec![inc.node.clone()],
        _ => {
            diags.push(type_err(
                None,
                "include",
                "an array of file paths",
                &inc.node,
            ));
            return Some(table);
        }
    };
    stack.push(canon);
    let base_dir = sources.base_dir(file);
    let mut merged = Table::new();
    for item in items {
        let V::Str(rel) = &item.v else {
            diags.push(type_err(None, "include", "a file path string", &item));
            continue;
        };
        let p = base_dir.join(rel);
        let pc = p.canonicalize().unwrap_or_else(|_| p.clone());
        if !p.exists() {
            diags.push(
                Diagnostic::error(format!("included file `{}` does not exist", p.display()))
                    .at(item.span)
                    .key("include"),
            );
            continue;
        }
        if stack.contains(&pc) {
            diags.push(
                Diagnostic::error(format!("include cycle: `{rel}` includes itself"))
                    .at(item.span)
                    .key("include"),
            );
            continue;
        }
        let shown = Path::new(&sources.get(file).display)
            .parent()
            .map(|d| d.join(rel).display().to_string())
            .unwrap_or_else(|| rel.clone());
        if let Some(t) = load_file(&p, shown, sources, diags, stack) {
            overlay(&mut merged, t);
        }
    }
    stack.pop();
    overlay(&mut merged, table);
    Some(merged)
}

/// Deep-merge `top` into `base`: tables merge key by key, anything else in
/// `top` replaces what `base` had.
pub fn overlay(base: &mut Table, top: Table) {
    for (k, e) in top {
        match (base.get_mut(&k), e.node.v) {
            (
                Some(Entry {
                    node:
                        Node {
                            v: V::Table(bt),
                            span,
                        },
                    key_span,
                }),
                V::Table(tt),
            ) => {
                overlay(bt, tt);
                *span = e.node.span;
                *key_span = e.key_span;
            }
            (_, v) => {
                base.insert(
                    k,
                    Entry {
                        key_span: e.key_span,
                        node: Node {
                            v,
                            span: e.node.span,
                        },
                    },
                );
            }
        }
    }
}

/// `--set steps.train.max_steps=10`: parse the value as TOML (bare words
/// become strings) and put it at the dotted path.
fn apply_set(root: &mut Table, s: &str, sources: &mut Sources, diags: &mut Vec<Diagnostic>) {
    let text = format!("--set {s}");
    let file = sources.add("<command line>".into(), PathBuf::from("."), text);
    let Some((path, value)) = s.split_once('=') else {
        diags.push(
            Diagnostic::error("`--set` needs KEY=VALUE")
                .at(Span {
                    file,
                    start: 6,
                    end: 6 + s.len(),
                })
                .expected("e.g. `--set steps.train.max_steps=10` or `--set vars.lr=1e-4`")
                .got(format!("`{s}`")),
        );
        return;
    };
    let key_span = Span {
        file,
        start: 6,
        end: 6 + path.len(),
    };
    let node = parse_set_value(
        value.trim(),
        file,
        6 + path.len() + 1 + (value.len() - value.trim_start().len()),
    );
    let parts: Vec<&str> = path.trim().split('.').collect();
    if !matches!(parts[0], "vars" | "steps" | "recipe")
        || parts.len() < 2
        || parts.iter().any(|p| p.is_empty())
    {
        diags.push(
            Diagnostic::error("`--set` key must start with `vars.`, `steps.<id>.` or `recipe.`")
                .at(key_span)
                .got(format!("`{path}`")),
        );
        return;
    }
    let mut t = root;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            t.insert(
                part.to_string(),
                Entry {
                    key_span,
                    node: node.clone(),
                },
            );
            return;
        }
        let e = t.entry(part.to_string()).or_insert_with(|| Entry {
            key_span,
            node: Node {
                v: V::Table(Table::new()),
                span: key_span,
            },
        });
        if !matches!(e.node.v, V::Table(_)) {
            e.node = Node {
                v: V::Table(Table::new()),
                span: key_span,
            };
        }
        let V::Table(inner) = &mut e.node.v else {
            return;
        };
        t = inner;
    }
}

/// Replace `${name}` in every string of every step with the value of
/// `vars.name`. A string that is exactly `${name}` takes the var's type
/// (so `lr = "${lr}"` stays a float).
fn interpolate_vars(recipe: &mut Recipe, diags: &mut Vec<Diagnostic>) {
    // Vars may use earlier vars.
    let mut vars = Table::new();
    for (k, mut e) in std::mem::take(&mut recipe.vars) {
        subst(&mut e.node, &vars, None, &k, diags);
        vars.insert(k, e);
    }
    recipe.vars = vars;
    for (id, step) in recipe.steps.iter_mut() {
        for (k, e) in step.params.iter_mut() {
            subst(&mut e.node, &recipe.vars, Some(id), k, diags);
        }
    }
}

fn subst(
    node: &mut Node,
    vars: &Table,
    step: Option<&str>,
    key: &str,
    diags: &mut Vec<Diagnostic>,
) {
    match &mut node.v {
        V::Str(s) if s.contains("${") => {
            // Whole-string reference keeps the var's type.
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                if !name.contains("${") && !name.contains('}') {
                    match vars.get(name) {
                        // The value (and where relative paths resolve from)
                        // comes from the var's definition.
                        Some(v) => *node = v.node.clone(),
                        None => diags.push(unknown_var(name, vars, node.span, step, key)),
                    }
                    return;
                }
            }
            let start_var = s
                .strip_prefix("${")
                .and_then(|r| r.split_once('}'))
                .map(|(n, _)| n.to_string());
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                out.push_str(&rest[..i]);
                let Some(j) = rest[i..].find('}') else {
                    out.push_str(&rest[i..]);
                    rest = "";
                    break;
                };
                let name = &rest[i + 2..i + j];
                match vars.get(name).map(|v| &v.node.v) {
                    Some(V::Str(v)) => out.push_str(v),
                    Some(V::Int(v)) => out.push_str(&v.to_string()),
                    Some(V::Float(v)) => out.push_str(&v.to_string()),
                    Some(V::Bool(v)) => out.push_str(&v.to_string()),
                    Some(_) => diags.push(
                        Diagnostic::error(format!(
                            "var `{name}` is not a scalar and cannot be put inside a string"
                        ))
                        .at(node.span)
                        .key(key),
                    ),
                    None => diags.push(unknown_var(name, vars, node.span, step, key)),
                }
                rest = &rest[i + j + 1..];
            }
            out.push_str(rest);
            *s = out;
            // "${dir}/x.json": resolve relative paths from where `dir` is defined.
            if let Some(first) = start_var.and_then(|n| vars.get(&n)) {
                node.span.file = first.node.span.file;
                node.span.start = first.node.span.start;
                node.span.end = first.node.span.end;
            }
        }
        V::Array(a) => a.iter_mut().for_each(|n| subst(n, vars, step, key, diags)),
        V::Table(t) => t
            .values_mut()
            .for_each(|e| subst(&mut e.node, vars, step, key, diags)),
        _ => {}
    }
}

fn unknown_var(name: &str, vars: &Table, span: Span, step: Option<&str>, key: &str) -> Diagnostic {
    let mut d = Diagnostic::error(format!("unknown var `{name}`"))
        .at(span)
        .key(key)
        .expected(if vars.is_empty() {
            "a key of [vars] (the recipe has none)".to_string()
        } else {
            format!(
                "one of {}",
                vars.keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
    if let Some(s) = step {
        d = d.step(s);
    }
    if let Some(s) = did_you_mean(name, vars.keys().map(String::as_str)) {
        d = d.help(format!("did you mean `{s}`?"));
    }
    d
}
