//! Write a Hugging Face model dir that transformers' `from_pretrained` loads: `config.json`
//! (dtype updated, `quantization_config` dropped once nothing is 4-bit), `generation_config.json`,
//! safetensors split by `max_shard_size` the way transformers splits them, and the tokenizer
//! files (plus remote-code `*.py`) of the source dirs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::{json, Value};

use super::dtype::{hf_name, OutDtype};
use super::error::{ExportError, Result};
use super::io::{read_json, write_json, write_safetensors, INDEX_FILE, SINGLE_FILE};
use super::merge::HfModel;
use super::nf4;
use super::tensor::Tensor;

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
            max_shard_size: 5_000_000_000,
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
    std::fs::create_dir_all(out_dir).map_err(|e| ExportError::io(out_dir, e))?;
    let not_empty = std::fs::read_dir(out_dir)
        .map_err(|e| ExportError::io(out_dir, e))?
        .next()
        .is_some();
    if not_empty {
        return Err(ExportError::format(out_dir, "the output dir is not empty"));
    }
    if opts.max_shard_size == 0 {
        return Err(ExportError::Unsupported(
            "max_shard_size must be positive".into(),
        ));
    }

    // What is written, in which dtype, and how big.
    let mut skipped = Vec::new();
    let tied = super::merge::ties_embeddings(&model.config);
    let mut plan: Vec<(&str, &Tensor, Dtype, u64)> = Vec::new();
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
        let bytes = (t.numel() * dtype.bitsize()).div_ceil(8) as u64;
        plan.push((name, t, dtype, bytes));
    }

    // transformers / huggingface_hub sharding: fill shards in order; a tensor that does not fit
    // closes the current shard; one larger than the limit gets its own shard.
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_size = 0u64;
    for (i, &(_, _, _, size)) in plan.iter().enumerate() {
        if size > opts.max_shard_size {
            shards.push(vec![i]);
            continue;
        }
        if current_size + size > opts.max_shard_size && !current.is_empty() {
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
    let mut weight_map = BTreeMap::new();
    for (s, members) in shards.iter().enumerate() {
        let file = if n == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", s + 1, n)
        };
        // Convert this shard's tensors only (at most max_shard_size in memory).
        let mut converted: Vec<(&str, Tensor)> = Vec::with_capacity(members.len());
        for &i in members {
            let (name, t, dtype, _) = plan[i];
            let t = if dtype == t.dtype {
                t.clone()
            } else {
                t.to_dtype(dtype)?
            };
            converted.push((name, t));
            weight_map.insert(name.to_string(), Value::String(file.clone()));
        }
        write_safetensors(&out_dir.join(&file), converted.iter().map(|(k, t)| (*k, t)))?;
        files.push(file);
    }
    let total_size: u64 = plan.iter().map(|p| p.3).sum();
    if n > 1 {
        let index = json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
        write_json(&out_dir.join(INDEX_FILE), &index)?;
        files.push(INDEX_FILE.to_string());
    }

    // config.json: the dtype most of the float weights have.
    let dtype = match opts.dtype {
        OutDtype::Auto => {
            let mut by: BTreeMap<&str, u64> = BTreeMap::new();
            for (_, t, d, _) in &plan {
                if let Some(name) = hf_name(*d) {
                    *by.entry(name).or_default() += t.numel() as u64;
                }
            }
            by.into_iter()
                .max_by_key(|(_, n)| *n)
                .and_then(|(name, _)| super::dtype::from_hf_name(name))
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
        if !nf4::has_4bit(&model.tensors) {
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
        shards: n,
        total_size,
        dtype,
        skipped,
    })
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
        .map_err(|e| ExportError::io(from, e))
}
