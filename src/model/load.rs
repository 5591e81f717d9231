//! Weight loading: one or sharded safetensors files (model.safetensors.index.json), memory-mapped,
//! f32/f16/bf16 decoded to f32 (data may be unaligned: decoded with from_le_bytes).

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("{path}: tensor \"{name}\": {msg}")]
    Tensor {
        path: String,
        name: String,
        msg: String,
    },
    #[error("{dir}: missing tensor \"{name}\"")]
    Missing { dir: String, name: String },
}

/// The memory-mapped safetensors files of one checkpoint directory.
pub struct WeightFiles {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name -> index into `files`
    index: HashMap<String, usize>,
}

/// Decodes little-endian f32/f16/bf16 bytes to f32.
pub fn decode_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

fn file_err(p: &Path, msg: impl std::fmt::Display) -> LoadError {
    LoadError::File {
        path: p.display().to_string(),
        msg: msg.to_string(),
    }
}

impl WeightFiles {
    /// Opens `model.safetensors.index.json` if present, else every `*.safetensors` in `dir`.
    pub fn open(dir: &Path) -> Result<WeightFiles, LoadError> {
        let idx = dir.join("model.safetensors.index.json");
        let mut names: Vec<PathBuf> = Vec::new();
        if idx.exists() {
            let text = std::fs::read_to_string(&idx).map_err(|e| file_err(&idx, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| file_err(&idx, e))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| file_err(&idx, "key \"weight_map\": missing"))?;
            for f in map.values().filter_map(|f| f.as_str()) {
                let p = dir.join(f);
                if !names.contains(&p) {
                    names.push(p);
                }
            }
        } else {
            let rd = std::fs::read_dir(dir).map_err(|e| file_err(dir, e))?;
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "safetensors")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("adapter_"))
                {
                    names.push(p);
                }
            }
            names.sort();
        }
        if names.is_empty() {
            return Err(file_err(dir, "no *.safetensors weights found"));
        }
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for p in names {
            let f = std::fs::File::open(&p).map_err(|e| file_err(&p, e))?;
            // SAFETY: the file is opened read-only; we assume it is not modified while mapped.
            let m = unsafe { Mmap::map(&f) }.map_err(|e| file_err(&p, e))?;
            let st = SafeTensors::deserialize(&m).map_err(|e| file_err(&p, e))?;
            for n in st.names() {
                index.insert(n.to_string(), files.len());
            }
            files.push((p, m));
        }
        Ok(WeightFiles {
            dir: dir.to_path_buf(),
            files,
            index,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    /// The tensor as f32 with its shape.
    pub fn get(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let &i = self.index.get(name).ok_or_else(|| LoadError::Missing {
            dir: self.dir.display().to_string(),
            name: name.into(),
        })?;
        let (p, m) = &self.files[i];
        let terr = |msg: String| LoadError::Tensor {
            path: p.display().to_string(),
            name: name.into(),
            msg,
        };
        let st = SafeTensors::deserialize(m).map_err(|e| terr(e.to_string()))?;
        let t = st.tensor(name).map_err(|e| terr(e.to_string()))?;
        let v = decode_f32(t.dtype(), t.data())
            .ok_or_else(|| terr(format!("dtype {:?} is not f32/f16/bf16", t.dtype())))?;
        Ok((v, t.shape().to_vec()))
    }

    /// The stored bytes of a tensor (little-endian, possibly unaligned) with dtype and shape,
    /// borrowed from the memory map: for readers that convert on their own (e.g. quantize).
    pub fn raw(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8]), LoadError> {
        let &i = self.index.get(name).ok_or_else(|| LoadError::Missing {
            dir: self.dir.display().to_string(),
            name: name.into(),
        })?;
        let (p, m) = &self.files[i];
        let terr = |msg: String| LoadError::Tensor {
            path: p.display().to_string(),
            name: name.into(),
            msg,
        };
        let st = SafeTensors::deserialize(&m[..]).map_err(|e| terr(e.to_string()))?;
        let t = st.tensor(name).map_err(|e| terr(e.to_string()))?;
        Ok((t.dtype(), t.shape().to_vec(), t.data()))
    }

    /// The tensor, checked to have `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let (v, s) = self.get(name)?;
        if s != shape {
            let (p, _) = &self.files[self.index[name]];
            return Err(LoadError::Tensor {
                path: p.display().to_string(),
                name: name.into(),
                msg: format!("expected shape {shape:?}, got {s:?}"),
            });
        }
        Ok(v)
    }
}

/// Reads a whole safetensors file into (name -> (f32 data, shape)); for small files (adapters, fixtures).
/// name -> (f32 data, shape)
pub type TensorMap = HashMap<String, (Vec<f32>, Vec<usize>)>;

pub fn read_all(path: &Path) -> Result<TensorMap, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| file_err(path, e))?;
    let mut out = HashMap::new();
    for (name, t) in st.tensors() {
        let v = match t.dtype() {
            Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            d => decode_f32(d, t.data()).ok_or_else(|| LoadError::Tensor {
                path: path.display().to_string(),
                name: name.clone(),
                msg: format!("unsupported dtype {d:?}"),
            })?,
        };
        out.insert(name, (v, t.shape().to_vec()));
    }
    Ok(out)
}

/// Writes f32 tensors to a safetensors file.
pub fn write_f32(path: &Path, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<(), LoadError> {
    let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                s.clone(),
                d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| file_err(path, e))
        })
        .collect::<Result<_, _>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| file_err(path, e))
}
