//! The bitsandbytes 4-bit layout transformers saves and loads for `load_in_4bit` weights: one
//! codec for the packed weight and its quant state (tensors + JSON), used by the 4-bit loader,
//! the quantize step, merge (dequantize a 4-bit base) and export (re-quantize). The numbers
//! (quantize, dequantize) live in `quant::four_bit`; this file owns the names and bytes.
//!
//! Beside `X.weight` (u8 [(n+1)/2, 1], first element in the HIGH nibble) a Linear4bit stores:
//! `X.weight.absmax` (f32 [blocks], or u8 [blocks] when double-quantized),
//! `X.weight.quant_map` (f32 [16]), `X.weight.nested_absmax` (f32 [ceil(blocks/256)]),
//! `X.weight.nested_quant_map` (f32 [256]) and `X.weight.quant_state.bitsandbytes__nf4`
//! (or `__fp4`: u8 bytes of `json.dumps` of quant_type, blocksize, dtype, shape and, when
//! nested, nested_blocksize, nested_dtype, nested_offset).
//!
//! Dequant:  absmax[b] = nested_quant_map[q8[b]] · nested_absmax[b / nested_blocksize] + offset
//!           w[j]      = quant_map[nibble(j)] · absmax[j / blocksize]

use super::error::{FormatError, Result};
use super::safetensors::{from_hf_name, Tensor, Tensors, WeightFiles};
use crate::quant::codes::QuantType;
use crate::quant::four_bit::{Absmax, QuantError, QuantState, Quantized4};
use safetensors::Dtype;

/// One tensor to write: (name, dtype, shape, little-endian bytes).
pub type TensorEntry = (String, Dtype, Vec<usize>, Vec<u8>);

/// A borrowed tensor read from a file.
pub struct TensorRef<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_from(key: &str, t: &TensorRef) -> Result<Vec<f32>, QuantError> {
    if t.dtype != Dtype::F32 || !t.data.len().is_multiple_of(4) {
        return Err(state_err(
            key,
            format!("expected F32 data, got {:?}", t.dtype),
        ));
    }
    Ok(t.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn state_err(key: &str, msg: String) -> QuantError {
    QuantError::State {
        key: key.to_string(),
        msg,
    }
}

/// Python's `repr(float)`: shortest round-trip digits, scientific below 1e-4 and from 1e16.
pub fn py_float_repr(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{:e}", x.abs()); // "d.ddde-5"
    let (mant, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let nd = digits.len() as i32;
        let s = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if nd > exp + 1 {
            format!(
                "{}.{}",
                &digits[..(exp + 1) as usize],
                &digits[(exp + 1) as usize..]
            )
        } else {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - nd) as usize))
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let es = if exp < 0 { "-" } else { "+" };
        format!("{sign}{m}e{es}{:02}", exp.abs())
    }
}

impl QuantState {
    /// Name of the packed JSON entry, e.g. `quant_state.bitsandbytes__nf4`.
    pub fn json_key(&self) -> String {
        format!("quant_state.bitsandbytes__{}", self.quant_type.name())
    }

    /// `json.dumps` of the non-tensor items, byte for byte as bitsandbytes writes it.
    pub fn to_json(&self) -> String {
        let shape: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        let mut s = format!(
            "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
            self.quant_type.name(),
            self.blocksize,
            self.dtype,
            shape.join(", ")
        );
        if let Absmax::Nested {
            offset, blocksize, ..
        } = &self.absmax
        {
            s.push_str(&format!(
                ", \"nested_blocksize\": {}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
                blocksize,
                py_float_repr(*offset as f64)
            ));
        }
        s.push('}');
        s
    }

    /// The state tensors for weight `prefix` (e.g. `model.layers.0.mlp.up_proj.weight`),
    /// without the packed weight itself.
    pub fn to_tensors(&self, prefix: &str) -> Vec<TensorEntry> {
        let mut out = Vec::new();
        match &self.absmax {
            Absmax::Plain(a) => {
                out.push((
                    format!("{prefix}.absmax"),
                    Dtype::F32,
                    vec![a.len()],
                    f32_bytes(a),
                ));
            }
            Absmax::Nested {
                codes,
                absmax2,
                code,
                ..
            } => {
                out.push((
                    format!("{prefix}.absmax"),
                    Dtype::U8,
                    vec![codes.len()],
                    codes.clone(),
                ));
                out.push((
                    format!("{prefix}.nested_absmax"),
                    Dtype::F32,
                    vec![absmax2.len()],
                    f32_bytes(absmax2),
                ));
                out.push((
                    format!("{prefix}.nested_quant_map"),
                    Dtype::F32,
                    vec![256],
                    f32_bytes(code),
                ));
            }
        }
        out.push((
            format!("{prefix}.quant_map"),
            Dtype::F32,
            vec![16],
            f32_bytes(&self.code),
        ));
        let json = self.to_json().into_bytes();
        out.push((
            format!("{prefix}.{}", self.json_key()),
            Dtype::U8,
            vec![json.len()],
            json,
        ));
        out
    }

    /// Read the state of weight `prefix` through `get(name)`.
    pub fn from_tensors<'a>(
        prefix: &str,
        get: &dyn Fn(&str) -> Option<TensorRef<'a>>,
    ) -> Result<QuantState, QuantError> {
        let need = |suffix: &str| {
            let key = format!("{prefix}.{suffix}");
            get(&key)
                .map(|t| (key.clone(), t))
                .ok_or_else(|| state_err(&key, "missing".into()))
        };
        let (jkey, jt) = ["nf4", "fp4"]
            .iter()
            .find_map(|q| {
                let key = format!("{prefix}.quant_state.bitsandbytes__{q}");
                get(&key).map(|t| (key, t))
            })
            .ok_or_else(|| {
                state_err(
                    &format!("{prefix}.quant_state.bitsandbytes__nf4"),
                    "missing".into(),
                )
            })?;
        let meta: serde_json::Value = serde_json::from_slice(jt.data)
            .map_err(|e| state_err(&jkey, format!("invalid JSON: {e}")))?;
        let field = |name: &str| {
            meta.get(name)
                .ok_or_else(|| state_err(&jkey, format!("JSON has no `{name}`")))
        };
        let qt_name = field("quant_type")?.as_str().unwrap_or("");
        let quant_type = QuantType::from_name(qt_name)
            .ok_or_else(|| state_err(&jkey, format!("quant_type `{qt_name}` is not nf4/fp4")))?;
        let blocksize = field("blocksize")?
            .as_u64()
            .filter(|b| *b > 0)
            .ok_or_else(|| state_err(&jkey, "blocksize is not a positive integer".into()))?
            as usize;
        let dtype = field("dtype")?.as_str().unwrap_or("float32").to_string();
        let shape = field("shape")?
            .as_array()
            .ok_or_else(|| state_err(&jkey, "shape is not a list".into()))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| state_err(&jkey, "shape has a non-integer".into()))?;
        let (qkey, qt) = need("quant_map")?;
        let qm = f32_from(&qkey, &qt)?;
        let code: [f32; 16] = qm
            .try_into()
            .map_err(|_| state_err(&qkey, "expected 16 values".into()))?;
        let (akey, at) = need("absmax")?;
        let numel: usize = shape.iter().product();
        let blocks = numel.div_ceil(blocksize.max(1));
        let absmax = if meta.get("nested_offset").is_some() {
            let offset = field("nested_offset")?
                .as_f64()
                .ok_or_else(|| state_err(&jkey, "nested_offset is not a number".into()))?
                as f32;
            let nb = field("nested_blocksize")?
                .as_u64()
                .filter(|b| *b > 0)
                .ok_or_else(|| {
                    state_err(&jkey, "nested_blocksize is not a positive integer".into())
                })? as usize;
            if at.dtype != Dtype::U8 {
                return Err(state_err(
                    &akey,
                    format!("expected U8 codes, got {:?}", at.dtype),
                ));
            }
            let (nkey, nt) = need("nested_absmax")?;
            let absmax2 = f32_from(&nkey, &nt)?;
            let (mkey, mt) = need("nested_quant_map")?;
            let code8: [f32; 256] = f32_from(&mkey, &mt)?
                .try_into()
                .map_err(|_| state_err(&mkey, "expected 256 values".into()))?;
            if absmax2.len() != blocks.div_ceil(nb.max(1)) {
                return Err(state_err(
                    &nkey,
                    format!("expected {} values", blocks.div_ceil(nb)),
                ));
            }
            Absmax::Nested {
                codes: at.data.to_vec(),
                absmax2,
                offset,
                code: code8,
                blocksize: nb,
            }
        } else {
            Absmax::Plain(f32_from(&akey, &at)?)
        };
        let got = match &absmax {
            Absmax::Plain(a) => a.len(),
            Absmax::Nested { codes, .. } => codes.len(),
        };
        if got != blocks {
            return Err(state_err(
                &akey,
                format!("expected {blocks} blocks, got {got}"),
            ));
        }
        Ok(QuantState {
            quant_type,
            blocksize,
            shape,
            dtype,
            absmax,
            code,
        })
    }
}

impl Quantized4 {
    /// All tensors of weight `prefix`, the packed weight first.
    pub fn to_tensors(&self, prefix: &str) -> Vec<TensorEntry> {
        let mut out = vec![(
            prefix.to_string(),
            Dtype::U8,
            vec![self.packed.len(), 1],
            self.packed.clone(),
        )];
        out.extend(self.state.to_tensors(prefix));
        out
    }

    /// Read weight `prefix` and its state through `get(name)`.
    pub fn from_tensors<'a>(
        prefix: &str,
        get: &dyn Fn(&str) -> Option<TensorRef<'a>>,
    ) -> Result<Quantized4, QuantError> {
        let state = QuantState::from_tensors(prefix, get)?;
        let w = get(prefix).ok_or_else(|| state_err(prefix, "missing".into()))?;
        if w.dtype != Dtype::U8 || w.data.len() != state.numel().div_ceil(2) {
            return Err(state_err(
                prefix,
                format!(
                    "expected U8 with {} bytes, got {:?} with {}",
                    state.numel().div_ceil(2),
                    w.dtype,
                    w.data.len()
                ),
            ));
        }
        Ok(Quantized4 {
            packed: w.data.to_vec(),
            state,
        })
    }

    /// Read weight `prefix` from a loaded safetensors file.
    pub fn from_safetensors(
        prefix: &str,
        st: &safetensors::SafeTensors<'_>,
    ) -> Result<Quantized4, QuantError> {
        let get = |name: &str| {
            st.tensor(name).ok().map(|t| TensorRef {
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                data: t.data(),
            })
        };
        Quantized4::from_tensors(prefix, &get)
    }
}

impl<'a> From<&'a Tensor> for TensorRef<'a> {
    fn from(t: &'a Tensor) -> TensorRef<'a> {
        TensorRef {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: t.bytes(),
        }
    }
}

/// `name` -> a [`TensorRef`] borrowed from `tensors` (for `from_tensors`).
fn borrow<'a>(tensors: &'a Tensors) -> impl Fn(&str) -> Option<TensorRef<'a>> {
    move |name: &str| tensors.get(name).map(TensorRef::from)
}

/// The packed 4-bit weight `weight` (with its quant state) of a model dir being loaded, or
/// None when the dir stores it dense.
pub fn read_4bit(files: &WeightFiles, weight: &str) -> Result<Option<Quantized4>, QuantError> {
    if !STATE_SUFFIXES
        .iter()
        .any(|s| files.contains(&format!("{weight}{s}")))
    {
        return Ok(None);
    }
    let get = |n: &str| files.tensor(n).ok().map(TensorRef::from);
    Quantized4::from_tensors(weight, &get).map(Some)
}

const STATE_SUFFIXES: [&str; 2] = [
    ".quant_state.bitsandbytes__nf4",
    ".quant_state.bitsandbytes__fp4",
];
/// The state tensors beside a packed weight `X.weight` (`X.weight.<piece>`), besides the JSON.
pub const PIECES: [&str; 4] = ["absmax", "nested_absmax", "nested_quant_map", "quant_map"];

/// Whether `suffix` (after `X.weight.`) names a piece of a 4-bit weight's state.
pub fn is_state_piece(suffix: &str) -> bool {
    PIECES.contains(&suffix) || suffix.starts_with("quant_state.bitsandbytes__")
}

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
    let weights: Vec<String> = tensors
        .keys()
        .filter_map(|k| STATE_SUFFIXES.iter().find_map(|s| k.strip_suffix(s)))
        .map(str::to_string)
        .collect();
    let mut dense = std::collections::HashMap::new();
    let mut drop = std::collections::HashSet::new();
    let mut done = Vec::new();
    for weight in &weights {
        let (t, spec) = dequantize(tensors, weight)?;
        dense.insert(weight.clone(), t);
        drop.extend(STATE_SUFFIXES.iter().map(|s| format!("{weight}{s}")));
        drop.extend(PIECES.iter().map(|p| format!("{weight}.{p}")));
        done.push((weight.clone(), spec));
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

/// Dequantize the 4-bit weight `weight` (read with [`Quantized4::from_tensors`]) to a dense
/// tensor in its quant state's dtype.
pub fn dequantize(tensors: &Tensors, weight: &str) -> Result<(Tensor, QuantSpec)> {
    let bad = |msg: String| FormatError::mismatch(weight, msg);
    let q = Quantized4::from_tensors(weight, &borrow(tensors)).map_err(|e| bad(e.to_string()))?;
    let s = &q.state;
    let dtype = from_hf_name(&s.dtype).ok_or_else(|| {
        bad(format!(
            "quant state dtype {:?} is not a float dtype",
            s.dtype
        ))
    })?;
    let spec = QuantSpec {
        quant_type: s.quant_type.name().to_string(),
        blocksize: s.blocksize,
        dtype,
        code: s.code.to_vec(),
        nested: match &s.absmax {
            Absmax::Nested {
                code, blocksize, ..
            } => Some((*blocksize, code.to_vec())),
            Absmax::Plain(_) => None,
        },
    };
    Ok((
        Tensor::from_f32(dtype, s.shape.clone(), &q.dequantize())?,
        spec,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::testutil::fixture;
    use crate::formats::safetensors::{read_dir, read_file};
    use crate::quant::codes::{FP4 as FP4_CODE, NF4 as NF4_CODE};

    /// bitsandbytes `dequantize_4bit` output (fixture) vs ours: exact.
    #[test]
    fn dequant_matches_bitsandbytes_fp4_and_nested_nf4() {
        let t = read_file(&fixture("quant4.safetensors")).unwrap();
        for tag in ["fp4", "nf4"] {
            let (got, _) = dequantize(&t, &format!("{tag}.weight")).unwrap();
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
        let mut t = read_dir(&fixture("llama_nf4/base")).unwrap();
        assert!(has_4bit(&t));
        let names = dequantize_all(&mut t).unwrap();
        assert_eq!(names.len(), 14);
        assert!(!has_4bit(&t));
        assert!(t
            .keys()
            .all(|k| !k.contains(".absmax") && !k.contains("quant_")));
        let want = read_file(&fixture("llama_nf4/expected.safetensors")).unwrap();
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
