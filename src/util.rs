//! Small helpers shared across modules.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Write a file atomically: a temporary sibling, fsync, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// "2GB", "500MB", "1GiB", "123" (bytes) -> bytes. Decimal units are 1000-based
/// as transformers' `max_shard_size` is; `*iB` are 1024-based.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024f64.powi(4),
        _ => return None,
    };
    Some((n * mult) as u64)
}

/// "7d", "12h", "30m", "45s" -> seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        "w" => n * 7 * 86400,
        _ => return None,
    })
}

/// 1536 -> "1.5 KiB".
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// Total size of a file or directory tree.
pub fn dir_size(p: &Path) -> u64 {
    if p.is_file() {
        return std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Copy a directory tree (files only, symlinks followed).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let p = e.path();
        let dst = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &dst)?;
        } else {
            std::fs::copy(&p, &dst)?;
        }
    }
    Ok(())
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `to` as a relative path from the dir `from` (both absolute).
pub fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_duration("7d"), Some(604800));
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn a_user_panic_is_caught_as_its_message() {
        let r = catch_panic(|| user_panic("out of device memory in `matmul`".into()));
        assert_eq!(r.err().as_deref(), Some("out of device memory in `matmul`"));
    }
}

/// Row-major [rows, cols] -> [cols, rows] (Conv1D weights to nn.Linear layout and back).
pub fn transpose(t: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut w = vec![0.0; t.len()];
    for r in 0..rows {
        for c in 0..cols {
            w[c * rows + r] = t[r * cols + c];
        }
    }
    w
}

thread_local! {
    /// Set while `catch_panic` runs a closure on this thread: its panics are reported as errors.
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic payload that is a user-facing condition, not a bug: running out of device memory
/// inside a backend op (the `Backend` trait returns no errors). The step runner reports it as
/// the step's error and the panic hook does not print it.
#[derive(Debug)]
pub struct UserPanic(pub String);

/// Panics with a [`UserPanic`] carrying `msg`.
pub fn user_panic(msg: String) -> ! {
    install_panic_hook();
    std::panic::panic_any(UserPanic(msg))
}

/// Installs (once) the panic hook that stays quiet inside [`catch_panic`] and for
/// [`UserPanic`] payloads, and prints every other panic as before.
pub fn install_panic_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let user = info.payload().downcast_ref::<UserPanic>().is_some();
            if !user && !QUIET_PANICS.with(|q| q.get()) {
                prev(info);
            }
        }));
    });
}

/// The message of a caught panic's payload (`&str`, `String` or [`UserPanic`]).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .or_else(|| p.downcast_ref::<UserPanic>().map(|u| u.0.clone()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, turning a panic inside it into `Err(message)` without printing it. For
/// third-party readers (arrow, parquet) that panic on some corrupt files instead of
/// returning an error; our own code never relies on this.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_panic_hook();
    let was = QUIET_PANICS.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(was));
    r.map_err(|p| panic_message(p.as_ref()))
}

/// First index of the maximum (torch.argmax); NaNs are skipped.
pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in scores.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}
