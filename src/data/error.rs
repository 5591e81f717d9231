//! Errors of the dataset library. Row errors (`DataError::Row`) are the ones `on_error = "skip"`
//! may skip; every other variant stops the load.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    /// The file format could not be detected or is not supported.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// One bad row: `loc` is `file:line` (or `file#row`).
    #[error("{loc}: {msg}")]
    Row { loc: String, msg: String },
    #[error("{file}: no column '{column}' (columns: {})", available.join(", "))]
    MissingColumn {
        column: String,
        file: String,
        available: Vec<String>,
    },
    #[error("{path}: no split '{split}' (splits: {})", available.join(", "))]
    MissingSplit {
        path: PathBuf,
        split: String,
        available: Vec<String>,
    },
    #[error("{path}: the dataset is empty{detail}")]
    Empty { path: PathBuf, detail: String },
    /// Invalid load options (named by their recipe key).
    #[error("{0}")]
    Spec(String),
}

impl DataError {
    pub fn row(loc: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        DataError::Row {
            loc: loc.to_string(),
            msg: msg.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// Whether `on_error = "skip"` may skip this error (one bad row).
    pub fn is_row_error(&self) -> bool {
        matches!(self, DataError::Row { .. })
    }
}
