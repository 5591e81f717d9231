//! Quantized models: load a checkpoint in bitsandbytes' serialized 4-bit layout (what
//! transformers `save_pretrained` writes for a `load_in_4bit` model), quantize a dense checkpoint
//! as it loads, and write a dense checkpoint out in that layout (the `quantize` step).
//!
//! Only the layer linears are quantized (never embeddings, norms or the head), as transformers
//! does with its default `llm_int8_skip_modules`. Weights stay in nn.Linear layout [out, in]
//! (a GPT-2 Conv1D weight is transposed before quantization, as transformers does).
//!
//! `Model::load` reads every layer linear as a dense tensor, which a pre-quantized file does not
//! have; [`load_quantized_model`] therefore hooks the 4-bit reader (`formats::bnb4`) into it.
//! [`save_quantized`] writes through the same weights writer as export
//! (`formats::safetensors::write_sharded`) and copies the source dir's other files
//! (`formats::hf_dir::copy_other_files`).

use crate::formats::bnb4::read_4bit;
use crate::formats::hf_dir::copy_other_files;
use crate::formats::safetensors::{hf_name, write_sharded, DEFAULT_MAX_SHARD_SIZE};
use crate::formats::{FormatError, Tensor, WeightFiles};
use crate::model::resolve;
use crate::model::{Arch, LoadOptions, Model, ModelError, QuantLinear};
use crate::quant::codes::QuantType;
use crate::quant::four_bit::{check_blocksize, quantize_4bit, QuantError};
use crate::quant::linear::Linear4bit;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// Module names transformers never quantizes by default (the output heads).
pub const DEFAULT_SKIP: &[&str] = &["lm_head", "output_layer", "embed_out"];

#[derive(Debug, thiserror::Error)]
pub enum QuantModelError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Load(#[from] FormatError),
    #[error("{name}: {source}")]
    Quant { name: String, source: QuantError },
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
}

fn ferr(p: &Path, msg: impl std::fmt::Display) -> QuantModelError {
    QuantModelError::File {
        path: p.display().to_string(),
        msg: msg.to_string(),
    }
}

/// What to quantize and how (transformers' `BitsAndBytesConfig` 4-bit fields).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeSpec {
    pub quant_type: QuantType,
    pub blocksize: usize,
    pub double_quant: bool,
    /// torch dtype name of the dequantized matmul ("bfloat16", "float16", "float32"); recorded
    /// in `quantization_config` (the CPU engine computes in f32 either way).
    pub compute_dtype: String,
    /// Only these linear modules (PEFT-style name suffixes); None: every layer linear.
    pub modules: Option<Vec<String>>,
    /// Never these (name suffixes or path fragments, as `llm_int8_skip_modules`).
    pub skip_modules: Vec<String>,
}

impl Default for QuantizeSpec {
    fn default() -> Self {
        QuantizeSpec {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            double_quant: true,
            compute_dtype: "bfloat16".into(),
            modules: None,
            skip_modules: DEFAULT_SKIP.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// `name` equals `key`, ends with `.key`, or contains `key.` (transformers' skip test).
fn name_matches(name: &str, key: &str) -> bool {
    name == key || name.ends_with(&format!(".{key}")) || name.contains(&format!("{key}."))
}

impl QuantizeSpec {
    /// Whether the layer linear `name` gets quantized.
    pub fn selects(&self, name: &str) -> bool {
        let wanted = self
            .modules
            .as_ref()
            .is_none_or(|m| m.iter().any(|k| name_matches(name, k)));
        wanted && !self.skip_modules.iter().any(|k| name_matches(name, k))
    }

    /// torch dtype name for a recipe's `compute_dtype` ("bf16" | "f16" | "f32").
    pub fn torch_dtype_name(short: &str) -> &'static str {
        match short {
            "f32" | "float32" => "float32",
            "f16" | "float16" => "float16",
            _ => "bfloat16",
        }
    }

    /// `quantization_config` as transformers writes it for this `BitsAndBytesConfig`
    /// (keys sorted). `skipped`: the skip list to record (None writes `null`, the default).
    pub fn quantization_config(&self, skipped: Option<Vec<String>>) -> Value {
        json!({
            "_load_in_4bit": true,
            "_load_in_8bit": false,
            "bnb_4bit_compute_dtype": self.compute_dtype,
            "bnb_4bit_quant_storage": "uint8",
            "bnb_4bit_quant_type": self.quant_type.name(),
            "bnb_4bit_use_double_quant": self.double_quant,
            "llm_int8_enable_fp32_cpu_offload": false,
            "llm_int8_has_fp16_weight": false,
            "llm_int8_skip_modules": skipped,
            "llm_int8_threshold": 6.0,
            "load_in_4bit": true,
            "load_in_8bit": false,
            "quant_method": "bitsandbytes"
        })
    }
}

/// torch's name of a safetensors dtype as bnb records it in the quant state (the weights
/// quantized from anything but f16/bf16 are f32).
fn torch_name(d: Dtype) -> &'static str {
    match d {
        Dtype::BF16 | Dtype::F16 => hf_name(d).unwrap_or("float32"),
        _ => "float32",
    }
}

/// Whether `dir`'s config.json carries a bitsandbytes 4-bit `quantization_config`.
pub fn is_quantized_dir(dir: &Path) -> bool {
    crate::formats::config::HfConfig::read(dir)
        .ok()
        .and_then(|c| c.get("quantization_config").cloned())
        .is_some_and(|q| {
            q.get("quant_method").and_then(Value::as_str) == Some("bitsandbytes")
                && q.get("load_in_4bit").and_then(Value::as_bool) == Some(true)
        })
}

/// Dense W [d_out, d_in] (nn.Linear layout; a Conv1D weight [in, out] is transposed).
fn dense_weight(
    files: &WeightFiles,
    wname: &str,
    conv1d: bool,
    d_in: usize,
    d_out: usize,
) -> Result<Vec<f32>, FormatError> {
    if !conv1d {
        return files.get_shaped(wname, &[d_out, d_in]);
    }
    let t = files.get_shaped(wname, &[d_in, d_out])?;
    Ok(crate::util::transpose(&t, d_in, d_out))
}

/// Loads a model dir whose layer linears may be stored in bitsandbytes' 4-bit layout (e.g. a
/// transformers `load_in_4bit` save, or the `quantize` step's output). Dense layer linears go
/// through `opts.quantize` as in `Model::load`; the head is always dense.
pub fn load_quantized_model(dir: &Path, opts: &LoadOptions) -> Result<Model, QuantModelError> {
    let mut opts = opts.clone();
    opts.prequantized = Some(Arc::new(
        move |files: &WeightFiles, wname: &str, d_in: usize, d_out: usize| {
            let err = |msg: String| FormatError::Tensor {
                path: "4-bit weights".into(),
                name: wname.to_string(),
                msg,
            };
            let Some(q) = read_4bit(files, wname).map_err(|e| err(format!("{wname}: {e}")))? else {
                return Ok(None);
            };
            if q.state.shape != [d_out, d_in] {
                return Err(err(format!(
                    "4-bit weight has shape {:?}, expected {:?}",
                    q.state.shape,
                    [d_out, d_in]
                )));
            }
            let l = Linear4bit::new(q).map_err(|e| err(e.to_string()))?;
            Ok(Some(Box::new(l) as Box<dyn QuantLinear>))
        },
    ));
    Ok(Model::load(dir, &opts)?)
}

/// Loads a dense model dir, quantizing each selected layer linear as it is read (one dense
/// weight alive at a time). Pre-quantized layer linears in the dir are used as they are.
pub fn quantize_on_load(
    dir: &Path,
    spec: &QuantizeSpec,
    opts: &LoadOptions,
) -> Result<Model, QuantModelError> {
    check_blocksize(spec.blocksize).map_err(|source| QuantModelError::Quant {
        name: "blocksize".into(),
        source,
    })?;
    // Source dtype per weight, recorded in the quant state as transformers does.
    let dtypes: HashMap<String, &'static str> = {
        let files = WeightFiles::open(dir)?;
        files
            .names()
            .filter_map(|n| Some((n.to_string(), torch_name(files.raw(n).ok()?.0))))
            .collect()
    };
    let spec2 = spec.clone();
    let hook: crate::model::QuantizeHook =
        Arc::new(move |name: &str, w: &[f32], d_in: usize, d_out: usize| {
            if !spec2.selects(name) {
                return None;
            }
            let dtype = dtypes
                .get(&format!("{name}.weight"))
                .copied()
                .unwrap_or("float32");
            let q = quantize_4bit(
                w,
                &[d_out, d_in],
                spec2.blocksize,
                spec2.quant_type,
                spec2.double_quant,
                dtype,
            )
            .ok()?;
            Some(Box::new(Linear4bit::new(q).ok()?) as Box<dyn QuantLinear>)
        });
    let opts = LoadOptions {
        quantize: Some(hook),
        ..opts.clone()
    };
    load_quantized_model(dir, &opts)
}

/// What `save_quantized` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantizeStats {
    /// Weight tensors read / written.
    pub tensors: usize,
    /// Layer linears quantized.
    pub quantized: usize,
    /// Bytes of the source tensors (as stored) and of the written ones.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes of the quantized weights' source as f32 (for throughput).
    pub f32_bytes_quantized: u64,
}

/// Writes `src` (a dense HF model dir) to `out` in bitsandbytes' serialized 4-bit layout:
/// selected layer linears as packed 4-bit weights plus quant state, every other tensor in its
/// stored dtype, config.json with `quantization_config`, and every other non-weight file
/// (tokenizer, generation config, remote code) copied. `on_tensor(done, total, name)` is called
/// after each tensor. Only one dense f32 weight is alive at a time; the rest of the output is
/// written from the memory-mapped source.
pub fn save_quantized(
    src: &Path,
    out: &Path,
    spec: &QuantizeSpec,
    on_tensor: &mut dyn FnMut(usize, usize, &str),
) -> Result<QuantizeStats, QuantModelError> {
    check_blocksize(spec.blocksize).map_err(|source| QuantModelError::Quant {
        name: "blocksize".into(),
        source,
    })?;
    let arch = Arch::from_dir(src).map_err(ModelError::from)?;
    let files = WeightFiles::open(src)?;
    // weight tensor name -> (module name, d_in, d_out) of every selected layer linear
    let mut targets: HashMap<String, (usize, usize)> = HashMap::new();
    let mut skipped: Vec<String> = Vec::new();
    for i in 0..arch.layers {
        for (name, d_in, d_out, _) in arch.layer_linears(i) {
            if spec.selects(&name) {
                targets.insert(resolve(&files, &format!("{name}.weight")), (d_in, d_out));
            } else {
                skipped.push(name);
            }
        }
    }
    let mut names: Vec<String> = files.names().map(str::to_string).collect();
    names.sort();
    let total = names.len();
    let mut stats = QuantizeStats::default();
    // Quantized tensors (owned) and pass-through tensors (mapped from the source).
    let mut written: Vec<(String, Tensor)> = Vec::new();
    for (done, name) in names.iter().enumerate() {
        let t = files.tensor(name)?;
        stats.tensors += 1;
        stats.bytes_in += t.bytes().len() as u64;
        if let Some(&(d_in, d_out)) = targets.get(name) {
            let w = dense_weight(&files, name, arch.conv1d, d_in, d_out)?;
            stats.f32_bytes_quantized += 4 * w.len() as u64;
            let q = quantize_4bit(
                &w,
                &[d_out, d_in],
                spec.blocksize,
                spec.quant_type,
                spec.double_quant,
                torch_name(t.dtype),
            )
            .map_err(|source| QuantModelError::Quant {
                name: name.clone(),
                source,
            })?;
            drop(w);
            for (n, dtype, shape, bytes) in q.to_tensors(name) {
                written.push((n, Tensor::from_bytes(dtype, shape, bytes)?));
            }
            stats.quantized += 1;
        } else {
            written.push((name.clone(), t.clone()));
        }
        on_tensor(done + 1, total, name);
    }
    std::fs::create_dir_all(out).map_err(|e| ferr(out, e))?;
    // Shards of at most 5 GB (transformers' default), filled in name order.
    written.sort_by(|a, b| a.0.cmp(&b.0));
    let plan: Vec<(&str, &Tensor, Dtype)> = written
        .iter()
        .map(|(n, t)| (n.as_str(), t, t.dtype))
        .collect();
    stats.bytes_out = write_sharded(out, &plan, DEFAULT_MAX_SHARD_SIZE)?.total_size;
    // config.json with the quantization_config
    let mut cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(src.join("config.json")).map_err(|e| ferr(src, e))?,
    )
    .map_err(|e| ferr(&src.join("config.json"), e))?;
    let default_skip = spec.modules.is_none()
        && spec
            .skip_modules
            .iter()
            .map(String::as_str)
            .eq(DEFAULT_SKIP.iter().copied());
    let skip_list = if default_skip && skipped.is_empty() {
        None
    } else {
        let mut s = spec.skip_modules.clone();
        s.extend(skipped);
        Some(s)
    };
    if let Value::Object(m) = &mut cfg {
        m.insert(
            "quantization_config".into(),
            spec.quantization_config(skip_list),
        );
        let sorted: BTreeMap<String, Value> = std::mem::take(m).into_iter().collect();
        cfg = json!(sorted);
    }
    crate::formats::write_json(&out.join("config.json"), &cfg)?;
    copy_other_files(src, out)?;
    Ok(stats)
}
