//! Hugging Face checkpoint formats, one home each: `config.json` (one typed config),
//! sharded safetensors, the bitsandbytes 4-bit layout, PEFT adapters and the model-dir writer
//! used by save, quantize and export. Everything that reads or writes these files goes here.
//!
//! - `config`: `config.json` into one typed config.
//! - `safetensors`: the weights reader and writer (one file, sharded dirs + index, dtypes),
//!   [`Tensor`]/[`Tensors`] and the loader's [`WeightFiles`].
//! - `hf_dir`: a model dir in memory ([`HfModel`]) and the one writer of model dirs
//!   (weights, config.json, generation config, tokenizer files).
//! - `bnb4`: the bitsandbytes 4-bit layout (packed weight + quant state tensors and JSON).
//! - `peft`: PEFT adapter dirs (adapter_config.json + adapter_model.safetensors).
//! - `torch_bin`: PyTorch `.bin` checkpoints (torch.save's zip), read-only.
//! - `error`: [`FormatError`], naming the file, tensor or module.

pub mod bnb4;
pub mod config;
pub mod error;
pub mod hf_dir;
pub mod peft;
pub mod safetensors;
pub mod torch_bin;

pub use error::{FormatError, Result};
pub use hf_dir::{HfModel, OutDtype, TOKENIZER_FILES};
pub use safetensors::{Tensor, Tensors, WeightFiles};

use std::path::Path;

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| FormatError::format(path, format!("bad JSON: {e}")))
}

pub(crate) fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v).expect("JSON values serialize");
    s.push('\n');
    std::fs::write(path, s).map_err(|e| FormatError::io(path, e))
}
