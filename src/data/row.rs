//! A raw dataset row (column name -> JSON value, in column order) and where it came from.

use std::fmt;
use std::sync::Arc;

use super::error::DataError;

/// Column name -> value, in the file's column order.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// Where a row sits in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pos {
    /// 1-based line of a JSONL/CSV file (the record's first line).
    Line(u64),
    /// 0-based element index of a JSON array or row index of a Parquet/Arrow file.
    Index(u64),
}

/// Printed `file:line` for line-based files and `file#index` for the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<str>,
    pub pos: Pos,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Pos::Line(l) => write!(f, "{}:{}", self.file, l),
            Pos::Index(i) => write!(f, "{}#{}", self.file, i),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub loc: Location,
    pub fields: Fields,
}

/// A stream of rows; `Err(DataError::Row)` items are bad rows the caller may skip, any other
/// error ends the stream.
pub type RowIter = Box<dyn Iterator<Item = Result<Row, DataError>>>;

/// An opened data file: its display name, its columns when the format has a schema (CSV
/// header, Parquet/Arrow schema), and its rows.
pub struct FileRows {
    pub file: Arc<str>,
    pub columns: Option<Vec<String>>,
    pub rows: RowIter,
}

/// "a string", "an array", ... for type errors.
pub fn json_type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
