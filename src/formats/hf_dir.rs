//! Hugging Face model dirs: a model in memory ([`HfModel`]: config.json + weights) and the
//! one writer of model dirs that transformers' `from_pretrained` loads: safetensors split by
//! `max_shard_size` the way transformers splits them (`safetensors::write_sharded`),
//! `config.json` (dtype updated, `quantization_config` dropped once nothing is 4-bit),
//! `generation_config.json`, and the tokenizer files (plus remote-code `*.py`) of the source
//! dirs ([`TOKENIZER_FILES`]). Merge and export write through [`write_hf_dir`]; the quantize
//! step writes its weights with the same `write_sharded` and copies the source dir's other
//! files with [`copy_other_files`]; `Model::save_pretrained` writes its config text and f32
//! weights with [`write_f32_dir`] (the same `write_sharded`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::Value;

use super::bnb4;
use super::error::{FormatError, Result};
use super::safetensors::{
    from_hf_name, hf_name, read_dir, write_sharded, Tensor, Tensors, DEFAULT_MAX_SHARD_SIZE,
};
use super::{read_json, write_json};

/// Requested dtype of written weights. `Auto` keeps each tensor's own dtype (a dequantized
/// 4-bit weight takes its quant state's dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutDtype {
    #[default]
    Auto,
    F32,
    BF16,
    F16,
}

impl OutDtype {
    /// Parse a recipe value: `auto`, `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`/`fp16`.
    pub fn parse(s: &str) -> Option<OutDtype> {
        Some(match s {
            "auto" => OutDtype::Auto,
            "f32" | "float32" | "fp32" => OutDtype::F32,
            "bf16" | "bfloat16" => OutDtype::BF16,
            "f16" | "float16" | "fp16" => OutDtype::F16,
            _ => return None,
        })
    }

    /// The dtype a float tensor stored as `have` is written in.
    pub fn resolve(self, have: Dtype) -> Dtype {
        match self {
            OutDtype::Auto => have,
            OutDtype::F32 => Dtype::F32,
            OutDtype::BF16 => Dtype::BF16,
            OutDtype::F16 => Dtype::F16,
        }
    }
}

/// A Hugging Face model in memory: its `config.json` and its weights (memory-mapped until
/// changed).
#[derive(Debug)]
pub struct HfModel {
    /// Where it was read from (tokenizer and generation config files live there).
    pub dir: PathBuf,
    pub config: serde_json::Value,
    pub tensors: Tensors,
}

impl HfModel {
    /// Read `config.json` and the safetensors weights (single file or sharded) of `dir`.
    pub fn load(dir: &Path) -> Result<HfModel> {
        let cfg = dir.join("config.json");
        if !cfg.is_file() {
            return Err(FormatError::format(
                dir,
                "no config.json: not a Hugging Face model dir",
            ));
        }
        Ok(HfModel {
            dir: dir.to_path_buf(),
            config: read_json(&cfg)?,
            tensors: read_dir(dir)?,
        })
    }
}

/// Whether config.json ties lm_head to the input embedding (`HfConfig::ties_embeddings`'s rule).
pub fn ties_embeddings(config: &serde_json::Value) -> bool {
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    config
        .get("tie_word_embeddings")
        .and_then(|v| v.as_bool())
        .unwrap_or_else(|| super::config::ties_embeddings_by_default(model_type))
}

/// Files copied from the source dirs when present (first dir that has one wins).
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
];

#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// Largest shard in bytes (transformers' default "5GB" = 5·10⁹). A tensor larger than
    /// this gets a shard of its own.
    pub max_shard_size: u64,
    /// dtype of float tensors; `Auto` keeps each tensor's dtype. Integer tensors (4-bit packed
    /// weights, ids) are written as they are.
    pub dtype: OutDtype,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            max_shard_size: DEFAULT_MAX_SHARD_SIZE,
            dtype: OutDtype::Auto,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportReport {
    /// Files written, relative to the output dir, in writing order.
    pub files: Vec<String>,
    /// Number of safetensors files.
    pub shards: usize,
    /// Sum of the tensors' bytes (the index's `metadata.total_size`).
    pub total_size: u64,
    /// The dtype written into config.json (None when no float tensor was written).
    pub dtype: Option<Dtype>,
    /// Tensors left out (`lm_head.weight` of a model with tied embeddings).
    pub skipped: Vec<String>,
}

/// Write `model` into `out_dir` (created; must be empty: the caller renames a finished temp
/// dir into place). Generation config and tokenizer files come from `src_dirs`, searched in
/// order (e.g. [adapter dir, base dir]).
pub fn write_hf_dir(
    model: &HfModel,
    src_dirs: &[&Path],
    out_dir: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    std::fs::create_dir_all(out_dir).map_err(|e| FormatError::io(out_dir, e))?;
    let not_empty = std::fs::read_dir(out_dir)
        .map_err(|e| FormatError::io(out_dir, e))?
        .next()
        .is_some();
    if not_empty {
        return Err(FormatError::format(out_dir, "the output dir is not empty"));
    }

    // What is written, in which dtype.
    let mut skipped = Vec::new();
    let tied = ties_embeddings(&model.config);
    let mut plan: Vec<(&str, &Tensor, Dtype)> = Vec::new();
    for (name, t) in &model.tensors {
        if tied && name == "lm_head.weight" {
            skipped.push(name.clone());
            continue;
        }
        let dtype = if t.is_float() {
            opts.dtype.resolve(t.dtype)
        } else {
            t.dtype
        };
        plan.push((name, t, dtype));
    }
    let shards = write_sharded(out_dir, &plan, opts.max_shard_size)?;
    let mut files = shards.files;

    // config.json: the dtype most of the float weights have.
    let dtype = match opts.dtype {
        OutDtype::Auto => {
            let mut by: BTreeMap<&str, u64> = BTreeMap::new();
            for (_, t, d) in &plan {
                if let Some(name) = hf_name(*d) {
                    *by.entry(name).or_default() += t.numel() as u64;
                }
            }
            by.into_iter()
                .max_by_key(|(_, n)| *n)
                .and_then(|(name, _)| from_hf_name(name))
        }
        o => Some(o.resolve(Dtype::F32)),
    };
    let mut config = model.config.clone();
    if let Some(c) = config.as_object_mut() {
        if let Some(name) = dtype.and_then(hf_name) {
            let mut set = false;
            for key in ["torch_dtype", "dtype"] {
                if c.contains_key(key) {
                    c.insert(key.into(), Value::String(name.into()));
                    set = true;
                }
            }
            if !set {
                c.insert("torch_dtype".into(), Value::String(name.into()));
            }
        }
        if !bnb4::has_4bit(&model.tensors) {
            c.remove("quantization_config");
        }
    }
    write_json(&out_dir.join("config.json"), &config)?;
    files.push("config.json".into());

    // generation_config.json: copied, else made from the config's special token ids.
    let gen = "generation_config.json";
    if let Some(src) = find(src_dirs, gen) {
        copy(&src, &out_dir.join(gen))?;
        files.push(gen.into());
    } else {
        let mut g = serde_json::Map::new();
        g.insert("_from_model_config".into(), Value::Bool(true));
        for key in [
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "decoder_start_token_id",
        ] {
            if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
                g.insert(key.into(), v.clone());
            }
        }
        if let Some(v) = config.get("transformers_version") {
            g.insert("transformers_version".into(), v.clone());
        }
        if g.len() > 1 {
            write_json(&out_dir.join(gen), &Value::Object(g))?;
            files.push(gen.into());
        }
    }

    // Tokenizer files and remote code (ChatGLM, Qwen ship modeling_*.py / tokenization_*.py).
    let mut names: Vec<String> = TOKENIZER_FILES.iter().map(|s| s.to_string()).collect();
    for dir in src_dirs {
        if let Ok(rd) = std::fs::read_dir(dir) {
            let mut extra: Vec<String> = rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|f| f.ends_with(".py") || f.ends_with(".tiktoken"))
                .collect();
            extra.sort();
            for f in extra {
                if !names.contains(&f) {
                    names.push(f);
                }
            }
        }
    }
    for f in names {
        if let Some(src) = find(src_dirs, &f) {
            copy(&src, &out_dir.join(&f))?;
            files.push(f);
        }
    }
    Ok(ExportReport {
        files,
        shards: shards.count,
        total_size: shards.total_size,
        dtype,
        skipped,
    })
}

/// A dense f32 model dir as `Model::save_pretrained` writes it: `config.json` (the
/// checkpoint's own text, unchanged) and the weights (name, shape, values) through
/// [`write_sharded`] with transformers' default shard size.
pub fn write_f32_dir(
    dir: &Path,
    config_json: &str,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| FormatError::format(dir, e.to_string()))?;
    std::fs::write(dir.join("config.json"), config_json)
        .map_err(|e| FormatError::format(dir, e.to_string()))?;
    let owned = tensors
        .iter()
        .map(|(n, s, v)| Ok((n.as_str(), Tensor::from_f32(Dtype::F32, s.clone(), v)?)))
        .collect::<Result<Vec<_>>>()?;
    let plan: Vec<(&str, &Tensor, Dtype)> =
        owned.iter().map(|(n, t)| (*n, t, Dtype::F32)).collect();
    write_sharded(dir, &plan, DEFAULT_MAX_SHARD_SIZE)?;
    Ok(())
}

/// Read a Hugging Face model dir's `config.json` (for callers that export without merging).
pub fn read_config(dir: &Path) -> Result<Value> {
    read_json(&dir.join("config.json"))
}

fn find(dirs: &[&Path], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| FormatError::io(from, e))
}

/// Copies tokenizer files, generation config, remote code...: every plain file of `src` but
/// weights and config.json (the quantize step's output is its source dir, re-quantized).
pub fn copy_other_files(src: &Path, out: &Path) -> Result<()> {
    for e in std::fs::read_dir(src)
        .map_err(|e| FormatError::format(src, e.to_string()))?
        .flatten()
    {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        let weights = [
            ".safetensors",
            ".bin",
            ".pt",
            ".pth",
            ".ckpt",
            ".gguf",
            ".h5",
            ".msgpack",
        ]
        .iter()
        .any(|x| name.ends_with(x))
            || name == "model.safetensors.index.json"
            || name == "pytorch_model.bin.index.json";
        if !p.is_file() || weights || name == "config.json" || name == "model.json" {
            continue;
        }
        std::fs::copy(&p, out.join(&name)).map_err(|e| FormatError::format(&p, e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_dtype_names() {
        assert_eq!(OutDtype::parse("bf16"), Some(OutDtype::BF16));
        assert_eq!(OutDtype::parse("int8"), None);
        assert_eq!(OutDtype::Auto.resolve(Dtype::F16), Dtype::F16);
        assert_eq!(from_hf_name("torch.bfloat16"), Some(Dtype::BF16));
        assert_eq!(hf_name(Dtype::F32), Some("float32"));
    }
}
