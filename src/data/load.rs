//! The `load.dataset` step's library entry points.
//!
//! `load` streams rows file by file through rename -> select -> drop_null -> record format,
//! writing each kept `Example` as one JSON line to a temporary file and remembering only line
//! offsets; `limit` stops reading early. `sample` and the train/test split then pick rows by
//! index with NumPy's generator (same rows and order as HF `shuffle(seed).select(range(N))` and
//! `train_test_split(test_size, seed)`), copying lines from the memory-mapped temporary file.
//! Memory stays at one row plus 8 bytes per kept row (JSON arrays are parsed whole).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::columnar;
use super::csv_file::{self, CsvOptions};
use super::error::DataError;
use super::example::Example;
use super::format::{Formatter, RecordFormat};
use super::rng::permutation;
use super::row::{FileRows, Location, Pos};
use super::source::{resolve, DataFile, FileFormat, Resolved};
use super::transform::Transform;
use super::{json, jsonl};

/// `test_size`: a fraction of the rows (`0.2`) or a row count (`100`), as in HF.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TestSize {
    Count(u64),
    Fraction(f64),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Fail,
    Skip,
}

/// Parameters of a `load.dataset` step (field names are the recipe keys).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadSpec {
    /// A data file, a folder of shards, or a HF `save_to_disk` folder.
    pub path: PathBuf,
    pub file_format: FileFormat,
    /// Split of a DatasetDict folder (default `train`, or its only split).
    pub hf_split: Option<String>,
    pub format: RecordFormat,
    /// role -> column name, e.g. {prompt = "content", response = "summary"}.
    pub columns: BTreeMap<String, String>,
    /// Label names for `text_label` ("_" becomes " ").
    pub classes: Option<Vec<String>>,
    /// old column name -> new name.
    pub rename: IndexMap<String, String>,
    pub select: Option<Vec<String>>,
    /// Drop rows where any of these columns is null or missing.
    pub drop_null: Vec<String>,
    /// Keep the first N rows (after drop_null).
    pub limit: Option<u64>,
    /// Keep N rows drawn with `seed` (after limit), in HF `shuffle(seed).select(range(N))`
    /// order; N at or above the row count keeps every row, shuffled.
    pub sample: Option<u64>,
    pub test_size: Option<TestSize>,
    pub seed: u64,
    pub on_error: OnError,
    /// Default ',' (tab for .tsv files).
    pub csv_delimiter: Option<char>,
    pub csv_empty_as_null: bool,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            path: PathBuf::new(),
            file_format: FileFormat::Auto,
            hf_split: None,
            format: RecordFormat::Raw,
            columns: BTreeMap::new(),
            classes: None,
            rename: IndexMap::new(),
            select: None,
            drop_null: Vec::new(),
            limit: None,
            sample: None,
            test_size: None,
            seed: 42,
            on_error: OnError::Fail,
            csv_delimiter: None,
            csv_empty_as_null: true,
        }
    }
}

/// What `load` did; also written to `stats.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub files: Vec<String>,
    /// Rows seen in the files, bad ones included.
    pub rows_read: u64,
    /// Bad rows skipped (`on_error = "skip"`).
    pub skipped: u64,
    /// Rows dropped by `drop_null`.
    pub dropped_null: u64,
    /// Rows kept after filters and `limit`, before `sample`.
    pub kept: u64,
    pub train: u64,
    pub test: u64,
    /// The first skipped rows' errors (at most `MAX_ERRORS`).
    pub errors: Vec<String>,
}

const MAX_ERRORS: usize = 20;
const PROGRESS_EVERY: u64 = 1024;

impl LoadSpec {
    fn transform(&self) -> Transform {
        Transform {
            rename: self
                .rename
                .iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect(),
            select: self.select.clone(),
            drop_null: self.drop_null.clone(),
        }
    }

    /// The record formatter, with HF ClassLabel names as default `classes`.
    fn formatter(&self, resolved: &Resolved) -> Result<Formatter, DataError> {
        let mut f = Formatter::new(self.format, &self.columns, self.classes.as_deref())?;
        if let Some(label) = f.column("label") {
            // The label column's name in the file, before `rename`.
            let original = self
                .rename
                .iter()
                .find(|(_, new)| new.as_str() == label)
                .map_or(label, |(old, _)| old.as_str());
            if let Some(names) = resolved.class_names.get(original) {
                f.set_default_classes(names);
            }
        }
        Ok(f)
    }

    /// Option errors (no file access), each naming its recipe key.
    fn spec_errors(&self) -> Vec<String> {
        let mut errs = Vec::new();
        match Formatter::new(self.format, &self.columns, self.classes.as_deref()) {
            Err(e) => errs.push(e.to_string()),
            Ok(f) => {
                if let Some(sel) = &self.select {
                    for c in f.required_columns().iter().chain(&self.drop_null) {
                        if !sel.contains(c) {
                            errs.push(format!("select: leaves out column '{c}', which is needed"));
                        }
                    }
                }
            }
        }
        match self.test_size {
            Some(TestSize::Fraction(f)) if !(f > 0.0 && f < 1.0) => errs.push(format!(
                "test_size: a fraction must be between 0 and 1 (exclusive), got {f}"
            )),
            Some(TestSize::Count(0)) => errs.push("test_size: must be at least 1".into()),
            _ => {}
        }
        if self.limit == Some(0) {
            errs.push("limit: must be at least 1".into());
        }
        if self.sample == Some(0) {
            errs.push("sample: must be at least 1".into());
        }
        if self.csv_delimiter.is_some_and(|c| !c.is_ascii()) {
            errs.push("csv_delimiter: must be a single ASCII character".into());
        }
        if self.path.as_os_str().is_empty() {
            errs.push("path: missing".into());
        }
        errs
    }

    fn csv_options(&self, path: &Path) -> CsvOptions {
        let tsv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
        let delimiter = match self.csv_delimiter {
            Some(c) => c as u8,
            None if tsv => b'\t',
            None => b',',
        };
        CsvOptions {
            delimiter,
            empty_as_null: self.csv_empty_as_null,
        }
    }
}

fn open_file(file: &DataFile, spec: &LoadSpec) -> Result<FileRows, DataError> {
    match file.format {
        FileFormat::Json => json::open(&file.path),
        FileFormat::Jsonl => jsonl::open(&file.path),
        FileFormat::Csv => csv_file::open(&file.path, spec.csv_options(&file.path)),
        FileFormat::Parquet => columnar::open_parquet(&file.path),
        FileFormat::Arrow => columnar::open_arrow(&file.path),
        FileFormat::Auto | FileFormat::HfDisk => Err(DataError::format(&file.path, "unresolved")),
    }
}

/// The columns of the dataset at `path` (auto-detected file format): the schema's (CSV
/// header, Parquet/Arrow) or the first row's keys (JSON/JSONL). For `recipe init`.
pub fn peek_columns(path: &Path) -> Result<Vec<String>, DataError> {
    let spec = LoadSpec {
        path: path.to_path_buf(),
        ..Default::default()
    };
    let resolved = resolve(path, FileFormat::Auto, None)?;
    let Some(file) = resolved.files.first() else {
        return Err(DataError::NotFound(path.to_path_buf()));
    };
    let mut rows = open_file(file, &spec)?;
    if let Some(cols) = rows.columns.take() {
        return Ok(cols);
    }
    match rows.rows.next() {
        Some(Ok(row)) => Ok(row.fields.keys().cloned().collect()),
        Some(Err(e)) => Err(e),
        None => Err(DataError::Empty {
            path: path.to_path_buf(),
            detail: String::new(),
        }),
    }
}

/// The data files `spec.path` resolves to (for cache keys: hash these).
pub fn input_files(spec: &LoadSpec) -> Result<Vec<PathBuf>, DataError> {
    let r = resolve(&spec.path, spec.file_format, spec.hf_split.as_deref())?;
    Ok(r.files.into_iter().map(|f| f.path).collect())
}

/// HF `train_test_split` sizes: n_test = ceil(fraction·n) or the count; n_train = n - n_test.
pub fn split_sizes(test_size: TestSize, n: u64) -> Result<(u64, u64), DataError> {
    let n_test = match test_size {
        TestSize::Fraction(f) => (f * n as f64).ceil() as u64,
        TestSize::Count(c) => c,
    };
    if n_test == 0 || n_test >= n {
        let which = if n_test == 0 { "test" } else { "train" };
        let given = match test_size {
            TestSize::Fraction(f) => f.to_string(),
            TestSize::Count(c) => c.to_string(),
        };
        return Err(DataError::Spec(format!(
            "test_size: {given} of {n} rows leaves the {which} split empty"
        )));
    }
    Ok((n - n_test, n_test))
}

/// Row indices of (train, test): `np.random.default_rng(seed).permutation(n)`, test = its first
/// n_test entries, train = the rest (HF `Dataset.train_test_split`).
pub fn split_indices(n: usize, n_test: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut perm = permutation(n, seed);
    let train = perm.split_off(n_test);
    (train, perm)
}

/// Runs the step: writes `out_dir/train.jsonl` (and `test.jsonl` with `test_size`), one
/// serialized `Example` per line, and `out_dir/stats.json`. `progress` gets rows read so far.
pub fn load(
    spec: &LoadSpec,
    out_dir: &Path,
    progress: &dyn Fn(u64),
) -> Result<LoadReport, DataError> {
    if let Some(e) = spec.spec_errors().into_iter().next() {
        return Err(DataError::Spec(e));
    }
    let resolved = resolve(&spec.path, spec.file_format, spec.hf_split.as_deref())?;
    let formatter = spec.formatter(&resolved)?;
    let required = formatter.required_columns();
    let transform = spec.transform();
    std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
    let tmp = out_dir.join("rows.tmp.jsonl");
    let result = (|| {
        let mut report = LoadReport::default();
        let offsets = write_rows(
            spec,
            &resolved,
            &formatter,
            &required,
            &transform,
            &tmp,
            &mut report,
            progress,
        )?;
        progress(report.rows_read);
        let n = offsets.len() as u64 - 1;
        if n == 0 {
            return Err(DataError::Empty {
                path: spec.path.clone(),
                detail: format!(
                    " after filtering ({} rows read, {} dropped by drop_null, {} bad rows skipped)",
                    report.rows_read, report.dropped_null, report.skipped
                ),
            });
        }
        report.kept = n;
        write_outputs(spec, &tmp, &offsets, out_dir, &mut report)?;
        let stats = serde_json::to_vec_pretty(&report).expect("report serializes");
        let stats_path = out_dir.join("stats.json");
        std::fs::write(&stats_path, stats).map_err(|e| DataError::io(&stats_path, e))?;
        Ok(report)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// First pass: stream every row, write kept Examples to `tmp`; returns line start offsets
/// (plus the end offset).
#[allow(clippy::too_many_arguments)]
fn write_rows(
    spec: &LoadSpec,
    resolved: &Resolved,
    formatter: &Formatter,
    required: &[String],
    transform: &Transform,
    tmp: &Path,
    report: &mut LoadReport,
    progress: &dyn Fn(u64),
) -> Result<Vec<u64>, DataError> {
    let mut w = BufWriter::new(File::create(tmp).map_err(|e| DataError::io(tmp, e))?);
    let mut offsets = vec![0u64];
    let mut line = Vec::new();
    'files: for file in &resolved.files {
        let fr = open_file(file, spec)?;
        report.files.push(fr.file.to_string());
        if let Some(cols) = &fr.columns {
            transform.check_schema(&fr.file, cols, required)?;
        }
        for r in fr.rows {
            report.rows_read += 1;
            if report.rows_read % PROGRESS_EVERY == 0 {
                progress(report.rows_read);
            }
            let ex = r.and_then(|row| transform.apply(row)).and_then(|kept| {
                kept.map(|row| formatter.to_example(row.fields, &row.loc))
                    .transpose()
            });
            match ex {
                Ok(None) => report.dropped_null += 1,
                Ok(Some(ex)) => {
                    line.clear();
                    serde_json::to_writer(&mut line, &ex).expect("Example serializes");
                    line.push(b'\n');
                    w.write_all(&line).map_err(|e| DataError::io(tmp, e))?;
                    offsets.push(offsets[offsets.len() - 1] + line.len() as u64);
                    if spec.limit.is_some_and(|l| offsets.len() as u64 > l) {
                        break 'files;
                    }
                }
                Err(e) if e.is_row_error() && spec.on_error == OnError::Skip => {
                    report.skipped += 1;
                    if report.errors.len() < MAX_ERRORS {
                        report.errors.push(e.to_string());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    w.flush().map_err(|e| DataError::io(tmp, e))?;
    Ok(offsets)
}

/// Second step: sample and split by index, then copy lines into train.jsonl / test.jsonl.
fn write_outputs(
    spec: &LoadSpec,
    tmp: &Path,
    offsets: &[u64],
    out_dir: &Path,
    report: &mut LoadReport,
) -> Result<(), DataError> {
    let n = offsets.len() - 1;
    let train_path = out_dir.join("train.jsonl");
    let test_path = out_dir.join("test.jsonl");
    let _ = std::fs::remove_file(&test_path);
    // Rows in output order, as indices into tmp.
    let base: Option<Vec<usize>> = spec.sample.map(|k| {
        let mut p = permutation(n, spec.seed);
        p.truncate((k as usize).min(n));
        p
    });
    let m = base.as_ref().map_or(n, Vec::len);
    let (train, test) = match spec.test_size {
        None => match base {
            None => {
                std::fs::rename(tmp, &train_path).map_err(|e| DataError::io(&train_path, e))?;
                report.train = n as u64;
                return Ok(());
            }
            Some(b) => (b, Vec::new()),
        },
        Some(ts) => {
            let (_, n_test) = split_sizes(ts, m as u64)?;
            let (tr, te) = split_indices(m, n_test as usize, spec.seed);
            let map = |v: Vec<usize>| match &base {
                Some(b) => v.into_iter().map(|i| b[i]).collect(),
                None => v,
            };
            (map(tr), map(te))
        }
    };
    let f = File::open(tmp).map_err(|e| DataError::io(tmp, e))?;
    // SAFETY: tmp is our own file, fully written and closed; nothing writes it while mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| DataError::io(tmp, e))?;
    let copy = |idx: &[usize], path: &Path| -> Result<(), DataError> {
        let mut w = BufWriter::new(File::create(path).map_err(|e| DataError::io(path, e))?);
        for &i in idx {
            let line = &map[offsets[i] as usize..offsets[i + 1] as usize];
            w.write_all(line).map_err(|e| DataError::io(path, e))?;
        }
        w.flush().map_err(|e| DataError::io(path, e))
    };
    copy(&train, &train_path)?;
    report.train = train.len() as u64;
    if spec.test_size.is_some() {
        copy(&test, &test_path)?;
        report.test = test.len() as u64;
    }
    Ok(())
}

/// Reads a `train.jsonl`/`test.jsonl` written by `load`, one `Example` per line; errors name
/// the file and line.
pub fn read_examples(path: &Path) -> impl Iterator<Item = Result<Example, DataError>> {
    let file: std::sync::Arc<str> = path.display().to_string().into();
    let mut opened = Some(File::open(path).map_err(|e| DataError::io(path, e)));
    let mut lines: Option<std::io::Lines<BufReader<File>>> = None;
    let mut line_no = 0u64;
    let path = path.to_path_buf();
    std::iter::from_fn(move || {
        if let Some(o) = opened.take() {
            match o {
                Ok(f) => lines = Some(BufReader::new(f).lines()),
                Err(e) => return Some(Err(e)),
            }
        }
        loop {
            let l = match lines.as_mut()?.next()? {
                Ok(l) => l,
                Err(e) => {
                    lines = None;
                    return Some(Err(DataError::io(&path, e)));
                }
            };
            line_no += 1;
            if l.trim().is_empty() {
                continue;
            }
            let loc = Location {
                file: file.clone(),
                pos: Pos::Line(line_no),
            };
            return Some(
                serde_json::from_str::<Example>(&l)
                    .map_err(|e| DataError::row(loc, format!("not an Example: {e}"))),
            );
        }
    })
}

/// Plan-time checks that read only headers: options, the path, the detected formats, CSV
/// headers / Parquet and Arrow schemas against the needed columns, and the first line of JSONL
/// files (fully converted). Returns every problem found.
pub fn check(spec: &LoadSpec) -> Vec<String> {
    let mut errs = spec.spec_errors();
    if spec.path.as_os_str().is_empty() {
        return errs;
    }
    let resolved = match resolve(&spec.path, spec.file_format, spec.hf_split.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            errs.push(e.to_string());
            return errs;
        }
    };
    let Ok(formatter) = spec.formatter(&resolved) else {
        return errs; // already reported by spec_errors
    };
    let required = formatter.required_columns();
    let transform = spec.transform();
    for file in &resolved.files {
        let res = match file.format {
            FileFormat::Json => check_json_start(&file.path),
            FileFormat::Jsonl => check_first_line(&file.path, &transform, &formatter),
            FileFormat::Parquet => columnar::parquet_columns(&file.path).and_then(|cols| {
                transform.check_schema(&file.path.display().to_string(), &cols, &required)
            }),
            _ => open_file(file, spec).and_then(|fr| match &fr.columns {
                Some(cols) => transform.check_schema(&fr.file, cols, &required),
                None => Ok(()),
            }),
        };
        if let Err(e) = res {
            errs.push(e.to_string());
        }
    }
    errs
}

fn check_json_start(path: &Path) -> Result<(), DataError> {
    let mut head = Vec::new();
    File::open(path)
        .map_err(|e| DataError::io(path, e))?
        .take(4096)
        .read_to_end(&mut head)
        .map_err(|e| DataError::io(path, e))?;
    let head = head
        .strip_prefix(b"\xEF\xBB\xBF".as_slice())
        .unwrap_or(&head);
    match head.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') | Some(b'{') => Ok(()),
        _ => Err(DataError::format(
            path,
            "does not start with a JSON array or object",
        )),
    }
}

fn check_first_line(
    path: &Path,
    transform: &Transform,
    formatter: &Formatter,
) -> Result<(), DataError> {
    let mut fr = jsonl::open(path)?;
    match fr.rows.next() {
        None => Err(DataError::Empty {
            path: path.to_path_buf(),
            detail: String::new(),
        }),
        Some(row) => {
            if let Some(row) = transform.apply(row?)? {
                formatter.to_example(row.fields, &row.loc)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::example::{Message, Role};
    use crate::data::testutil::{fixture, write};

    fn spec(path: &Path) -> LoadSpec {
        LoadSpec {
            path: path.to_path_buf(),
            ..LoadSpec::default()
        }
    }

    fn examples(path: &Path) -> Vec<Example> {
        read_examples(path).map(Result::unwrap).collect()
    }

    /// The `i` column of raw examples.
    fn ids(path: &Path) -> Vec<usize> {
        examples(path)
            .iter()
            .map(|e| e.extra["i"].as_u64().unwrap() as usize)
            .collect()
    }

    fn numbered_jsonl(dir: &tempfile::TempDir, n: usize) -> PathBuf {
        let text: String = (0..n).map(|i| format!("{{\"i\": {i}}}\n")).collect();
        write(dir, "rows.jsonl", text.as_bytes())
    }

    fn usizes(v: &serde_json::Value) -> Vec<usize> {
        serde_json::from_value(v.clone()).unwrap()
    }

    #[test]
    fn split_matches_hf_train_test_split() {
        let fx: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("split_indices.json")).unwrap())
                .unwrap();
        for case in fx["cases"].as_array().unwrap() {
            let n = case["n"].as_u64().unwrap();
            let seed = case["seed"].as_u64().unwrap();
            let ts: TestSize = serde_json::from_value(case["test_size"].clone()).unwrap();
            let (n_train, n_test) = split_sizes(ts, n).unwrap();
            let (train, test) = split_indices(n as usize, n_test as usize, seed);
            assert_eq!(train.len() as u64, n_train);
            let (want_train, want_test) = (usizes(&case["train"]), usizes(&case["test"]));
            if case.get("truncated").is_some() {
                assert_eq!(train[..want_train.len()], want_train, "n={n} seed={seed}");
                assert_eq!(test[..want_test.len()], want_test, "n={n} seed={seed}");
                continue;
            }
            assert_eq!(
                (&train, &test),
                (&want_train, &want_test),
                "n={n} seed={seed}"
            );
            // End to end through files.
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            let s = LoadSpec {
                test_size: Some(ts),
                seed,
                ..spec(&numbered_jsonl(&dir, n as usize))
            };
            let rep = load(&s, &out, &|_| {}).unwrap();
            assert_eq!((rep.train, rep.test), (n_train, n_test));
            assert_eq!(ids(&out.join("train.jsonl")), want_train);
            assert_eq!(ids(&out.join("test.jsonl")), want_test);
        }
        // shuffle(seed=9).select(range(5)) == sample = 5, seed = 9.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let s = LoadSpec {
            sample: Some(5),
            seed: 9,
            ..spec(&numbered_jsonl(&dir, 20))
        };
        load(&s, &out, &|_| {}).unwrap();
        assert_eq!(
            ids(&out.join("train.jsonl")),
            usizes(&fx["shuffle_20_seed9_first5"])
        );
        assert!(!out.join("test.jsonl").exists());
    }

    #[test]
    fn split_size_errors() {
        assert_eq!(split_sizes(TestSize::Fraction(0.2), 10).unwrap(), (8, 2));
        assert_eq!(split_sizes(TestSize::Fraction(0.25), 7).unwrap(), (5, 2));
        assert_eq!(
            split_sizes(TestSize::Count(3), 3).unwrap_err().to_string(),
            "test_size: 3 of 3 rows leaves the train split empty"
        );
    }

    #[test]
    fn skip_bad_rows_and_stats() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "d.jsonl",
            "{\"content\": \"类型#裤\", \"summary\": \"宽松\"}\n{bad\n{\"content\": \"c\", \"summary\": [1]}\n{\"content\": \"c2\", \"summary\": null}\n{\"content\": \"c3\", \"summary\": \"s3\"}\n".as_bytes(),
        );
        let f = p.display().to_string();
        let out = dir.path().join("out");
        let mut s = LoadSpec {
            format: RecordFormat::PromptResponse,
            columns: [("prompt", "content"), ("response", "summary")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .into(),
            drop_null: vec!["summary".into()],
            ..spec(&p)
        };
        let e = load(&s, &out, &|_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{f}:2: invalid JSON at column 2: key must be a string")
        );
        s.on_error = OnError::Skip;
        let calls = std::cell::Cell::new(0u64);
        let rep = load(&s, &out, &|n| calls.set(n)).unwrap();
        assert_eq!(calls.get(), 5);
        assert_eq!(
            rep,
            LoadReport {
                files: vec![f.clone()],
                rows_read: 5,
                skipped: 2,
                dropped_null: 1,
                kept: 2,
                train: 2,
                test: 0,
                errors: vec![
                    format!("{f}:2: invalid JSON at column 2: key must be a string"),
                    format!("{f}:3: column 'summary' should be a string, got an array"),
                ],
            }
        );
        let stats: LoadReport =
            serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
        assert_eq!(stats, rep);
        let ex = examples(&out.join("train.jsonl"));
        assert_eq!(ex[0].source, format!("{f}:1"));
        assert_eq!(
            ex[0].messages,
            vec![
                Message {
                    role: Role::User,
                    content: "类型#裤".into(),
                    metadata: String::new()
                },
                Message {
                    role: Role::Assistant,
                    content: "宽松".into(),
                    metadata: String::new()
                },
            ]
        );
        assert_eq!(ex[1].source, format!("{f}:5"));
        assert!(!out.join("rows.tmp.jsonl").exists());
    }

    #[test]
    fn csv_filter_limit_empty_and_missing_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "hotel.csv",
            "label,review\n1,距离川沙公路较近\n0,\n1,\"好,很好\"\n0,差\n".as_bytes(),
        );
        let f = p.display().to_string();
        let out = dir.path().join("out");
        let s = LoadSpec {
            format: RecordFormat::Text,
            columns: [("text".to_string(), "review".to_string())].into(),
            drop_null: vec!["review".into()],
            limit: Some(2),
            ..spec(&p)
        };
        let rep = load(&s, &out, &|_| {}).unwrap();
        assert_eq!((rep.rows_read, rep.dropped_null, rep.kept), (3, 1, 2));
        let texts: Vec<String> = examples(&out.join("train.jsonl"))
            .into_iter()
            .map(|e| e.messages[0].content.clone())
            .collect();
        assert_eq!(texts, ["距离川沙公路较近", "好,很好"]);

        let empty = write(&dir, "empty.csv", b"label,review\n0,\n");
        let e = load(&spec(&empty).clone_with(&s), &out, &|_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: the dataset is empty after filtering (1 rows read, 1 dropped by drop_null, 0 bad rows skipped)",
                empty.display()
            )
        );
        let s2 = LoadSpec {
            columns: [("text".to_string(), "text".to_string())].into(),
            drop_null: vec![],
            ..s.clone()
        };
        assert_eq!(
            load(&s2, &out, &|_| {}).unwrap_err().to_string(),
            format!("{f}: no column 'text' (columns: label, review)")
        );
        assert_eq!(
            check(&s2),
            vec![format!("{f}: no column 'text' (columns: label, review)")]
        );
        assert_eq!(check(&s), Vec::<String>::new());
    }

    impl LoadSpec {
        /// `other`'s options with this path.
        fn clone_with(&self, other: &LoadSpec) -> LoadSpec {
            LoadSpec {
                path: self.path.clone(),
                ..other.clone()
            }
        }
    }

    #[test]
    fn hf_disk_alpaca_and_raft_class_labels() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let disk = fixture("alpaca_zh_disk");
        let s = LoadSpec {
            format: RecordFormat::Alpaca,
            ..spec(&disk)
        };
        let rep = load(&s, &out, &|_| {}).unwrap();
        assert_eq!((rep.rows_read, rep.train), (5, 5));
        let ex = examples(&out.join("train.jsonl"));
        assert_eq!(
            ex[2].messages[0].content,
            "将下列句子翻译成英语。\n我喜欢学习。"
        );
        assert_eq!(ex[2].messages[1].content, "I like studying.");
        assert_eq!(ex[0].messages[0].content, "保持健康的三个提示。");
        assert_eq!(
            ex[3].source,
            format!("{}#0", disk.join("data-00001-of-00002.arrow").display())
        );
        assert_eq!(ex[4].extra["input"], "快乐");

        let s = LoadSpec {
            format: RecordFormat::TextLabel,
            columns: [("text", "Tweet text"), ("label", "Label")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .into(),
            ..spec(&fixture("raft_dict"))
        };
        load(&s, &out, &|_| {}).unwrap();
        let labels: Vec<String> = examples(&out.join("train.jsonl"))
            .into_iter()
            .map(|e| e.messages[1].content.clone())
            .collect();
        assert_eq!(labels, ["no complaint", "complaint", "no complaint"]);
        let s = LoadSpec {
            hf_split: Some("test".into()),
            ..s
        };
        load(&s, &out, &|_| {}).unwrap();
        let ex = examples(&out.join("train.jsonl"));
        assert_eq!(ex[1].messages[0].content, "测试 推文");
        assert_eq!(ex[1].messages[1].content, "Unlabeled");
    }

    #[test]
    fn parquet_prompt_response_with_split() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let s = LoadSpec {
            format: RecordFormat::PromptResponse,
            columns: [("prompt", "content"), ("response", "summary")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .into(),
            drop_null: vec!["summary".into()],
            test_size: Some(TestSize::Count(1)),
            seed: 0,
            ..spec(&fixture("advertise.parquet"))
        };
        let rep = load(&s, &out, &|_| {}).unwrap();
        assert_eq!(
            (rep.kept, rep.train, rep.test, rep.dropped_null),
            (2, 1, 1, 1)
        );
        // numpy: default_rng(0).permutation(2) == [0, 1]: test = row 0, train = row 1.
        assert_eq!(permutation(2, 0), [0, 1]);
        let train = examples(&out.join("train.jsonl"));
        let test = examples(&out.join("test.jsonl"));
        assert_eq!(train[0].messages[0].content, "类型#裙*颜色#红色");
        assert_eq!(
            test[0].messages[1].content,
            "宽松的阔腿裤这两年真的吸粉不少。"
        );
    }

    #[test]
    fn check_reports_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "c.jsonl", b"{\"conversations\": \"x\"}\n{bad\n");
        let f = p.display().to_string();
        let s = LoadSpec {
            format: RecordFormat::Conversations,
            test_size: Some(TestSize::Fraction(1.5)),
            select: Some(vec!["other".into()]),
            ..spec(&p)
        };
        assert_eq!(
            check(&s),
            vec![
                "select: leaves out column 'conversations', which is needed".to_string(),
                "test_size: a fraction must be between 0 and 1 (exclusive), got 1.5".to_string(),
                format!("{f}:1: no column 'other' (columns: conversations)"),
            ]
        );
        let s = LoadSpec {
            format: RecordFormat::Conversations,
            ..spec(&p)
        };
        assert_eq!(
            check(&s),
            vec![format!(
                "{f}:1: column 'conversations' should be a list of messages, got a string"
            )]
        );
        let missing = dir.path().join("missing.jsonl");
        assert_eq!(
            check(&spec(&missing)),
            vec![format!("{}: no such file or directory", missing.display())]
        );
        assert!(check(&spec(&fixture("conv_disk"))).is_empty());
    }

    #[test]
    fn spec_from_toml() {
        let s: LoadSpec = toml::from_str(
            r#"
            path = "data/alpaca.jsonl"
            format = "alpaca"
            file_format = "jsonl"
            columns = { instruction = "instruct", input = "query", output = "answer" }
            rename = { b = "a", a = "b" }
            test_size = 0.2
            on_error = "skip"
            csv_delimiter = ";"
            "#,
        )
        .unwrap();
        assert_eq!(s.format, RecordFormat::Alpaca);
        assert_eq!(s.file_format, FileFormat::Jsonl);
        assert_eq!(s.columns["output"], "answer");
        assert_eq!((s.rename["b"].as_str(), s.rename["a"].as_str()), ("a", "b"));
        assert_eq!(s.test_size, Some(TestSize::Fraction(0.2)));
        assert_eq!(
            (s.seed, s.on_error, s.csv_delimiter),
            (42, OnError::Skip, Some(';'))
        );
        assert!(s.csv_empty_as_null);
        let s: LoadSpec = toml::from_str("path = 'x'\ntest_size = 100").unwrap();
        assert_eq!(s.test_size, Some(TestSize::Count(100)));
        let e = toml::from_str::<LoadSpec>("path = 'x'\ntest_sise = 1").unwrap_err();
        assert!(e.to_string().contains("unknown field `test_sise`"), "{e}");
    }

    #[test]
    fn read_examples_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "train.jsonl",
            b"{\"messages\": []}\n\n{\"messages\": 1}\n",
        );
        let got: Vec<Result<Example, String>> = read_examples(&p)
            .map(|r| r.map_err(|e| e.to_string()))
            .collect();
        assert_eq!(got[0], Ok(Example::default()));
        let e = got[1].clone().unwrap_err();
        assert!(
            e.starts_with(&format!("{}:3: not an Example: ", p.display())),
            "{e}"
        );
        assert_eq!(got.len(), 2);
        let missing = dir.path().join("nope.jsonl");
        let got: Vec<_> = read_examples(&missing).collect();
        assert_eq!(got.len(), 1);
        assert!(got[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .starts_with(&missing.display().to_string()));
    }

    /// Throughput check, not run by default: `cargo test --lib data::load::tests::big -- --ignored`.
    #[test]
    #[ignore]
    fn big_jsonl_streams() {
        let dir = tempfile::tempdir().unwrap();
        let n = 200_000;
        let text: String = (0..n)
            .map(|i| {
                format!(
                    "{{\"instruction\": \"问题{i}\", \"input\": \"\", \"output\": \"回答{i}\"}}\n"
                )
            })
            .collect();
        let p = write(&dir, "big.jsonl", text.as_bytes());
        let s = LoadSpec {
            format: RecordFormat::Alpaca,
            test_size: Some(TestSize::Fraction(0.1)),
            ..spec(&p)
        };
        let t = std::time::Instant::now();
        let rep = load(&s, &dir.path().join("out"), &|_| {}).unwrap();
        eprintln!("{n} rows in {:?}", t.elapsed());
        assert_eq!((rep.train, rep.test), (180_000, 20_000));
    }
}
