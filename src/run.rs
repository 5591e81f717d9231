//! Run a plan: steps whose inputs are ready run side by side (bounded by
//! `--jobs`); each result is published into the cache atomically.

use crate::cache::{Cache, Manifest};
use crate::plan::Plan;
use crate::recipe::validate::Checked;
use crate::steps::{InputRef, Progress, RunCtx};
use anyhow::{anyhow, bail, Context, Result};
use indexmap::IndexMap;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

pub struct RunOptions {
    pub jobs: usize,
    /// Run only this step (its inputs must be cached).
    pub only: Option<String>,
    /// Run this step and everything it depends on.
    pub until: Option<String>,
    pub device: String,
    pub progress: bool,
}

#[derive(Debug, Default)]
pub struct RunSummary {
    pub ran: Vec<String>,
    pub cached: Vec<String>,
}

/// Steps to execute for `--only` / `--until`, in schedule order.
pub fn selection(checked: &Checked, plan: &Plan, opts: &RunOptions) -> Result<Vec<String>> {
    let order: Vec<String> = plan.steps.iter().map(|s| s.id.clone()).collect();
    if let Some(only) = &opts.only {
        if !checked.steps.contains_key(only) {
            bail!("--only: no step named `{only}`");
        }
        return Ok(vec![only.clone()]);
    }
    let Some(until) = &opts.until else {
        return Ok(order);
    };
    if !checked.steps.contains_key(until) {
        bail!("--until: no step named `{until}`");
    }
    let mut need = BTreeSet::new();
    let mut stack = vec![until.clone()];
    while let Some(s) = stack.pop() {
        if need.insert(s.clone()) {
            stack.extend(checked.steps[&s].refs.values().cloned());
        }
    }
    Ok(order.into_iter().filter(|s| need.contains(s)).collect())
}

pub fn execute(
    checked: &Checked,
    plan: &Plan,
    cache: &Cache,
    opts: &RunOptions,
) -> Result<RunSummary> {
    let chosen = selection(checked, plan, opts)?;
    let progress = Progress::new(opts.progress);
    let mut outputs: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut summary = RunSummary::default();
    let mut pending: Vec<String> = Vec::new();

    // Cached steps (and, for --only, the inputs outside the selection).
    for s in &plan.steps {
        if let Some(dir) = cache.lookup(&s.key) {
            outputs.insert(s.id.clone(), dir);
        }
    }
    for id in &chosen {
        let s = plan
            .get(id)
            .ok_or_else(|| anyhow!("step `{id}` is not in the plan"))?;
        if outputs.contains_key(id) {
            cache.touch(&s.key);
            progress.println(&format!("{id}: cached ({})", s.kind));
            summary.cached.push(id.clone());
            copy_output(checked, id, &outputs[id])?;
        } else {
            pending.push(id.clone());
        }
    }
    for id in &pending {
        for t in checked.steps[id].refs.values() {
            if !pending.contains(t) && !outputs.contains_key(t) {
                bail!("step `{id}` needs `{t}`, which is not cached; run without --only (or with --until {id})");
            }
        }
    }

    let jobs = opts.jobs.max(1);
    let (tx, rx) = mpsc::channel::<(String, Result<(PathBuf, f64)>)>();
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut failed: Option<anyhow::Error> = None;
    std::thread::scope(|scope| {
        loop {
            // Start every ready step while there is room.
            if failed.is_none() {
                let ready: Vec<String> = pending
                    .iter()
                    .filter(|id| !running.contains(*id))
                    .filter(|id| {
                        checked.steps[*id]
                            .refs
                            .values()
                            .all(|t| outputs.contains_key(t))
                    })
                    .cloned()
                    .collect();
                for id in ready {
                    if running.len() >= jobs {
                        break;
                    }
                    running.insert(id.clone());
                    let inputs: IndexMap<String, InputRef> = checked.steps[&id]
                        .refs
                        .iter()
                        .filter(|(p, _)| !p.starts_with("after["))
                        .map(|(p, t)| {
                            let ts = &checked.steps[t];
                            (
                                p.clone(),
                                InputRef {
                                    step: t.clone(),
                                    kind: ts.kind(),
                                    dir: outputs[t].clone(),
                                    params: ts.params.clone(),
                                },
                            )
                        })
                        .collect();
                    let tx = tx.clone();
                    let progress = &progress;
                    let device = opts.device.clone();
                    scope.spawn(move || {
                        // A panic must still report back, or the loop below waits forever.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            run_one(checked, plan, cache, &id, &inputs, &device, progress)
                        }))
                        .unwrap_or_else(|p| Err(panicked(p.as_ref())));
                        let _ = tx.send((id, r));
                    });
                }
            }
            if running.is_empty() {
                break;
            }
            let Ok((id, r)) = rx.recv() else { break };
            running.remove(&id);
            pending.retain(|p| p != &id);
            match r {
                Ok((dir, secs)) => {
                    progress.println(&format!(
                        "{id}: ran ({}) in {}",
                        checked.steps[&id].kind(),
                        fmt_secs(secs)
                    ));
                    outputs.insert(id.clone(), dir);
                    summary.ran.push(id.clone());
                    if let Err(e) = copy_output(checked, &id, &outputs[&id]) {
                        failed.get_or_insert(e);
                    }
                }
                Err(e) => {
                    progress.println(&format!("{id}: failed"));
                    failed.get_or_insert(e.context(format!(
                        "step `{id}` ({}) failed",
                        checked.steps[&id].kind()
                    )));
                }
            }
        }
    });
    crate::plan::save_resolutions(cache, checked, plan, true);
    match failed {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

fn run_one(
    checked: &Checked,
    plan: &Plan,
    cache: &Cache,
    id: &str,
    inputs: &IndexMap<String, InputRef>,
    device: &str,
    progress: &Progress,
) -> Result<(PathBuf, f64)> {
    let s = &checked.steps[id];
    let p = plan
        .get(id)
        .ok_or_else(|| anyhow!("step `{id}` is not in the plan"))?;
    let t0 = Instant::now();
    let tmp = cache.begin(&p.key)?;
    let work = cache.work_dir(&p.key);
    std::fs::create_dir_all(&work)
        .with_context(|| format!("cannot create `{}`", work.display()))?;
    let ctx = RunCtx {
        id,
        params: &s.params,
        inputs,
        out: &tmp,
        work: &work,
        recipe_dir: &checked.recipe.dir,
        device,
        planned_peak: p.estimate.as_ref().and_then(|e| e.peak_bytes),
        progress,
    };
    crate::util::install_panic_hook();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Test hook: a step that panics (every known panic is fixed).
        if std::env::var("RECIPE_TEST_PANIC_IN_STEP").is_ok_and(|v| v == id) {
            panic!("test panic (RECIPE_TEST_PANIC_IN_STEP)");
        }
        s.step.run(&ctx)
    }))
    .unwrap_or_else(|p| Err(panicked(p.as_ref())));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Test hook: widen the window between writing and publishing so the
    // kill-safety test can SIGKILL a step mid-write.
    if let Some(ms) = std::env::var("RECIPE_TEST_PAUSE_BEFORE_PUBLISH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let secs = t0.elapsed().as_secs_f64();
    let manifest = Manifest {
        key: p.key.clone(),
        kind: s.kind().to_string(),
        format_version: s.step.format_version(),
        step: id.to_string(),
        recipe: checked.recipe.path.display().to_string(),
        params: serde_json::to_value(&s.params.map)?,
        inputs: p.resolution.inputs.clone(),
        files: p.resolution.files.clone(),
        created: crate::util::now_secs(),
        size_bytes: 0,
        wall_secs: secs,
        recipe_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let dir = cache.publish(&tmp, manifest)?;
    Ok((dir, secs))
}

/// A step's panic as an error (the panic hook has already printed where). A
/// [`crate::util::UserPanic`] (out of device memory) is the step's plain error, not a bug.
fn panicked(p: &(dyn std::any::Any + Send)) -> anyhow::Error {
    let msg = crate::util::panic_message(p);
    if p.is::<crate::util::UserPanic>() {
        return anyhow!("{msg}");
    }
    anyhow!("panicked (a bug in recipe): {msg}")
}

/// `output = "..."`: copy the entry (minus the manifest) to where the recipe
/// says. Only a previous output of the same step is replaced, by a rename:
/// the new copy is written beside it first, so nothing is ever half there.
fn copy_output(checked: &Checked, id: &str, dir: &Path) -> Result<()> {
    let Some(out) = checked.steps[id].params.path("output") else {
        return Ok(());
    };
    let recipe = &checked.recipe.path;
    crate::recipe::output::check_output(&out, recipe, id)
        .map_err(|e| anyhow!("step `{id}`, key `output`: {e}"))?;
    let (Some(parent), Some(name)) = (out.parent(), out.file_name()) else {
        bail!(
            "step `{id}`, key `output`: `{}` is not a dir recipe can write",
            out.display()
        );
    };
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create `{}`", parent.display()))?;
    let sibling = |what: &str| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        parent.join(format!(
            ".{}.{what}.{}.{nanos}",
            name.to_string_lossy(),
            std::process::id()
        ))
    };
    let tmp = sibling("tmp");
    // create_dir (not _all): a fresh name, never someone else's dir.
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create `{}`", tmp.display()))?;
    let written = crate::util::copy_dir(dir, &tmp)
        .with_context(|| format!("cannot copy step `{id}` output to `{}`", out.display()))
        .and_then(|()| {
            let _ = std::fs::remove_file(tmp.join("manifest.json"));
            let m =
                serde_json::to_vec_pretty(&crate::recipe::output::marker_for(&out, recipe, id))?;
            std::fs::write(tmp.join(crate::recipe::output::OUTPUT_MARKER), m)
                .with_context(|| format!("cannot write `{}`", tmp.display()))
        });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // The old output (checked above to be ours) steps aside, the new one
    // takes its name, then the old one goes.
    let old = out.exists().then(|| sibling("old"));
    if let Some(old) = &old {
        std::fs::rename(&out, old)
            .with_context(|| format!("cannot replace `{}`", out.display()))?;
    }
    if let Err(e) = std::fs::rename(&tmp, &out) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, &out);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("cannot write `{}`", out.display()));
    }
    if let Some(old) = &old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

pub fn fmt_secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    }
}
