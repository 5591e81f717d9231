//! `merge`: fold LoRA (and modules_to_save) into the base weights. An NF4
//! base is dequantized to bf16/f16 first; never merged into 4-bit silently.

use super::{def, req, ParamSpec, Step, Ty};

pub struct Merge;

static PARAMS: &[ParamSpec] = &[
    req("model", Ty::Step(&["load.model", "quantize"]), "the base model"),
    req("adapter", Ty::Step(&["train"]), "the train step whose adapter is merged"),
    def("dtype", Ty::Enum(&["auto", "f32", "bf16", "f16"]), "\"auto\"", "dtype of the merged weights"),
    def("requantize", Ty::Bool, "false", "re-quantize the merged model to NF4 (bitsandbytes layout)"),
];

impl Step for Merge {
    fn kind(&self) -> &'static str {
        "merge"
    }
    fn about(&self) -> &'static str {
        "merge a LoRA adapter into its base model"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
}
