//! Recipes: TOML files with a `[recipe]` header, `[vars]` and one
//! `[steps.<id>]` table per step.
//!
//! Loading assembles the text (includes, `--set` overrides), interpolates
//! `${var}` references, and checks every step against its kind's schema
//! (`validate.rs`). All problems are collected as diagnostics; nothing stops
//! at the first one.

pub mod output;
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

/// Include chains deeper than this are an error (a chain of thousands would
/// overflow the stack).
pub const MAX_INCLUDE_DEPTH: usize = 64;

/// Load a recipe file, apply includes and `--set` overrides. Returns the
/// recipe (partial, perhaps with no steps, when there are errors) and every
/// diagnostic found on the way; the recipe's `sources` hold every text a
/// diagnostic points into.
pub fn load(path: &Path, sets: &[String]) -> (Recipe, Vec<Diagnostic>) {
    let mut sources = Sources::default();
    let mut diags = Vec::new();
    let display = path.display().to_string();
    let mut root =
        load_file(path, display, &mut sources, &mut diags, &mut Vec::new()).unwrap_or_default();
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
                        if !is_safe_name(&id) {
                            diags.push(
                                Diagnostic::error(format!("invalid step id {id:?}"))
                                    .at(se.key_span)
                                    .expected(SAFE_NAME.to_string())
                                    .help("a step id names files in the cache; rename the step"),
                            );
                            continue;
                        }
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
    (recipe, diags)
}

/// What `is_safe_name` accepts, for messages.
pub const SAFE_NAME: &str = "1 to 128 letters, digits, `_`, `-` or `.`, not starting with `.`";

/// A name that may become one path component: no separators, not `.` or
/// `..`, not hidden. Step ids (and split names) are used as file names.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
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
    let parsed = parse_toml(&text, sources.files.len());
    let file = sources.add(display.clone(), path.to_path_buf(), text);
    let mut table = match parsed {
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
        if stack.len() >= MAX_INCLUDE_DEPTH {
            diags.push(
                Diagnostic::error(format!(
                    "include chain deeper than {MAX_INCLUDE_DEPTH} files at `{rel}`"
                ))
                .at(item.span)
                .key("include")
                .help("includes nest too deeply; flatten the chain"),
            );
            continue;
        }
        let shown = Path::new(&display)
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
    // `--set vars.X=` only overrides a var the recipe defines: a typo must
    // not be silently ignored.
    if parts[0] == "vars" {
        let defined: Vec<&str> = match root.get("vars").map(|e| &e.node.v) {
            Some(V::Table(t)) => t.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        if !defined.contains(&parts[1]) {
            let mut d = Diagnostic::error(format!("`--set`: unknown var `{}`", parts[1]))
                .at(key_span)
                .expected(expected_vars(defined.iter().copied()));
            if let Some(m) = did_you_mean(parts[1], defined.iter().copied()) {
                d = d.help(format!("did you mean `{m}`?"));
            }
            diags.push(d);
            return;
        }
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
    // Vars may use other vars, in any order: resolve them depth-first (an
    // explicit stack, so a long chain cannot overflow), each after the vars
    // it uses. Until resolved, a var holds its text as written.
    let mut vars = std::mem::take(&mut recipe.vars);
    let names: Vec<String> = vars.keys().cloned().collect();
    let mut finished: std::collections::HashSet<String> = Default::default();
    for root in &names {
        if finished.contains(root) {
            continue;
        }
        // (var, the vars it uses, how many of those are visited)
        let mut stack: Vec<(String, Vec<String>, usize)> =
            vec![(root.clone(), var_refs(&vars[root].node), 0)];
        while let Some((name, deps, i)) = stack.last_mut() {
            if let Some(d) = deps.get(*i).cloned() {
                *i += 1;
                if finished.contains(&d) || !vars.contains_key(&d) {
                    continue; // done, or unknown (reported by `subst`)
                }
                if let Some(at) = stack.iter().position(|(n, _, _)| *n == d) {
                    let mut cycle: Vec<&str> =
                        stack[at..].iter().map(|(n, _, _)| n.as_str()).collect();
                    cycle.push(&d);
                    diags.push(
                        Diagnostic::error(format!("var cycle: {}", cycle.join(" -> ")))
                            .at(vars[&d].node.span)
                            .key(&format!("vars.{d}"))
                            .help("a var cannot use its own value; remove one of these references"),
                    );
                    continue;
                }
                let refs = var_refs(&vars[&d].node);
                stack.push((d, refs, 0));
                continue;
            }
            let name = name.clone();
            stack.pop();
            let mut e = vars[&name].clone();
            subst(&mut e.node, &vars, None, &name, diags);
            vars.insert(name.clone(), e);
            finished.insert(name);
        }
    }
    recipe.vars = vars;
    for (id, step) in recipe.steps.iter_mut() {
        for (k, e) in step.params.iter_mut() {
            subst(&mut e.node, &recipe.vars, Some(id), k, diags);
        }
    }
}

/// The `${name}`s used anywhere in a value.
fn var_refs(node: &Node) -> Vec<String> {
    match &node.v {
        V::Str(s) => {
            let mut out = Vec::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                let Some(j) = rest[i..].find('}') else { break };
                out.push(rest[i + 2..i + j].to_string());
                rest = &rest[i + j + 1..];
            }
            out
        }
        V::Array(a) => a.iter().flat_map(var_refs).collect(),
        V::Table(t) => t.values().flat_map(|e| var_refs(&e.node)).collect(),
        _ => Vec::new(),
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
        .expected(expected_vars(vars.keys().map(String::as_str)));
    if let Some(s) = step {
        d = d.step(s);
    }
    if let Some(s) = did_you_mean(name, vars.keys().map(String::as_str)) {
        d = d.help(format!("did you mean `{s}`?"));
    }
    d
}

/// "one of `a`, `b`" for an unknown var.
fn expected_vars<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.map(|k| format!("`{k}`")).collect();
    if names.is_empty() {
        "a key of [vars] (the recipe has none)".to_string()
    } else {
        format!("one of {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, sets: &[&str]) -> (Recipe, Vec<Diagnostic>) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.toml");
        std::fs::write(&p, text).unwrap();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        load(&p, &sets)
    }

    #[test]
    fn step_ids_are_single_safe_path_components() {
        for ok in ["train", "tokens-2", "eval_v1.1", "A"] {
            assert!(is_safe_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".x",
            "a/b",
            "/etc/config",
            "a\\b",
            "a b",
            "é",
        ] {
            assert!(!is_safe_name(bad), "{bad}");
        }
        assert!(!is_safe_name(&"x".repeat(129)));
    }

    #[test]
    fn var_cycles_are_named_and_forward_refs_resolve() {
        let (_, diags) = load_text(
            "[vars]\na = \"${b}\"\nb = \"${c}/x\"\nc = \"${a}\"\n[steps.s]\nkind = \"k\"\n",
            &[],
        );
        let msgs: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(msgs, ["var cycle: a -> b -> c -> a"]);

        let (r, diags) = load_text(
            "[vars]\nout = \"${dir}/x\"\ndir = \"runs\"\n[steps.s]\nkind = \"k\"\np = \"${out}\"\n",
            &[],
        );
        assert!(diags.is_empty());
        assert_eq!(r.steps["s"].params["p"].node.v, V::Str("runs/x".into()));
    }

    #[test]
    fn a_long_var_chain_resolves_without_deep_recursion() {
        let mut t = String::from("[vars]\n");
        for i in 0..20_000 {
            t.push_str(&format!("v{i} = \"${{v{}}}\"\n", i + 1));
        }
        t.push_str("v20000 = \"end\"\n[steps.s]\nkind = \"k\"\np = \"${v0}\"\n");
        let (r, diags) = load_text(&t, &[]);
        assert!(diags.is_empty());
        assert_eq!(r.steps["s"].params["p"].node.v, V::Str("end".into()));
    }

    #[test]
    fn set_of_an_unknown_var_is_an_error() {
        let (_, diags) = load_text("[vars]\nlr = 1\n[steps.s]\nkind = \"k\"\n", &["vars.lrr=2"]);
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].message, "`--set`: unknown var `lrr`");
        assert_eq!(diags[0].help.as_deref(), Some("did you mean `lr`?"));
    }

    #[test]
    fn a_toml_error_keeps_its_source_for_rendering() {
        let (r, diags) = load_text("[steps.a\n", &[]);
        assert_eq!(
            diags[0].location(&r.sources).as_deref(),
            Some(format!("{}:1:9", r.path.display()).as_str())
        );
    }
}
