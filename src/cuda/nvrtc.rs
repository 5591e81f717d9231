//! Run-time kernel compilation with NVRTC, cached on disk.
//!
//! A kernel file (prelude + `.cu`, see [`super::kernels`]) is compiled for one GPU architecture,
//! either to PTX (`--gpu-architecture=compute_XY`, JIT-compiled by the driver at load) or to a
//! CUBIN (`sm_XY`, loaded as is). CUBIN is the default at run time: a PTX made by a newer NVRTC
//! than the driver is refused by the driver (PTX ISA version), a CUBIN of the same major is not.
//!
//! CUDA headers (cuda_bf16.h, cuda_fp16.h) come from, in order: `RECIPE_CUDA_INCLUDE`,
//! `CUDA_HOME`/`CUDA_PATH` + `/include`, `<dir>/../include` for every `LD_LIBRARY_PATH` entry (the
//! pip wheel layout `nvidia/cu13/{lib,include}`), `.ci/py/nvidia/cu13/include` under the current
//! directory and under this crate's source tree, `/usr/local/cuda/include`.
//!
//! Cache: `<cache dir>/<blake3(source, options, target, nvrtc version)>.{ptx,cubin}`, written to a
//! temporary file then renamed, so a crash never leaves a truncated entry. The cache dir is
//! `RECIPE_PTX_CACHE`, else `$XDG_CACHE_HOME/recipe/ptx`, else `$HOME/.cache/recipe/ptx`.

use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};

use super::error::{CudaError, Result};
use super::kernels::KernelFile;

/// What NVRTC should produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `compute_XY` PTX text.
    Ptx,
    /// `sm_XY` machine code.
    Cubin,
}

/// A compiled kernel file.
#[derive(Debug, Clone)]
pub enum Image {
    Ptx(String),
    Cubin(Vec<u8>),
}

impl Image {
    /// Whether the image defines `extern "C"` function `name` (PTX `.entry`, or the CUBIN's
    /// symbol table string).
    pub fn defines(&self, name: &str) -> bool {
        match self {
            Image::Ptx(p) => p.contains(&format!(".entry {name}(")),
            Image::Cubin(b) => {
                let mut pat = name.as_bytes().to_vec();
                pat.push(0);
                b.windows(pat.len()).any(|w| w == pat.as_slice())
            }
        }
    }
    pub fn into_cudarc(self) -> cudarc::nvrtc::Ptx {
        match self {
            Image::Ptx(p) => cudarc::nvrtc::Ptx::from_src(p),
            Image::Cubin(b) => cudarc::nvrtc::Ptx::from_binary(b),
        }
    }
}

/// Whether libnvrtc can be loaded (checked before any NVRTC call: cudarc would panic otherwise).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen libnvrtc under its candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_available() {
        return Err(CudaError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); both pointers are valid for the call.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    r.result().map_err(|e| CudaError::Compile {
        file: "-".into(),
        arch: "-".into(),
        log: format!("{e:?}"),
    })?;
    Ok((major, minor))
}

/// Candidate include directories, in search order (see module docs).
pub fn include_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("RECIPE_CUDA_INCLUDE") {
        v.push(PathBuf::from(p));
    }
    for key in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = std::env::var_os(key) {
            v.push(PathBuf::from(p).join("include"));
        }
    }
    if let Some(lp) = std::env::var_os("LD_LIBRARY_PATH") {
        for d in std::env::split_paths(&lp) {
            if let Some(parent) = d.parent() {
                v.push(parent.join("include"));
            }
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        v.push(cwd.join(".ci/py/nvidia/cu13/include"));
    }
    v.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/py/nvidia/cu13/include"));
    v.push(PathBuf::from("/usr/local/cuda/include"));
    v
}

/// The first candidate directory that holds cuda_bf16.h.
pub fn find_include_dir() -> Result<PathBuf> {
    let cands = include_candidates();
    cands
        .iter()
        .find(|d| d.join("cuda_bf16.h").is_file())
        .cloned()
        .ok_or_else(|| CudaError::NoHeaders {
            tried: cands
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// `compute_XY` / `sm_XY` for a compute capability.
pub fn arch_flag(cc: (u32, u32), target: Target) -> String {
    match target {
        Target::Ptx => format!("compute_{}{}", cc.0, cc.1),
        Target::Cubin => format!("sm_{}{}", cc.0, cc.1),
    }
}

/// The full NVRTC option list (part of the cache key).
pub fn compile_options(cc: (u32, u32), target: Target, include: &Path) -> Vec<String> {
    vec![
        format!("--gpu-architecture={}", arch_flag(cc, target)),
        format!("--include-path={}", include.display()),
        "--std=c++17".into(),
        "--generate-line-info".into(),
    ]
}

/// Default on-disk cache directory (see module docs).
pub fn default_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("RECIPE_PTX_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("recipe/ptx");
    }
    if let Some(p) = std::env::var_os("HOME") {
        return PathBuf::from(p).join(".cache/recipe/ptx");
    }
    std::env::temp_dir().join("recipe-ptx")
}

/// Cache key: blake3 over everything that changes the output.
pub fn cache_key(source: &str, options: &[String], target: Target, nvrtc: (i32, i32)) -> String {
    let mut h = blake3::Hasher::new();
    h.update(source.as_bytes());
    for o in options {
        h.update(b"\0");
        h.update(o.as_bytes());
    }
    h.update(format!("\0{target:?}\0nvrtc {}.{}", nvrtc.0, nvrtc.1).as_bytes());
    h.finalize().to_hex().to_string()
}

/// Compiles `file` for compute capability `cc`, through the cache when `cache_dir` is given.
pub fn compile(
    file: &KernelFile,
    cc: (u32, u32),
    target: Target,
    cache_dir: Option<&Path>,
) -> Result<Image> {
    let version = nvrtc_version()?;
    let include = find_include_dir()?;
    let source = file.full_source();
    let options = compile_options(cc, target, &include);
    let key = cache_key(&source, &options, target, version);
    let ext = match target {
        Target::Ptx => "ptx",
        Target::Cubin => "cubin",
    };
    let path = cache_dir.map(|d| d.join(format!("{}-{key}.{ext}", file.name)));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            return Ok(match target {
                Target::Ptx => Image::Ptx(String::from_utf8_lossy(&bytes).into_owned()),
                Target::Cubin => Image::Cubin(bytes),
            });
        }
    }
    let arch = arch_flag(cc, target);
    let (image, _) = compile_uncached(file.name, &source, &options, target, &arch)?;
    if let Some(p) = &path {
        let bytes: &[u8] = match &image {
            Image::Ptx(s) => s.as_bytes(),
            Image::Cubin(b) => b,
        };
        // An unwritable cache costs a compile next time, not this run.
        if let Err(e) = write_atomic(p, bytes) {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                eprintln!(
                    "warning: {e}; kernels are not cached (set RECIPE_PTX_CACHE to a writable directory)"
                )
            });
        }
    }
    Ok(image)
}

/// Writes `bytes` to `path` via a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |source| CudaError::Cache {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Owns an nvrtcProgram and destroys it on drop.
struct Program(cudarc::nvrtc::sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by create_program and is destroyed exactly once here.
        let _ = unsafe { cudarc::nvrtc::result::destroy_program(self.0) };
    }
}

fn c_chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// ptxas's resource report for every kernel of `file` built as a CUBIN for `cc`: per function a
/// "Compiling entry function 'NAME'" line, then "N bytes stack frame, N bytes spill stores, N
/// bytes spill loads" and "Used N registers, ..." lines. Not cached.
pub fn ptxas_report(file: &KernelFile, cc: (u32, u32)) -> Result<String> {
    let mut options = compile_options(cc, Target::Cubin, &find_include_dir()?);
    options.push("--ptxas-options=-v".into());
    let arch = arch_flag(cc, Target::Cubin);
    let (_, log) = compile_uncached(
        file.name,
        &file.full_source(),
        &options,
        Target::Cubin,
        &arch,
    )?;
    Ok(log)
}

/// The image and the program log (warnings; ptxas's report when asked for).
fn compile_uncached(
    name: &str,
    source: &str,
    options: &[String],
    target: Target,
    arch: &str,
) -> Result<(Image, String)> {
    use cudarc::nvrtc::{result, sys};
    let fail = |log: String| CudaError::Compile {
        file: format!("{name}.cu"),
        arch: arch.to_string(),
        log,
    };
    let src = CString::new(source).map_err(|_| fail("source contains a NUL byte".into()))?;
    let cname = CString::new(format!("{name}.cu")).map_err(|_| fail("bad file name".into()))?;
    let prog = Program(
        result::create_program(&src, Some(cname.as_c_str())).map_err(|e| fail(format!("{e:?}")))?,
    );
    // SAFETY: prog is a live program created above; src and cname outlive it (dropped after prog).
    let compiled = unsafe { result::compile_program(prog.0, options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(prog.0) }
        .map(|l| c_chars_to_string(&l))
        .unwrap_or_default();
    if let Err(e) = compiled {
        return Err(fail(format!("{e:?}\n{log}")));
    }
    let image = match target {
        Target::Ptx => {
            // SAFETY: the program compiled successfully.
            let ptx = unsafe { result::get_ptx(prog.0) }.map_err(|e| fail(format!("{e:?}")))?;
            Image::Ptx(c_chars_to_string(&ptx))
        }
        Target::Cubin => {
            let mut size = 0usize;
            // SAFETY: the program compiled for a real sm_XY target, so a CUBIN exists; the buffer
            // has exactly the size NVRTC reported.
            unsafe {
                sys::nvrtcGetCUBINSize(prog.0, &mut size)
                    .result()
                    .map_err(|e| fail(format!("{e:?}")))?;
                let mut buf = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr() as *mut c_char)
                    .result()
                    .map_err(|e| fail(format!("{e:?}")))?;
                Image::Cubin(buf)
            }
        }
    };
    Ok((image, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_changes_with_every_input() {
        let o = vec!["--gpu-architecture=compute_90".to_string()];
        let base = cache_key("src", &o, Target::Ptx, (13, 0));
        assert_eq!(base, cache_key("src", &o, Target::Ptx, (13, 0)));
        assert_ne!(base, cache_key("src2", &o, Target::Ptx, (13, 0)));
        assert_ne!(
            base,
            cache_key(
                "src",
                &["--gpu-architecture=compute_80".to_string()],
                Target::Ptx,
                (13, 0)
            )
        );
        assert_ne!(base, cache_key("src", &o, Target::Cubin, (13, 0)));
        assert_ne!(base, cache_key("src", &o, Target::Ptx, (13, 5)));
    }

    #[test]
    fn atomic_write_leaves_only_the_final_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.ptx");
        write_atomic(&p, b"hello").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn arch_flags() {
        assert_eq!(arch_flag((9, 0), Target::Ptx), "compute_90");
        assert_eq!(arch_flag((8, 6), Target::Cubin), "sm_86");
    }
}
