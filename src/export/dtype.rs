//! Element types: the float dtypes weights are written in, their Hugging Face names, and
//! little-endian f32 <-> f32/bf16/f16 byte conversion (round to nearest even, as torch does).

use safetensors::Dtype;

use super::error::{ExportError, Result};

/// Requested dtype of written weights. `Auto` keeps each tensor's own dtype (a dequantized
/// 4-bit weight takes its quant state's dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutDtype {
    #[default]
    Auto,
    F32,
    BF16,
    F16,
}

impl OutDtype {
    /// Parse a recipe value: `auto`, `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`/`fp16`.
    pub fn parse(s: &str) -> Option<OutDtype> {
        Some(match s {
            "auto" => OutDtype::Auto,
            "f32" | "float32" | "fp32" => OutDtype::F32,
            "bf16" | "bfloat16" => OutDtype::BF16,
            "f16" | "float16" | "fp16" => OutDtype::F16,
            _ => return None,
        })
    }

    /// The dtype a float tensor stored as `have` is written in.
    pub fn resolve(self, have: Dtype) -> Dtype {
        match self {
            OutDtype::Auto => have,
            OutDtype::F32 => Dtype::F32,
            OutDtype::BF16 => Dtype::BF16,
            OutDtype::F16 => Dtype::F16,
        }
    }
}

/// Float dtypes we read and write as weights.
pub fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// The name transformers uses in `config.json` (`torch_dtype` / `dtype`).
pub fn hf_name(d: Dtype) -> Option<&'static str> {
    Some(match d {
        Dtype::F32 => "float32",
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        Dtype::F64 => "float64",
        _ => return None,
    })
}

/// Inverse of [`hf_name`] (also accepts `float`, `half`, `bf16`...).
pub fn from_hf_name(s: &str) -> Option<Dtype> {
    Some(match s.trim_start_matches("torch.") {
        "float32" | "float" | "f32" => Dtype::F32,
        "float16" | "half" | "f16" => Dtype::F16,
        "bfloat16" | "bf16" => Dtype::BF16,
        "float64" | "double" => Dtype::F64,
        _ => return None,
    })
}

/// Decode little-endian float bytes (possibly unaligned) to f32.
pub fn decode_f32(d: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match d {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk")) as f32)
            .collect(),
        other => {
            return Err(ExportError::Unsupported(format!(
                "{other:?} is not a float dtype"
            )))
        }
    })
}

/// Encode f32 values as little-endian bytes of `d` (round to nearest even for bf16/f16).
pub fn encode_f32(d: Dtype, values: &[f32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * d.bitsize() / 8);
    match d {
        Dtype::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Dtype::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        Dtype::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        Dtype::F64 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as f64).to_le_bytes())),
        other => {
            return Err(ExportError::Unsupported(format!(
                "cannot write f32 values as {other:?}"
            )))
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_round_trips() {
        // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to even (1.0).
        // 1 + 3*2^-8 lies between 1 + 2^-7 and 1 + 2^-6: ties go to even (1 + 2^-6).
        let x = [
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            1.0 + 2f32.powi(-8) + 2f32.powi(-20),
        ];
        let back = decode_f32(Dtype::BF16, &encode_f32(Dtype::BF16, &x).unwrap()).unwrap();
        assert_eq!(back, vec![1.0, 1.0 + 2f32.powi(-6), 1.0 + 2f32.powi(-7)]);
        // Every bf16 / f16 value survives -> f32 -> back exactly (all bit patterns but NaNs).
        let bf16_nan: fn(u16) -> bool = |b| half::bf16::from_bits(b).is_nan();
        let f16_nan: fn(u16) -> bool = |b| half::f16::from_bits(b).is_nan();
        for (d, is_nan) in [(Dtype::BF16, bf16_nan), (Dtype::F16, f16_nan)] {
            let all: Vec<u8> = (0..=u16::MAX)
                .filter(|b| !is_nan(*b))
                .flat_map(|b| b.to_le_bytes())
                .collect();
            let f = decode_f32(d, &all).unwrap();
            assert_eq!(encode_f32(d, &f).unwrap(), all, "{d:?}");
        }
    }

    #[test]
    fn out_dtype_names() {
        assert_eq!(OutDtype::parse("bf16"), Some(OutDtype::BF16));
        assert_eq!(OutDtype::parse("int8"), None);
        assert_eq!(OutDtype::Auto.resolve(Dtype::F16), Dtype::F16);
        assert_eq!(from_hf_name("torch.bfloat16"), Some(Dtype::BF16));
        assert_eq!(hf_name(Dtype::F32), Some("float32"));
    }
}
