//! Helpers shared by the tests that drive the `recipe` binary (`mod common;`).
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repo root (fixtures, shipped recipes and examples are read from there).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `recipe` binary without colors or an inherited cache dir.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_recipe"));
    c.env("NO_COLOR", "1").env_remove("RECIPE_CACHE");
    c
}

/// Runs `recipe ARGS` in `dir`.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    bin()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("spawn recipe")
}

/// (stdout, stderr) as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Writes `body` to `dir/name`, creating parent dirs.
pub fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, body).unwrap();
    p
}

/// `{BASE}` is the shipped tiny model, `{DATA}` its instruction data.
pub fn expand(s: &str) -> String {
    s.replace(
        "{BASE}",
        &root()
            .join("examples/quickstart/base")
            .display()
            .to_string(),
    )
    .replace(
        "{DATA}",
        &root()
            .join("examples/quickstart/instructions.jsonl")
            .display()
            .to_string(),
    )
}

/// Data -> prompts -> tokens on the shipped model; cases append their steps.
pub const PIPELINE: &str = r#"
[steps.base]
kind = "load.model"
path = "{BASE}"

[steps.data]
kind = "load.dataset"
path = "{DATA}"
format = "alpaca"
limit = 16

[steps.prompts]
kind = "template"
data = "data"
template = "human_assistant"

[steps.tokens]
kind = "tokenize"
data = "prompts"
model = "base"
max_length = 48
"#;
