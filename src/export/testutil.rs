//! Test helpers: fixture paths.

use std::path::PathBuf;

/// `tests/fixtures/export/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/export")
        .join(rel)
}
