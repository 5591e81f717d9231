//! Fold a LoRA adapter into its base model's weights, in f32:
//!
//!   nn.Linear [d_out, d_in]:              W' = W + s·B·A
//!   Conv1D [d_in, d_out] (fan_in_fan_out) and embeddings [num, dim]:  W' = W + s·(B·A)ᵀ
//!   lora_B bias (lora_bias):              b' = b + s·b_B
//!   modules_to_save / saved base layers:  the adapter's tensor replaces the base tensor
//!
//! with A [r, d_in], B [d_out, r], s = alpha/r (rsLoRA: alpha/√r). As in PEFT, ΔW = (B·A)·s is
//! formed first and then added. A 4-bit (bitsandbytes) base is dequantized to its compute dtype
//! first: the merge never writes back into 4-bit.

use std::path::Path;

use rayon::prelude::*;
use safetensors::Dtype;

use crate::formats::bnb4;
use crate::formats::hf_dir::{ties_embeddings, write_hf_dir, ExportOptions, ExportReport};
use crate::formats::peft::{read_adapter, weights_file, Adapter, LoraModule};
use crate::formats::safetensors::{shape_str, Tensor, Tensors};
use crate::formats::{FormatError, HfModel, OutDtype, Result};

#[derive(Debug, Clone, Copy, Default)]
pub struct MergeOptions {
    /// dtype of the merged (and replaced) tensors; `Auto` = each base tensor's dtype
    /// (a dequantized 4-bit base: its compute dtype). Export with the same dtype.
    pub dtype: OutDtype,
    /// Quantize the merged weights of a 4-bit base back to 4-bit (same quant type, blocksize
    /// and double quant; untouched weights keep their original bytes) and keep the config's
    /// `quantization_config`. An error for a base that is not 4-bit.
    pub requantize: bool,
}

#[derive(Debug, Default, Clone)]
pub struct MergeReport {
    /// Base tensors that received a LoRA delta (`M.weight`, and `M.bias` with lora_bias).
    pub merged: Vec<String>,
    /// Base tensors replaced by the adapter's copy (modules_to_save and friends).
    pub replaced: Vec<String>,
    /// 4-bit weights dequantized before merging.
    pub dequantized: Vec<String>,
    /// The adapter replaced a tied embedding (modules_to_save): as PEFT's merge_and_unload
    /// does, `lm_head.weight` keeps the old embedding and `tie_word_embeddings` becomes false.
    pub untied: bool,
    /// Weights quantized back to 4-bit (`requantize`).
    pub requantized: Vec<String>,
}

/// Input embedding names of the families whose lm_head may be tied to it.
const EMBEDDINGS: &[&str] = &[
    "model.embed_tokens.weight",
    "transformer.wte.weight",
    "transformer.word_embeddings.weight",
    "transformer.embedding.word_embeddings.weight",
    "model.decoder.embed_tokens.weight",
];
const LM_HEAD: &str = "lm_head.weight";

fn embedding_name(tensors: &Tensors) -> Option<String> {
    EMBEDDINGS
        .iter()
        .find(|n| tensors.contains_key(**n))
        .map(|n| n.to_string())
}

#[derive(Debug)]
pub struct Merged {
    pub model: HfModel,
    pub report: MergeReport,
}

/// Read the base model dir and the PEFT adapter dir and merge them.
pub fn merge_adapter(base_dir: &Path, adapter_dir: &Path, opts: &MergeOptions) -> Result<Merged> {
    let mut model = HfModel::load(base_dir)?;
    super::finite::check_finite(&model.tensors, &base_dir.display().to_string())?;
    let adapter = read_adapter(adapter_dir)?;
    super::finite::check_finite_file(&weights_file(adapter_dir))?;
    let report = merge_into(&mut model, &adapter, opts)?;
    // Finite inputs can still overflow (an f16 base): never write an inf.
    super::finite::check_finite(&model.tensors, "the merged model")?;
    Ok(Merged { model, report })
}

/// Merge and write in one go, with the same dtype for both: read `base_dir` and `adapter_dir`,
/// merge, and write a Hugging Face dir into `out_dir` (tokenizer and generation config files
/// from the adapter dir first, then the base dir).
pub fn merge_and_export(
    base_dir: &Path,
    adapter_dir: &Path,
    out_dir: &Path,
    dtype: OutDtype,
    max_shard_size: u64,
) -> Result<(MergeReport, ExportReport)> {
    let merged = merge_adapter(
        base_dir,
        adapter_dir,
        &MergeOptions {
            dtype,
            requantize: false,
        },
    )?;
    let opts = ExportOptions {
        max_shard_size,
        dtype,
    };
    let export = write_hf_dir(&merged.model, &[adapter_dir, base_dir], out_dir, &opts)?;
    Ok((merged.report, export))
}

/// Merge `adapter` into `model` in place (dequantizing a 4-bit base first).
pub fn merge_into(
    model: &mut HfModel,
    adapter: &Adapter,
    opts: &MergeOptions,
) -> Result<MergeReport> {
    if let Some(k) = model.tensors.keys().find(|k| k.ends_with(".SCB")) {
        return Err(FormatError::Unsupported(format!(
            "{}: `{k}`: 8-bit (LLM.int8) bases cannot be merged; merge into the unquantized model",
            model.dir.display()
        )));
    }
    let mut report = MergeReport::default();
    let mut specs = Vec::new();
    let original = model.tensors.clone(); // cheap: mapped tensors share the file
    let quant_config = model.config.get("quantization_config").cloned();
    if bnb4::has_4bit(&model.tensors) {
        specs = bnb4::dequantize_all(&mut model.tensors)?;
        report.dequantized = specs.iter().map(|(n, _)| n.clone()).collect();
        if let Some(c) = model.config.as_object_mut() {
            c.remove("quantization_config");
        }
    } else if opts.requantize {
        return Err(FormatError::Unsupported(format!(
            "{}: requantize needs a 4-bit (bitsandbytes) base; this one is not quantized",
            model.dir.display()
        )));
    }
    let tensors = &mut model.tensors;
    let tied = ties_embeddings(&model.config) && !tensors.contains_key(LM_HEAD);
    let embedding = if tied { embedding_name(tensors) } else { None };
    if let Some(emb) = &embedding {
        if adapter.replace.contains_key(emb) || adapter.replace.contains_key(LM_HEAD) {
            // PEFT: the saved copy replaces one side only; the other keeps the old weights.
            let old = tensors[emb].clone();
            tensors.insert(LM_HEAD.to_string(), old);
            if let Some(c) = model.config.as_object_mut() {
                c.insert("tie_word_embeddings".into(), serde_json::Value::Bool(false));
            }
            report.untied = true;
        }
    }

    for (name, new) in &adapter.replace {
        let base = tensors.get(name).ok_or_else(|| {
            FormatError::mismatch(name, "the adapter saves this tensor (modules_to_save) but the base model has no such tensor")
        })?;
        if base.shape != new.shape {
            return Err(FormatError::mismatch(
                name,
                format!(
                    "the adapter's copy is {} but the base tensor is {}",
                    shape_str(&new.shape),
                    shape_str(&base.shape)
                ),
            ));
        }
        let dtype = if base.is_float() {
            opts.dtype.resolve(base.dtype)
        } else {
            base.dtype
        };
        let value = if new.is_float() {
            new.to_dtype(dtype)?
        } else {
            new.clone()
        };
        tensors.insert(name.clone(), value);
        report.replaced.push(name.clone());
    }

    for m in &adapter.lora {
        let transposed = m.embedding || adapter.config.fan_in_fan_out;
        let mut wname = format!("{}.weight", m.module);
        if wname == LM_HEAD && !tensors.contains_key(LM_HEAD) {
            // A LoRA on a tied lm_head changes the shared embedding (as in PEFT).
            if let Some(emb) = &embedding {
                wname = emb.clone();
            }
        }
        let base = tensors.get(&wname).ok_or_else(|| {
            FormatError::mismatch(
                &m.module,
                format!("the adapter has a LoRA for it but the base model has no tensor `{wname}`"),
            )
        })?;
        check_shapes(m, base, transposed)?;
        let merged = add_delta(m, base, transposed, opts.dtype.resolve(base.dtype))?;
        tensors.insert(wname.clone(), merged);
        report.merged.push(wname);
        if let Some(bias) = &m.bias {
            let bname = format!("{}.bias", m.module);
            let base = tensors.get(&bname).ok_or_else(|| {
                FormatError::mismatch(
                    &m.module,
                    format!("the adapter has a lora_B bias but the base has no `{bname}`"),
                )
            })?;
            if base.shape != [m.b.shape[0]] {
                return Err(FormatError::mismatch(
                    &m.module,
                    format!(
                        "lora_B.bias is [{}] but the base bias is {}",
                        m.b.shape[0],
                        shape_str(&base.shape)
                    ),
                ));
            }
            let mut b = base.to_f32()?;
            for (x, d) in b.iter_mut().zip(bias.to_f32()?) {
                *x += d * m.scale;
            }
            let t = Tensor::from_f32(opts.dtype.resolve(base.dtype), base.shape.clone(), &b)?;
            tensors.insert(bname.clone(), t);
            report.merged.push(bname);
        }
    }
    if opts.requantize {
        requantize(model, &original, &specs, &mut report)?;
        if let (Some(c), Some(q)) = (model.config.as_object_mut(), quant_config) {
            c.insert("quantization_config".into(), q);
        }
    }
    Ok(report)
}

/// Put 4-bit weights back where the dense ones are: merged ones quantized again, the others
/// with their original pieces from `original`.
fn requantize(
    model: &mut HfModel,
    original: &Tensors,
    specs: &[(String, bnb4::QuantSpec)],
    report: &mut MergeReport,
) -> Result<()> {
    let mut pieces: std::collections::HashMap<&str, Vec<(String, Tensor)>> =
        std::collections::HashMap::new();
    for (name, spec) in specs {
        let p = if report.merged.contains(name) {
            report.requantized.push(name.clone());
            super::requant::quantize(name, &model.tensors[name], spec)?
        } else {
            let prefix = format!("{name}.");
            original
                .iter()
                .filter(|(k, _)| {
                    *k == name
                        || (k.starts_with(&prefix) && bnb4::is_state_piece(&k[prefix.len()..]))
                })
                .map(|(k, t)| (k.clone(), t.clone()))
                .collect()
        };
        pieces.insert(name, p);
    }
    model.tensors = std::mem::take(&mut model.tensors)
        .into_iter()
        .flat_map(|(k, t)| match pieces.remove(k.as_str()) {
            Some(p) => p,
            None => vec![(k, t)],
        })
        .collect();
    Ok(())
}

/// The base weight must be [d_out, d_in] ([d_in, d_out] when transposed) and float.
fn check_shapes(m: &LoraModule, base: &Tensor, transposed: bool) -> Result<()> {
    let (r, d_in, d_out) = (m.r, m.a.shape[1], m.b.shape[0]);
    let want = if transposed {
        [d_in, d_out]
    } else {
        [d_out, d_in]
    };
    if base.shape != want {
        let layout = if m.embedding {
            " (embedding: [num_embeddings, dim])"
        } else if transposed {
            " (fan_in_fan_out: [d_in, d_out])"
        } else {
            ""
        };
        let hint = if base.shape == [want[1], want[0]] {
            if transposed {
                "; is fan_in_fan_out wrongly set?"
            } else {
                "; is this a Conv1D weight (GPT-2 style) that needs fan_in_fan_out = true?"
            }
        } else {
            ""
        };
        return Err(FormatError::mismatch(
            &m.module,
            format!(
                "lora_A is [r, d_in] = {} and lora_B is [d_out, r] = {}, so the base weight should be {}{layout}, but the base weight is {}{hint}",
                shape_str(&[r, d_in]),
                shape_str(&[d_out, r]),
                shape_str(&want),
                shape_str(&base.shape),
            ),
        ));
    }
    if !base.is_float() {
        return Err(FormatError::mismatch(
            &m.module,
            format!("the base weight is {:?}, not a float tensor", base.dtype),
        ));
    }
    Ok(())
}

/// W + s·B·A (or its transpose) in f32, stored as `dtype`.
fn add_delta(m: &LoraModule, base: &Tensor, transposed: bool, dtype: Dtype) -> Result<Tensor> {
    let (r, d_in, d_out) = (m.r, m.a.shape[1], m.b.shape[0]);
    let a = m.a.to_f32()?; // [r, d_in]
    let b = m.b.to_f32()?; // [d_out, r]
    let mut w = base.to_f32()?;
    // delta [d_out, d_in], row i = Σ_k B[i,k]·A[k,:] (summed in k order), then ·s.
    let delta_row = |i: usize, row: &mut [f32]| {
        row.fill(0.0);
        for k in 0..r {
            let c = b[i * r + k];
            for (x, y) in row.iter_mut().zip(&a[k * d_in..(k + 1) * d_in]) {
                *x += c * y;
            }
        }
    };
    if !transposed {
        w.par_chunks_mut(d_in).enumerate().for_each(|(i, wrow)| {
            let mut row = vec![0f32; d_in];
            delta_row(i, &mut row);
            for (x, d) in wrow.iter_mut().zip(&row) {
                *x += d * m.scale;
            }
        });
    } else {
        // w is [d_in, d_out]: w[j, i] += s·delta[i, j].
        let mut row = vec![0f32; d_in];
        for i in 0..d_out {
            delta_row(i, &mut row);
            for (j, d) in row.iter().enumerate() {
                w[j * d_out + i] += d * m.scale;
            }
        }
    }
    Tensor::from_f32(dtype, base.shape.clone(), &w)
}
