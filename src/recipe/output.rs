//! Output dirs: recipe writes a step's `output` only where nothing is, or where this very step
//! of this recipe wrote before (a `.recipe-output` marker says so). Checked at plan time
//! (`validate`) and again when the output is published (`run`).

use std::path::{Path, PathBuf};

/// The file recipe writes into every `output` dir it creates; only a dir
/// holding it (written by the same step of the same recipe) is ever replaced.
pub const OUTPUT_MARKER: &str = ".recipe-output";

/// The marker's content. `recipe` is relative to the output dir, so a
/// project (with its outputs) can move or be cloned and still match.
#[derive(serde::Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct OutputMarker {
    recipe: String,
    step: String,
}

/// Absolute, symlinks resolved as far as the path exists.
fn real(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => real(d).join(n),
        _ => super::validate::normalize(p),
    }
}

pub(crate) fn marker_for(out: &Path, recipe: &Path, step: &str) -> OutputMarker {
    OutputMarker {
        recipe: crate::util::relative_path(&real(out), &real(recipe))
            .display()
            .to_string(),
        step: step.to_string(),
    }
}

/// Whether step `step` of `recipe` may write its `output` at `out`: the path
/// does not exist, or it is a dir this very step wrote before. Err says why not.
pub fn check_output(out: &Path, recipe: &Path, step: &str) -> std::result::Result<(), String> {
    if std::fs::symlink_metadata(out).is_err() {
        return Ok(());
    }
    let theirs = std::fs::read(out.join(OUTPUT_MARKER))
        .ok()
        .filter(|_| out.is_dir() && !out.is_symlink())
        .and_then(|b| serde_json::from_slice::<OutputMarker>(&b).ok());
    match theirs {
        Some(m) if m == marker_for(out, recipe, step) => Ok(()),
        Some(m) => Err(format!(
            "`{}` is the output of step `{}` of `{}`",
            out.display(),
            m.step,
            super::validate::normalize(&real(out).join(&m.recipe)).display()
        )),
        None => Err(format!(
            "`{}` already exists and was not written by recipe",
            out.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_paths_are_relative_to_the_output() {
        assert_eq!(
            crate::util::relative_path(Path::new("/p/out/a"), Path::new("/p/r.toml")),
            PathBuf::from("../../r.toml")
        );
        assert_eq!(
            crate::util::relative_path(
                Path::new("/p/examples/base"),
                Path::new("/p/recipes/x.toml")
            ),
            PathBuf::from("../../recipes/x.toml")
        );
    }

    #[test]
    fn only_this_steps_marked_output_may_be_replaced() {
        let d = tempfile::tempdir().unwrap();
        let recipe = d.path().join("r.toml");
        std::fs::write(&recipe, "").unwrap();
        let out = d.path().join("out");
        assert_eq!(check_output(&out, &recipe, "a"), Ok(()));
        std::fs::create_dir(&out).unwrap();
        assert!(check_output(&out, &recipe, "a")
            .unwrap_err()
            .ends_with("already exists and was not written by recipe"));
        let m = serde_json::to_vec(&marker_for(&out, &recipe, "a")).unwrap();
        std::fs::write(out.join(OUTPUT_MARKER), m).unwrap();
        assert_eq!(check_output(&out, &recipe, "a"), Ok(()));
        assert!(check_output(&out, &recipe, "b")
            .unwrap_err()
            .contains("is the output of step `a` of"));
    }
}
