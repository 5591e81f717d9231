//! `load.dataset`: read rows from JSON/JSONL/CSV/Parquet/HF `save_to_disk`,
//! map them onto `Example`s by record format, filter, split.
//! Output: `train.jsonl` (and `test.jsonl` when split) + `stats.json`.
//! Its typed params are the data library's [`LoadSpec`].

use super::{def, opt, req, CheckCtx, Kind, ParamSpec, RunCtx, Ty};
use crate::data::{LoadSpec, TestSize};

pub struct LoadDataset;

static PARAMS: &[ParamSpec] = &[
    req(
        "path",
        Ty::Path,
        "a data file, a folder of shards, or a Hugging Face save_to_disk folder",
    ),
    def(
        "file_format",
        Ty::Enum(&[
            "auto", "json", "jsonl", "csv", "parquet", "arrow", "hf_disk",
        ]),
        "\"auto\"",
        "how to read `path`; auto looks at the extension or folder contents",
    ),
    opt(
        "hf_split",
        Ty::Str,
        "split to read from a DatasetDict folder (e.g. \"train\")",
    ),
    def(
        "format",
        Ty::Enum(&[
            "alpaca",
            "conversations",
            "text",
            "text_label",
            "prompt_response",
            "raw",
        ]),
        "\"raw\"",
        "record format: how a row becomes a conversation",
    ),
    opt(
        "columns",
        Ty::Table,
        "role -> column name, e.g. {prompt = \"content\", response = \"summary\"}",
    ),
    opt(
        "classes",
        Ty::StrList,
        "class names for integer labels (text_label)",
    ),
    opt("rename", Ty::Table, "rename columns, old = \"new\""),
    opt("select", Ty::StrList, "keep only these columns"),
    opt(
        "drop_null",
        Ty::StrList,
        "drop rows where any of these columns is null or missing",
    ),
    opt("limit", Ty::Int, "keep the first N rows"),
    opt("sample", Ty::Int, "keep N rows sampled with `seed`"),
    opt(
        "test_size",
        Ty::Number,
        "split off a test set: a fraction (0.2) or a row count (100)",
    ),
    def(
        "seed",
        Ty::Int,
        "42",
        "seed for `sample` and the train/test split",
    ),
    def(
        "on_error",
        Ty::Enum(&["fail", "skip"]),
        "\"fail\"",
        "bad rows: stop with file:line, or skip and count",
    ),
    def("csv_delimiter", Ty::Str, "\",\"", "CSV field delimiter"),
];

impl Kind for LoadDataset {
    type Params = LoadSpec;
    const KIND: &'static str = "load.dataset";
    const ABOUT: &'static str =
        "read a dataset (JSON, JSONL, CSV, Parquet, HF save_to_disk) into conversations";
    const PARAMS: &'static [ParamSpec] = PARAMS;
    fn check(&self, s: &LoadSpec, c: &mut CheckCtx) {
        let mut flagged = Vec::new();
        if let Some(ts) = s.test_size {
            let t = match ts {
                TestSize::Count(n) => n as f64,
                TestSize::Fraction(f) => f,
            };
            if t <= 0.0 || (t >= 1.0 && t.fract() != 0.0) {
                flagged.push("test_size");
                c.error(
                    "test_size",
                    "test_size must be a fraction in (0, 1) or a whole row count",
                )
                .got = Some(t.to_string());
            }
        }
        if s.csv_delimiter.is_some_and(|d| d.len_utf8() != 1) {
            c.error(
                "csv_delimiter",
                "the CSV delimiter must be exactly one byte",
            );
            return;
        }
        // Cheap checks against file headers (columns, formats, splits).
        if s.path.exists() {
            for problem in crate::data::check(s) {
                let (key, msg) = key_of(&problem, s);
                if !flagged.contains(&key) {
                    c.error(key, msg);
                }
            }
        }
    }
    fn run(&self, spec: &LoadSpec, ctx: &RunCtx) -> anyhow::Result<()> {
        let bar = ctx.bar(0, "rows");
        let report = crate::data::load(spec, ctx.out, &|n| bar.set_position(n))?;
        bar.finish_and_clear();
        let mut msg = format!("{} rows read: {} train", report.rows_read, report.train);
        if report.test > 0 {
            msg.push_str(&format!(", {} test", report.test));
        }
        if report.skipped > 0 {
            msg.push_str(&format!(", {} bad rows skipped", report.skipped));
        }
        if report.dropped_null > 0 {
            msg.push_str(&format!(", {} dropped as null", report.dropped_null));
        }
        ctx.info(msg);
        Ok(())
    }
}

/// The recipe key a data problem is about, and the message without its key prefix:
/// option errors start with `key: `; a missing column is the `columns` key's fault when
/// `columns` names it; everything else is about the file(s) at `path`.
fn key_of<'a>(problem: &'a str, spec: &LoadSpec) -> (&'static str, &'a str) {
    if let Some((k, rest)) = problem.split_once(": ") {
        if let Some(p) = PARAMS.iter().find(|p| p.name == k) {
            return (p.name, rest);
        }
    }
    let named_in_columns = spec
        .columns
        .values()
        .any(|c| problem.contains(&format!(": no column '{c}' (columns: ")));
    if named_in_columns {
        return ("columns", problem);
    }
    ("path", problem)
}
