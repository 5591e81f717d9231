//! Blockwise quantization as bitsandbytes does it on the CPU: NF4/FP4 4-bit weights with
//! double-quantized absmax (QLoRA), 8-bit blockwise quantization with the dynamic maps (also
//! used by the 8-bit optimizer), matmuls that dequantize on the fly (`QuantLinear`, the frozen-weight
//! interface the engine multiplies through). A Model built from or into 4-bit weights is
//! `crate::model::quantized`; their safetensors layout
//! (tensor names, quant_state JSON) is `crate::formats::bnb4`.

pub mod blockwise8;
pub mod codes;
pub mod four_bit;
pub mod half;
pub mod linear;
pub mod testgen;
pub mod torch_sum;

pub use blockwise8::Blockwise8;
pub use codes::{dynamic_map, QuantType};
pub use four_bit::{quantize_4bit, Absmax, QuantError, QuantState, Quantized4};
pub use linear::{Linear4bit, QuantLinear};

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
pub(crate) mod unaligned_tests;
