//! `export`: write a Hugging Face model dir (config, generation config,
//! sharded safetensors + index, tokenizer files) that transformers loads.

use super::{def, opt, req, ParamSpec, Step, Ty};

pub struct Export;

static PARAMS: &[ParamSpec] = &[
    req("model", Ty::Step(&["merge", "load.model", "quantize"]), "the model to export"),
    opt("adapter", Ty::Step(&["train"]), "the adapter, to compare merged logits with base + adapter"),
    def("max_shard_size", Ty::Str, "\"5GB\"", "largest safetensors shard, e.g. \"2GB\", \"500MB\""),
    def("verify", Ty::Bool, "true", "compare logits of the export with base + adapter on a few inputs"),
];

impl Step for Export {
    fn kind(&self) -> &'static str {
        "export"
    }
    fn about(&self) -> &'static str {
        "write a Hugging Face model dir that transformers loads"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn check(&self, c: &mut super::CheckCtx) {
        if crate::util::parse_size(c.params.str("max_shard_size")).is_none() {
            c.error("max_shard_size", "not a size").expected = Some("e.g. \"2GB\", \"500MB\", \"1GiB\"".into());
        }
    }
}
