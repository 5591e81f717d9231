//! Errors of the merge/export library. Every variant names the file or the module it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that is there but malformed (bad safetensors header, bad JSON, missing key).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// An adapter that does not fit its base: names the module (or tensor) and both shapes.
    #[error("module `{module}`: {msg}")]
    Mismatch { module: String, msg: String },
    /// A NaN or an infinity in the weights (see `finite`).
    #[error("{origin}: tensor `{tensor}` holds {what} (element {index}): the weights are broken (a diverged training run?); refusing to use them")]
    NonFinite {
        origin: String,
        tensor: String,
        index: usize,
        what: &'static str,
    },
    /// Something valid elsewhere that this library does not do (DoRA, 8-bit bases, .bin files).
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;

impl ExportError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ExportError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ExportError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn mismatch(module: impl Into<String>, msg: impl Into<String>) -> Self {
        ExportError::Mismatch {
            module: module.into(),
            msg: msg.into(),
        }
    }
}
