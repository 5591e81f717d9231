//! Merge and export: fold a PEFT LoRA adapter into its base model and write a Hugging Face
//! model dir that transformers loads, or a GGUF file. Works directly on safetensors files
//! (memory-mapped) and PEFT adapter dirs, independent of the training engine.
//!
//! ```text
//! merge_adapter(base_dir, adapter_dir, &MergeOptions { dtype, requantize })  -> Merged { model: HfModel, report }
//! write_hf_dir(&merged.model, &[adapter_dir, base_dir], out_tmp_dir, &ExportOptions { max_shard_size, dtype })
//! ```
//!
//! Files: `merge` (the math), `requant` (merged weights back to bitsandbytes 4-bit with the
//! one quantizer), `finite` (the NaN/inf check every consumer runs), `gguf` (GGUF v3 for
//! llama.cpp / Ollama: writer, reader, Modelfile). The files they read and write (safetensors,
//! model dirs, the 4-bit layout, PEFT adapters) are `crate::formats`; the names re-exported
//! here are the ones merge and export take and give. Fixtures:
//! tests/reference/export_make_fixtures.py.

pub mod finite;
pub mod gguf;
pub mod merge;
pub mod requant;

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use crate::formats::hf_dir::{write_hf_dir, ExportOptions, ExportReport};
pub use crate::formats::{FormatError, HfModel, OutDtype, Result};
pub use finite::{check_finite, check_finite_dir, check_finite_file};
pub use merge::{merge_adapter, merge_and_export, merge_into, MergeOptions, MergeReport, Merged};
