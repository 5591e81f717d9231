//! Hugging Face checkpoint formats, one home each: `config.json` (one typed config),
//! sharded safetensors, the bitsandbytes 4-bit layout, PEFT adapters and the model-dir writer
//! used by save, quantize and export. Everything that reads or writes these files goes here.

pub mod config;
