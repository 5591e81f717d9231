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
    /// Keep N rows drawn with `seed` (after limit).
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
                    if spec.limit.is_some_and(|l| offsets.len() as u64 - 1 >= l) {
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
    let fr = jsonl::open(path)?;
    match fr.rows.into_iter().next() {
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
