//! GGUF v3 export for llama.cpp / Ollama / LM Studio, and a reader for the files it writes.
//!
//! ```text
//! export_gguf(&model, tokenizer_dir, "out/model.gguf", GgufDtype::F16) -> GgufReport
//!   out/model.gguf   metadata + tokenizer.ggml.* + tokenizer.chat_template + tensors
//!   out/Modelfile    FROM ./model.gguf, TEMPLATE (Go template), PARAMETER stop lines
//! read_gguf("out/model.gguf") -> GgufFile { kv, tensors }   (tensor_f32 dequantizes)
//! ```
//!
//! Follows llama.cpp's convert_hf_to_gguf.py and gguf-py (constants.py, gguf_writer.py,
//! quants.py): tensor names (`token_embd`, `blk.N.attn_q`, ...), `{arch}.*` metadata keys, and
//! its transforms: LLaMA q/k rows permuted from the half-split rotary layout to the interleaved
//! one, BLOOM's fused qkv reordered from per-head [q k v] to [Q K V], GPT-2's Conv1D weights
//! transposed, and an `output` copy of the embeddings for BLOOM / GPT-2 when the head is tied.
//! Little-endian, alignment 32 (`general.alignment`), every tensor's data offset aligned.
//!
//! As convert_hf_to_gguf.py does: 1-D tensors, norms, biases and GPT-2's position embeddings
//! stay f32; a `q8_0` / `q4_0` tensor whose rows are not a multiple of 32 falls back to f16
//! (`q4_0` quantizes every other 2-D weight, embeddings and head included, unlike llama-quantize's
//! mixes). Families: llama (incl. Chinese-LLaMA, and Mistral as arch `llama` like
//! convert_hf_to_gguf.py: the file has no sliding window, see [`GgufReport::notes`]), qwen2,
//! qwen3 (per-head `attn_q_norm` / `attn_k_norm`, `qwen3.attention.key_length`), bloom, gpt2.

use std::io::Write;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use safetensors::Dtype;
use serde_json::{json, Value as Json};

use crate::formats::hf_dir::{ties_embeddings, HfModel};
use crate::formats::safetensors::{decode_f32, encode_f32};
use crate::formats::{FormatError, Result};
use crate::model::Family;

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const GGUF_VERSION: u32 = 3;
pub const ALIGNMENT: u64 = 32;
/// gguf-py's GGML_QUANT_VERSION.
const QUANT_VERSION: u32 = 2;
const QK8_0: usize = 32;

/// The weight dtype of an export (`gguf_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufDtype {
    F16,
    Bf16,
    Q8_0,
    Q4_0,
}

impl GgufDtype {
    pub const NAMES: &'static [&'static str] = &["f16", "bf16", "q8_0", "q4_0"];

    pub fn parse(s: &str) -> Option<GgufDtype> {
        match s {
            "f16" => Some(GgufDtype::F16),
            "bf16" => Some(GgufDtype::Bf16),
            "q8_0" => Some(GgufDtype::Q8_0),
            "q4_0" => Some(GgufDtype::Q4_0),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// `general.file_type` (llama.cpp's LLAMA_FTYPE_MOSTLY_*).
    fn file_type(self) -> u32 {
        match self {
            GgufDtype::F16 => 1,
            GgufDtype::Q4_0 => 2,
            GgufDtype::Q8_0 => 7,
            GgufDtype::Bf16 => 32,
        }
    }

    fn ggml(self) -> GgmlType {
        match self {
            GgufDtype::F16 => GgmlType::F16,
            GgufDtype::Bf16 => GgmlType::Bf16,
            GgufDtype::Q8_0 => GgmlType::Q8_0,
            GgufDtype::Q4_0 => GgmlType::Q4_0,
        }
    }
}

/// ggml tensor types this module reads or writes (gguf-py GGMLQuantizationType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q8_0 = 8,
    Bf16 = 30,
}

impl GgmlType {
    fn from_u32(v: u32) -> Option<GgmlType> {
        match v {
            0 => Some(GgmlType::F32),
            1 => Some(GgmlType::F16),
            2 => Some(GgmlType::Q4_0),
            8 => Some(GgmlType::Q8_0),
            30 => Some(GgmlType::Bf16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Bf16 => "BF16",
        }
    }

    /// Bytes of `n` values (`n` a multiple of the block size for Q8_0 / Q4_0).
    fn nbytes(self, n: u64) -> u64 {
        match self {
            GgmlType::F32 => 4 * n,
            GgmlType::F16 | GgmlType::Bf16 => 2 * n,
            GgmlType::Q8_0 => n / QK8_0 as u64 * 34,
            GgmlType::Q4_0 => n / QK8_0 as u64 * 18,
        }
    }
}

/// A metadata value. Arrays carry their element type code (so that empty ones have one).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

impl Value {
    /// gguf-py GGUFValueType.
    fn type_code(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => T_STRING,
            Value::Array(..) => T_ARRAY,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn strings(v: impl IntoIterator<Item = String>) -> Value {
        Value::Array(T_STRING, v.into_iter().map(Value::Str).collect())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer as u64 (negative ones: None).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    fn write(&self, w: &mut Vec<u8>) {
        match self {
            Value::U8(v) => w.push(*v),
            Value::I8(v) => w.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => w.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => w.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => w.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => w.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => w.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => w.push(*v as u8),
            Value::Str(s) => write_str(w, s),
            Value::Array(t, items) => {
                w.extend_from_slice(&t.to_le_bytes());
                w.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for it in items {
                    it.write(w);
                }
            }
            Value::U64(v) => w.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => w.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => w.extend_from_slice(&v.to_le_bytes()),
        }
    }

    /// As JSON for summaries: arrays of more than 6 items as {len, head (3), tail (2)}.
    fn to_json(&self) -> Json {
        match self {
            Value::U8(v) => json!(v),
            Value::I8(v) => json!(v),
            Value::U16(v) => json!(v),
            Value::I16(v) => json!(v),
            Value::U32(v) => json!(v),
            Value::I32(v) => json!(v),
            Value::F32(v) => json!(v),
            Value::Bool(v) => json!(v),
            Value::Str(s) => json!(s),
            Value::U64(v) => json!(v),
            Value::I64(v) => json!(v),
            Value::F64(v) => json!(v),
            Value::Array(_, items) if items.len() > 6 => {
                let n = items.len();
                json!({
                    "len": n,
                    "head": items[..3].iter().map(Value::to_json).collect::<Vec<_>>(),
                    "tail": items[n - 2..].iter().map(Value::to_json).collect::<Vec<_>>(),
                })
            }
            Value::Array(_, items) => Json::Array(items.iter().map(Value::to_json).collect()),
        }
    }
}

fn write_str(w: &mut Vec<u8>, s: &str) {
    w.extend_from_slice(&(s.len() as u64).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

/// One tensor to write: GGUF dims are the torch shape reversed (innermost first).
pub struct OutTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

fn pad_to(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// Write a GGUF v3 file: header, metadata, tensor infos, padding, aligned tensor data.
pub fn write_gguf(path: &Path, kv: &[(String, Value)], tensors: &[OutTensor]) -> Result<u64> {
    let mut h = Vec::new();
    h.extend_from_slice(GGUF_MAGIC);
    h.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        write_str(&mut h, k);
        h.extend_from_slice(&v.type_code().to_le_bytes());
        v.write(&mut h);
    }
    let mut offset = 0u64;
    for t in tensors {
        write_str(&mut h, &t.name);
        h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            h.extend_from_slice(&d.to_le_bytes());
        }
        h.extend_from_slice(&(t.ty as u32).to_le_bytes());
        h.extend_from_slice(&offset.to_le_bytes());
        offset = pad_to(offset + t.data.len() as u64);
    }
    h.resize(pad_to(h.len() as u64) as usize, 0);
    let file = std::fs::File::create(path).map_err(|e| FormatError::io(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e| FormatError::io(path, e);
    w.write_all(&h).map_err(io)?;
    let mut total = h.len() as u64;
    for t in tensors {
        w.write_all(&t.data).map_err(io)?;
        let pad = pad_to(t.data.len() as u64) - t.data.len() as u64;
        w.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        total += t.data.len() as u64 + pad;
    }
    w.flush().map_err(io)?;
    Ok(total)
}

/// A tensor's entry in a read file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    /// Relative to the start of the data section.
    pub offset: u64,
}

/// A GGUF file read back: metadata in file order, tensor infos, the data section.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub kv: IndexMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Byte offset of the data section in the file.
    pub data_start: u64,
    bytes: Vec<u8>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> FormatError {
        FormatError::format(self.path, format!("byte {}: {msg}", self.pos))
    }
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = (self.pos as u64)
            .checked_add(n)
            .filter(|e| *e <= self.b.len() as u64)
            .ok_or_else(|| self.err(format!("truncated {what} ({n} bytes)")))?;
        let s = &self.b[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }
    fn value(&mut self, t: u32, what: &str, depth: u32) -> Result<Value> {
        Ok(match t {
            0 => Value::U8(self.arr::<1>(what)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.arr(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.arr(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(what)?)),
            7 => match self.arr::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("{what}: bool byte {b}"))),
            },
            T_STRING => Value::Str(self.string(what)?),
            T_ARRAY if depth == 0 => {
                let et = self.u32(what)?;
                let n = self.u64(what)?;
                // Every element takes at least one byte: a bigger count is a corrupt file.
                if n > (self.b.len() - self.pos) as u64 {
                    return Err(self.err(format!("{what}: array of {n} items past the end")));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(et, what, depth + 1)?);
                }
                Value::Array(et, items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(what)?)),
            t => return Err(self.err(format!("{what}: unknown value type {t}"))),
        })
    }
}

/// Read a whole GGUF file (metadata, tensor infos and data).
pub fn read_gguf(path: &Path) -> Result<GgufFile> {
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    let mut c = Cursor {
        b: &bytes,
        pos: 0,
        path,
    };
    if c.take(4, "magic")? != GGUF_MAGIC {
        return Err(FormatError::format(path, "not a GGUF file (bad magic)"));
    }
    let version = c.u32("version")?;
    if version != 3 {
        return Err(FormatError::format(
            path,
            format!("GGUF version {version}, only 3 is read"),
        ));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    let mut kv = IndexMap::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let t = c.u32(&key)?;
        let v = c.value(t, &key, 0)?;
        kv.insert(key, v);
    }
    let align = kv
        .get("general.alignment")
        .and_then(Value::as_u64)
        .filter(|a| *a > 0)
        .unwrap_or(ALIGNMENT);
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let nd = c.u32(&name)?;
        if nd > 4 {
            return Err(c.err(format!("tensor `{name}`: {nd} dims")));
        }
        let dims = (0..nd).map(|_| c.u64(&name)).collect::<Result<Vec<_>>>()?;
        let ty = c.u32(&name)?;
        let offset = c.u64(&name)?;
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
        });
    }
    let data_start = (c.pos as u64).div_ceil(align) * align;
    let file = GgufFile {
        path: path.to_path_buf(),
        version,
        kv,
        tensors,
        data_start,
        bytes,
    };
    for t in &file.tensors {
        file.tensor_bytes(t)?;
    }
    Ok(file)
}

impl GgufFile {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8]> {
        let err = |m: String| FormatError::format(&self.path, format!("tensor `{}`: {m}", t.name));
        let ty = GgmlType::from_u32(t.ty).ok_or_else(|| err(format!("ggml type {}", t.ty)))?;
        let n = t
            .dims
            .iter()
            .try_fold(1u64, |a, d| a.checked_mul(*d))
            .ok_or_else(|| err("dims overflow".into()))?;
        if matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0)
            && t.dims.first().is_some_and(|d| d % QK8_0 as u64 != 0)
        {
            return Err(err("quantized rows are not a multiple of 32".into()));
        }
        let start = self.data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(ty.nbytes(n)));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.bytes.len() as u64 && s % ALIGNMENT == 0 => {
                Ok(&self.bytes[s as usize..e as usize])
            }
            _ => Err(err(format!(
                "data at offset {} is unaligned or past the end",
                t.offset
            ))),
        }
    }

    /// A tensor's values as f32 (F32, F16, BF16, Q8_0 and Q4_0 are read).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self
            .tensor(name)
            .ok_or_else(|| FormatError::format(&self.path, format!("no tensor `{name}`")))?;
        let b = self.tensor_bytes(t)?;
        match GgmlType::from_u32(t.ty) {
            Some(GgmlType::F32) => decode_f32(Dtype::F32, b),
            Some(GgmlType::F16) => decode_f32(Dtype::F16, b),
            Some(GgmlType::Bf16) => decode_f32(Dtype::BF16, b),
            Some(GgmlType::Q8_0) => Ok(dequantize_q8_0(b)),
            Some(GgmlType::Q4_0) => Ok(dequantize_q4_0(b)),
            None => unreachable!("checked by read_gguf"),
        }
    }

    /// Metadata and tensor list as JSON (long arrays shortened, see `Value::to_json`): what
    /// tests compare with tests/fixtures/gguf/*.json.
    pub fn summary(&self) -> Json {
        let kv: serde_json::Map<String, Json> = self
            .kv
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        let tensors: Vec<Json> = self
            .tensors
            .iter()
            .map(|t| {
                let ty = GgmlType::from_u32(t.ty).map(GgmlType::name).unwrap_or("?");
                json!([t.name, t.dims, ty])
            })
            .collect();
        json!({"version": self.version, "metadata": kv, "tensors": tensors})
    }
}

/// gguf-py quants.py Q8_0: blocks of 32, d = max|x| / 127 (stored f16), q = round(x / d)
/// (half away from zero; x · (1/d) in f32 as numpy does).
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK8_0 * 34);
    for block in values.chunks(QK8_0) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

pub fn dequantize_q8_0(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / 34 * QK8_0);
    for b in bytes.chunks_exact(34) {
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        out.extend(b[2..].iter().map(|q| d * (*q as i8) as f32));
    }
    out
}

/// gguf-py quants.py Q4_0: blocks of 32, d = (the value of largest |x|) / -8 (stored f16),
/// q = trunc(x · (1/d) + 8.5) clipped to 0..=15 (computed in f64 as gguf-py does); byte j holds
/// q[j] in its low and q[j + 16] in its high nibble.
pub fn quantize_q4_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK8_0 * 18);
    for block in values.chunks(QK8_0) {
        // argmax of |x|: the first one on ties.
        let max = block
            .iter()
            .fold(0f32, |m, v| if v.abs() > m.abs() { *v } else { m });
        let d = max / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let q: Vec<u8> = block
            .iter()
            .map(|v| ((*v as f64 * id as f64 + 8.5).trunc() as f32).clamp(0.0, 15.0) as u8)
            .collect();
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend((0..QK8_0 / 2).map(|j| q[j] | (q[j + QK8_0 / 2] << 4)));
    }
    out
}

pub fn dequantize_q4_0(bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / 18 * QK8_0];
    for (b, o) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(QK8_0)) {
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        for (j, q) in b[2..].iter().enumerate() {
            o[j] = d * ((q & 15) as f32 - 8.0);
            o[j + QK8_0 / 2] = d * ((q >> 4) as f32 - 8.0);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Hugging Face model -> GGUF

/// What `export_gguf` wrote.
#[derive(Debug, Clone)]
pub struct GgufReport {
    pub arch: &'static str,
    pub tensors: usize,
    pub bytes: u64,
    /// Tensors a q8_0 / q4_0 export wrote as f16 (rows not a multiple of 32).
    pub f16_fallback: Vec<String>,
    /// The Modelfile beside the .gguf.
    pub modelfile: PathBuf,
    /// Whether the Modelfile has a TEMPLATE (else a comment asks to fill it in).
    pub template: bool,
    /// What the file's readers do differently from the source model (a sliding window they
    /// don't apply), for the caller to show.
    pub notes: Vec<String>,
}

/// The family of `config` (the family table's) when it has a `gguf_arch` in the table.
fn gguf_family(config: &Json) -> Result<Family> {
    let mt = config["model_type"].as_str().unwrap_or("");
    match Family::of_model_type(mt) {
        Some(f) if f.info().gguf_arch.is_some() => Ok(f),
        _ => {
            let types: Vec<&str> = crate::model::family::TABLE
                .iter()
                .filter(|f| f.gguf_arch.is_some())
                .flat_map(|f| f.model_types.iter().copied())
                .collect();
            let (last, rest) = types.split_last().unwrap_or((&"", &[]));
            Err(FormatError::Unsupported(format!(
                "GGUF export supports {} and {last} models, not model_type `{mt}`",
                rest.join(", ")
            )))
        }
    }
}

/// The sliding window the engine reads from `config` (Mistral; Qwen2/3 with
/// `use_sliding_window`) as a note: llama.cpp's `llama` / `qwen2` / `qwen3` graphs and
/// transformers' GGUF loader (no `sliding_window` key for these archs) attend to every position,
/// so they match the source model on inputs up to the window's length only.
fn sliding_window_note(c: &Json, dir: &Path) -> Option<String> {
    let path = dir.join("config.json").display().to_string();
    let sw = crate::model::Arch::from_config_json(&c.to_string(), &path)
        .ok()?
        .sliding_window?;
    let layers: Vec<String> = (sw.layers.iter().enumerate())
        .filter(|(_, on)| **on)
        .map(|(i, _)| i.to_string())
        .collect();
    Some(format!(
        "the sliding window ({} positions, layers {}) is not in the GGUF file: llama.cpp attends \
         to every position, so it matches this model on inputs up to {} tokens",
        sw.len,
        layers.join(", "),
        sw.len
    ))
}

/// llama.cpp's architecture name of a family [`gguf_family`] accepted.
fn arch(f: Family) -> &'static str {
    f.info().gguf_arch.unwrap_or("")
}

/// The first of `keys` in the config that is an integer.
fn cfg_u64(c: &Json, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| c.get(*k).and_then(Json::as_u64))
}

fn cfg_f64(c: &Json, keys: &[&str]) -> Option<f64> {
    keys.iter()
        .find_map(|k| c.pointer(k).and_then(Json::as_f64))
}

fn need(c: &Json, keys: &[&str], dir: &Path) -> Result<u64> {
    cfg_u64(c, keys).ok_or_else(|| {
        FormatError::format(
            dir.join("config.json"),
            format!("no `{}`", keys.join("` or `")),
        )
    })
}

/// The `{arch}.*` hyperparameters (convert_hf_to_gguf.py's set_gguf_parameters).
fn hparams(f: Family, c: &Json, dir: &Path, kv: &mut Vec<(String, Value)>) -> Result<Hp> {
    let a = arch(f);
    let mut put = |k: &str, v: Value| kv.push((format!("{a}.{k}"), v));
    let u32v = |v: u64| Value::U32(v as u32);
    let hp = match f {
        Family::Llama | Family::Qwen2 | Family::Qwen3 => {
            let hidden = need(c, &["hidden_size"], dir)?;
            let heads = need(c, &["num_attention_heads"], dir)?;
            let kv_heads = cfg_u64(c, &["num_key_value_heads"]).unwrap_or(heads);
            put("vocab_size", u32v(need(c, &["vocab_size"], dir)?));
            put(
                "context_length",
                u32v(need(c, &["max_position_embeddings"], dir)?),
            );
            put("embedding_length", u32v(hidden));
            put(
                "feed_forward_length",
                u32v(need(c, &["intermediate_size"], dir)?),
            );
            put("block_count", u32v(need(c, &["num_hidden_layers"], dir)?));
            put("attention.head_count", u32v(heads));
            put("attention.head_count_kv", u32v(kv_heads));
            let theta = cfg_f64(c, &["/rope_theta", "/rope_parameters/rope_theta"]);
            put(
                "rope.freq_base",
                Value::F32(theta.unwrap_or(10000.0) as f32),
            );
            let eps = cfg_f64(c, &["/rms_norm_eps"]).unwrap_or(1e-6);
            put("attention.layer_norm_rms_epsilon", Value::F32(eps as f32));
            let head_dim = cfg_u64(c, &["head_dim"]).unwrap_or(hidden / heads.max(1));
            if f == Family::Llama {
                put("rope.dimension_count", u32v(head_dim));
            }
            // Qwen3 always (its head_dim is explicit; transformers' Qwen3Config defaults it to
            // 128, not hidden / heads), the others where it differs from llama.cpp's default.
            if head_dim * heads != hidden || f == Family::Qwen3 {
                put("attention.key_length", u32v(head_dim));
                put("attention.value_length", u32v(head_dim));
            }
            Hp {
                heads,
                kv_heads,
                hidden,
            }
        }
        Family::Bloom => {
            let hidden = need(c, &["hidden_size", "n_embed"], dir)?;
            let heads = need(c, &["n_head", "num_attention_heads"], dir)?;
            put("vocab_size", u32v(need(c, &["vocab_size"], dir)?));
            put(
                "context_length",
                u32v(cfg_u64(c, &["seq_length"]).unwrap_or(hidden)),
            );
            put("embedding_length", u32v(hidden));
            put("feed_forward_length", u32v(4 * hidden));
            put(
                "block_count",
                u32v(need(c, &["n_layer", "num_hidden_layers"], dir)?),
            );
            put("attention.head_count", u32v(heads));
            put("attention.head_count_kv", u32v(heads));
            let eps = cfg_f64(c, &["/layer_norm_epsilon"]).unwrap_or(1e-5);
            put("attention.layer_norm_epsilon", Value::F32(eps as f32));
            Hp {
                heads,
                kv_heads: heads,
                hidden,
            }
        }
        Family::Gpt2 => {
            let hidden = need(c, &["n_embd"], dir)?;
            let heads = need(c, &["n_head"], dir)?;
            put("vocab_size", u32v(need(c, &["vocab_size"], dir)?));
            put("block_count", u32v(need(c, &["n_layer"], dir)?));
            put(
                "context_length",
                u32v(need(c, &["n_ctx", "n_positions"], dir)?),
            );
            put("embedding_length", u32v(hidden));
            // convert_hf_to_gguf.py writes 4·n_embd; n_inner is what the weights have.
            put(
                "feed_forward_length",
                u32v(cfg_u64(c, &["n_inner"]).unwrap_or(4 * hidden)),
            );
            put("attention.head_count", u32v(heads));
            let eps = cfg_f64(c, &["/layer_norm_epsilon"]).unwrap_or(1e-5);
            put("attention.layer_norm_epsilon", Value::F32(eps as f32));
            Hp {
                heads,
                kv_heads: heads,
                hidden,
            }
        }
        // Refused by `gguf_family` before any hyperparameter is read.
        Family::Qwen | Family::ChatGlm | Family::Gemma3 => {
            return Err(FormatError::Unsupported(format!(
                "GGUF export has no {} hyperparameters",
                f.name()
            )))
        }
    };
    Ok(hp)
}

struct Hp {
    heads: u64,
    kv_heads: u64,
    hidden: u64,
}

/// How a tensor changes on its way into the file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transform {
    None,
    /// LLaMA q/k rows: permute(w, n_head) of convert_hf_to_gguf.py.
    Permute(u64),
    /// BLOOM query_key_value: per-head [q k v] -> [Q K V].
    BloomQkv,
    /// GPT-2 Conv1D weight [in, out] -> [out, in].
    Transpose,
}

/// HF name (prefix "model." / "transformer." removed) -> GGUF name and transform;
/// None: not written (rotary caches, GPT-2 attention masks, a tied lm_head).
fn map_name(f: Family, name: &str, hp: &Hp, tied: bool) -> Option<(String, Transform)> {
    let n = name
        .strip_prefix("model.")
        .or_else(|| name.strip_prefix("transformer."))
        .unwrap_or(name);
    let (stem, suffix) = n.rsplit_once('.')?;
    let suffix = match suffix {
        "weight" | "bias" => suffix,
        _ => return None,
    };
    let top = |g: &str| Some((format!("{g}.{suffix}"), Transform::None));
    if name == "lm_head.weight" {
        return if tied { None } else { top("output") };
    }
    let global = match (f, stem) {
        (Family::Llama | Family::Qwen2 | Family::Qwen3, "embed_tokens") => Some("token_embd"),
        (Family::Llama | Family::Qwen2 | Family::Qwen3, "norm") => Some("output_norm"),
        (Family::Bloom, "word_embeddings") => Some("token_embd"),
        (Family::Bloom, "word_embeddings_layernorm") => Some("token_embd_norm"),
        (Family::Bloom, "ln_f") | (Family::Gpt2, "ln_f") => Some("output_norm"),
        (Family::Gpt2, "wte") => Some("token_embd"),
        (Family::Gpt2, "wpe") => Some("position_embd"),
        _ => None,
    };
    if let Some(g) = global {
        return top(g);
    }
    let rest = stem
        .strip_prefix("layers.")
        .or_else(|| stem.strip_prefix("h."))?;
    let (bid, part) = rest.split_once('.')?;
    let bid: u64 = bid.parse().ok()?;
    let (g, tr) = match (f, part) {
        (Family::Llama | Family::Qwen2 | Family::Qwen3, p) => {
            let g = match p {
                "input_layernorm" => "attn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.q_norm" if f == Family::Qwen3 => "attn_q_norm",
                "self_attn.k_proj" => "attn_k",
                "self_attn.k_norm" if f == Family::Qwen3 => "attn_k_norm",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "post_attention_layernorm" => "ffn_norm",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return None,
            };
            let tr = match (f, g) {
                (Family::Llama, "attn_q") => Transform::Permute(hp.heads),
                (Family::Llama, "attn_k") => Transform::Permute(hp.kv_heads),
                _ => Transform::None,
            };
            (g, tr)
        }
        (Family::Bloom, p) => match p {
            "input_layernorm" => ("attn_norm", Transform::None),
            "self_attention.query_key_value" => ("attn_qkv", Transform::BloomQkv),
            "self_attention.dense" => ("attn_output", Transform::None),
            "post_attention_layernorm" => ("ffn_norm", Transform::None),
            "mlp.dense_h_to_4h" => ("ffn_up", Transform::None),
            "mlp.dense_4h_to_h" => ("ffn_down", Transform::None),
            _ => return None,
        },
        (Family::Gpt2, p) => {
            let g = match p {
                "ln_1" => "attn_norm",
                "attn.c_attn" => "attn_qkv",
                "attn.c_proj" => "attn_output",
                "ln_2" => "ffn_norm",
                "mlp.c_fc" => "ffn_up",
                "mlp.c_proj" => "ffn_down",
                _ => return None,
            };
            let tr = if suffix == "weight" && g != "attn_norm" && g != "ffn_norm" {
                Transform::Transpose
            } else {
                Transform::None
            };
            (g, tr)
        }
        (Family::Qwen | Family::ChatGlm | Family::Gemma3, _) => return None,
    };
    Some((format!("blk.{bid}.{g}.{suffix}"), tr))
}

/// Apply `tr` to row-major `v` of torch `shape`; returns the new values and shape.
fn transform(
    tr: Transform,
    v: Vec<f32>,
    shape: &[usize],
    hp: &Hp,
    name: &str,
) -> Result<(Vec<f32>, Vec<usize>)> {
    let rows = shape.first().copied().unwrap_or(1);
    let cols: usize = shape.iter().skip(1).product();
    let bad =
        |what: &str| FormatError::mismatch(name, format!("shape {shape:?} does not fit {what}"));
    match tr {
        Transform::None => Ok((v, shape.to_vec())),
        Transform::Permute(n_head) => {
            // reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)
            let n_head = n_head as usize;
            if n_head == 0 || rows % (2 * n_head) != 0 {
                return Err(bad(&format!("{n_head} heads")));
            }
            let half = rows / n_head / 2;
            let mut out = vec![0f32; v.len()];
            for h in 0..n_head {
                for i in 0..half {
                    for j in 0..2 {
                        let dst = (h * 2 * half + i * 2 + j) * cols;
                        let src = (h * 2 * half + j * half + i) * cols;
                        out[dst..dst + cols].copy_from_slice(&v[src..src + cols]);
                    }
                }
            }
            Ok((out, shape.to_vec()))
        }
        Transform::BloomQkv => {
            // rows = n_head · 3 · head_dim -> [Q (all heads), K, V]
            let n_head = hp.heads as usize;
            if n_head == 0 || rows != 3 * hp.hidden as usize || rows % (3 * n_head) != 0 {
                return Err(bad("BLOOM's fused qkv"));
            }
            let hd = rows / 3 / n_head;
            let mut out = vec![0f32; v.len()];
            for part in 0..3 {
                for h in 0..n_head {
                    for d in 0..hd {
                        let dst = (part * n_head * hd + h * hd + d) * cols;
                        let src = (h * 3 * hd + part * hd + d) * cols;
                        out[dst..dst + cols].copy_from_slice(&v[src..src + cols]);
                    }
                }
            }
            Ok((out, shape.to_vec()))
        }
        Transform::Transpose => {
            if shape.len() != 2 {
                return Err(bad("a Conv1D weight"));
            }
            Ok((crate::util::transpose(&v, rows, cols), vec![cols, rows]))
        }
    }
}

/// The ggml type convert_hf_to_gguf.py picks for a tensor (see the module doc).
fn pick_type(gguf_name: &str, shape: &[usize], dtype: GgufDtype) -> GgmlType {
    if shape.len() <= 1
        || gguf_name.ends_with("_norm.weight")
        || !gguf_name.ends_with(".weight")
        || gguf_name == "position_embd.weight"
    {
        return GgmlType::F32;
    }
    let row = shape.last().copied().unwrap_or(0);
    match dtype {
        GgufDtype::Q8_0 | GgufDtype::Q4_0 if row % QK8_0 != 0 => GgmlType::F16,
        d => d.ggml(),
    }
}

fn encode(ty: GgmlType, v: &[f32]) -> Result<Vec<u8>> {
    match ty {
        GgmlType::F32 => encode_f32(Dtype::F32, v),
        GgmlType::F16 => encode_f32(Dtype::F16, v),
        GgmlType::Bf16 => encode_f32(Dtype::BF16, v),
        GgmlType::Q8_0 => Ok(quantize_q8_0(v)),
        GgmlType::Q4_0 => Ok(quantize_q4_0(v)),
    }
}

/// Write `model` as GGUF to `out` (a file path) and an Ollama `Modelfile` beside it; the
/// tokenizer and chat template come from `tokenizer_dir`.
pub fn export_gguf(
    model: &HfModel,
    tokenizer_dir: &Path,
    out: &Path,
    dtype: GgufDtype,
) -> Result<GgufReport> {
    let family = gguf_family(&model.config)?;
    let arch = arch(family);
    let c = &model.config;
    let notes: Vec<String> = sliding_window_note(c, &model.dir).into_iter().collect();
    let mut kv: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::Str(arch.into())),
        ("general.alignment".into(), Value::U32(ALIGNMENT as u32)),
    ];
    // The source model's dir name (a cached step's own dir is a hash).
    let name = tokenizer_dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| arch.to_string());
    kv.push(("general.name".into(), Value::Str(name)));
    let hp = hparams(family, c, &model.dir, &mut kv)?;
    kv.push(("general.file_type".into(), Value::U32(dtype.file_type())));
    kv.push((
        "general.quantization_version".into(),
        Value::U32(QUANT_VERSION),
    ));
    let vocab = need(c, &["vocab_size"], &model.dir)? as usize;
    let tok = tokenizer_kv(family, tokenizer_dir, vocab, &mut kv)?;

    // Tensors, in the model's order; BLOOM / GPT-2 get an `output` copy of tied embeddings.
    let tied = ties_embeddings(c);
    let has_head = model.tensors.contains_key("lm_head.weight") && !tied;
    let mut tensors = Vec::new();
    let mut f16_fallback = Vec::new();
    for (hf_name, t) in &model.tensors {
        let Some((gname, tr)) = map_name(family, hf_name, &hp, tied) else {
            continue;
        };
        if !t.is_float() {
            return Err(FormatError::Unsupported(format!(
                "`{hf_name}` is {:?}: GGUF export needs float weights (merge without requantize)",
                t.dtype
            )));
        }
        let (v, shape) = transform(tr, t.to_f32()?, &t.shape, &hp, hf_name)?;
        let mut push = |gname: String| -> Result<()> {
            let ty = pick_type(&gname, &shape, dtype);
            if dtype != GgufDtype::F16 && ty == GgmlType::F16 {
                f16_fallback.push(gname.clone());
            }
            tensors.push(OutTensor {
                data: encode(ty, &v)?,
                dims: shape.iter().rev().map(|d| *d as u64).collect(),
                ty,
                name: gname,
            });
            Ok(())
        };
        let embd = gname == "token_embd.weight";
        push(gname)?;
        if embd && !has_head && matches!(family, Family::Bloom | Family::Gpt2) {
            push("output.weight".into())?;
        }
    }
    if !tensors.iter().any(|t| t.name == "token_embd.weight") {
        return Err(FormatError::format(
            &model.dir,
            "no token embeddings among the weights",
        ));
    }
    let bytes = write_gguf(out, &kv, &tensors)?;

    let file_name = out
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "model.gguf".into());
    let (text, template) = modelfile(&file_name, tok.chat_template.as_deref(), &tok.stops);
    let modelfile = out.parent().unwrap_or(Path::new(".")).join("Modelfile");
    std::fs::write(&modelfile, text).map_err(|e| FormatError::io(&modelfile, e))?;
    Ok(GgufReport {
        arch,
        tensors: tensors.len(),
        bytes,
        f16_fallback,
        modelfile,
        template,
        notes,
    })
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

/// gguf-py TokenType.
const TT_NORMAL: i32 = 1;
const TT_CONTROL: i32 = 3;
const TT_USER_DEFINED: i32 = 4;
const TT_UNUSED: i32 = 5;

struct TokInfo {
    chat_template: Option<String>,
    /// Stop strings for the Modelfile (the stop ids' tokens).
    stops: Vec<String>,
}

/// `tokenizer.ggml.*` and `tokenizer.chat_template`: SentencePiece ("llama" model: pieces,
/// scores, types) when there is a tokenizer.model, else BPE ("gpt2" model: tokens, types,
/// merges from tokenizer.json). Ids up to the model's vocab size; holes are `[PAD{i}]`.
fn tokenizer_kv(
    f: Family,
    dir: &Path,
    vocab: usize,
    kv: &mut Vec<(String, Value)>,
) -> Result<TokInfo> {
    let fmt = |e: anyhow::Error| FormatError::format(dir, format!("{e:#}"));
    let b = crate::text::TokenizerBundle::from_dir(dir).map_err(fmt)?;
    let added = b.tok.get_added_tokens_decoder();
    let mut by_id: Vec<Option<String>> = vec![None; vocab];
    for (s, id) in b.tok.get_vocab(true) {
        let slot = by_id.get_mut(id as usize).ok_or_else(|| {
            FormatError::format(
                dir,
                format!("token `{s}` has id {id}, past the model's vocab_size {vocab}"),
            )
        })?;
        *slot = Some(s);
    }
    let added_type = |id: usize| {
        added.get(&(id as u32)).map(|a| {
            if a.special {
                TT_CONTROL
            } else {
                TT_USER_DEFINED
            }
        })
    };
    let mut tokens = Vec::with_capacity(vocab);
    let mut types = Vec::with_capacity(vocab);
    let sp_path = dir.join("tokenizer.model");
    let put = |kv: &mut Vec<(String, Value)>, k: &str, v: Value| kv.push((k.to_string(), v));
    if sp_path.is_file() {
        let sp = crate::text::sentencepiece::SpModel::from_file(&sp_path).map_err(fmt)?;
        let mut scores = Vec::with_capacity(vocab);
        for (id, slot) in by_id.into_iter().enumerate() {
            let (tok, score, ty) = match (sp.pieces.get(id), slot) {
                (Some(p), _) => (p.piece.clone(), p.score, p.kind as i32),
                (None, Some(s)) => (s, -1000.0, added_type(id).unwrap_or(TT_USER_DEFINED)),
                (None, None) => (format!("[PAD{id}]"), -1000.0, TT_UNUSED),
            };
            tokens.push(tok);
            scores.push(Value::F32(score));
            types.push(Value::I32(ty));
        }
        put(kv, "tokenizer.ggml.model", Value::Str("llama".into()));
        put(kv, "tokenizer.ggml.pre", Value::Str("default".into()));
        put(kv, "tokenizer.ggml.tokens", Value::strings(tokens));
        put(kv, "tokenizer.ggml.scores", Value::Array(6, scores));
        put(kv, "tokenizer.ggml.token_type", Value::Array(5, types));
    } else {
        for (id, slot) in by_id.into_iter().enumerate() {
            let (tok, ty) = match slot {
                Some(s) => (s, added_type(id).unwrap_or(TT_NORMAL)),
                None => (format!("[PAD{id}]"), TT_UNUSED),
            };
            tokens.push(tok);
            types.push(Value::I32(ty));
        }
        let tj_path = dir.join("tokenizer.json");
        let tj: Json = std::fs::read(&tj_path)
            .ok()
            .and_then(|s| serde_json::from_slice(&s).ok())
            .ok_or_else(|| FormatError::format(&tj_path, "missing or not JSON"))?;
        if tj.pointer("/model/byte_fallback") == Some(&Json::Bool(true)) {
            // A SentencePiece vocab converted to tokenizer.json: llama.cpp wants it as
            // "llama" (pieces + scores), which needs the original tokenizer.model.
            return Err(FormatError::format(
                &tj_path,
                "a SentencePiece-style (byte_fallback) tokenizer without tokenizer.model: \
                 put the model's tokenizer.model beside it for GGUF export",
            ));
        }
        let merges: Vec<String> = tj
            .pointer("/model/merges")
            .and_then(Json::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(|e| match e {
                        Json::String(s) => Some(s.clone()),
                        Json::Array(p) => Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        // llama.cpp picks its pre-tokenizer regex by this name (a hash of the tokenizer's
        // output in convert_hf_to_gguf.py); we name the family's usual one.
        let pre = match f {
            Family::Llama => "llama-bpe",
            Family::Qwen2 | Family::Qwen3 => "qwen2",
            Family::Bloom => "bloom",
            Family::Gpt2 => "gpt-2",
            Family::Qwen | Family::ChatGlm | Family::Gemma3 => "default",
        };
        put(kv, "tokenizer.ggml.model", Value::Str("gpt2".into()));
        put(kv, "tokenizer.ggml.pre", Value::Str(pre.into()));
        put(kv, "tokenizer.ggml.tokens", Value::strings(tokens));
        put(kv, "tokenizer.ggml.token_type", Value::Array(5, types));
        put(kv, "tokenizer.ggml.merges", Value::strings(merges));
    }
    for (k, id) in [
        ("bos", b.bos_id),
        ("eos", b.eos_id),
        ("unknown", b.unk_id),
        ("padding", b.pad_id),
    ] {
        if let Some(id) = id {
            put(kv, &format!("tokenizer.ggml.{k}_token_id"), Value::U32(id));
        }
    }
    let add_bos = b.bos_id.is_some_and(|i| b.prefix_ids.contains(&i));
    let add_eos = b.eos_id.is_some_and(|i| b.suffix_ids.contains(&i));
    put(kv, "tokenizer.ggml.add_bos_token", Value::Bool(add_bos));
    put(kv, "tokenizer.ggml.add_eos_token", Value::Bool(add_eos));
    if let Some(t) = &b.chat_template {
        put(kv, "tokenizer.chat_template", Value::Str(t.clone()));
    }
    let mut stops: Vec<String> = Vec::new();
    for id in &b.stop_ids {
        if let Some(s) = b.tok.id_to_token(*id) {
            if !stops.contains(&s) {
                stops.push(s);
            }
        }
    }
    Ok(TokInfo {
        chat_template: b.chat_template.clone(),
        stops,
    })
}

// ---------------------------------------------------------------------------------------------
// Ollama Modelfile

/// The Modelfile text and whether it has a TEMPLATE. ChatML and Llama-3 chat templates are
/// converted to Ollama's Go template syntax; others get a comment asking to fill it in.
fn modelfile(file: &str, chat_template: Option<&str>, stops: &[String]) -> (String, bool) {
    let mut s = format!(
        "# Ollama Modelfile written by recipe. Create the model with:\n\
         #   ollama create NAME -f Modelfile\n\
         FROM ./{file}\n"
    );
    let mut stops = stops.to_vec();
    let ct = chat_template.unwrap_or("");
    let (template, end) = if ct.contains("<|im_start|>") {
        (
            Some(
                "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n\
                 {{ end }}<|im_start|>assistant\n",
            ),
            "<|im_end|>",
        )
    } else if ct.contains("<|start_header_id|>") {
        (
            Some(
                "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n\
                 {{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
            "<|eot_id|>",
        )
    } else {
        (None, "")
    };
    match template {
        Some(t) => {
            s.push_str(&format!("TEMPLATE \"\"\"{t}\"\"\"\n"));
            if !stops.iter().any(|x| x == end) {
                stops.insert(0, end.to_string());
            }
        }
        None if chat_template.is_some() => s.push_str(
            "# TEMPLATE: fill in the prompt format in Ollama's Go template syntax\n\
             # (https://github.com/ollama/ollama/blob/main/docs/template.md); the model's Jinja\n\
             # chat template is in the GGUF file as tokenizer.chat_template.\n",
        ),
        None => s.push_str(
            "# TEMPLATE: the model has no chat template; fill one in (Ollama's Go template\n\
             # syntax) if you chat with it, else use it for plain completion.\n",
        ),
    }
    for st in &stops {
        s.push_str(&format!("PARAMETER stop {}\n", json!(st)));
    }
    (s, template.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_matches_gguf_py_rounding() {
        // amax 2.54 -> d = 0.02; 0.01 / 0.02 = 0.5 rounds away from zero, -0.03 -> -1.5 -> -2.
        let mut v = vec![0f32; 32];
        v[0] = 2.54;
        v[1] = 0.01;
        v[2] = -0.03;
        v[3] = -2.54;
        let q = quantize_q8_0(&v);
        assert_eq!(q.len(), 34);
        let d = half::f16::from_le_bytes([q[0], q[1]]);
        assert_eq!(d, half::f16::from_f32(0.02));
        assert_eq!(&q[2..6], &[127, 1, (-2i8) as u8, (-127i8) as u8]);
        let back = dequantize_q8_0(&q);
        assert_eq!(back[0], d.to_f32() * 127.0);
        assert_eq!(back[4], 0.0);
        // An all-zero block: d = 0, every q = 0.
        assert_eq!(quantize_q8_0(&[0.0; 32]), vec![0u8; 34]);
    }

    #[test]
    fn q4_0_matches_gguf_py_layout() {
        // max |x| is -4.0 (first of the ties) -> d = 0.5, id = 2: x = 1.0 -> trunc(10.5) = 10,
        // -4.0 -> 0, 4.0 -> trunc(16.5) clipped to 15; the rest 0 -> 8.
        let mut v = vec![0f32; 32];
        v[0] = 1.0;
        v[3] = -4.0;
        v[16] = 4.0;
        let q = quantize_q4_0(&v);
        assert_eq!(q.len(), 18);
        assert_eq!(half::f16::from_le_bytes([q[0], q[1]]).to_f32(), 0.5);
        assert_eq!(q[2], 10 | (15 << 4));
        assert_eq!(q[5], 8 << 4);
        assert_eq!(q[3], 8 | (8 << 4));
        let back = dequantize_q4_0(&q);
        assert_eq!((back[0], back[3], back[16], back[1]), (1.0, -4.0, 3.5, 0.0));
    }

    #[test]
    fn llama_permute_interleaves_the_rotary_halves() {
        // 1 head of dim 4: rows [a0 a1 b0 b1] (half-split) -> [a0 b0 a1 b1].
        let hp = Hp {
            heads: 1,
            kv_heads: 1,
            hidden: 4,
        };
        let v: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let (out, shape) = transform(Transform::Permute(1), v, &[4, 2], &hp, "q").unwrap();
        assert_eq!(shape, vec![4, 2]);
        assert_eq!(out, vec![0., 1., 4., 5., 2., 3., 6., 7.]);
        let err = transform(Transform::Permute(3), vec![0.; 8], &[4, 2], &hp, "q").unwrap_err();
        assert_eq!(
            err.to_string(),
            "module `q`: shape [4, 2] does not fit 3 heads"
        );
    }

    #[test]
    fn bloom_qkv_groups_q_k_v_and_gpt2_transposes() {
        // 2 heads, head_dim 1, hidden 2: rows [q0 k0 v0 q1 k1 v1] -> [q0 q1 k0 k1 v0 v1].
        let hp = Hp {
            heads: 2,
            kv_heads: 2,
            hidden: 2,
        };
        let v: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let (out, _) = transform(Transform::BloomQkv, v, &[6], &hp, "qkv").unwrap();
        assert_eq!(out, vec![0., 3., 1., 4., 2., 5.]);
        let v: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let (out, shape) = transform(Transform::Transpose, v, &[2, 3], &hp, "c").unwrap();
        assert_eq!(shape, vec![3, 2]);
        assert_eq!(out, vec![0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn writer_and_reader_round_trip_with_aligned_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let kv = vec![
            (
                "general.architecture".to_string(),
                Value::Str("llama".into()),
            ),
            ("a.u8".into(), Value::U8(7)),
            ("a.i64".into(), Value::I64(-3)),
            ("a.f64".into(), Value::F64(0.5)),
            ("a.flag".into(), Value::Bool(true)),
            (
                "a.list".into(),
                Value::strings(["x".to_string(), "yz".into()]),
            ),
            ("a.empty".into(), Value::Array(5, vec![])),
        ];
        let tensors = vec![
            OutTensor {
                name: "n.weight".into(),
                dims: vec![3],
                ty: GgmlType::F32,
                data: encode(GgmlType::F32, &[1.0, -2.0, 3.5]).unwrap(),
            },
            OutTensor {
                name: "w.weight".into(),
                dims: vec![32, 2],
                ty: GgmlType::Q8_0,
                data: quantize_q8_0(&[31.75; 64]),
            },
        ];
        let bytes = write_gguf(&path, &kv, &tensors).unwrap();
        let f = read_gguf(&path).unwrap();
        assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
        assert_eq!(f.version, 3);
        assert_eq!(f.kv.len(), 7);
        for (k, v) in &kv {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        assert_eq!(f.data_start % 32, 0);
        assert_eq!(f.tensors[0].offset, 0);
        assert_eq!(f.tensors[1].offset, 32);
        assert_eq!(f.tensor_f32("n.weight").unwrap(), vec![1.0, -2.0, 3.5]);
        assert_eq!(f.tensor_f32("w.weight").unwrap(), vec![31.75; 64]);
        assert_eq!(
            f.summary()["tensors"],
            json!([["n.weight", [3], "F32"], ["w.weight", [32, 2], "Q8_0"]])
        );

        // A truncated file is an error naming the file and byte, not a panic.
        let all = std::fs::read(&path).unwrap();
        std::fs::write(&path, &all[..40]).unwrap();
        let err = read_gguf(&path).err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("{}: byte ", path.display())),
            "{err}"
        );
        std::fs::write(&path, &all[..all.len() - 40]).unwrap();
        let err = read_gguf(&path).err().unwrap().to_string();
        assert!(
            err.ends_with("tensor `w.weight`: data at offset 32 is unaligned or past the end"),
            "{err}"
        );
    }

    #[test]
    fn modelfile_converts_chatml_and_asks_for_others() {
        let (m, t) = modelfile(
            "m.gguf",
            Some("{{'<|im_start|>' + message['role']}}"),
            &["<|endoftext|>".into()],
        );
        assert!(t);
        assert_eq!(
            m,
            "# Ollama Modelfile written by recipe. Create the model with:\n\
             #   ollama create NAME -f Modelfile\n\
             FROM ./m.gguf\n\
             TEMPLATE \"\"\"{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n\
             {{ end }}<|im_start|>assistant\n\"\"\"\n\
             PARAMETER stop \"<|im_end|>\"\n\
             PARAMETER stop \"<|endoftext|>\"\n"
        );
        let (m, t) = modelfile("m.gguf", Some("[INST] {{ x }}"), &["</s>".into()]);
        assert!(!t);
        assert!(m.contains("# TEMPLATE: fill in the prompt format"), "{m}");
        assert!(m.ends_with("PARAMETER stop \"</s>\"\n"), "{m}");
    }

    // ----- the e2e fixture models (tests/fixtures/e2e) -----

    pub(crate) const CASES: &[(&str, GgufDtype)] = &[
        ("llama", GgufDtype::F16),
        ("llama3", GgufDtype::Q8_0),
        ("qwen2", GgufDtype::Bf16),
        ("bloom", GgufDtype::F16),
        ("gpt2", GgufDtype::Q8_0),
        ("qwen2", GgufDtype::Q4_0),
    ];

    fn e2e(case: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/e2e")
            .join(case)
    }

    fn export_case(case: &str, d: GgufDtype, out_dir: &Path) -> (HfModel, GgufReport, GgufFile) {
        let model = HfModel::load(&e2e(case)).unwrap();
        let path = out_dir.join("model.gguf");
        let report = export_gguf(&model, &e2e(case), &path, d).unwrap();
        let f = read_gguf(&path).unwrap();
        (model, report, f)
    }

    /// Metadata and tensor list of each fixture export against tests/fixtures/gguf/<case>.json
    /// (RECIPE_GGUF_BLESS=1 rewrites them; tests/reference/gguf_check.py checks the same files
    /// with gguf-py's reader).
    #[test]
    fn fixture_exports_match_committed_metadata() {
        let bless = std::env::var("RECIPE_GGUF_BLESS").is_ok();
        for &(case, d) in CASES {
            let dir = tempfile::tempdir().unwrap();
            let (_, report, f) = export_case(case, d, dir.path());
            assert_eq!(report.tensors, f.tensors.len());
            let got = f.summary();
            let want_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("tests/fixtures/gguf/{case}_{}.json", d.name()));
            if bless {
                let mut s = serde_json::to_string_pretty(&got).unwrap();
                s.push('\n');
                std::fs::write(&want_path, s).unwrap();
            }
            let want: Json = serde_json::from_slice(&std::fs::read(&want_path).unwrap()).unwrap();
            assert_eq!(got, want, "{case}");
        }
    }

    /// Tensor values: the embeddings are the source's rounded to the file's type; LLaMA's q rows
    /// are permuted, BLOOM's qkv regrouped, GPT-2's c_attn transposed, tied heads copied.
    #[test]
    fn fixture_exports_hold_the_transformed_weights() {
        let dir = tempfile::tempdir().unwrap();
        let (m, r, f) = export_case("llama", GgufDtype::F16, dir.path());
        assert_eq!(r.arch, "llama");
        let src = |m: &HfModel, n: &str| m.tensors[n].to_f32().unwrap();
        let f16 = |v: &[f32]| -> Vec<f32> {
            v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect()
        };
        assert_eq!(
            f.tensor_f32("token_embd.weight").unwrap(),
            f16(&src(&m, "model.embed_tokens.weight"))
        );
        assert!(f.tensor("output.weight").is_none());
        // head_dim 8: row 1 of head 0 is source row 4 (the second half's first), 32 columns.
        let q = f.tensor_f32("blk.0.attn_q.weight").unwrap();
        let sq = f16(&src(&m, "model.layers.0.self_attn.q_proj.weight"));
        assert_eq!(q[32..64], sq[4 * 32..5 * 32]);
        assert_eq!(
            f.tensor_f32("blk.1.attn_norm.weight").unwrap(),
            src(&m, "model.layers.1.input_layernorm.weight")
        );

        let dir = tempfile::tempdir().unwrap();
        let (m, _, f) = export_case("bloom", GgufDtype::F16, dir.path());
        // hidden 32, 4 heads of 8: the file's K block starts with head 0's k (source row 8).
        let qkv = f.tensor_f32("blk.0.attn_qkv.bias").unwrap();
        let sb = src(&m, "transformer.h.0.self_attention.query_key_value.bias");
        assert_eq!(qkv[32], sb[8]);
        assert_eq!(qkv[8], sb[24]);
        assert_eq!(
            f.tensor_f32("output.weight").unwrap(),
            f.tensor_f32("token_embd.weight").unwrap()
        );

        let dir = tempfile::tempdir().unwrap();
        let (m, r, f) = export_case("gpt2", GgufDtype::Q8_0, dir.path());
        assert!(r.f16_fallback.is_empty());
        let t = f.tensor("blk.0.attn_qkv.weight").unwrap();
        assert_eq!(t.dims, vec![32, 96]);
        let w = src(&m, "transformer.h.0.attn.c_attn.weight"); // [32, 96]
        let wt: Vec<f32> = (0..96 * 32).map(|i| w[(i % 32) * 96 + i / 32]).collect();
        assert_eq!(
            f.tensor_f32("blk.0.attn_qkv.weight").unwrap(),
            dequantize_q8_0(&quantize_q8_0(&wt))
        );
        assert_eq!(
            f.tensor("position_embd.weight").map(|t| t.ty),
            Some(GgmlType::F32 as u32)
        );
    }

    #[test]
    fn unsupported_family_and_quantized_weights_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = HfModel::load(&e2e("qwen")).unwrap();
        let err =
            export_gguf(&m, &e2e("qwen"), &dir.path().join("m.gguf"), GgufDtype::F16).unwrap_err();
        assert_eq!(
            err.to_string(),
            "GGUF export supports llama, mistral, qwen2, qwen3, bloom and gpt2 models, \
             not model_type `qwen`"
        );
        // Gemma 3 too (llama.cpp's gemma3 stores its norms as 1 + w; not written here).
        let g3 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bases/gemma3");
        let err = export_gguf(
            &HfModel::load(&g3).unwrap(),
            &g3,
            &dir.path().join("g.gguf"),
            GgufDtype::F16,
        )
        .unwrap_err();
        assert!(
            err.to_string().ends_with("not model_type `gemma3_text`"),
            "{err}"
        );
        m.config["model_type"] = json!("gpt2");
        m.config["n_embd"] = json!(32);
        let err =
            export_gguf(&m, &e2e("qwen"), &dir.path().join("m.gguf"), GgufDtype::F16).unwrap_err();
        assert!(
            err.to_string().ends_with("config.json: no `n_head`"),
            "{err}"
        );
    }

    /// Writes every family in every dtype for tests/reference/gguf_check.py:
    /// RECIPE_GGUF_CHECK_DIR=/tmp/g cargo test --lib export::gguf -- --ignored
    #[test]
    #[ignore]
    fn write_exports_for_the_python_check() {
        let Ok(root) = std::env::var("RECIPE_GGUF_CHECK_DIR") else {
            return;
        };
        for case in ["llama", "llama3", "qwen2", "bloom", "gpt2"] {
            for (i, name) in GgufDtype::NAMES.iter().enumerate() {
                let d = [
                    GgufDtype::F16,
                    GgufDtype::Bf16,
                    GgufDtype::Q8_0,
                    GgufDtype::Q4_0,
                ][i];
                let out = Path::new(&root).join(format!("{case}_{name}"));
                std::fs::create_dir_all(&out).unwrap();
                export_case(case, d, &out);
            }
        }
    }
}
