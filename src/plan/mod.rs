//! The plan: the recipe's DAG (petgraph), schedule order, cache keys, and
//! for each step whether it is cached or why it will run.

use crate::cache::{filehash::FileHasher, Cache, CACHE_EPOCH};
use crate::diag::Diagnostic;
use crate::recipe::validate::Checked;
use crate::steps::{Estimate, EstimateCtx, Params, Ty};
use anyhow::Result;
use indexmap::IndexMap;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The DAG: an edge a -> b means b reads a's output.
pub struct Dag {
    pub graph: DiGraph<String, ()>,
    pub index: IndexMap<String, NodeIndex>,
    /// Step ids in schedule order (dependencies first, ties in file order).
    pub order: Vec<String>,
}

/// Build the DAG; a cycle is reported as `a -> b -> a`.
pub fn build_dag(checked: &Checked, diags: &mut Vec<Diagnostic>) -> Option<Dag> {
    let mut graph = DiGraph::new();
    let mut index = IndexMap::new();
    for id in checked.steps.keys() {
        index.insert(id.clone(), graph.add_node(id.clone()));
    }
    for s in checked.steps.values() {
        for target in s.refs.values() {
            if let (Some(&a), Some(&b)) = (index.get(target), index.get(&s.id)) {
                graph.update_edge(a, b, ());
            }
        }
    }
    // Cycles: every strongly connected component with more than one node,
    // or a self-loop, is named by walking it from its first step in file order.
    let mut found = false;
    let mut sccs = petgraph::algo::tarjan_scc(&graph);
    sccs.sort_by_key(|c| c.iter().map(|n| n.index()).min());
    for comp in sccs {
        let self_loop = comp.len() == 1 && graph.contains_edge(comp[0], comp[0]);
        if comp.len() < 2 && !self_loop {
            continue;
        }
        found = true;
        let start = *comp.iter().min_by_key(|n| n.index()).unwrap_or(&comp[0]);
        let mut path = vec![start];
        let mut cur = start;
        loop {
            // Follow a reference that stays inside the component (a step
            // that `cur` reads), lowest index first.
            let mut next: Vec<NodeIndex> = graph
                .neighbors_directed(cur, petgraph::Direction::Incoming)
                .filter(|n| comp.contains(n))
                .collect();
            next.sort_by_key(|n| n.index());
            let Some(&n) = next.iter().find(|n| !path.contains(n) || **n == start) else {
                break;
            };
            path.push(n);
            if n == start {
                break;
            }
            cur = n;
        }
        let names: Vec<&str> = path.iter().map(|n| graph[*n].as_str()).collect();
        let first = &checked.steps[names[0]];
        let via = names
            .get(1)
            .and_then(|n| checked.steps[names[0]].refs.iter().find(|(_, t)| t == n));
        let span = via
            .and_then(|(k, _)| first.spans.get(k))
            .copied()
            .unwrap_or(first.header);
        diags.push(
            Diagnostic::error(format!("dependency cycle: {}", names.join(" -> ")))
                .at(span)
                .step(names[0])
                .help("a step cannot depend on its own output; remove one of these references"),
        );
    }
    if found {
        return None;
    }
    // Kahn's algorithm with file order as the tie-break.
    let n = graph.node_count();
    let mut indeg: Vec<usize> = (0..n)
        .map(|i| {
            graph
                .neighbors_directed(NodeIndex::new(i), petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let Some(i) = (0..n).find(|&i| !done[i] && indeg[i] == 0) else {
            break;
        };
        done[i] = true;
        order.push(graph[NodeIndex::new(i)].clone());
        for m in graph.neighbors_directed(NodeIndex::new(i), petgraph::Direction::Outgoing) {
            indeg[m.index()] -= 1;
        }
    }
    Some(Dag {
        graph,
        index,
        order,
    })
}

/// Checks that need more than one step's keys, so that `plan` catches what
/// would otherwise fail (or panic) mid-run: each model's config.json read as
/// the engine reads it (zero heads, sizes that do not divide or overflow),
/// and `device` keys of every step.
pub fn preflight(checked: &Checked, diags: &mut Vec<Diagnostic>) {
    for s in checked.steps.values() {
        let at = |key: &str| s.spans.get(key).copied().unwrap_or(s.header);
        let reported = |diags: &Vec<Diagnostic>, key: &str| {
            diags.iter().any(|d| {
                d.is_error() && d.step.as_deref() == Some(&s.id) && d.key.as_deref() == Some(key)
            })
        };
        if s.kind() == "load.model" {
            let dir = s.params.path("path");
            if let Some(dir) = dir.filter(|d| d.join("config.json").is_file()) {
                let problem = match crate::model::arch::Arch::from_dir(&dir) {
                    Err(e) => Some(e.to_string()),
                    Ok(a) => model_size(&a)
                        .err()
                        .map(|m| format!("{}: {m}", dir.join("config.json").display())),
                };
                if let Some(msg) = problem {
                    diags.push(
                        Diagnostic::error(msg)
                            .at(at("path"))
                            .step(&s.id)
                            .key("path"),
                    );
                }
            }
        }
        if let Some(dev) = s.params.opt_str("device") {
            if !reported(diags, "device") {
                if let Err(e) = dev.parse::<crate::cuda::device::DeviceRequest>() {
                    diags.push(
                        Diagnostic::error(e.to_string())
                            .at(at("device"))
                            .step(&s.id)
                            .key("device"),
                    );
                }
            }
        }
    }
}

/// The weight count of a model, or why it cannot be represented: a
/// config.json with absurd sizes would overflow the estimates.
fn model_size(a: &crate::model::arch::Arch) -> std::result::Result<u64, String> {
    let m = |x: u64, y: u64| x.checked_mul(y);
    let n = (|| {
        let (h, f, v, l) = (
            a.hidden as u64,
            a.ffn as u64,
            a.vocab as u64,
            a.layers as u64,
        );
        let q = m(a.heads as u64, a.head_dim as u64)?;
        let kv = m(a.kv_heads as u64, a.head_dim as u64)?;
        let attn = m(h, q.checked_add(m(2, kv)?)?.checked_add(q)?)?;
        let mlp = m(m(3, h)?, f)?;
        let per_layer = attn.checked_add(mlp)?;
        m(l, per_layer)?.checked_add(m(m(2, v)?, h)?)
    })();
    match n {
        Some(n) if n <= MAX_PARAMS => Ok(n),
        _ => Err(format!(
            "the sizes describe more than 2^44 weights (hidden_size {}, num_hidden_layers {}, vocab_size {})",
            a.hidden, a.layers, a.vocab
        )),
    }
}

/// Models larger than this (2^44, ~17.6T weights) are config mistakes.
const MAX_PARAMS: u64 = 1 << 44;

/// One line per step to run (of `ids`, default all) whose memory estimate is
/// above this machine's memory.
pub fn above_machine_memory(plan: &Plan, ids: Option<&[String]>) -> Vec<String> {
    let Some(total) = machine_memory() else {
        return Vec::new();
    };
    plan.steps
        .iter()
        .filter(|s| ids.is_none_or(|ids| ids.contains(&s.id)))
        // load.model maps weights lazily; its estimate is the weights' size.
        .filter(|s| !s.cached && s.kind != "load.model")
        .filter_map(|s| {
            let peak = s.estimate.as_ref()?.peak_bytes?;
            (peak > total).then(|| {
                format!(
                    "step `{}`: estimated memory {} is above this machine's {}",
                    s.id,
                    crate::util::human_bytes(peak),
                    crate::util::human_bytes(total)
                )
            })
        })
        .collect()
}

/// Total memory of this machine (`MemTotal` of /proc/meminfo), if known.
/// `RECIPE_TEST_MEMORY_BYTES` overrides it for tests.
pub fn machine_memory() -> Option<u64> {
    if let Some(v) = std::env::var("RECIPE_TEST_MEMORY_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(v);
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What each step resolved to last time (to explain "will run").
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resolution {
    pub key: String,
    pub params: BTreeMap<String, Value>,
    pub inputs: BTreeMap<String, String>,
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub id: String,
    pub kind: &'static str,
    /// param name -> input step id
    pub inputs: IndexMap<String, String>,
    pub key: String,
    pub cached: bool,
    /// Why it will run (empty when cached).
    pub reason: String,
    pub estimate: Option<Estimate>,
    #[serde(skip)]
    pub resolution: Resolution,
}

pub struct Plan {
    pub steps: Vec<PlannedStep>,
}

impl Plan {
    pub fn get(&self, id: &str) -> Option<&PlannedStep> {
        self.steps.iter().find(|s| s.id == id)
    }
}

/// Every step's kind and params, for estimates that walk up the DAG.
fn kinds_and_params(checked: &Checked) -> IndexMap<String, (&'static str, Params)> {
    checked
        .steps
        .iter()
        .map(|(k, s)| (k.clone(), (s.kind(), s.params.clone())))
        .collect()
}

fn estimate_with(
    checked: &Checked,
    all: &IndexMap<String, (&'static str, Params)>,
    id: &str,
) -> Option<Estimate> {
    let s = checked.steps.get(id)?;
    let inputs = s
        .refs
        .iter()
        .filter_map(|(p, t)| {
            checked
                .steps
                .get(t)
                .map(|ts| (p.clone(), (ts.kind(), &ts.params)))
        })
        .collect();
    s.step.estimate(&EstimateCtx {
        params: &s.params,
        inputs,
        all,
    })
}

/// Step `id`'s plan-time estimate (from configs and file headers; nothing hashed, no cache).
pub fn estimate(checked: &Checked, id: &str) -> Option<Estimate> {
    estimate_with(checked, &kinds_and_params(checked), id)
}

/// Compute cache keys in schedule order and compare with the cache.
pub fn make_plan(checked: &Checked, dag: &Dag, cache: &Cache, hasher: &FileHasher) -> Result<Plan> {
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    let mut steps = Vec::new();
    let all = kinds_and_params(checked);
    for id in &dag.order {
        let s = &checked.steps[id];
        let mut files = BTreeMap::new();
        for f in &s.files {
            files.insert(f.display().to_string(), hasher.hash(f)?);
        }
        // Canonical params for the key: refs -> input keys, paths -> hashes,
        // presentation-only keys dropped.
        let mut kp = BTreeMap::new();
        for (k, v) in &s.params.map {
            if matches!(k.as_str(), "output" | "description" | "after") {
                continue;
            }
            let spec = s.step.params().iter().find(|p| p.name == k);
            let v = match (spec.map(|p| p.ty), v.as_str()) {
                (Some(Ty::Step(_)), Some(t)) => {
                    json!({ "step": keys.get(t).cloned().unwrap_or_default() })
                }
                (Some(Ty::Path | Ty::ModelPath), Some(p)) => {
                    json!({ "file": files.get(p).cloned().unwrap_or_else(|| format!("missing:{p}")) })
                }
                _ => v.clone(),
            };
            kp.insert(k.clone(), v);
        }
        let inputs: BTreeMap<String, String> = s
            .refs
            .iter()
            .map(|(p, t)| (p.clone(), keys.get(t).cloned().unwrap_or_default()))
            .collect();
        let material = json!({
            "epoch": CACHE_EPOCH,
            "kind": s.kind(),
            "format": s.step.format_version(),
            "params": kp,
            "inputs": inputs,
        });
        let key = blake3::hash(material.to_string().as_bytes()).to_hex()[..32].to_string();
        keys.insert(id.clone(), key.clone());
        let resolution = Resolution {
            key: key.clone(),
            params: s
                .params
                .map
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "output" | "description"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            inputs: s
                .refs
                .iter()
                .map(|(p, t)| (format!("{p}={t}"), keys.get(t).cloned().unwrap_or_default()))
                .collect(),
            files,
        };
        let cached = cache.lookup(&key).is_some();
        let reason = if cached {
            String::new()
        } else {
            why(cache, checked, id, &resolution)
        };
        let estimate = estimate_with(checked, &all, id);
        steps.push(PlannedStep {
            id: id.clone(),
            kind: s.kind(),
            inputs: s.refs.iter().map(|(p, t)| (p.clone(), t.clone())).collect(),
            key,
            cached,
            reason,
            estimate,
            resolution,
        });
    }
    hasher.save();
    Ok(Plan { steps })
}

/// Explain a cache miss by comparing with what the step resolved to last.
fn why(cache: &Cache, checked: &Checked, id: &str, now: &Resolution) -> String {
    let path = cache.state_path(&checked.recipe.path, id);
    let Some(prev) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Resolution>(&b).ok())
    else {
        return "new".into();
    };
    let mut reasons = Vec::new();
    let changed: Vec<&str> = now
        .params
        .keys()
        .chain(prev.params.keys())
        .filter(|k| now.params.get(*k) != prev.params.get(*k))
        .map(String::as_str)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let files: Vec<&str> = now
        .files
        .iter()
        .filter(|(f, h)| prev.files.get(*f).is_some_and(|p| p != *h))
        .map(|(f, _)| f.as_str())
        .collect();
    // A changed file param shows up as a file change, not a param change.
    if !files.is_empty() {
        let names: Vec<String> = files
            .iter()
            .map(|f| {
                std::path::Path::new(f)
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default()
            })
            .collect();
        reasons.push(format!("file content changed ({})", names.join(", ")));
    }
    if !changed.is_empty() {
        reasons.push(format!("parameter changed ({})", changed.join(", ")));
    }
    let inputs: Vec<String> = now
        .inputs
        .iter()
        .filter(|(k, v)| {
            prev.inputs.get(*k).is_some_and(|p| p != *v) || !prev.inputs.contains_key(*k)
        })
        .map(|(k, _)| k.split('=').nth(1).unwrap_or(k).to_string())
        .collect();
    if !inputs.is_empty() {
        reasons.push(format!("input changed ({})", inputs.join(", ")));
    }
    if reasons.is_empty() {
        if prev.key == now.key {
            "cache entry missing (removed or never finished)".into()
        } else {
            "step kind or format version changed".into()
        }
    } else {
        reasons.join("; ")
    }
}

/// Remember each step's resolution (after a run or a plan).
pub fn save_resolutions(cache: &Cache, checked: &Checked, plan: &Plan, only_cached: bool) {
    for s in &plan.steps {
        if only_cached && cache.lookup(&s.key).is_none() {
            continue;
        }
        if let Ok(b) = serde_json::to_vec_pretty(&s.resolution) {
            let _ = crate::util::write_atomic(&cache.state_path(&checked.recipe.path, &s.id), &b);
        }
    }
}

/// Human-readable plan.
pub fn render_text(checked: &Checked, plan: &Plan, cache: &Cache, color: bool) -> String {
    use std::fmt::Write;
    let paint = |s: &str, c: &str| {
        if color {
            format!("\x1b[{c}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let cached = plan.steps.iter().filter(|s| s.cached).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan: recipe `{}` ({}), {} steps: {} cached, {} will run",
        checked.recipe.name,
        checked.recipe.path.display(),
        plan.steps.len(),
        cached,
        plan.steps.len() - cached
    );
    let _ = writeln!(out, "cache: {}", cache.root.display());
    let inputs_of = |s: &PlannedStep| {
        if s.inputs.is_empty() {
            "-".to_string()
        } else {
            s.inputs
                .iter()
                .map(|(p, t)| format!("{p}={t}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let w = plan.steps.iter().map(|s| s.id.len()).max().unwrap_or(0);
    let kw = plan.steps.iter().map(|s| s.kind.len()).max().unwrap_or(0);
    let iw = plan
        .steps
        .iter()
        .map(|s| inputs_of(s).chars().count())
        .max()
        .unwrap_or(0);
    for (i, s) in plan.steps.iter().enumerate() {
        let status = if s.cached {
            paint("cached", "32")
        } else {
            format!("{} ({})", paint("will run", "33"), s.reason)
        };
        let _ = writeln!(
            out,
            "{:>2}. {:<w$}  {:<kw$}  <- {:<iw$}  {}",
            i + 1,
            s.id,
            s.kind,
            inputs_of(s),
            status
        );
        if let Some(e) = &s.estimate {
            let pad = " ".repeat(w + kw + 8);
            let _ = writeln!(out, "{pad}{}", e.summary);
            for (name, bytes) in &e.rows {
                let _ = writeln!(
                    out,
                    "{pad}  {:<32} {:>11}",
                    name,
                    crate::util::human_bytes(*bytes)
                );
            }
        }
    }
    out
}

pub fn render_json(checked: &Checked, plan: &Plan, cache: &Cache, warnings: &[String]) -> String {
    let v = json!({
        "recipe": checked.recipe.name,
        "file": checked.recipe.path.display().to_string(),
        "cache": cache.root.display().to_string(),
        "steps": plan.steps.iter().map(|s| json!({
            "id": s.id,
            "kind": s.kind,
            "inputs": s.inputs,
            "key": s.key,
            "status": if s.cached { "cached" } else { "will_run" },
            "reason": if s.cached { Value::Null } else { Value::String(s.reason.clone()) },
            "estimate": s.estimate,
        })).collect::<Vec<_>>(),
        "warnings": warnings,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}
