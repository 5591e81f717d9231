//! Where the rows come from: a path (file or folder) resolved into a list of data files, each
//! with a concrete file format.
//!
//! - a file: its extension decides (`.json` files are sniffed: JSON Lines when the first line is
//!   a complete object), or `file_format` forces one;
//! - a Hugging Face `save_to_disk` folder: `state.json` lists the Arrow stream shards;
//!   a `DatasetDict` folder (`dataset_dict.json`) has one such folder per split;
//! - any other folder: every file with a supported extension, sorted by name (shards).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::DataError;

/// `file_format` of the recipe. `Auto` and `HfDisk` resolve to one of the others per file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    #[default]
    Auto,
    Json,
    Jsonl,
    Csv,
    Parquet,
    Arrow,
    HfDisk,
}

impl FileFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            FileFormat::Auto => "auto",
            FileFormat::Json => "json",
            FileFormat::Jsonl => "jsonl",
            FileFormat::Csv => "csv",
            FileFormat::Parquet => "parquet",
            FileFormat::Arrow => "arrow",
            FileFormat::HfDisk => "hf_disk",
        }
    }
}

/// One file to read, with its concrete format (never `Auto`/`HfDisk`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFile {
    pub path: PathBuf,
    pub format: FileFormat,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    pub files: Vec<DataFile>,
    /// `ClassLabel` names per column, from a save_to_disk folder's `dataset_info.json`.
    pub class_names: BTreeMap<String, Vec<String>>,
}

/// The format an extension implies (`.json` still needs `sniff_json`).
fn format_of_extension(path: &Path) -> Option<FileFormat> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "json" => FileFormat::Json,
        "jsonl" | "ndjson" => FileFormat::Jsonl,
        "csv" | "tsv" => FileFormat::Csv,
        "parquet" | "pq" => FileFormat::Parquet,
        "arrow" | "ipc" | "feather" => FileFormat::Arrow,
        _ => return None,
    })
}

/// A `.json` file is JSON Lines when its first line is a complete JSON object.
fn sniff_json(path: &Path) -> Result<FileFormat, DataError> {
    let f = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut line = Vec::new();
    BufReader::new(f)
        .take(1 << 24)
        .read_until(b'\n', &mut line)
        .map_err(|e| DataError::io(path, e))?;
    let text = line
        .strip_prefix(b"\xEF\xBB\xBF".as_slice())
        .unwrap_or(&line);
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{')
        && matches!(
            serde_json::from_slice::<serde_json::Value>(text),
            Ok(serde_json::Value::Object(_))
        )
    {
        return Ok(FileFormat::Jsonl);
    }
    Ok(FileFormat::Json)
}

fn detect_file(path: &Path, forced: FileFormat) -> Result<FileFormat, DataError> {
    match forced {
        FileFormat::Auto => match format_of_extension(path) {
            Some(FileFormat::Json) => sniff_json(path),
            Some(f) => Ok(f),
            None => Err(DataError::format(
                path,
                "cannot tell the file format from the extension \
                 (expected .json, .jsonl, .csv, .tsv, .parquet or .arrow); set file_format",
            )),
        },
        FileFormat::HfDisk => Err(DataError::format(
            path,
            "file_format \"hf_disk\" needs a save_to_disk folder, not a file",
        )),
        f => Ok(f),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| DataError::format(path, format!("invalid JSON: {e}")))
}

/// Resolves `path` into data files. `hf_split` picks a split of a DatasetDict folder (default:
/// `train`, or the only split).
pub fn resolve(
    path: &Path,
    format: FileFormat,
    hf_split: Option<&str>,
) -> Result<Resolved, DataError> {
    if !path.exists() {
        return Err(DataError::NotFound(path.to_path_buf()));
    }
    if !path.is_dir() {
        let format = detect_file(path, format)?;
        return Ok(Resolved {
            files: vec![DataFile {
                path: path.to_path_buf(),
                format,
            }],
            class_names: BTreeMap::new(),
        });
    }
    let hf_ok = matches!(
        format,
        FileFormat::Auto | FileFormat::HfDisk | FileFormat::Arrow
    );
    if hf_ok && path.join("dataset_dict.json").is_file() {
        let dd = read_json(&path.join("dataset_dict.json"))?;
        let splits: Vec<String> = dd["splits"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let split = match hf_split {
            Some(s) => s.to_string(),
            None if splits.iter().any(|s| s == "train") => "train".to_string(),
            None if splits.len() == 1 => splits[0].clone(),
            None => String::from("train"),
        };
        if !splits.contains(&split) || !path.join(&split).is_dir() {
            return Err(DataError::MissingSplit {
                path: path.to_path_buf(),
                split,
                available: splits,
            });
        }
        return hf_dataset_folder(&path.join(&split));
    }
    if hf_ok && path.join("state.json").is_file() {
        return hf_dataset_folder(path);
    }
    if format == FileFormat::HfDisk {
        return Err(DataError::format(
            path,
            "not a save_to_disk folder (no state.json or dataset_dict.json)",
        ));
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| DataError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(".")
                .starts_with('.')
        })
        .filter(|p| format_of_extension(p).is_some())
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(DataError::format(
            path,
            "no data files (.json, .jsonl, .csv, .tsv, .parquet, .arrow) in this folder",
        ));
    }
    let files = names
        .into_iter()
        .map(|p| {
            let format = detect_file(&p, format)?;
            Ok(DataFile { path: p, format })
        })
        .collect::<Result<_, DataError>>()?;
    Ok(Resolved {
        files,
        class_names: BTreeMap::new(),
    })
}

/// One `Dataset.save_to_disk` folder: shards from `state.json` (else sorted `*.arrow`), class
/// names from `dataset_info.json`.
fn hf_dataset_folder(dir: &Path) -> Result<Resolved, DataError> {
    let mut files: Vec<PathBuf> = Vec::new();
    if dir.join("state.json").is_file() {
        let state = read_json(&dir.join("state.json"))?;
        if let Some(list) = state["_data_files"].as_array() {
            files = list
                .iter()
                .filter_map(|f| f["filename"].as_str())
                .map(|n| dir.join(n))
                .collect();
        }
    }
    if files.is_empty() {
        files = std::fs::read_dir(dir)
            .map_err(|e| DataError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
            .collect();
        files.sort();
    }
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(DataError::NotFound(missing.clone()));
    }
    let mut class_names = BTreeMap::new();
    if dir.join("dataset_info.json").is_file() {
        let info = read_json(&dir.join("dataset_info.json"))?;
        if let Some(features) = info["features"].as_object() {
            for (col, feat) in features {
                if feat["_type"] == "ClassLabel" {
                    if let Some(names) = feat["names"].as_array() {
                        let names = names.iter().filter_map(|n| n.as_str().map(String::from));
                        class_names.insert(col.clone(), names.collect());
                    }
                }
            }
        }
    }
    Ok(Resolved {
        files: files
            .into_iter()
            .map(|path| DataFile {
                path,
                format: FileFormat::Arrow,
            })
            .collect(),
        class_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{fixture, write};

    fn formats(r: &Resolved) -> Vec<(String, FileFormat)> {
        r.files
            .iter()
            .map(|f| {
                let name = f.path.file_name().unwrap().to_str().unwrap().to_string();
                (name, f.format)
            })
            .collect()
    }

    #[test]
    fn hf_disk_folders() {
        let r = resolve(&fixture("alpaca_zh_disk"), FileFormat::Auto, None).unwrap();
        assert_eq!(
            formats(&r),
            vec![
                ("data-00000-of-00002.arrow".to_string(), FileFormat::Arrow),
                ("data-00001-of-00002.arrow".to_string(), FileFormat::Arrow),
            ]
        );
        let dd = fixture("raft_dict");
        let r = resolve(&dd, FileFormat::HfDisk, None).unwrap();
        assert_eq!(r.files[0].path, dd.join("train/data-00000-of-00001.arrow"));
        assert_eq!(
            r.class_names["Label"],
            ["Unlabeled", "complaint", "no_complaint"]
        );
        let r = resolve(&dd, FileFormat::Auto, Some("test")).unwrap();
        assert_eq!(r.files[0].path, dd.join("test/data-00000-of-00001.arrow"));
        let e = resolve(&dd, FileFormat::Auto, Some("validation")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: no split 'validation' (splits: train, test)",
                dd.display()
            )
        );
    }

    #[test]
    fn files_and_shard_folders() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir, "b.jsonl", b"{}\n");
        write(&dir, "a.json", b"{\"x\": 1}\n{\"x\": 2}\n");
        write(&dir, "c.json", b"[\n{\"x\": 1}\n]\n");
        write(&dir, "d.json", b"{\n \"data\": []\n}\n");
        write(&dir, "notes.txt", b"ignored");
        write(&dir, ".hidden.csv", b"ignored");
        let r = resolve(dir.path(), FileFormat::Auto, None).unwrap();
        assert_eq!(
            formats(&r),
            vec![
                ("a.json".to_string(), FileFormat::Jsonl),
                ("b.jsonl".to_string(), FileFormat::Jsonl),
                ("c.json".to_string(), FileFormat::Json),
                ("d.json".to_string(), FileFormat::Json),
            ]
        );
        let txt = dir.path().join("notes.txt");
        let e = resolve(&txt, FileFormat::Auto, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{}: cannot tell the file format", txt.display())),
            "{e}"
        );
        let r = resolve(&txt, FileFormat::Csv, None).unwrap();
        assert_eq!(r.files[0].format, FileFormat::Csv);
        let missing = dir.path().join("nope.csv");
        assert_eq!(
            resolve(&missing, FileFormat::Auto, None)
                .unwrap_err()
                .to_string(),
            format!("{}: no such file or directory", missing.display())
        );
        let e = resolve(dir.path(), FileFormat::HfDisk, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: not a save_to_disk folder (no state.json or dataset_dict.json)",
                dir.path().display()
            )
        );
    }
}
