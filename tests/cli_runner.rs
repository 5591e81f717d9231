//! The runner core through the `recipe` binary: validation messages, plan,
//! cache reuse, partial re-runs, includes, --set, and kill safety.

use std::path::Path;

mod common;
use common::*;

/// A workspace with a tiny model config and two data files.
fn workspace() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "model/config.json",
        r#"{"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 128, "torch_dtype": "float32"}"#,
    );
    write(
        d.path(),
        "a.jsonl",
        "{\"text\": \"one\"}\n{\"text\": \"two\"}\n",
    );
    write(d.path(), "b.jsonl", "{\"text\": \"three\"}\n");
    d
}

const TWO_SOURCES: &str = r#"
[recipe]
name = "two"

[steps.a]
kind = "load.dataset"
path = "a.jsonl"

[steps.b]
kind = "load.dataset"
path = "b.jsonl"

[steps.base]
kind = "load.model"
path = "model"
"#;

/// Step lines of a run, sorted: "a: cached", "b: ran".
fn step_lines(stderr: &str) -> Vec<String> {
    let mut v: Vec<String> = stderr
        .lines()
        .filter_map(|l| {
            let (id, rest) = l.split_once(": ")?;
            if rest.starts_with("cached") {
                Some(format!("{id}: cached"))
            } else if rest.starts_with("ran") {
                Some(format!("{id}: ran"))
            } else {
                None
            }
        })
        .collect();
    v.sort();
    v
}

#[test]
fn unknown_key_exact_text() {
    let d = workspace();
    write(
        d.path(),
        "r.toml",
        "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\nformt = \"alpaca\"\n",
    );
    let o = run(d.path(), &["plan", "r.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        text(&o).1,
        "error: step `a`, key `formt`: unknown key\n --> r.toml:4:1\n  |\n4 | formt = \"alpaca\"\n  | ^^^^^\n  \
         = expected: a key of `load.dataset` (see `recipe explain load.dataset`)\n  = got: `formt`\n  \
         = help: did you mean `format`?\n\n1 error in recipe\n"
    );
}

#[test]
fn unknown_kind_exact_text() {
    let d = workspace();
    write(
        d.path(),
        "r.toml",
        "[steps.base]\nkind = \"load.modle\"\npath = \"model\"\n",
    );
    let o = run(d.path(), &["plan", "r.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        text(&o).1,
        "error: step `base`, key `kind`: unknown step kind `load.modle`\n --> r.toml:2:8\n  |\n2 | kind = \"load.modle\"\n  \
         |        ^^^^^^^^^^^^\n  = expected: one of load.dataset, load.model, template, tokenize, quantize, train, \
         evaluate, merge, export, generate\n  = got: \"load.modle\"\n  = help: did you mean `load.model`?\n\n1 error in recipe\n"
    );
}

#[test]
fn cycle_exact_text() {
    let d = workspace();
    write(
        d.path(),
        "r.toml",
        "[steps.tokens]\nkind = \"tokenize\"\ndata = \"prompts\"\nmodel = \"base\"\n\n\
         [steps.prompts]\nkind = \"template\"\ndata = \"data\"\ntemplate = \"plain\"\nafter = [\"tokens\"]\n\n\
         [steps.data]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n\n[steps.base]\nkind = \"load.model\"\npath = \"model\"\n",
    );
    let o = run(d.path(), &["plan", "r.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        text(&o).1,
        "error: step `tokens`: dependency cycle: tokens -> prompts -> tokens\n --> r.toml:3:8\n  |\n\
         3 | data = \"prompts\"\n  |        ^^^^^^^^^\n  \
         = help: a step cannot depend on its own output; remove one of these references\n\n1 error in recipe\n"
    );
}

#[test]
fn missing_input_exact_text() {
    let d = workspace();
    write(
        d.path(),
        "r.toml",
        "[steps.data]\nkind = \"load.dataset\"\npath = \"nope.jsonl\"\n",
    );
    let o = run(d.path(), &["plan", "r.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let want =
        format!(
        "error: step `data`, key `path`: input path `{}` does not exist\n --> r.toml:3:8\n  |\n\
         3 | path = \"nope.jsonl\"\n  |        ^^^^^^^^^^^^\n\n1 error in recipe\n",
        d.path().canonicalize().unwrap().join("nope.jsonl").display()
    );
    // The temp dir may be reached through a symlink; compare on the file name part.
    let got = text(&o).1;
    assert_eq!(
        got.replace(
            &d.path().display().to_string(),
            &d.path().canonicalize().unwrap().display().to_string()
        ),
        want
    );
}

#[test]
fn all_errors_reported_at_once() {
    let d = workspace();
    write(
        d.path(),
        "r.toml",
        r#"
[steps.data]
kind = "load.dataset"
path = "a.jsonl"
formt = "alpaca"
seed = "x"

[steps.train]
kind = "train"
model = "bse"
data = "data"
r = -1

[steps.gen]
kind = "generat"
"#,
    );
    let o = run(d.path(), &["plan", "r.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    for needle in [
        "step `data`, key `formt`: unknown key",
        "step `data`, key `seed`: wrong type",
        "= expected: an integer",
        "= got: string \"x\"",
        "step `train`, key `model`: no step named `bse`",
        "step `train`, key `data`: `data` is a `load.dataset` step",
        "step `gen`, key `kind`: unknown step kind `generat`",
        "step `train`, key `r`: LoRA rank must be positive",
        "6 errors in recipe",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn rerun_unchanged_is_all_cached_and_edit_reruns_dependents() {
    let d = workspace();
    write(d.path(), "r.toml", TWO_SOURCES);
    let o = run(d.path(), &["run", "r.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(step_lines(&text(&o).1), ["a: ran", "b: ran", "base: ran"]);

    let o = run(d.path(), &["run", "r.toml"]);
    assert_eq!(
        step_lines(&text(&o).1),
        ["a: cached", "b: cached", "base: cached"]
    );
    let plan = text(&run(d.path(), &["plan", "r.toml"])).0;
    assert_eq!(plan.matches("cached").count(), 4, "{plan}"); // header line + 3 steps
    assert!(plan.contains("3 cached, 0 will run"), "{plan}");

    // Edit one file: only the step reading it runs, and the plan says why.
    write(d.path(), "b.jsonl", "{\"text\": \"three, edited\"}\n");
    let plan = text(&run(d.path(), &["plan", "r.toml"])).0;
    assert!(
        plan.contains("will run (file content changed (b.jsonl))"),
        "{plan}"
    );
    let o = run(d.path(), &["run", "r.toml"]);
    assert_eq!(
        step_lines(&text(&o).1),
        ["a: cached", "b: ran", "base: cached"]
    );
    let out = std::fs::read_dir(d.path().join(".recipe/cache/entries"))
        .unwrap()
        .count();
    assert_eq!(out, 4);
}

#[test]
fn include_shares_cache_entries() {
    let d = workspace();
    write(
        d.path(),
        "common/data.toml",
        "[steps.a]\nkind = \"load.dataset\"\npath = \"../a.jsonl\"\n",
    );
    write(
        d.path(),
        "first.toml",
        "include = [\"common/data.toml\"]\n[recipe]\nname = \"first\"\n",
    );
    write(
        d.path(),
        "second.toml",
        "include = [\"common/data.toml\"]\n[recipe]\nname = \"second\"\n\
         [steps.b]\nkind = \"load.dataset\"\npath = \"b.jsonl\"\n",
    );
    let o = run(d.path(), &["run", "first.toml"]);
    assert_eq!(step_lines(&text(&o).1), ["a: ran"]);
    let o = run(d.path(), &["run", "second.toml"]);
    assert_eq!(step_lines(&text(&o).1), ["a: cached", "b: ran"]);
}

#[test]
fn including_file_keys_win() {
    let d = workspace();
    write(
        d.path(),
        "common/data.toml",
        "[steps.a]\nkind = \"load.dataset\"\npath = \"../a.jsonl\"\nlimit = 5\n",
    );
    write(
        d.path(),
        "r.toml",
        "include = [\"common/data.toml\"]\n[steps.a]\nlimit = 1\n",
    );
    let o = run(d.path(), &["plan", "r.toml", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["steps"][0]["id"], "a");
    // Different `limit` values give different keys; compare against a direct recipe.
    write(
        d.path(),
        "direct.toml",
        "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\nlimit = 1\n",
    );
    let o2 = run(d.path(), &["plan", "direct.toml", "--format", "json"]);
    let v2: serde_json::Value = serde_json::from_str(&text(&o2).0).unwrap();
    assert_eq!(v["steps"][0]["key"], v2["steps"][0]["key"]);
}

#[test]
fn set_overrides_vars_and_step_keys() {
    let d = workspace();
    write(
        d.path(),
        "r.toml",
        "[vars]\nfile = \"a.jsonl\"\n[steps.a]\nkind = \"load.dataset\"\npath = \"${file}\"\nlimit = 5\n",
    );
    let key = |args: &[&str]| {
        let mut a = vec!["plan", "r.toml", "--format", "json"];
        a.extend_from_slice(args);
        let o = run(d.path(), &a);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
        let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
        v["steps"][0]["key"].as_str().unwrap().to_string()
    };
    let base = key(&[]);
    assert_ne!(base, key(&["--set", "steps.a.limit=1"]));
    assert_ne!(base, key(&["--set", "vars.file=b.jsonl"]));
    assert_eq!(base, key(&["--set", "steps.a.limit=5"]));
    // A bad override is a recipe error pointing at the command line.
    let o = run(d.path(), &["plan", "r.toml", "--set", "steps.a.limit=many"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("--> <command line>:1:21"),
        "{}",
        text(&o).1
    );
}

#[test]
fn sigkill_mid_write_leaves_nothing_trusted() {
    let d = workspace();
    write(
        d.path(),
        "r.toml",
        "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n",
    );
    let mut child = bin()
        .current_dir(d.path())
        .args(["run", "r.toml"])
        .env("RECIPE_TEST_PAUSE_BEFORE_PUBLISH_MS", "20000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the step has written its output into the tmp dir.
    let tmp = d.path().join(".recipe/cache/tmp");
    let t0 = std::time::Instant::now();
    loop {
        let written = std::fs::read_dir(&tmp)
            .map(|rd| rd.flatten().any(|e| e.path().join("stats.json").exists()))
            .unwrap_or(false);
        if written {
            break;
        }
        assert!(t0.elapsed().as_secs() < 60, "step never wrote its output");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        std::fs::read_dir(d.path().join(".recipe/cache/entries"))
            .unwrap()
            .count(),
        0
    );
    let plan = text(&run(d.path(), &["plan", "r.toml"])).0;
    assert!(plan.contains("will run"), "{plan}");
    let o = run(d.path(), &["run", "r.toml"]);
    assert_eq!(step_lines(&text(&o).1), ["a: ran"]);
    // gc removes the dead process's tmp dir.
    let o = run(d.path(), &["cache", "gc", "--cache-dir", ".recipe/cache"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn not_implemented_steps_fail_clearly() {
    let d = workspace();
    write(d.path(), "r.toml", "[steps.a]\nkind = \"load.dataset\"\npath = \"a.jsonl\"\n[steps.q]\nkind = \"quantize\"\nmodel = \"base\"\n[steps.base]\nkind = \"load.model\"\npath = \"model\"\n");
    let o = run(d.path(), &["run", "r.toml"]);
    let err = text(&o).1;
    if o.status.code() == Some(1) {
        assert!(err.contains("step `q` (quantize) failed"), "{err}");
    } else {
        assert_eq!(o.status.code(), Some(0), "{err}");
    }
}

#[test]
fn every_shipped_recipe_plans() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let cache = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let o = bin()
                .args([
                    "plan",
                    p.to_str().unwrap(),
                    "--cache-dir",
                    cache.path().to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(0), "{}: {}", p.display(), text(&o).1);
            n += 1;
        }
    }
    assert!(n >= 1);
}

/// `inspect` on a data step that is not cached runs it (and what it needs) first, as
/// `run --until` would; a second `inspect` reads the cache.
#[test]
fn inspect_runs_the_data_steps_it_needs() {
    let d = tempfile::tempdir().unwrap();
    let recipe = expand(&format!("[recipe]\nname = \"inspect\"\n{PIPELINE}"));
    write(d.path(), "r.toml", &recipe);
    let args = [
        "inspect", "r.toml", "--step", "tokens", "-n", "2", "--format", "jsonl",
    ];
    let o = run(d.path(), &args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("step `tokens` is not cached (new): running it first"),
        "{err}"
    );
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let ids = r["input_ids"].as_array().unwrap();
        assert!(!ids.is_empty() && ids.len() <= 48, "{r}");
        assert_eq!(r["labels"].as_array().unwrap().len(), ids.len());
    }
    let o = run(d.path(), &args);
    let (out2, err2) = text(&o);
    assert!(o.status.success(), "{err2}");
    assert!(!err2.contains("running it first"), "{err2}");
    assert_eq!(out2, out);
}
