//! Merge and export: fold a PEFT LoRA adapter into its base model and write a Hugging Face
//! model dir that transformers loads. Works directly on safetensors files (memory-mapped) and
//! PEFT adapter dirs, independent of the training engine.
//!
//! ```text
//! merge_adapter(base_dir, adapter_dir, &MergeOptions { dtype, requantize })  -> Merged { model: HfModel, report }
//! write_hf_dir(&merged.model, &[adapter_dir, base_dir], out_tmp_dir, &ExportOptions { max_shard_size, dtype })
//! ```
//!
//! Files: `io` (safetensors read/write, sharded dirs), `tensor` (dtype + shape + bytes),
//! `dtype` (bf16/f16 conversion), `finite` (the NaN/inf check every consumer runs), `nf4` (bitsandbytes 4-bit dequant), `requant` (4-bit
//! quantization back to the same layout), `adapter` (PEFT dirs), `merge` (the math), `hf_dir`
//! (config, shards, index, tokenizer files), `gguf` (GGUF v3 for llama.cpp / Ollama: writer,
//! reader, Modelfile). Fixtures: tests/reference/export_make_fixtures.py.

pub mod adapter;
pub mod dtype;
pub mod error;
pub mod finite;
pub mod gguf;
pub mod hf_dir;
pub mod io;
pub mod merge;
pub mod nf4;
pub mod requant;
pub mod tensor;

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use adapter::{read_adapter, Adapter, AdapterConfig, LoraModule};
pub use dtype::OutDtype;
pub use error::{ExportError, Result};
pub use finite::{check_finite, check_finite_dir, check_finite_file};
pub use hf_dir::{read_config, write_hf_dir, ExportOptions, ExportReport};
pub use io::{read_safetensors, read_safetensors_dir, write_safetensors};
pub use merge::{
    merge_adapter, merge_and_export, merge_into, ties_embeddings, HfModel, MergeOptions,
    MergeReport, Merged,
};
pub use tensor::{Tensor, Tensors};
