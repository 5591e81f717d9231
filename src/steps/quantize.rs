//! `quantize`: NF4/FP4 blockwise 4-bit quantization of the frozen base, with
//! double quantization of the absmax, in bitsandbytes' serialized layout.

use super::{def, opt, req, CheckCtx, Estimate, EstimateCtx, Kind, ParamSpec, RunCtx, Ty};
use crate::model::quantized::{save_quantized, QuantizeSpec};
use crate::quant::QuantType;
use crate::util::human_bytes;
use anyhow::Context;

pub struct Quantize;

/// The keys of a `quantize` step.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeParams {
    pub model: String,
    pub quant_type: String,
    /// Checked (`check`): a power of two in 32..=4096.
    pub blocksize: i64,
    pub double_quant: bool,
    pub compute_dtype: String,
    pub modules: Option<Vec<String>>,
    pub skip_modules: Vec<String>,
}

static PARAMS: &[ParamSpec] = &[
    req("model", Ty::Step(&["load.model"]), "the model to quantize"),
    def(
        "quant_type",
        Ty::Enum(&["nf4", "fp4"]),
        "\"nf4\"",
        "4-bit code",
    ),
    def(
        "blocksize",
        Ty::Int,
        "64",
        "elements per absmax block (32..4096, power of two)",
    ),
    def(
        "double_quant",
        Ty::Bool,
        "true",
        "quantize the absmax too (8-bit, blocks of 256)",
    ),
    def(
        "compute_dtype",
        Ty::Enum(&["bf16", "f16", "f32"]),
        "\"bf16\"",
        "dtype of the dequantized matmul",
    ),
    opt(
        "modules",
        Ty::StrList,
        "only these linear modules (default: all linear layers but the head)",
    ),
    def(
        "skip_modules",
        Ty::StrList,
        "[\"lm_head\", \"output_layer\", \"embed_out\"]",
        "never quantize these",
    ),
];

impl Kind for Quantize {
    type Params = QuantizeParams;
    const KIND: &'static str = "quantize";
    const ABOUT: &'static str =
        "NF4/FP4 4-bit quantization with double quant (bitsandbytes layout)";
    const PARAMS: &'static [ParamSpec] = PARAMS;
    fn check(&self, p: &QuantizeParams, c: &mut CheckCtx) {
        let b = p.blocksize;
        if !(32..=4096).contains(&b) || (b & (b - 1)) != 0 {
            c.error("blocksize", "blocksize must be a power of two in 32..=4096")
                .got = Some(b.to_string());
        }
    }
    fn estimate(&self, e: &EstimateCtx) -> Option<Estimate> {
        super::memory::quantize_estimate(e)
    }
    /// Reads the input model's safetensors (memory-mapped), quantizes each selected layer
    /// linear, and writes the bitsandbytes layout + config + tokenizer files into `ctx.out`,
    /// with a `model.json` pointing downstream steps at the original tokenizer dir.
    fn run(&self, p: &QuantizeParams, ctx: &RunCtx) -> anyhow::Result<()> {
        let m = super::io::model_dirs(ctx.input("model")?)?;
        let spec = spec_of(p);
        ctx.info(format!(
            "{} blocksize {}{} of `{}`",
            spec.quant_type.name(),
            spec.blocksize,
            if spec.double_quant {
                " + double quant"
            } else {
                ""
            },
            m.weights.display()
        ));
        let bar = ctx.bar(0, "quantize");
        let t0 = std::time::Instant::now();
        let stats = save_quantized(&m.weights, ctx.out, &spec, &mut |done, total, name| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(name.to_string());
        })
        .with_context(|| format!("quantizing `{}`", m.weights.display()))?;
        bar.finish_and_clear();
        let summary = serde_json::json!({
            "path": ".",
            "tokenizer": m.tokenizer.display().to_string(),
            "family": m.family,
        });
        std::fs::write(
            ctx.out.join("model.json"),
            serde_json::to_vec_pretty(&summary)?,
        )?;
        ctx.info(format!(
            "quantized {} of {} tensors: {} -> {} in {:.1}s",
            stats.quantized,
            stats.tensors,
            human_bytes(stats.bytes_in),
            human_bytes(stats.bytes_out),
            t0.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// The step's params as a [`QuantizeSpec`] (values were validated by the recipe checker).
pub fn spec_of(p: &QuantizeParams) -> QuantizeSpec {
    QuantizeSpec {
        quant_type: if p.quant_type == "fp4" {
            QuantType::Fp4
        } else {
            QuantType::Nf4
        },
        blocksize: p.blocksize.max(0) as usize,
        double_quant: p.double_quant,
        compute_dtype: QuantizeSpec::torch_dtype_name(&p.compute_dtype).to_string(),
        modules: p.modules.clone(),
        skip_modules: p.skip_modules.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::{InputRef, Params};
    use indexmap::IndexMap;
    use serde_json::json;

    /// The step writes transformers' bytes for the tiny LLaMA and a model.json that resolves
    /// to its own dir (weights) and the source dir (tokenizer).
    #[test]
    fn run_writes_the_bnb_layout_and_model_json() {
        let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/quant/tiny_llama");
        let out = tempfile::tempdir().unwrap();
        let mut params = Params::default();
        for (k, v) in [
            ("model", json!("base")),
            ("quant_type", json!("nf4")),
            ("blocksize", json!(64)),
            ("double_quant", json!(true)),
            ("compute_dtype", json!("f32")),
            (
                "skip_modules",
                json!(["lm_head", "output_layer", "embed_out"]),
            ),
        ] {
            params.map.insert(k.into(), v);
        }
        let mut inputs = IndexMap::new();
        inputs.insert(
            "model".to_string(),
            InputRef {
                step: "base".into(),
                kind: "load.model",
                dir: src.join("f32"),
                params: Params::default(),
            },
        );
        let progress = crate::steps::Progress::new(false);
        let ctx = RunCtx {
            id: "q",
            params: &params,
            inputs: &inputs,
            out: out.path(),
            work: out.path(),
            recipe_dir: out.path(),
            device: "cpu",
            planned_peak: None,
            progress: &progress,
        };
        super::super::Step::run(&Quantize, &ctx).expect("run");
        let got = std::fs::read(out.path().join("model.safetensors")).unwrap();
        assert!(got == std::fs::read(src.join("nf4_dq/model.safetensors")).unwrap());
        let r = InputRef {
            step: "q".into(),
            kind: "quantize",
            dir: out.path().to_path_buf(),
            params: Params::default(),
        };
        let dirs = crate::steps::io::model_dirs(&r).unwrap();
        assert_eq!(
            (dirs.weights, dirs.tokenizer, dirs.family.as_str()),
            (out.path().join("."), src.join("f32"), "llama")
        );
    }
}

/// Load a quantize step's output as a model with 4-bit frozen linears.
pub fn load(
    dir: &std::path::Path,
    opts: &crate::model::LoadOptions,
) -> anyhow::Result<crate::model::Model> {
    crate::model::quantized::load_quantized_model(dir, opts)
        .map_err(|e| anyhow::anyhow!("loading the quantized model in `{}`: {e}", dir.display()))
}
