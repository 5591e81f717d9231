//! Safetensors files and Hugging Face weight dirs: memory-mapped reading (one
//! `model.safetensors`, or shards listed by `model.safetensors.index.json`) and writing.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::SafeTensors;

use super::error::{ExportError, Result};
use super::tensor::{Tensor, Tensors};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Read every tensor of one safetensors file (memory-mapped, in offset order).
pub fn read_safetensors(path: &Path) -> Result<Tensors> {
    let file = File::open(path).map_err(|e| ExportError::io(path, e))?;
    // SAFETY: the file is opened read-only; like every mmap-based loader we rely on nobody
    // truncating it while it is mapped (outputs are written to new files and renamed).
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| ExportError::io(path, e))?);
    let (n, meta) = SafeTensors::read_metadata(&map)
        .map_err(|e| ExportError::format(path, format!("not a safetensors file: {e}")))?;
    let start = 8 + n;
    let infos = meta.tensors();
    let mut out = Tensors::new();
    for name in meta.offset_keys() {
        let info = infos[&name];
        let (a, b) = info.data_offsets;
        out.insert(
            name,
            Tensor::mapped(
                info.dtype,
                info.shape.clone(),
                map.clone(),
                start + a..start + b,
            ),
        );
    }
    Ok(out)
}

/// Read a model dir's weights: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json` (shards in file-name order, tensors in offset order).
pub fn read_safetensors_dir(dir: &Path) -> Result<Tensors> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ExportError::format(&index, "no `weight_map` object"))?;
        let mut files: Vec<&str> = Vec::new();
        for (name, f) in map {
            let f = f.as_str().ok_or_else(|| {
                ExportError::format(&index, format!("weight_map[{name:?}] is not a file name"))
            })?;
            if !files.contains(&f) {
                files.push(f);
            }
        }
        files.sort();
        let mut out = Tensors::new();
        for f in files {
            if f.contains('/') || f.contains("..") {
                return Err(ExportError::format(
                    &index,
                    format!("shard name {f:?} leaves the directory"),
                ));
            }
            for (name, t) in read_safetensors(&dir.join(f))? {
                if map.get(&name).and_then(|x| x.as_str()) != Some(f) {
                    return Err(ExportError::format(
                        dir.join(f),
                        format!("tensor `{name}` is not listed for this shard in {INDEX_FILE}"),
                    ));
                }
                out.insert(name, t);
            }
        }
        if let Some(missing) = map.keys().find(|k| !out.contains_key(*k)) {
            return Err(ExportError::format(
                &index,
                format!("tensor `{missing}` is listed but no shard has it"),
            ));
        }
        return Ok(out);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return read_safetensors(&single);
    }
    let hint = if dir.join("pytorch_model.bin").exists()
        || dir.join("pytorch_model.bin.index.json").exists()
    {
        " (pytorch_model.bin is not supported: save the model with safe_serialization=True)"
    } else {
        ""
    };
    Err(ExportError::format(
        dir,
        format!("no {SINGLE_FILE} or {INDEX_FILE}{hint}"),
    ))
}

/// Write tensors to one safetensors file with metadata {"format": "pt"} (as transformers does).
/// The header lists tensors by dtype then name (safetensors' canonical order).
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<()> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(meta), path)
        .map_err(|e| ExportError::format(path, format!("writing safetensors: {e}")))
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ExportError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ExportError::format(path, format!("bad JSON: {e}")))
}

pub(crate) fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v).expect("JSON values serialize");
    s.push('\n');
    std::fs::write(path, s).map_err(|e| ExportError::io(path, e))
}
