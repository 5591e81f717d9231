//! Content hashes of input files and directories, with a size+mtime fast
//! path: a file whose size and mtime match the last hash is not re-read.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: u128,
    hash: String,
}

/// Remembers hashes across runs in `<cache>/filehash.json`.
pub struct FileHasher {
    store: PathBuf,
    known: Mutex<BTreeMap<String, Entry>>,
    dirty: Mutex<bool>,
}

impl FileHasher {
    pub fn open(cache_root: &Path) -> Self {
        let store = cache_root.join("filehash.json");
        let known = std::fs::read(&store)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        FileHasher {
            store,
            known: Mutex::new(known),
            dirty: Mutex::new(false),
        }
    }

    /// blake3 of a file, or of a directory's (relative path, file hash) list.
    pub fn hash(&self, p: &Path) -> Result<String> {
        if p.is_dir() {
            let mut files = Vec::new();
            walk(p, p, &mut files)?;
            files.sort();
            let mut h = blake3::Hasher::new();
            for rel in files {
                let fh = self.hash_file(&p.join(&rel))?;
                h.update(rel.as_bytes());
                h.update(b"\0");
                h.update(fh.as_bytes());
                h.update(b"\n");
            }
            Ok(h.finalize().to_hex().to_string())
        } else {
            self.hash_file(p)
        }
    }

    fn hash_file(&self, p: &Path) -> Result<String> {
        let meta =
            std::fs::metadata(p).with_context(|| format!("cannot read `{}`", p.display()))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = p.display().to_string();
        if let Ok(known) = self.known.lock() {
            if let Some(e) = known.get(&key) {
                if e.size == meta.len() && e.mtime_ns == mtime_ns && mtime_ns != 0 {
                    return Ok(e.hash.clone());
                }
            }
        }
        let mut h = blake3::Hasher::new();
        if meta.len() > 0 {
            h.update_mmap_rayon(p)
                .with_context(|| format!("cannot read `{}`", p.display()))?;
        }
        let hash = h.finalize().to_hex().to_string();
        if let Ok(mut known) = self.known.lock() {
            known.insert(
                key,
                Entry {
                    size: meta.len(),
                    mtime_ns,
                    hash: hash.clone(),
                },
            );
            if let Ok(mut d) = self.dirty.lock() {
                *d = true;
            }
        }
        Ok(hash)
    }

    /// Persist the fast-path table (atomically).
    pub fn save(&self) {
        let dirty = self.dirty.lock().map(|d| *d).unwrap_or(false);
        if !dirty {
            return;
        }
        if let Ok(known) = self.known.lock() {
            if let Ok(bytes) = serde_json::to_vec(&*known) {
                let _ = crate::util::write_atomic(&self.store, &bytes);
            }
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list `{}`", dir.display()))? {
        let e = e?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}
