//! Quantize dense weights back to bitsandbytes 4-bit in transformers' serialized layout (the
//! inverse of `nf4`), the way bitsandbytes 0.50 does on the CPU, so a merged QLoRA model can be
//! written as the 4-bit model it came from.
//!
//! 4-bit, per block of `blocksize` flattened elements (the last block may be partial):
//!   absmax = max |x|;  s = clamp(x · (1/absmax), −1, 1) (full blocks; partial: x / absmax)
//!   q = #{midpoints of the sorted code < s}  (an exact tie goes to the lower code)
//!   byte k = (q[2k] << 4) | q[2k+1]; an odd count is padded with the code of 0.
//! Double quant: offset = mean(absmax); per block of `nested_blocksize` absmax values
//!   absmax2 = max |a − offset|; q8 = nearest entry of the signed dynamic map to (a − offset)/absmax2.

use safetensors::Dtype;

use super::dtype::hf_name;
use super::error::{ExportError, Result};
use super::nf4::QuantSpec;
use super::tensor::Tensor;

/// The tensors that replace the dense weight `name`: `name` itself (u8 [(n+1)/2, 1]) and its
/// `.absmax`, `.nested_absmax`, `.nested_quant_map`, `.quant_map`, `.quant_state.bitsandbytes__*`.
pub fn quantize(name: &str, dense: &Tensor, spec: &QuantSpec) -> Result<Vec<(String, Tensor)>> {
    let bad = |msg: String| ExportError::mismatch(name, msg);
    if spec.blocksize == 0 || spec.code.len() != 16 {
        return Err(bad(
            "4-bit spec needs a blocksize and a 16-entry code".into()
        ));
    }
    let x = dense.to_f32()?;
    let n = x.len();
    let bs = spec.blocksize;

    // Sorted code and midpoints; q_sorted -> code index.
    let mut order: Vec<usize> = (0..16).collect();
    order.sort_by(|a, b| spec.code[*a].total_cmp(&spec.code[*b]));
    let mids: Vec<f32> = order
        .windows(2)
        .map(|w| (spec.code[w[0]] + spec.code[w[1]]) / 2.0)
        .collect();
    let quant = |s: f32| order[mids.iter().filter(|m| **m < s).count()] as u8;

    let mut absmax = Vec::with_capacity(n.div_ceil(bs));
    let mut q = Vec::with_capacity(n + 1);
    for block in x.chunks(bs) {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        let am = am.max(1e-38);
        let inv = 1.0 / am;
        for v in block {
            let s = if block.len() == bs { v * inv } else { v / am };
            q.push(quant(s.clamp(-1.0, 1.0)));
        }
    }
    if n % 2 == 1 {
        q.push(quant(0.0));
    }
    let packed: Vec<u8> = q.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();

    let dtype = hf_name(spec.dtype)
        .ok_or_else(|| bad(format!("compute dtype {:?} is not a float", spec.dtype)))?;
    let shape = dense
        .shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut state = format!(
        r#"{{"quant_type": "{}", "blocksize": {bs}, "dtype": "{dtype}", "shape": [{shape}]"#,
        spec.quant_type
    );
    let mut out = vec![(
        name.to_string(),
        Tensor::from_bytes(Dtype::U8, vec![packed.len(), 1], packed)?,
    )];
    match &spec.nested {
        None => out.push((
            format!("{name}.absmax"),
            Tensor::from_f32(Dtype::F32, vec![absmax.len()], &absmax)?,
        )),
        Some((nbs, code8)) => {
            if *nbs == 0 || code8.len() != 256 {
                return Err(bad(
                    "double quant needs a nested blocksize and a 256-entry map".into(),
                ));
            }
            let offset = absmax.iter().sum::<f32>() / absmax.len() as f32;
            let centered: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
            let (q8, absmax2) = quantize_8bit(&centered, code8, *nbs);
            out.push((
                format!("{name}.absmax"),
                Tensor::from_bytes(Dtype::U8, vec![q8.len()], q8)?,
            ));
            out.push((
                format!("{name}.nested_absmax"),
                Tensor::from_f32(Dtype::F32, vec![absmax2.len()], &absmax2)?,
            ));
            out.push((
                format!("{name}.nested_quant_map"),
                Tensor::from_f32(Dtype::F32, vec![256], code8)?,
            ));
            state += &format!(
                r#", "nested_blocksize": {nbs}, "nested_dtype": "float32", "nested_offset": {}"#,
                serde_json::Value::from(offset as f64)
            );
        }
    }
    state.push('}');
    out.push((
        format!("{name}.quant_map"),
        Tensor::from_f32(Dtype::F32, vec![16], &spec.code)?,
    ));
    let state = state.into_bytes();
    let key = format!("{name}.quant_state.bitsandbytes__{}", spec.quant_type);
    out.push((
        key,
        Tensor::from_bytes(Dtype::U8, vec![state.len()], state)?,
    ));
    Ok(out)
}

/// Blockwise 8-bit quantization with a sorted 256-entry map (bitsandbytes `quantize_cpu`: the
/// map's first entry is taken as −1; the nearer neighbour wins, a tie goes to the lower one).
fn quantize_8bit(x: &[f32], code: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let mut search = code.to_vec();
    search[0] = -1.0;
    let mut q = Vec::with_capacity(x.len());
    let mut absmax = Vec::new();
    for block in x.chunks(blocksize) {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        for v in block {
            let s = v / am;
            // Largest i with search[i] <= s (0 when s is below them all).
            let i = search.partition_point(|c| *c <= s).saturating_sub(1);
            let i = if i < 255 && (s - search[i + 1]).abs() < (s - search[i]).abs() {
                i + 1
            } else {
                i
            };
            q.push(i as u8);
        }
    }
    (q, absmax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::io::read_safetensors;
    use crate::export::nf4::{dequantize, NF4_CODE};
    use crate::export::testutil::fixture;

    /// Our re-quantization of the merged bf16 weights equals bitsandbytes' quantize_4bit (nf4,
    /// double quant): packed bytes, u8 absmax and nested absmax; the offset to 1 f32 ulp.
    #[test]
    fn requantize_matches_bitsandbytes() {
        let t = read_safetensors(&fixture("llama_nf4/expected.safetensors")).unwrap();
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
            let mut tensors = crate::export::Tensors::new();
            tensors.extend(ours);
            let (back, spec2) = dequantize(
                &tensors,
                name,
                &format!("{name}.quant_state.bitsandbytes__nf4"),
            )
            .unwrap();
            assert_eq!(
                (back.shape.clone(), spec2.blocksize),
                (dense.shape.clone(), 64)
            );
            checked += 1;
        }
        assert_eq!(checked, 4);
    }
}
