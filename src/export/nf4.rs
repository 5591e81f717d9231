//! bitsandbytes 4-bit (NF4 / FP4) weights in transformers' serialized layout, dequantized to
//! their quant state's dtype so an adapter can be merged into them (never into 4-bit).
//!
//! Keys beside a packed `X.weight` (u8 [(n+1)/2, 1], first element in the HIGH nibble):
//! `X.weight.absmax` (f32 per block, or u8 when double-quantized), `X.weight.nested_absmax`
//! (f32 per 256 blocks), `X.weight.nested_quant_map` (f32[256]), `X.weight.quant_map`
//! (f32[16], the 4-bit code) and `X.weight.quant_state.bitsandbytes__nf4` (or `__fp4`): the
//! JSON bytes {quant_type, blocksize, dtype, shape, nested_blocksize, nested_offset}.
//!
//! Dequant:  absmax[b] = nested_quant_map[q8[b]] · nested_absmax[b / nested_blocksize] + offset
//!           w[j]      = quant_map[nibble(j)] · absmax[j / blocksize]   (computed in f32 by
//!           `quant::four_bit::dequantize_range`)

use safetensors::Dtype;

use super::dtype::from_hf_name;
use super::error::{ExportError, Result};
use super::tensor::{Tensor, Tensors};

/// The bitsandbytes codes, used when a file has no `quant_map`.
pub use crate::quant::codes::{FP4 as FP4_CODE, NF4 as NF4_CODE};

const STATE_SUFFIXES: [&str; 2] = [
    ".quant_state.bitsandbytes__nf4",
    ".quant_state.bitsandbytes__fp4",
];
pub(crate) const PIECES: [&str; 4] = ["absmax", "nested_absmax", "nested_quant_map", "quant_map"];

/// Whether the tensors hold any bitsandbytes 4-bit weight.
pub fn has_4bit(tensors: &Tensors) -> bool {
    tensors
        .keys()
        .any(|k| STATE_SUFFIXES.iter().any(|s| k.ends_with(s)))
}

/// How a weight was quantized (enough to quantize it again the same way).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantSpec {
    /// `nf4` or `fp4`.
    pub quant_type: String,
    pub blocksize: usize,
    /// The compute dtype (the quant state's `dtype`).
    pub dtype: Dtype,
    /// The 16-entry 4-bit code.
    pub code: Vec<f32>,
    /// Double quant: (nested blocksize, the 256-entry signed dynamic 8-bit map).
    pub nested: Option<(usize, Vec<f32>)>,
}

/// Replace every 4-bit weight (and its state tensors) by a dense tensor in its quant state's
/// dtype, keeping its position. Returns the dequantized names with their quant specs.
pub fn dequantize_all(tensors: &mut Tensors) -> Result<Vec<(String, QuantSpec)>> {
    let states: Vec<(String, String)> = tensors
        .keys()
        .filter_map(|k| {
            STATE_SUFFIXES
                .iter()
                .find_map(|s| k.strip_suffix(s))
                .map(|w| (w.to_string(), k.clone()))
        })
        .collect();
    let mut dense = std::collections::HashMap::new();
    let mut drop = std::collections::HashSet::new();
    let mut done = Vec::new();
    for (weight, state_key) in &states {
        let (t, spec) = dequantize(tensors, weight, state_key)?;
        dense.insert(weight.clone(), t);
        done.push((weight.clone(), spec));
        drop.insert(state_key.clone());
        drop.extend(PIECES.iter().map(|p| format!("{weight}.{p}")));
    }
    // Rebuild in one pass, keeping each weight where its packed form was.
    *tensors = std::mem::take(tensors)
        .into_iter()
        .filter(|(k, _)| !drop.contains(k))
        .map(|(k, t)| match dense.remove(&k) {
            Some(d) => (k, d),
            None => (k, t),
        })
        .collect();
    Ok(done)
}

/// Dequantize the 4-bit weight `weight` whose JSON state is `tensors[state_key]`.
pub fn dequantize(tensors: &Tensors, weight: &str, state_key: &str) -> Result<(Tensor, QuantSpec)> {
    let bad = |msg: String| ExportError::mismatch(weight, msg);
    let get = |suffix: &str| tensors.get(&format!("{weight}.{suffix}"));
    let state: serde_json::Value = serde_json::from_slice(tensors[state_key].bytes())
        .map_err(|e| bad(format!("bad quant state JSON: {e}")))?;
    let quant_type = state["quant_type"]
        .as_str()
        .unwrap_or(if state_key.ends_with("nf4") {
            "nf4"
        } else {
            "fp4"
        });
    let blocksize = state["blocksize"]
        .as_u64()
        .ok_or_else(|| bad("quant state has no blocksize".into()))? as usize;
    let dtype = state["dtype"]
        .as_str()
        .and_then(from_hf_name)
        .ok_or_else(|| {
            bad(format!(
                "quant state dtype {} is not a float dtype",
                state["dtype"]
            ))
        })?;
    let shape: Vec<usize> = state["shape"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_u64().map(|d| d as usize))
                .collect()
        })
        .ok_or_else(|| bad("quant state has no shape".into()))?;
    let n: usize = shape.iter().product();
    let packed = tensors
        .get(weight)
        .ok_or_else(|| bad("4-bit state without its packed weight".into()))?;
    if packed.dtype != Dtype::U8 || packed.bytes().len() != n.div_ceil(2) {
        return Err(bad(format!(
            "packed weight is {:?} {:?}, expected U8 with {} bytes for shape {shape:?}",
            packed.dtype,
            packed.shape,
            n.div_ceil(2)
        )));
    }
    if blocksize == 0 {
        return Err(bad("blocksize 0".into()));
    }
    let code: Vec<f32> = match get("quant_map") {
        Some(t) => t.to_f32()?,
        None if quant_type == "nf4" => NF4_CODE.to_vec(),
        None => FP4_CODE.to_vec(),
    };
    let nblocks = n.div_ceil(blocksize);
    let absmax_t = get("absmax").ok_or_else(|| bad("no absmax".into()))?;
    let mut nested = None;
    let absmax: Vec<f32> = if absmax_t.dtype == Dtype::U8 {
        let nested_absmax = get("nested_absmax")
            .ok_or_else(|| bad("u8 absmax without nested_absmax".into()))?
            .to_f32()?;
        let nested_code = get("nested_quant_map")
            .ok_or_else(|| bad("u8 absmax without nested_quant_map".into()))?
            .to_f32()?;
        let nb = state["nested_blocksize"].as_u64().unwrap_or(256) as usize;
        let offset = state["nested_offset"].as_f64().unwrap_or(0.0) as f32;
        if nested_code.len() != 256
            || nb == 0
            || nested_absmax.len() < absmax_t.numel().div_ceil(nb)
        {
            return Err(bad("inconsistent nested absmax".into()));
        }
        let absmax = absmax_t
            .bytes()
            .iter()
            .enumerate()
            .map(|(i, q)| nested_code[*q as usize] * nested_absmax[i / nb] + offset)
            .collect();
        nested = Some((nb, nested_code));
        absmax
    } else {
        absmax_t.to_f32()?
    };
    if absmax.len() != nblocks {
        return Err(bad(format!(
            "{} absmax values for {nblocks} blocks of {blocksize}",
            absmax.len()
        )));
    }
    let code16: [f32; 16] = code
        .as_slice()
        .try_into()
        .map_err(|_| bad(format!("quant_map has {} entries, expected 16", code.len())))?;
    let mut values = vec![0f32; n];
    crate::quant::four_bit::dequantize_range(
        &mut values,
        packed.bytes(),
        &absmax,
        &code16,
        blocksize,
        0,
    );
    let spec = QuantSpec {
        quant_type: quant_type.to_string(),
        blocksize,
        dtype,
        code,
        nested,
    };
    Ok((Tensor::from_f32(dtype, shape, &values)?, spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::io::read_safetensors;
    use crate::export::testutil::fixture;

    /// bitsandbytes `dequantize_4bit` output (fixture) vs ours: exact.
    #[test]
    fn dequant_matches_bitsandbytes_fp4_and_nested_nf4() {
        let t = read_safetensors(&fixture("quant4.safetensors")).unwrap();
        for (tag, state) in [
            ("fp4", "fp4.weight.quant_state.bitsandbytes__fp4"),
            ("nf4", "nf4.weight.quant_state.bitsandbytes__nf4"),
        ] {
            let (got, _) = dequantize(&t, &format!("{tag}.weight"), state).unwrap();
            let want = &t[&format!("{tag}.expected")];
            assert_eq!(got.numel(), want.numel(), "{tag}");
            assert!(got.to_f32().unwrap() == want.to_f32().unwrap(), "{tag}");
        }
        // The built-in tables equal the stored quant maps.
        assert_eq!(
            t["fp4.weight.quant_map"].to_f32().unwrap(),
            FP4_CODE.to_vec()
        );
        assert_eq!(
            t["nf4.weight.quant_map"].to_f32().unwrap(),
            NF4_CODE.to_vec()
        );
    }

    /// A transformers-saved NF4 llama: every 4-bit weight dequantizes to bnb's bf16 values.
    #[test]
    fn dequant_all_matches_bitsandbytes_on_saved_model() {
        let mut t = crate::export::io::read_safetensors_dir(&fixture("llama_nf4/base")).unwrap();
        assert!(has_4bit(&t));
        let names = dequantize_all(&mut t).unwrap();
        assert_eq!(names.len(), 14);
        assert!(!has_4bit(&t));
        assert!(t
            .keys()
            .all(|k| !k.contains(".absmax") && !k.contains("quant_")));
        let want = read_safetensors(&fixture("llama_nf4/expected.safetensors")).unwrap();
        for (n, spec) in &names {
            assert_eq!(
                (spec.blocksize, spec.nested.as_ref().map(|n| n.0)),
                (64, Some(256))
            );
            assert_eq!(t[n].dtype, Dtype::BF16);
            assert!(
                t[n].to_f32().unwrap() == want[&format!("dequant.{n}")].to_f32().unwrap(),
                "{n}"
            );
        }
    }
}
