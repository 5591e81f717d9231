//! Safetensors files, the one reader and writer of model weights: memory-mapped reading of one
//! file or of a Hugging Face weights dir (`model.safetensors`, or the shards that
//! `model.safetensors.index.json` names), writing one file or shards + index, and the float
//! dtypes (f32/bf16/f16/f64 <-> f32, little-endian, possibly unaligned; round to nearest even).
//!
//! Two views of the same files:
//! - [`Tensor`] / [`Tensors`]: dtype, shape and bytes, mapped or owned, in file order (merge,
//!   export, GGUF, the 4-bit layout, PEFT adapters).
//! - [`WeightFiles`]: a model dir opened for the loader, read tensor by tensor as f32
//!   (`Model::load`, quantize); with no index it takes every `*.safetensors` but adapters.
//!
//! Written files carry the metadata `{"format": "pt"}` as transformers writes; safetensors
//! orders the header by dtype, then name.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::error::{FormatError, Result};
use super::{read_json, write_json};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// transformers' default `max_shard_size` ("5GB").
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

// ---- dtypes -------------------------------------------------------------------------------

/// Float dtypes we read and write as weights.
pub fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// The name transformers uses in `config.json` (`torch_dtype` / `dtype`).
pub fn hf_name(d: Dtype) -> Option<&'static str> {
    Some(match d {
        Dtype::F32 => "float32",
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        Dtype::F64 => "float64",
        _ => return None,
    })
}

/// Inverse of [`hf_name`] (also accepts `float`, `half`, `bf16`...).
pub fn from_hf_name(s: &str) -> Option<Dtype> {
    Some(match s.trim_start_matches("torch.") {
        "float32" | "float" | "f32" => Dtype::F32,
        "float16" | "half" | "f16" => Dtype::F16,
        "bfloat16" | "bf16" => Dtype::BF16,
        "float64" | "double" => Dtype::F64,
        _ => return None,
    })
}

/// Decode little-endian float bytes (possibly unaligned) to f32.
pub fn decode_f32(d: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match d {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk")) as f32)
            .collect(),
        other => {
            return Err(FormatError::Unsupported(format!(
                "{other:?} is not a float dtype"
            )))
        }
    })
}

/// Encode f32 values as little-endian bytes of `d` (round to nearest even for bf16/f16).
pub fn encode_f32(d: Dtype, values: &[f32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * d.bitsize() / 8);
    match d {
        Dtype::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Dtype::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        Dtype::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        Dtype::F64 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as f64).to_le_bytes())),
        other => {
            return Err(FormatError::Unsupported(format!(
                "cannot write f32 values as {other:?}"
            )))
        }
    }
    Ok(out)
}

// ---- tensors ------------------------------------------------------------------------------

/// Name -> tensor, in file order (the order they are written back in).
pub type Tensors = IndexMap<String, Tensor>;

#[derive(Clone)]
enum Data {
    Mapped { map: Arc<Mmap>, range: Range<usize> },
    Owned(Arc<Vec<u8>>),
}

#[derive(Clone)]
pub struct Tensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    data: Data,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.dtype, self.shape)
    }
}

impl Tensor {
    /// Owned bytes; `bytes.len()` must equal numel × dtype size.
    pub fn from_bytes(dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) -> Result<Tensor> {
        let want = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        if bytes.len() != want {
            return Err(FormatError::Unsupported(format!(
                "tensor {dtype:?} {shape:?} needs {want} bytes, got {}",
                bytes.len()
            )));
        }
        Ok(Tensor {
            dtype,
            shape,
            data: Data::Owned(Arc::new(bytes)),
        })
    }

    /// f32 values stored as `dtype` (a float dtype; rounds to nearest even).
    pub fn from_f32(dtype: Dtype, shape: Vec<usize>, values: &[f32]) -> Result<Tensor> {
        Tensor::from_bytes(dtype, shape, encode_f32(dtype, values)?)
    }

    /// A view of `map[range]` (the caller checked the range against the header).
    pub(crate) fn mapped(
        dtype: Dtype,
        shape: Vec<usize>,
        map: Arc<Mmap>,
        range: Range<usize>,
    ) -> Tensor {
        Tensor {
            dtype,
            shape,
            data: Data::Mapped { map, range },
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Mapped { map, range } => &map[range.clone()],
            Data::Owned(v) => v,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_float(&self) -> bool {
        is_float(self.dtype)
    }

    /// The values as f32 (float tensors only).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        decode_f32(self.dtype, self.bytes())
    }

    /// The same values stored as `dtype` (a clone when it already is; float tensors only).
    pub fn to_dtype(&self, dtype: Dtype) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        Tensor::from_f32(dtype, self.shape.clone(), &self.to_f32()?)
    }
}

impl safetensors::View for &Tensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.bytes())
    }
    fn data_len(&self) -> usize {
        self.bytes().len()
    }
}

/// Shape as `[a, b]` for messages.
pub fn shape_str(shape: &[usize]) -> String {
    format!("{shape:?}")
}

// ---- reading ------------------------------------------------------------------------------

/// The tensors of a memory-mapped safetensors file, in offset order (the header is checked:
/// offsets inside the file, one after another).
fn mapped_tensors(map: Arc<Mmap>) -> std::result::Result<Tensors, safetensors::SafeTensorError> {
    let (n, meta) = SafeTensors::read_metadata(&map)?;
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

/// Map `path` read-only.
pub(crate) fn map_file(path: &Path) -> std::io::Result<Arc<Mmap>> {
    let file = File::open(path)?;
    // SAFETY: the file is opened read-only; like every mmap-based loader we rely on nobody
    // truncating it while it is mapped (outputs are written to new files and renamed).
    Ok(Arc::new(unsafe { Mmap::map(&file) }?))
}

/// Read every tensor of one safetensors file (memory-mapped, in offset order).
pub fn read_file(path: &Path) -> Result<Tensors> {
    let map = map_file(path).map_err(|e| FormatError::io(path, e))?;
    mapped_tensors(map)
        .map_err(|e| FormatError::format(path, format!("not a safetensors file: {e}")))
}

/// Read a model dir's weights: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json` (shards in file-name order, tensors in offset order).
pub fn read_dir(dir: &Path) -> Result<Tensors> {
    Ok(read_shards(dir)?.into_iter().flat_map(|(_, t)| t).collect())
}

/// The weight files of a model dir, each with its tensors: the shards the index names (each
/// holding exactly what the index lists for it), else `model.safetensors`; without either, the
/// same for PyTorch `.bin` files (`pytorch_model.bin.index.json`, `pytorch_model.bin`).
fn read_shards(dir: &Path) -> Result<Vec<(PathBuf, Tensors)>> {
    if !dir.join(INDEX_FILE).is_file() && !dir.join(SINGLE_FILE).is_file() {
        use super::torch_bin;
        if dir.join(torch_bin::INDEX_FILE).is_file() || dir.join(torch_bin::SINGLE_FILE).is_file() {
            return read_shards_of(
                dir,
                torch_bin::INDEX_FILE,
                torch_bin::SINGLE_FILE,
                torch_bin::read_file,
            );
        }
    }
    read_shards_of(dir, INDEX_FILE, SINGLE_FILE, read_file)
}

/// [`read_shards`] for one format: its index file, single file and file reader.
fn read_shards_of(
    dir: &Path,
    index_file: &str,
    single_file: &str,
    read_file: fn(&Path) -> Result<Tensors>,
) -> Result<Vec<(PathBuf, Tensors)>> {
    let index = dir.join(index_file);
    if index.is_file() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| FormatError::format(&index, "no `weight_map` object"))?;
        let mut files: Vec<&str> = Vec::new();
        for (name, f) in map {
            let f = f.as_str().ok_or_else(|| {
                FormatError::format(&index, format!("weight_map[{name:?}] is not a file name"))
            })?;
            if !files.contains(&f) {
                files.push(f);
            }
        }
        files.sort();
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for f in files {
            if f.contains('/') || f.contains("..") {
                return Err(FormatError::format(
                    &index,
                    format!("shard name {f:?} leaves the directory"),
                ));
            }
            let path = dir.join(f);
            let tensors = read_file(&path)?;
            for name in tensors.keys() {
                if map.get(name).and_then(|x| x.as_str()) != Some(f) {
                    return Err(FormatError::format(
                        &path,
                        format!("tensor `{name}` is not listed for this shard in {index_file}"),
                    ));
                }
                seen.insert(name.clone());
            }
            out.push((path, tensors));
        }
        if let Some(missing) = map.keys().find(|k| !seen.contains(*k)) {
            return Err(FormatError::format(
                &index,
                format!("tensor `{missing}` is listed but no shard has it"),
            ));
        }
        return Ok(out);
    }
    let single = dir.join(single_file);
    if single.is_file() {
        let tensors = read_file(&single)?;
        return Ok(vec![(single, tensors)]);
    }
    Err(FormatError::format(
        dir,
        format!("no {single_file} or {index_file} (nor pytorch_model.bin or its index)"),
    ))
}

/// name -> (f32 data, shape)
pub type TensorMap = HashMap<String, (Vec<f32>, Vec<usize>)>;

/// Reads a whole safetensors file as f32 (float and i64 tensors); for small files (adapters,
/// checkpoints of the trainable parameters, fixtures).
pub fn read_all(path: &Path) -> Result<TensorMap> {
    let file_err = |e: &dyn std::fmt::Display| FormatError::format(path, e.to_string());
    let tensors =
        mapped_tensors(map_file(path).map_err(|e| file_err(&e))?).map_err(|e| file_err(&e))?;
    let mut out = HashMap::new();
    for (name, t) in tensors {
        let v = match t.dtype {
            Dtype::I64 => t
                .bytes()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            d => t.to_f32().map_err(|_| FormatError::Tensor {
                path: path.to_path_buf(),
                name: name.clone(),
                msg: format!("unsupported dtype {d:?}"),
            })?,
        };
        out.insert(name, (v, t.shape));
    }
    Ok(out)
}

/// The memory-mapped safetensors files of one checkpoint dir, for the model loader.
pub struct WeightFiles {
    dir: PathBuf,
    files: Vec<PathBuf>,
    /// tensor name -> (index into `files`, the tensor)
    index: HashMap<String, (usize, Tensor)>,
}

impl WeightFiles {
    /// Opens the shards `model.safetensors.index.json` names if present (as [`read_dir`]
    /// checks them), else every `*.safetensors` in `dir` but `adapter_*`.
    pub fn open(dir: &Path) -> Result<WeightFiles> {
        let file_err = |p: &Path, e: &dyn std::fmt::Display| FormatError::format(p, e.to_string());
        let mut files = Vec::new();
        let mut index = HashMap::new();
        let bin = [super::torch_bin::INDEX_FILE, super::torch_bin::SINGLE_FILE];
        let has_safetensors = || {
            std::fs::read_dir(dir).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            })
        };
        if dir.join(INDEX_FILE).exists()
            || (bin.iter().any(|f| dir.join(f).is_file()) && !has_safetensors())
        {
            for (p, tensors) in read_shards(dir)? {
                index.extend(tensors.into_iter().map(|(n, t)| (n, (files.len(), t))));
                files.push(p);
            }
        } else {
            let mut names: Vec<PathBuf> = Vec::new();
            let rd = std::fs::read_dir(dir).map_err(|e| file_err(dir, &e))?;
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
            for p in names {
                let map = map_file(&p).map_err(|e| file_err(&p, &e))?;
                for (n, t) in mapped_tensors(map).map_err(|e| file_err(&p, &e))? {
                    index.insert(n, (files.len(), t));
                }
                files.push(p);
            }
        }
        if files.is_empty() {
            return Err(file_err(
                dir,
                &"no *.safetensors weights found (nor pytorch_model.bin or its index)",
            ));
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

    /// The tensor as stored (dtype, shape, bytes borrowed from the map).
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.index
            .get(name)
            .map(|(_, t)| t)
            .ok_or_else(|| FormatError::Missing {
                dir: self.dir.clone(),
                name: name.into(),
            })
    }

    fn tensor_err(&self, name: &str, msg: String) -> FormatError {
        let path = self.index.get(name).map(|(i, _)| self.files[*i].clone());
        FormatError::Tensor {
            path: path.unwrap_or_else(|| self.dir.clone()),
            name: name.into(),
            msg,
        }
    }

    /// The tensor as f32 with its shape (f32/f16/bf16 weights).
    pub fn get(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let t = self.tensor(name)?;
        if !matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(self.tensor_err(name, format!("dtype {:?} is not f32/f16/bf16", t.dtype)));
        }
        let v = t
            .to_f32()
            .map_err(|e| self.tensor_err(name, e.to_string()))?;
        Ok((v, t.shape.clone()))
    }

    /// The stored bytes of a tensor (little-endian, possibly unaligned) with dtype and shape,
    /// borrowed from the memory map: for readers that convert on their own (e.g. quantize).
    pub fn raw(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8])> {
        let t = self.tensor(name)?;
        Ok((t.dtype, t.shape.clone(), t.bytes()))
    }

    /// The tensor, checked to have `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (v, s) = self.get(name)?;
        if s != shape {
            return Err(self.tensor_err(name, format!("expected shape {shape:?}, got {s:?}")));
        }
        Ok(v)
    }
}

// ---- writing ------------------------------------------------------------------------------

fn serialize<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> std::result::Result<(), safetensors::SafeTensorError> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(meta), path)
}

/// Write tensors to one safetensors file with metadata {"format": "pt"} (as transformers does).
/// The header lists tensors by dtype then name (safetensors' canonical order).
pub fn write_file<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<()> {
    serialize(path, tensors)
        .map_err(|e| FormatError::format(path, format!("writing safetensors: {e}")))
}

/// Writes f32 tensors (name, shape, values) to one safetensors file.
pub fn write_f32(path: &Path, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<()> {
    let file_err = |e: &dyn std::fmt::Display| FormatError::format(path, e.to_string());
    let owned = tensors
        .iter()
        .map(|(n, s, d)| Ok((n.as_str(), Tensor::from_f32(Dtype::F32, s.clone(), d)?)))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| file_err(&e))?;
    serialize(path, owned.iter().map(|(n, t)| (*n, t))).map_err(|e| file_err(&e))
}

/// The weights of a model dir as written by [`write_sharded`].
#[derive(Debug, Clone)]
pub struct Shards {
    /// Files written, relative to the dir, in writing order (the index last when sharded).
    pub files: Vec<String>,
    /// Number of safetensors files.
    pub count: usize,
    /// Sum of the tensors' bytes (the index's `metadata.total_size`).
    pub total_size: u64,
}

/// Writes `tensors` (name, tensor, dtype to store it in) into `dir` as transformers /
/// huggingface_hub split them: `model.safetensors` when everything fits in `max_shard_size`
/// bytes, else `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`. Shards
/// fill in the given order; a tensor that does not fit closes the current shard; one larger
/// than the limit gets a shard of its own. Float tensors are converted one shard at a time.
pub fn write_sharded(
    dir: &Path,
    tensors: &[(&str, &Tensor, Dtype)],
    max_shard_size: u64,
) -> Result<Shards> {
    if max_shard_size == 0 {
        return Err(FormatError::Unsupported(
            "max_shard_size must be positive".into(),
        ));
    }
    let size = |(_, t, d): &(&str, &Tensor, Dtype)| (t.numel() * d.bitsize()).div_ceil(8) as u64;
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let size = size(t);
        if size > max_shard_size {
            shards.push(vec![i]);
            continue;
        }
        if current_size + size > max_shard_size && !current.is_empty() {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(i);
        current_size += size;
    }
    if !current.is_empty() || shards.is_empty() {
        shards.push(current);
    }

    let n = shards.len();
    let mut files = Vec::new();
    let mut weight_map = std::collections::BTreeMap::new();
    for (s, members) in shards.iter().enumerate() {
        let file = if n == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", s + 1, n)
        };
        // Convert this shard's tensors only (at most max_shard_size in memory).
        let mut converted: Vec<(&str, Tensor)> = Vec::with_capacity(members.len());
        for &i in members {
            let (name, t, dtype) = tensors[i];
            let t = if dtype == t.dtype {
                t.clone()
            } else {
                t.to_dtype(dtype)?
            };
            converted.push((name, t));
            weight_map.insert(name.to_string(), serde_json::Value::String(file.clone()));
        }
        write_file(&dir.join(&file), converted.iter().map(|(k, t)| (*k, t)))?;
        files.push(file);
    }
    let total_size: u64 = tensors.iter().map(size).sum();
    if n > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
        write_json(&dir.join(INDEX_FILE), &index)?;
        files.push(INDEX_FILE.to_string());
    }
    Ok(Shards {
        files,
        count: n,
        total_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_round_trips() {
        // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to even (1.0).
        // 1 + 3*2^-8 lies between 1 + 2^-7 and 1 + 2^-6: ties go to even (1 + 2^-6).
        let x = [
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            1.0 + 2f32.powi(-8) + 2f32.powi(-20),
        ];
        let back = decode_f32(Dtype::BF16, &encode_f32(Dtype::BF16, &x).unwrap()).unwrap();
        assert_eq!(back, vec![1.0, 1.0 + 2f32.powi(-6), 1.0 + 2f32.powi(-7)]);
        // Every bf16 / f16 value survives -> f32 -> back exactly (all bit patterns but NaNs).
        let bf16_nan: fn(u16) -> bool = |b| half::bf16::from_bits(b).is_nan();
        let f16_nan: fn(u16) -> bool = |b| half::f16::from_bits(b).is_nan();
        for (d, is_nan) in [(Dtype::BF16, bf16_nan), (Dtype::F16, f16_nan)] {
            let all: Vec<u8> = (0..=u16::MAX)
                .filter(|b| !is_nan(*b))
                .flat_map(|b| b.to_le_bytes())
                .collect();
            let f = decode_f32(d, &all).unwrap();
            assert_eq!(encode_f32(d, &f).unwrap(), all, "{d:?}");
        }
    }
}

/// Copies the model dir `src` (config.json + model.safetensors) to `dst` with every tensor
/// stored as bf16: a 16-bit checkpoint for tests of 16-bit loading.
pub fn bf16_copy(src: &std::path::Path, dst: &std::path::Path) -> anyhow::Result<()> {
    std::fs::copy(src.join("config.json"), dst.join("config.json"))?;
    let all = read_all(&src.join("model.safetensors"))?;
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for n in names {
        let (v, shape) = &all[n];
        tensors.push((n.as_str(), Tensor::from_f32(Dtype::BF16, shape.clone(), v)?));
    }
    write_file(
        &dst.join("model.safetensors"),
        tensors.iter().map(|(n, t)| (*n, t)),
    )?;
    Ok(())
}
