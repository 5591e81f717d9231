//! Quantize dense weights back to bitsandbytes 4-bit in transformers' serialized layout (the
//! inverse of `nf4`), so a merged QLoRA model can be written as the 4-bit model it came from.
//!
//! The numbers come from the one 4-bit quantizer, `quant::four_bit::quantize_4bit` (bnb 0.50's
//! `quantize_4bit` on the CPU: blocks over the flattened tensor, a partial last block, double
//! quant with torch's mean order), and the layout from `formats::bnb4` (`Quantized4::to_tensors`). A copy that
//! lived here summed the absmax for the double-quant offset in a different order, which moved
//! the offset by an ulp and with it some 8-bit codes (issue 12).

use crate::formats::bnb4::QuantSpec;
use crate::formats::safetensors::{hf_name, Tensor};
use crate::formats::{FormatError, Result};
use crate::quant::four_bit::NESTED_BLOCKSIZE;
use crate::quant::{dynamic_map, quantize_4bit, QuantType};

/// The tensors that replace the dense weight `name`: `name` itself (u8 [(n+1)/2, 1]) and its
/// `.absmax`, `.nested_absmax`, `.nested_quant_map`, `.quant_map`, `.quant_state.bitsandbytes__*`.
/// The spec's codes must be bitsandbytes' own (they are in every file bitsandbytes writes).
pub fn quantize(name: &str, dense: &Tensor, spec: &QuantSpec) -> Result<Vec<(String, Tensor)>> {
    let bad = |msg: String| FormatError::mismatch(name, msg);
    let qt = QuantType::from_name(&spec.quant_type)
        .ok_or_else(|| bad(format!("quant_type `{}` is not nf4/fp4", spec.quant_type)))?;
    if spec.code[..] != qt.code()[..] {
        return Err(bad(format!(
            "quant_map is not bitsandbytes' {} code; re-quantizing to another code is not supported",
            qt.name()
        )));
    }
    if let Some((nbs, code8)) = &spec.nested {
        if *nbs != NESTED_BLOCKSIZE || code8[..] != dynamic_map(true)[..] {
            return Err(bad(format!(
                "double quant needs nested blocksize {NESTED_BLOCKSIZE} and the signed dynamic map"
            )));
        }
    }
    let dtype = hf_name(spec.dtype)
        .ok_or_else(|| bad(format!("compute dtype {:?} is not a float", spec.dtype)))?;
    let q = quantize_4bit(
        &dense.to_f32()?,
        &dense.shape,
        spec.blocksize,
        qt,
        spec.nested.is_some(),
        dtype,
    )
    .map_err(|e| bad(e.to_string()))?;
    q.to_tensors(name)
        .into_iter()
        .map(|(n, d, s, b)| Ok((n, Tensor::from_bytes(d, s, b)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::testutil::fixture;
    use crate::formats::bnb4::dequantize;
    use crate::formats::safetensors::read_file;
    use crate::quant::codes::NF4 as NF4_CODE;
    use safetensors::Dtype;

    /// Our re-quantization of the merged bf16 weights equals bitsandbytes' quantize_4bit (nf4,
    /// double quant): packed bytes, u8 absmax and nested absmax; the offset to 1 f32 ulp.
    #[test]
    fn requantize_matches_bitsandbytes() {
        let t = read_file(&fixture("llama_nf4/expected.safetensors")).unwrap();
        let mut checked = 0;
        for key in t.keys().filter(|k| k.starts_with("merged.")) {
            let name = &key["merged.".len()..];
            let code8 = t[&format!("requant.{name}.nested_quant_map")]
                .to_f32()
                .unwrap();
            let spec = QuantSpec {
                quant_type: "nf4".into(),
                blocksize: 64,
                dtype: Dtype::BF16,
                code: NF4_CODE.to_vec(),
                nested: Some((256, code8)),
            };
            let dense = t[key].to_dtype(Dtype::BF16).unwrap();
            let ours = quantize(name, &dense, &spec).unwrap();
            for (k, v) in &ours {
                let want = &t[&format!("requant.{k}")];
                if k.ends_with("bitsandbytes__nf4") {
                    let a: serde_json::Value = serde_json::from_slice(v.bytes()).unwrap();
                    let b: serde_json::Value = serde_json::from_slice(want.bytes()).unwrap();
                    let (oa, ob) = (
                        a["nested_offset"].as_f64().unwrap() as f32,
                        b["nested_offset"].as_f64().unwrap() as f32,
                    );
                    assert!(
                        (oa - ob).abs() <= ob.abs() * f32::EPSILON,
                        "{k}: {oa} vs {ob}"
                    );
                    assert_eq!(a["shape"], b["shape"]);
                    assert_eq!(a["blocksize"], b["blocksize"]);
                    continue;
                }
                assert_eq!((v.dtype, &v.shape), (want.dtype, &want.shape), "{k}");
                assert!(v.bytes() == want.bytes(), "{k}");
            }
            // And it dequantizes through our reader.
            let mut tensors = crate::formats::Tensors::new();
            tensors.extend(ours);
            let (back, spec2) = dequantize(&tensors, name).unwrap();
            assert_eq!(
                (back.shape.clone(), spec2.blocksize),
                (dense.shape.clone(), 64)
            );
            checked += 1;
        }
        assert_eq!(checked, 4);
    }
}
