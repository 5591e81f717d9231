//! `quantize`: NF4/FP4 blockwise 4-bit quantization of the frozen base, with
//! double quantization of the absmax, in bitsandbytes' serialized layout.

use super::{def, opt, req, CheckCtx, Estimate, EstimateCtx, ParamSpec, Step, Ty};

pub struct Quantize;

static PARAMS: &[ParamSpec] = &[
    req("model", Ty::Step(&["load.model"]), "the model to quantize"),
    def("quant_type", Ty::Enum(&["nf4", "fp4"]), "\"nf4\"", "4-bit code"),
    def("blocksize", Ty::Int, "64", "elements per absmax block (32..4096, power of two)"),
    def("double_quant", Ty::Bool, "true", "quantize the absmax too (8-bit, blocks of 256)"),
    def("compute_dtype", Ty::Enum(&["bf16", "f16", "f32"]), "\"bf16\"", "dtype of the dequantized matmul"),
    opt("modules", Ty::StrList, "only these linear modules (default: all linear layers but the head)"),
    def(
        "skip_modules",
        Ty::StrList,
        "[\"lm_head\", \"output_layer\", \"embed_out\"]",
        "never quantize these",
    ),
];

impl Step for Quantize {
    fn kind(&self) -> &'static str {
        "quantize"
    }
    fn about(&self) -> &'static str {
        "NF4/FP4 4-bit quantization with double quant (bitsandbytes layout)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn check(&self, c: &mut CheckCtx) {
        let b = c.params.i64("blocksize");
        if !(32..=4096).contains(&b) || (b & (b - 1)) != 0 {
            c.error("blocksize", "blocksize must be a power of two in 32..=4096").got = Some(b.to_string());
        }
    }
    fn estimate(&self, e: &EstimateCtx) -> Option<Estimate> {
        crate::plan::memory::quantize_estimate(e)
    }
}

/// Load a quantize step's output as a model with 4-bit frozen linears.
pub fn load(dir: &std::path::Path) -> anyhow::Result<crate::model::Model> {
    anyhow::bail!("loading the quantized model in `{}` is not implemented yet", dir.display())
}
