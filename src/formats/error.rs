//! Errors of the checkpoint formats and of merge/export (which re-exports this type). Every
//! variant names the file, the tensor or the module it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that is there but malformed (bad safetensors header, bad JSON, missing key).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// One tensor of a weights file that is unreadable or has the wrong shape or dtype.
    #[error("{path}: tensor \"{name}\": {msg}")]
    Tensor {
        path: PathBuf,
        name: String,
        msg: String,
    },
    /// A tensor the model needs that no weights file of `dir` has.
    #[error("{dir}: missing tensor \"{name}\"")]
    Missing { dir: PathBuf, name: String },
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

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        FormatError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn mismatch(module: impl Into<String>, msg: impl Into<String>) -> Self {
        FormatError::Mismatch {
            module: module.into(),
            msg: msg.into(),
        }
    }
}
