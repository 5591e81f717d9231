//! The content-addressed step cache.
//!
//! ```text
//! <root>/entries/<key>/manifest.json   a finished entry (manifest written last)
//! <root>/entries/<key>/...             the step's output files
//! <root>/tmp/<key>.<pid>.<nanos>/       an entry being written
//! <root>/work/<key>/                    scratch that survives a kill (checkpoints)
//! <root>/state/<recipe>/<step>.json     what each recipe step last resolved to
//! ```
//!
//! A step writes into a tmp dir; `publish` writes the manifest and renames
//! the dir into `entries/`. A rename is atomic, so a step killed mid-write
//! leaves only a tmp dir, which no lookup ever trusts and `gc` removes.

pub mod filehash;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bump to invalidate every entry (e.g. after a change in key computation).
pub const CACHE_EPOCH: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub key: String,
    pub kind: String,
    pub format_version: u32,
    /// Step id and recipe that produced the entry (informational).
    pub step: String,
    pub recipe: String,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, String>,
    pub files: BTreeMap<String, String>,
    pub created: u64,
    pub size_bytes: u64,
    pub wall_secs: f64,
    pub recipe_version: String,
}

pub struct Cache {
    pub root: PathBuf,
}

/// The marker of a cache root (the Cache Directory Tagging convention, so
/// backup tools skip it too); `gc` removes nothing from a dir without it.
pub const TAG_FILE: &str = "CACHEDIR.TAG";
const TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by recipe (the step cache).\n";

const LAYOUT: [&str; 4] = ["entries", "tmp", "work", "state"];

/// A cache key as `plan` makes them: 32 lowercase hex digits. Anything else
/// found on disk (a hand-edited manifest) never becomes a path.
pub fn is_key(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Cache {
    pub fn open(root: &Path) -> Result<Cache> {
        for d in LAYOUT {
            std::fs::create_dir_all(root.join(d))
                .with_context(|| format!("cannot create cache dir `{}`", root.join(d).display()))?;
        }
        let tag = root.join(TAG_FILE);
        if !tag.is_file() {
            crate::util::write_atomic(&tag, TAG.as_bytes())
                .with_context(|| format!("cannot write `{}`", tag.display()))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    /// An existing cache, for `cache ls` / `cache gc`: a dir holding recipe's
    /// `CACHEDIR.TAG`, or (made before the tag existed) the full layout.
    pub fn open_existing(root: &Path) -> Result<Cache> {
        let tagged = std::fs::read_to_string(root.join(TAG_FILE))
            .is_ok_and(|t| t.contains("created by recipe"));
        let layout = LAYOUT.iter().all(|d| root.join(d).is_dir());
        anyhow::ensure!(
            tagged || layout,
            "`{}` is not a recipe cache (no {TAG_FILE} written by recipe); nothing removed",
            root.display()
        );
        Cache::open(root)
    }

    pub fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(key)
    }

    /// The output dir of a finished entry, if there is one.
    pub fn lookup(&self, key: &str) -> Option<PathBuf> {
        let d = self.entry_dir(key);
        d.join("manifest.json").is_file().then_some(d)
    }

    pub fn manifest(&self, key: &str) -> Option<Manifest> {
        let b = std::fs::read(self.entry_dir(key).join("manifest.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// A fresh temporary dir to write an entry into.
    pub fn begin(&self, key: &str) -> Result<PathBuf> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let d = self
            .root
            .join("tmp")
            .join(format!("{key}.{}.{nanos}", std::process::id()));
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create `{}`", d.display()))?;
        Ok(d)
    }

    pub fn work_dir(&self, key: &str) -> PathBuf {
        self.root.join("work").join(key)
    }

    /// Write the manifest into `tmp` and move it into place. If another
    /// process published the same key first, keep theirs.
    pub fn publish(&self, tmp: &Path, mut m: Manifest) -> Result<PathBuf> {
        m.size_bytes = crate::util::dir_size(tmp);
        let bytes = serde_json::to_vec_pretty(&m)?;
        crate::util::write_atomic(&tmp.join("manifest.json"), &bytes)?;
        let dst = self.entry_dir(&m.key);
        if let Err(e) = std::fs::rename(tmp, &dst) {
            if self.lookup(&m.key).is_some() {
                let _ = std::fs::remove_dir_all(tmp);
            } else {
                return Err(e)
                    .with_context(|| format!("cannot publish cache entry `{}`", dst.display()));
            }
        }
        // A finished step needs no scratch any more.
        let _ = std::fs::remove_dir_all(self.work_dir(&m.key));
        Ok(dst)
    }

    /// Mark an entry as used now (gc prunes the least recently used first).
    pub fn touch(&self, key: &str) {
        if let Ok(f) = std::fs::File::options()
            .write(true)
            .open(self.entry_dir(key).join("manifest.json"))
        {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// All finished entries with their last-use time, newest first.
    pub fn list(&self) -> Vec<(Manifest, u64)> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.root.join("entries")) {
            for e in rd.flatten() {
                let mpath = e.path().join("manifest.json");
                let used = std::fs::metadata(&mpath)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                // Only an entry whose manifest names its own dir counts.
                if let Some(m) = std::fs::read(&mpath)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                    .filter(|m| is_key(&m.key) && e.file_name().to_str() == Some(&m.key))
                {
                    out.push((m, used));
                }
            }
        }
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.key.cmp(&b.0.key)));
        out
    }

    /// Remove entries unused for longer than `older_than` seconds, then the
    /// least recently used until the total is under `max_size`; also stale
    /// tmp dirs of dead processes. Returns (removed entries, bytes freed).
    pub fn gc(&self, max_size: Option<u64>, older_than: Option<u64>) -> Result<(usize, u64)> {
        let now = crate::util::now_secs();
        let mut entries = self.list();
        let mut removed = 0;
        let mut freed = 0;
        let mut keep = Vec::new();
        for (m, used) in entries.drain(..) {
            if older_than.is_some_and(|age| now.saturating_sub(used) > age) {
                freed += m.size_bytes;
                removed += 1;
                std::fs::remove_dir_all(self.entry_dir(&m.key))?;
            } else {
                keep.push((m, used));
            }
        }
        if let Some(max) = max_size {
            let mut total: u64 = keep.iter().map(|(m, _)| m.size_bytes).sum();
            while total > max {
                let Some((m, _)) = keep.pop() else { break };
                total -= m.size_bytes;
                freed += m.size_bytes;
                removed += 1;
                std::fs::remove_dir_all(self.entry_dir(&m.key))?;
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) {
            for e in rd.flatten() {
                // `<key>.<pid>.<nanos>`, as `begin` names them; nothing else is touched.
                let name = e.file_name().to_string_lossy().to_string();
                let parts: Vec<&str> = name.split('.').collect();
                let pid: Option<u32> = match parts[..] {
                    [key, pid, nanos] if is_key(key) && nanos.parse::<u32>().is_ok() => {
                        pid.parse().ok()
                    }
                    _ => None,
                };
                if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    freed += crate::util::dir_size(&e.path());
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok((removed, freed))
    }

    /// Where the last resolution of `recipe`'s step `id` is remembered.
    pub fn state_path(&self, recipe: &Path, id: &str) -> PathBuf {
        let tag = blake3::hash(recipe.display().to_string().as_bytes()).to_hex();
        // Recipe validation allows only safe step ids; hash anything else so
        // no id can name a path outside the cache.
        let name = if crate::recipe::is_safe_name(id) {
            id.to_string()
        } else {
            blake3::hash(id.as_bytes()).to_hex()[..32].to_string()
        };
        self.root
            .join("state")
            .join(&tag[..16])
            .join(format!("{name}.json"))
    }
}

/// Default cache root: `--cache-dir`, else `$RECIPE_CACHE`, else
/// `.recipe/cache` beside the recipe file.
pub fn default_root(recipe_dir: &Path, flag: Option<&Path>) -> PathBuf {
    if let Some(f) = flag {
        return f.to_path_buf();
    }
    if let Some(e) = std::env::var_os("RECIPE_CACHE").filter(|e| !e.is_empty()) {
        return PathBuf::from(e);
    }
    recipe_dir.join(".recipe").join("cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_32_lowercase_hex_digits() {
        assert!(is_key("0123456789abcdef0123456789abcdef"));
        assert!(!is_key("../../../../../../../../../../etc"));
        assert!(!is_key("0123456789ABCDEF0123456789ABCDEF"));
        assert!(!is_key("0123456789abcdef"));
    }

    #[test]
    fn only_a_cache_is_opened_for_gc() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("entries")).unwrap();
        let e = Cache::open_existing(d.path()).err().unwrap().to_string();
        assert!(
            e.ends_with(
                "is not a recipe cache (no CACHEDIR.TAG written by recipe); nothing removed"
            ),
            "{e}"
        );
        Cache::open(d.path()).unwrap();
        assert!(Cache::open_existing(d.path()).is_ok());
    }

    #[test]
    fn state_paths_stay_inside_the_cache() {
        let c = Cache {
            root: PathBuf::from("/c"),
        };
        let p = c.state_path(Path::new("r.toml"), "../../../etc/passwd");
        assert!(p.starts_with("/c/state/"));
        assert_eq!(p.components().count(), 5, "{}", p.display());
    }
}
