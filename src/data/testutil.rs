//! Test helpers: temporary files and the committed fixtures.

use std::path::PathBuf;

use super::error::DataError;
use super::row::{FileRows, Row};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

/// Writes `content` to `dir/name` and returns the path.
pub fn write(dir: &tempfile::TempDir, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// All rows of a file, each Ok row as (location text, fields as JSON text), each error as text.
pub fn collect(fr: FileRows) -> Vec<Result<(String, String), String>> {
    fr.rows
        .map(|r: Result<Row, DataError>| {
            r.map(|row| {
                (
                    row.loc.to_string(),
                    serde_json::Value::Object(row.fields).to_string(),
                )
            })
            .map_err(|e| e.to_string())
        })
        .collect()
}
