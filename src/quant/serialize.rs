//! The safetensors layout transformers / bitsandbytes use for `load_in_4bit` weights.
//!
//! Beside `X.weight` (u8 [(n+1)/2, 1]) a Linear4bit stores:
//! `X.weight.absmax` (f32 [blocks], or u8 [blocks] when double-quantized),
//! `X.weight.quant_map` (f32 [16]), `X.weight.nested_absmax` (f32 [ceil(blocks/256)]),
//! `X.weight.nested_quant_map` (f32 [256]) and `X.weight.quant_state.bitsandbytes__nf4`
//! (u8 bytes of `json.dumps` of quant_type, blocksize, dtype, shape and, when nested,
//! nested_blocksize, nested_dtype, nested_offset).

use super::codes::QuantType;
use super::four_bit::{Absmax, QuantError, QuantState, Quantized4};
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
    if t.dtype != Dtype::F32 || t.data.len() % 4 != 0 {
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
            .ok_or_else(|| state_err(&jkey, "blocksize is not an integer".into()))?
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
                .ok_or_else(|| state_err(&jkey, "nested_blocksize is not an integer".into()))?
                as usize;
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

/// Write tensor entries (e.g. from [`Quantized4::to_tensors`] plus plain weights) to one
/// safetensors file with optional metadata (transformers writes `{"format": "pt"}`).
pub fn write_safetensors(
    path: &std::path::Path,
    entries: &[TensorEntry],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), safetensors::SafeTensorError> {
    let views = entries
        .iter()
        .map(|(name, dtype, shape, data)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, metadata, path)
}
