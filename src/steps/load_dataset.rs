//! `load.dataset`: read rows from JSON/JSONL/CSV/Parquet/HF `save_to_disk`,
//! map them onto `Example`s by record format, filter, split.
//! Output: `train.jsonl` (and `test.jsonl` when split) + `stats.json`.

use super::{def, opt, req, CheckCtx, ParamSpec, RunCtx, Step, Ty};

pub struct LoadDataset;

static PARAMS: &[ParamSpec] = &[
    req("path", Ty::Path, "a data file, a folder of shards, or a Hugging Face save_to_disk folder"),
    def(
        "file_format",
        Ty::Enum(&["auto", "json", "jsonl", "csv", "parquet", "arrow", "hf_disk"]),
        "\"auto\"",
        "how to read `path`; auto looks at the extension or folder contents",
    ),
    opt("hf_split", Ty::Str, "split to read from a DatasetDict folder (e.g. \"train\")"),
    def(
        "format",
        Ty::Enum(&["alpaca", "conversations", "text", "text_label", "prompt_response", "raw"]),
        "\"raw\"",
        "record format: how a row becomes a conversation",
    ),
    opt("columns", Ty::Table, "role -> column name, e.g. {prompt = \"content\", response = \"summary\"}"),
    opt("classes", Ty::StrList, "class names for integer labels (text_label)"),
    opt("rename", Ty::Table, "rename columns, old = \"new\""),
    opt("select", Ty::StrList, "keep only these columns"),
    opt("drop_null", Ty::StrList, "drop rows where any of these columns is null or missing"),
    opt("limit", Ty::Int, "keep the first N rows"),
    opt("sample", Ty::Int, "keep N rows sampled with `seed`"),
    opt("test_size", Ty::Float, "split off a test set: a fraction (0.2) or a row count (100)"),
    def("seed", Ty::Int, "42", "seed for `sample` and the train/test split"),
    def("on_error", Ty::Enum(&["fail", "skip"]), "\"fail\"", "bad rows: stop with file:line, or skip and count"),
    def("csv_delimiter", Ty::Str, "\",\"", "CSV field delimiter"),
];

impl Step for LoadDataset {
    fn kind(&self) -> &'static str {
        "load.dataset"
    }
    fn about(&self) -> &'static str {
        "read a dataset (JSON, JSONL, CSV, Parquet, HF save_to_disk) into conversations"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn check(&self, c: &mut CheckCtx) {
        if let Some(t) = c.params.opt_f64("test_size") {
            if t <= 0.0 || (t >= 1.0 && t.fract() != 0.0) {
                c.error("test_size", "test_size must be a fraction in (0, 1) or a whole row count")
                    .got = Some(t.to_string());
            }
        }
        if c.params.str("csv_delimiter").len() != 1 {
            c.error("csv_delimiter", "the CSV delimiter must be exactly one byte");
        }
    }
    fn run(&self, ctx: &RunCtx) -> anyhow::Result<()> {
        interim_run(ctx)
    }
}

/// Interim reader (JSON/JSONL rows kept raw) until the full data library lands.
fn interim_run(ctx: &RunCtx) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let path = ctx.params.path("path").context("`path` is not set")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let mut rows = Vec::new();
    if path.extension().is_some_and(|e| e == "json") {
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("`{}` is not valid JSON", path.display()))?;
        rows.extend(v.as_array().cloned().unwrap_or_default());
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
            rows.push(v);
        }
    }
    anyhow::ensure!(!rows.is_empty(), "`{}` has no rows", path.display());
    let mut f = std::io::BufWriter::new(std::fs::File::create(ctx.out.join("train.jsonl"))?);
    for r in &rows {
        serde_json::to_writer(&mut f, r)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    std::fs::write(ctx.out.join("stats.json"), serde_json::json!({ "rows": rows.len() }).to_string())?;
    ctx.info(format!("{} rows from {}", rows.len(), path.display()));
    Ok(())
}
