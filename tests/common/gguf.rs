//! Test support: turns a llama.cpp GGUF file of a LLaMA-family model into a Hugging Face
//! directory (`config.json` + f32 `model.safetensors`), dequantizing F32 / F16 / Q8_0 / Q4_1
//! exactly as gguf-py does (f32 `d * q + m`) and undoing llama.cpp's q/k row permutation as
//! transformers' GGUF loader does, so both sides of a parity test start from the same floats.
//! Only what tests/deep_checkpoint.rs needs; the crate itself only writes GGUF
//! (src/export/gguf.rs).

use std::collections::BTreeMap;
use std::path::Path;

/// A metadata value (arrays are skipped: the tokenizer's lists are not needed).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array,
}

impl Value {
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }
    pub fn float(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
}

pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] is the row length (the reverse of the torch shape).
    pub dims: Vec<usize>,
    pub ggml_type: u32,
    pub offset: usize,
}

pub struct Gguf {
    pub kv: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: Vec<u8>,
    data_start: usize,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or_else(|| format!("GGUF truncated at byte {}", self.at))?;
        self.at += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = self.u64()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| e.to_string())
    }
    fn value(&mut self, ty: u32) -> Result<Value, String> {
        let t = |c: &mut Self, n| c.take(n).map(|s| s.to_vec());
        Ok(match ty {
            0 => Value::Int(t(self, 1)?[0] as i64),
            1 => Value::Int(t(self, 1)?[0] as i8 as i64),
            2 => Value::Int(u16::from_le_bytes(t(self, 2)?.try_into().unwrap()) as i64),
            3 => Value::Int(i16::from_le_bytes(t(self, 2)?.try_into().unwrap()) as i64),
            4 => Value::Int(self.u32()? as i64),
            5 => Value::Int(self.u32()? as i32 as i64),
            6 => Value::Float(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(t(self, 1)?[0] != 0),
            8 => Value::Str(self.str()?),
            9 => {
                let (ety, n) = (self.u32()?, self.u64()?);
                for _ in 0..n {
                    self.value(ety)?;
                }
                Value::Array
            }
            10 => Value::Int(self.u64()? as i64),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_bits(self.u64()?)),
            _ => return Err(format!("GGUF value type {ty} unknown")),
        })
    }
}

const F32: u32 = 0;
const F16: u32 = 1;
const Q4_1: u32 = 3;
const Q5_0: u32 = 6;
const Q8_0: u32 = 8;
const Q4_K: u32 = 12;
const Q6_K: u32 = 14;

impl Gguf {
    pub fn read(path: &Path) -> Result<Gguf, String> {
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut c = Cursor { b: &data, at: 0 };
        if c.take(4)? != b"GGUF" {
            return Err(format!("{}: not a GGUF file", path.display()));
        }
        let version = c.u32()?;
        if version < 2 {
            return Err(format!("GGUF version {version} is not supported"));
        }
        let (n_tensors, n_kv) = (c.u64()?, c.u64()?);
        let mut kv = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.str()?;
            let ty = c.u32()?;
            kv.insert(key, c.value(ty)?);
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let name = c.str()?;
            let nd = c.u32()? as usize;
            let dims = (0..nd)
                .map(|_| c.u64().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            let ggml_type = c.u32()?;
            let offset = c.u64()? as usize;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let align = kv
            .get("general.alignment")
            .and_then(Value::int)
            .unwrap_or(32) as usize;
        let data_start = c.at.div_ceil(align) * align;
        Ok(Gguf {
            kv,
            tensors,
            data,
            data_start,
        })
    }

    pub fn meta(&self, key: &str) -> Result<&Value, String> {
        self.kv.get(key).ok_or_else(|| format!("GGUF has no {key}"))
    }

    /// Err unless the file's `general.architecture` is `arch` with tied embeddings (no
    /// `output.weight`), what the converters below handle.
    fn expect_tied(&self, arch: &str) -> Result<(), String> {
        let got = self.meta("general.architecture")?;
        if *got != Value::Str(arch.into()) {
            return Err(format!("general.architecture is {got:?}, not {arch}"));
        }
        if self.tensors.iter().any(|t| t.name == "output.weight") {
            return Err("untied output.weight is not handled".into());
        }
        Ok(())
    }

    /// `tokenizer.ggml.{key}` (a special token's id), when present.
    fn token_id(&self, key: &str) -> Option<i64> {
        self.meta(&format!("tokenizer.ggml.{key}"))
            .ok()
            .and_then(Value::int)
    }

    fn int(&self, key: &str) -> Result<usize, String> {
        self.meta(key)?
            .int()
            .map(|v| v as usize)
            .ok_or_else(|| format!("{key} is not an integer"))
    }

    fn float(&self, key: &str) -> Result<f64, String> {
        self.meta(key)?
            .float()
            .ok_or_else(|| format!("{key} is not a number"))
    }

    /// The tensor's values as f32, row-major in the torch shape (`dims` reversed).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, String> {
        let n: usize = t.dims.iter().product();
        let (block, bytes) = match t.ggml_type {
            F32 => (1, 4),
            F16 => (1, 2),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q8_0 => (32, 34),
            Q4_K => (256, 144),
            Q6_K => (256, 210),
            ty => return Err(format!("{}: ggml type {ty} is not supported", t.name)),
        };
        let start = self.data_start + t.offset;
        let raw = self
            .data
            .get(start..start + n / block * bytes)
            .ok_or_else(|| format!("{}: data past the end of the file", t.name))?;
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let mut out = Vec::with_capacity(n);
        match t.ggml_type {
            F32 => out.extend(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
            ),
            F16 => out.extend(raw.chunks_exact(2).map(f16)),
            Q4_1 => {
                for b in raw.chunks_exact(20) {
                    let (d, m, qs) = (f16(&b[0..2]), f16(&b[2..4]), &b[4..20]);
                    out.extend(qs.iter().map(|q| d * (q & 15) as f32 + m));
                    out.extend(qs.iter().map(|q| d * (q >> 4) as f32 + m));
                }
            }
            // 32 five-bit values: low nibbles in qs, fifth bits in the u32 qh, offset −16.
            Q5_0 => {
                for b in raw.chunks_exact(22) {
                    let (d, qh, qs) = (
                        f16(&b[0..2]),
                        u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
                        &b[6..22],
                    );
                    let q = |j: usize, hi: bool| {
                        let (nib, bit) = if hi {
                            (qs[j] >> 4, (qh >> (j + 16)) & 1)
                        } else {
                            (qs[j] & 15, (qh >> j) & 1)
                        };
                        d * ((nib as u32 | bit << 4) as i32 - 16) as f32
                    };
                    out.extend((0..16).map(|j| q(j, false)));
                    out.extend((0..16).map(|j| q(j, true)));
                }
            }
            Q8_0 => {
                for b in raw.chunks_exact(34) {
                    let d = f16(&b[0..2]);
                    out.extend(b[2..].iter().map(|&q| d * q as i8 as f32));
                }
            }
            // Super-blocks of 256: eight 32-value sub-blocks with 6-bit scales and mins packed in
            // 12 bytes (ggml's get_scale_min_k4), x = d·sc·q − dmin·m.
            Q4_K => {
                for b in raw.chunks_exact(144) {
                    let (d, dmin, sc, qs) = (f16(&b[0..2]), f16(&b[2..4]), &b[4..16], &b[16..144]);
                    let scale_min = |j: usize| {
                        if j < 4 {
                            (sc[j] & 63, sc[j + 4] & 63)
                        } else {
                            (
                                (sc[j + 4] & 15) | (sc[j - 4] >> 6) << 4,
                                (sc[j + 4] >> 4) | (sc[j] >> 6) << 4,
                            )
                        }
                    };
                    for (c, q) in qs.chunks_exact(32).enumerate() {
                        for (j, shift) in [(2 * c, 0), (2 * c + 1, 4)] {
                            let (s, m) = scale_min(j);
                            let (d1, m1) = (d * s as f32, dmin * m as f32);
                            out.extend(q.iter().map(|x| d1 * ((x >> shift) & 15) as f32 - m1));
                        }
                    }
                }
            }
            // Super-blocks of 256: 4 low bits in ql, 2 high bits in qh, sixteen i8 scales, offset −32.
            _ => {
                for b in raw.chunks_exact(210) {
                    let (ql, qh, sc, d) =
                        (&b[0..128], &b[128..192], &b[192..208], f16(&b[208..210]));
                    for h in 0..2 {
                        let (ql, qh, sc) = (&ql[64 * h..], &qh[32 * h..], &sc[8 * h..]);
                        let mut y = [0f32; 128];
                        for l in 0..32 {
                            let is = l / 16;
                            let q = |low: u8, shift: u32| {
                                ((low as i32) | (((qh[l] >> shift) & 3) as i32) << 4) - 32
                            };
                            y[l] = d * sc[is] as i8 as f32 * q(ql[l] & 15, 0) as f32;
                            y[l + 32] = d * sc[is + 2] as i8 as f32 * q(ql[l + 32] & 15, 2) as f32;
                            y[l + 64] = d * sc[is + 4] as i8 as f32 * q(ql[l] >> 4, 4) as f32;
                            y[l + 96] = d * sc[is + 6] as i8 as f32 * q(ql[l + 32] >> 4, 6) as f32;
                        }
                        out.extend(y);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// transformers' `reverse_permute_weights`: llama.cpp stores each head's q/k rows interleaved
/// (rotary pairs next to each other); HF keeps the two halves apart.
fn unpermute(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let half = rows / heads / 2;
    let mut out = vec![0f32; w.len()];
    for r in 0..rows {
        let (h, rem) = (r / (2 * half), r % (2 * half));
        let (b, a) = (rem / half, rem % half);
        let old = h * 2 * half + a * 2 + b;
        out[r * cols..(r + 1) * cols].copy_from_slice(&w[old * cols..(old + 1) * cols]);
    }
    out
}

/// Writes `dir/config.json` and `dir/model.safetensors` (f32) for a `llama` GGUF with tied
/// embeddings (no `output.weight`), the shape of SmolLM2.
pub fn llama_to_hf_dir(g: &Gguf, dir: &Path) -> Result<(), String> {
    g.expect_tied("llama")?;
    let (int, float) = (
        |k: &str| g.int(&format!("llama.{k}")),
        |k: &str| g.float(&format!("llama.{k}")),
    );
    let (hidden, heads, kv_heads) = (
        int("embedding_length")?,
        int("attention.head_count")?,
        int("attention.head_count_kv")?,
    );
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int("feed_forward_length")?,
        "num_hidden_layers": int("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden / heads,
        "max_position_embeddings": int("context_length")?,
        "rms_norm_eps": float("attention.layer_norm_rms_epsilon")?,
        "rope_theta": float("rope.freq_base")?,
        "vocab_size": int("vocab_size")?,
        "hidden_act": "silu",
        "tie_word_embeddings": true,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": g.token_id("bos_token_id"),
        "eos_token_id": g.token_id("eos_token_id"),
        "pad_token_id": g.token_id("padding_token_id"),
        "torch_dtype": "float32",
    });
    let mut names = Vec::new();
    let mut values = Vec::new();
    for t in &g.tensors {
        let name = hf_name(&t.name).ok_or_else(|| format!("unexpected tensor {}", t.name))?;
        let mut v = g.dequantize(t)?;
        let cols = t.dims[0];
        if t.name.ends_with("attn_q.weight") {
            v = unpermute(&v, heads, cols);
        } else if t.name.ends_with("attn_k.weight") {
            v = unpermute(&v, kv_heads, cols);
        }
        let shape: Vec<usize> = t.dims.iter().rev().copied().collect();
        names.push((name, shape));
        values.push(v);
    }
    write_hf(dir, &config, names, &values)
}

/// llama.cpp's tensor name → transformers' LLaMA name.
fn hf_name(n: &str) -> Option<String> {
    match n {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        _ => {}
    }
    let rest = n.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let module = match part.strip_suffix(".weight")? {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.weight"))
}

/// Writes `dir/config.json` and `dir/model.safetensors` (f32) for a `gemma3` GGUF (tied
/// embeddings), as transformers' GGUF loader reads it: every sixth layer global (rope_theta from
/// the file), the others local (sliding window, rope_theta 1e4), norms stored as 1 + w.
pub fn gemma3_to_hf_dir(g: &Gguf, dir: &Path) -> Result<(), String> {
    g.expect_tied("gemma3")?;
    let (int, float) = (
        |k: &str| g.int(&format!("gemma3.{k}")),
        |k: &str| g.float(&format!("gemma3.{k}")),
    );
    let embd = g
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .ok_or("no token_embd.weight")?;
    let layers = int("block_count")?;
    let layer_types: Vec<&str> = (0..layers)
        .map(|i| {
            if (i + 1) % 6 == 0 {
                "full_attention"
            } else {
                "sliding_attention"
            }
        })
        .collect();
    let config = serde_json::json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": int("embedding_length")?,
        "intermediate_size": int("feed_forward_length")?,
        "num_hidden_layers": layers,
        "num_attention_heads": int("attention.head_count")?,
        "num_key_value_heads": int("attention.head_count_kv")?,
        "head_dim": int("attention.key_length")?,
        "query_pre_attn_scalar": 256,
        "max_position_embeddings": int("context_length")?,
        "rms_norm_eps": float("attention.layer_norm_rms_epsilon")?,
        "sliding_window": int("attention.sliding_window")?,
        "layer_types": layer_types,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": float("rope.freq_base")?},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        "vocab_size": embd.dims[1],
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": null,
        "attn_logit_softcapping": null,
        "attention_bias": false,
        "tie_word_embeddings": true,
        "bos_token_id": g.token_id("bos_token_id"),
        "eos_token_id": g.token_id("eos_token_id"),
        "pad_token_id": g.token_id("padding_token_id"),
        "torch_dtype": "float32",
    });
    let mut names = Vec::new();
    let mut values = Vec::new();
    for t in &g.tensors {
        let name =
            gemma3_hf_name(&t.name).ok_or_else(|| format!("unexpected tensor {}", t.name))?;
        let mut v = g.dequantize(t)?;
        if t.name.ends_with("norm.weight") {
            v.iter_mut().for_each(|x| *x -= 1.0);
        }
        names.push((name, t.dims.iter().rev().copied().collect::<Vec<_>>()));
        values.push(v);
    }
    write_hf(dir, &config, names, &values)
}

/// llama.cpp's Gemma 3 tensor name → transformers' (no q/k permutation: both rotate halves).
fn gemma3_hf_name(n: &str) -> Option<String> {
    let module = match n.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
        Some((layer, part)) => {
            let m = match part.strip_suffix(".weight")? {
                "attn_norm" => "input_layernorm",
                "post_attention_norm" => "post_attention_layernorm",
                "ffn_norm" => "pre_feedforward_layernorm",
                "post_ffw_norm" => "post_feedforward_layernorm",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                _ => return hf_name(n),
            };
            format!("layers.{layer}.{m}")
        }
        None => return hf_name(n),
    };
    Some(format!("model.{module}.weight"))
}

/// `dir/config.json` and `dir/model.safetensors` (f32): tensor i is `names[i]` (name, torch
/// shape) with `values[i]`.
fn write_hf(
    dir: &Path,
    config: &serde_json::Value,
    names: Vec<(String, Vec<usize>)>,
    values: &[Vec<f32>],
) -> Result<(), String> {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .map_err(|e| e.to_string())?;
    let tensors: Vec<(String, Vec<usize>, &[f32])> = names
        .into_iter()
        .zip(values)
        .map(|((n, s), v)| (n, s, v.as_slice()))
        .collect();
    recipe::formats::safetensors::write_f32(&dir.join("model.safetensors"), &tensors)
        .map_err(|e| e.to_string())
}
