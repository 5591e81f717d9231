//! `Arch`: one description of a decoder-only transformer, built from a parsed `config.json`
//! (`formats::config::HfConfig`) for each family of `family::TABLE`, with the linears of a layer
//! (names from the family table, shapes from the config) and parameter counts.

use crate::backend::cpu::inv_freq;
use crate::backend::{RopeFreqs, RopeKind};
pub use crate::formats::config::ConfigError as ArchError;
use crate::formats::config::HfConfig;
pub use crate::model::family::{Family, LayerNames, Names};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NormKind {
    Rms,
    /// RMSNorm scaling by (1 + w), the weight stored as w (Gemma): `block::Norm` adds the 1 per
    /// forward, so the trained, merged and saved weight stays in the checkpoint's convention.
    RmsPlusOne,
    Layer,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Positions {
    Rope {
        kind: RopeKind,
        rot_dim: usize,
        base: f32,
        #[serde(default)]
        scaling: RopeScaling,
    },
    Alibi,
    Learned {
        max: usize,
    },
    /// ChatGLM-6B (v1) 2D rotary positions: the first half of each head's dims (rot_dim of
    /// them, `RopeKind::Half` pairing) rotated by the position id, the second half by the block
    /// position id; θ_i = base^(−2i/rot_dim) rounded to f16 (RotaryEmbedding's `.half()`).
    /// Position ids count the row's tokens up to `<sop>` (`sop`, the config's bos_token_id),
    /// then stay at the index of [gMASK] (`gmask`, else [MASK] `mask`); block ids are 0 before
    /// `<sop>` and 1, 2, ... from it. Keys before `<sop>` are visible to every query.
    Glm2d {
        rot_dim: usize,
        base: f32,
        sop: u32,
        gmask: u32,
        mask: u32,
    },
}

/// RoPE frequency scaling, computed as transformers' `modeling_rope_utils.py` does (f32 where
/// it uses tensors, f64 where it uses Python floats).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub enum RopeScaling {
    #[default]
    None,
    /// θ_i / factor.
    Linear { factor: f64 },
    /// NTK: past `max_pos` (max_position_embeddings) positions the base grows with the length
    /// the reference has seen (see `Model::rope_freqs`).
    Dynamic { factor: f64, max_pos: usize },
    /// Llama 3.1: low frequencies / factor, high ones kept, a smooth band between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original: usize,
    },
    /// YaRN: interpolation blended by a linear ramp over dims; cos/sin × attention_factor.
    Yarn {
        factor: f64,
        original: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
}

impl RopeScaling {
    /// θ_i (rot_dim/2 of them) and the cos/sin factor. `seq`: for `Dynamic`, the sequence
    /// length the base is scaled to (at most `max_pos` means unscaled); ignored otherwise.
    pub fn freqs(&self, rot_dim: usize, base: f32, seq: usize) -> RopeFreqs {
        let plain = inv_freq(rot_dim, base);
        let half = rot_dim / 2;
        let (inv, scale) = match *self {
            RopeScaling::None => (plain, 1.0),
            RopeScaling::Linear { factor } => {
                (plain.iter().map(|x| x / factor as f32).collect(), 1.0)
            }
            RopeScaling::Dynamic { factor, max_pos } if seq > max_pos => {
                // transformers passes seq_len as a 0-d tensor here, so this is f32 arithmetic.
                let f = factor as f32;
                let t = f * seq as f32 / max_pos as f32 - (factor - 1.0) as f32;
                let e = (rot_dim as f64 / (rot_dim as f64 - 2.0)) as f32;
                let b = base * t.powf(e);
                let inv = (0..half)
                    .map(|i| 1.0 / b.powf((2 * i) as f32 / rot_dim as f32))
                    .collect();
                (inv, 1.0)
            }
            RopeScaling::Dynamic { .. } => (plain, 1.0),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: lf,
                high_freq_factor: hf,
                original,
            } => {
                let old = original as f64;
                let (low_wl, high_wl) = ((old / lf) as f32, (old / hf) as f32);
                let f = factor as f32;
                let inv = plain
                    .iter()
                    .map(|&x| {
                        let wl = (2.0 * std::f64::consts::PI) as f32 / x;
                        let scaled = if wl > low_wl { x / f } else { x };
                        if wl < high_wl || wl > low_wl {
                            scaled
                        } else {
                            let s = (old as f32 / wl - lf as f32) / (hf - lf) as f32;
                            (1.0 - s) * scaled / f + s * scaled
                        }
                    })
                    .collect();
                (inv, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            } => {
                let (dim, b) = (rot_dim as f64, base as f64);
                let corr = |rot: f64| {
                    dim * (original as f64 / (rot * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * b.ln())
                };
                let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001;
                }
                let inv = (0..half)
                    .map(|i| {
                        let pf = base.powf((2 * i) as f32 / rot_dim as f32);
                        let (extra, inter) = (1.0 / pf, 1.0 / (factor as f32 * pf));
                        let ramp = ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
                        let ef = 1.0 - ramp;
                        inter * (1.0 - ef) + extra * ef
                    })
                    .collect();
                (inv, attention_factor as f32)
            }
        };
        RopeFreqs { inv, scale }
    }
}

/// How the q/k/v projections are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum QkvLayout {
    /// Three linears q_proj, k_proj, v_proj.
    Separate,
    /// One linear, output [q (NH·HD) | k (KV·HD) | v (KV·HD)] (ChatGLM, Qwen v1, GPT-2).
    Concat,
    /// One linear, output per head [h][q|k|v][HD] (BLOOM).
    PerHead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MlpKind {
    /// down(silu(gate(x)) ⊙ up(x)); `fused`: one linear holds [gate; up] (ChatGLM).
    SwiGlu { fused: bool },
    /// proj(gelu_tanh(fc(x))).
    GeluTanh,
    /// down(gelu_tanh(gate(x)) ⊙ up(x)) (Gemma's GeGLU).
    GeGlu,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Arch {
    pub family: Family,
    pub model_type: String,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub norm: NormKind,
    pub eps: f32,
    pub positions: Positions,
    pub qkv: QkvLayout,
    pub qkv_bias: bool,
    /// RMSNorm over each q and k head (weights [head_dim]) before RoPE (Qwen3).
    #[serde(default)]
    pub qk_norm: bool,
    /// Bias on the attention output and the MLP linears.
    pub out_bias: bool,
    pub mlp: MlpKind,
    pub tied: bool,
    /// LayerNorm right after the embedding (BLOOM).
    pub emb_norm: bool,
    /// Linear weights stored [in, out] (GPT-2 Conv1D).
    pub conv1d: bool,
    pub eos_token_id: Option<u32>,
    /// Qwen v1's logn attention / dynamic NTK past `seq_length` (eval only).
    #[serde(default)]
    pub long_context: Option<LongContext>,
    #[serde(default)]
    pub sliding_window: Option<SlidingWindow>,
    /// RoPE (base, scaling) of the sliding-window layers when it differs from `positions`'
    /// (Gemma 3's local layers: `rope_local_base_freq`).
    #[serde(default)]
    pub local_rope: Option<(f32, RopeScaling)>,
    /// The attention scale when it is not 1/√head_dim (Gemma 3: query_pre_attn_scalar^−½).
    #[serde(default)]
    pub attn_scale: Option<f32>,
    /// Token embeddings multiplied by this (Gemma 3: √hidden_size).
    #[serde(default)]
    pub emb_scale: Option<f32>,
    /// Norms on the attention and MLP outputs before each residual add (Gemma 3's
    /// post_attention_layernorm / post_feedforward_layernorm).
    #[serde(default)]
    pub sandwich_norms: bool,
}

/// Sliding-window attention: on the layers flagged in `layers`, key j is visible to query i
/// (slot indices, left padding included, as transformers' cache positions) iff i − len < j ≤ i.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SlidingWindow {
    pub len: usize,
    pub layers: Vec<bool>,
}

/// Qwen v1's eval-mode attention past `seq_length` (modeling_qwen.py), followed in evaluation
/// and generation by `Model::long_rope`. Training uses plain RoPE, as Qwen v1 does (both are
/// gated on `not self.training` there).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LongContext {
    /// `seq_length`: up to this many slots attention is the plain one.
    pub len: usize,
    /// `use_logn_attn`: the query at slot i is scaled by log(i+1)/log(len) once i+1 > len.
    pub logn: bool,
    /// `use_dynamic_ntk`: a row's rotary base grows with its length (`LongContext::ntk_alpha`).
    pub dynamic_ntk: bool,
}

impl LongContext {
    /// modeling_qwen.py's `get_ntk_alpha` for a row of `len` tokens (Python floats):
    /// max(2^ceil(log2(len/seq_length) + 1) − 1, 1); 1 without dynamic NTK.
    pub fn ntk_alpha(&self, len: usize) -> f64 {
        if !self.dynamic_ntk || len == 0 {
            return 1.0;
        }
        let c = (len as f64 / self.len as f64).ln() / 2f64.ln() + 1.0;
        (2f64.powf(c.ceil()) - 1.0).max(1.0)
    }

    /// The query factor at slot `slot` (0-based, left padding counted): `logn_tensor`, a Python
    /// `math.log(slot + 1, seq_length)` stored as f32; 1 within `seq_length` or without logn.
    pub fn logn(&self, slot: usize) -> f32 {
        if self.logn && slot + 1 > self.len {
            (((slot + 1) as f64).ln() / (self.len as f64).ln()) as f32
        } else {
            1.0
        }
    }
}

/// Qwen v1: `use_logn_attn` / `use_dynamic_ntk` change attention past `seq_length` in eval mode.
fn long_context(c: &HfConfig, model_type: &str) -> Option<LongContext> {
    let on = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
    let num = |k: &str| c.get(k).and_then(Value::as_u64).map(|x| x as usize);
    match model_type {
        "qwen" if on("use_logn_attn") || on("use_dynamic_ntk") => Some(LongContext {
            // (math.log(i, 1) fails in Qwen's own logn table: a length of 1 counts as 2)
            len: num("seq_length").unwrap_or(2048).max(2),
            logn: on("use_logn_attn"),
            dynamic_ntk: on("use_dynamic_ntk"),
        }),
        _ => None,
    }
}

/// Which layers `layer_types` marks "sliding_attention".
fn sliding_layer_types(c: &HfConfig, layers: usize) -> Option<Vec<bool>> {
    let t = c.get("layer_types").and_then(Value::as_array)?;
    Some(
        (0..layers)
            .map(|i| t.get(i).and_then(Value::as_str) == Some("sliding_attention"))
            .collect(),
    )
}

/// Mistral: `sliding_window` on every layer. Qwen2/3 with `use_sliding_window`: on the layers
/// `layer_types` marks "sliding_attention" (by default those from `max_window_layers` on), as
/// transformers builds them. Gemma 3: on the `layer_types` "sliding_attention" layers (older
/// configs: all but every `sliding_window_pattern`-th), window 4096 by default.
fn sliding_window(c: &HfConfig, model_type: &str, layers: usize) -> Option<SlidingWindow> {
    let len = match c.get("sliding_window").and_then(Value::as_u64) {
        None if model_type == "gemma3_text" => 4096,
        len => len? as usize,
    };
    let on = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
    let flags = match model_type {
        "mistral" => vec![true; layers],
        "gemma3_text" => sliding_layer_types(c, layers).unwrap_or_else(|| {
            let every = c
                .get("sliding_window_pattern")
                .and_then(Value::as_u64)
                .unwrap_or(6)
                .max(1) as usize;
            (0..layers).map(|i| (i + 1) % every != 0).collect()
        }),
        "qwen2" | "qwen3" if on("use_sliding_window") => sliding_layer_types(c, layers)
            .unwrap_or_else(|| {
                let from = c
                    .get("max_window_layers")
                    .and_then(Value::as_u64)
                    .unwrap_or(28) as usize;
                (0..layers).map(|i| i >= from).collect()
            }),
        _ => return None,
    };
    flags
        .contains(&true)
        .then_some(SlidingWindow { len, layers: flags })
}

/// What Gemma 3 configs may set that this engine does not follow, refused by key.
fn gemma3_checks(c: &HfConfig) -> Result<(), ArchError> {
    for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if let Some(v) = c.get(key).filter(|v| !v.is_null()) {
            return Err(c.key_error(
                key,
                format!("{v}: logit soft-capping is not supported (only null)"),
            ));
        }
    }
    if c.bool_or("use_bidirectional_attention", false) {
        return Err(c.key_error(
            "use_bidirectional_attention",
            "bidirectional attention is not supported (only false)",
        ));
    }
    match c.get("hidden_activation").and_then(Value::as_str) {
        None | Some("gelu_pytorch_tanh") => Ok(()),
        Some(other) => Err(c.key_error(
            "hidden_activation",
            format!("\"{other}\" is not supported (only gelu_pytorch_tanh)"),
        )),
    }
}

/// `a_key` must split evenly into `b_key` parts.
fn divides(c: &HfConfig, a_key: &str, a: usize, b_key: &str, b: usize) -> Result<(), ArchError> {
    if !a.is_multiple_of(b) {
        return Err(c.key_error(
            a_key,
            format!("{a} does not divide into {b_key} = {b} equal parts"),
        ));
    }
    Ok(())
}
/// The per-head size: `key` if the config has it, else hidden_size / heads
/// (which must divide).
fn head_dim(c: &HfConfig, key: &str, hidden: usize, heads: usize) -> Result<usize, ArchError> {
    if c.has(key) {
        return c.count(key);
    }
    divides(c, "hidden_size", hidden, "num_attention_heads", heads)?;
    Ok(hidden / heads)
}
/// RoPE base and scaling of a LLaMA-layout config, read as transformers 5 standardizes it:
/// `rope_scaling` (transformers 4) or else `rope_parameters` (5), whose own `rope_theta` wins over
/// the top-level one; a `rope_parameters` nested per layer type is accepted when every type has
/// the same parameters. Types other than default/linear/dynamic/llama3/yarn are refused.
fn rope_config(c: &HfConfig) -> Result<(f32, RopeScaling), ArchError> {
    let present = |k: &str| {
        c.get(k)
            .filter(|v| !v.is_null() && *v != &Value::Object(Default::default()))
    };
    let (key, params) = match (present("rope_scaling"), present("rope_parameters")) {
        (Some(p), _) => ("rope_scaling", p.clone()),
        (None, Some(p)) => ("rope_parameters", p.clone()),
        (None, None) => ("rope_parameters", Value::Object(Default::default())),
    };
    let err = |key: &str, msg: String| c.key_error(key, msg);
    let Value::Object(map) = &params else {
        return Err(err(key, "expected an object".into()));
    };
    // Nested per layer type: {"full_attention": {...}, "sliding_attention": {...}}.
    let nested = !map.is_empty() && map.values().all(|v| v.is_object() || v.is_null());
    let params = if nested {
        let used: Vec<&str> = match c.get("layer_types").and_then(Value::as_array) {
            Some(a) => a.iter().filter_map(Value::as_str).collect(),
            None => map.keys().map(String::as_str).collect(),
        };
        let mut one: Option<&Value> = None;
        for t in used {
            let p = map
                .get(t)
                .filter(|v| !v.is_null())
                .ok_or_else(|| err(key, format!("no RoPE parameters for layer type \"{t}\"")))?;
            match one {
                Some(o) if o != p => {
                    return Err(err(
                        key,
                        "different RoPE parameters per layer type are not supported".into(),
                    ))
                }
                _ => one = Some(p),
            }
        }
        one.cloned().unwrap_or_default()
    } else {
        params
    };
    rope_params(c, key, &params, "rope_theta", 10000.0)
}

/// Gemma 3's two RoPEs, (global, local), read as its config class does: `rope_parameters`
/// per layer type ("full_attention", "sliding_attention"), `rope_scaling` (transformers 4)
/// updating the global one; bases from each type's `rope_theta`, else the top-level
/// `rope_theta` (global, 1e6 by default) and `rope_local_base_freq` (local, 1e4).
fn gemma3_rope(c: &HfConfig) -> Result<[(f32, RopeScaling); 2], ArchError> {
    let present = |k: &str| c.get(k).filter(|v| !v.is_null());
    let mut per_type = [
        Value::Object(Default::default()),
        Value::Object(Default::default()),
    ];
    if let Some(p) = present("rope_parameters") {
        let Value::Object(map) = p else {
            return Err(c.key_error("rope_parameters", "expected an object"));
        };
        if !map.values().all(|v| v.is_object() || v.is_null()) {
            return Err(c.key_error(
                "rope_parameters",
                "expected parameters per layer type (full_attention, sliding_attention)",
            ));
        }
        for (slot, t) in per_type
            .iter_mut()
            .zip(["full_attention", "sliding_attention"])
        {
            if let Some(v) = map.get(t).filter(|v| v.is_object()) {
                *slot = v.clone();
            }
        }
    }
    let key = match present("rope_scaling") {
        Some(Value::Object(s)) => {
            if let Value::Object(full) = &mut per_type[0] {
                full.extend(s.clone());
            }
            "rope_scaling"
        }
        Some(_) => return Err(c.key_error("rope_scaling", "expected an object")),
        None => "rope_parameters",
    };
    let global = rope_params(c, key, &per_type[0], "rope_theta", 1e6)?;
    let local = rope_params(
        c,
        "rope_parameters",
        &per_type[1],
        "rope_local_base_freq",
        1e4,
    )?;
    if matches!(local.1, RopeScaling::Dynamic { .. }) {
        return Err(c.key_error(
            "rope_parameters",
            "dynamic RoPE on the sliding_attention layers is not supported",
        ));
    }
    Ok([global, local])
}

/// Base and scaling from one set of RoPE parameters (`key` names them in errors): the base is
/// their `rope_theta`, else the config's `top_theta`, else `default_base`.
fn rope_params(
    c: &HfConfig,
    key: &str,
    params: &Value,
    top_theta: &str,
    default_base: f64,
) -> Result<(f32, RopeScaling), ArchError> {
    let err = |key: &str, msg: String| c.key_error(key, msg);
    let num = |k: &str| params.get(k).and_then(Value::as_f64);
    let top = |k: &str| c.get(k).and_then(Value::as_f64);
    let base = num("rope_theta").or(top(top_theta)).unwrap_or(default_base) as f32;
    let rope_type = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    if rope_type == "default" {
        return Ok((base, RopeScaling::None));
    }
    if let Some(p) = num("partial_rotary_factor").or(top("partial_rotary_factor")) {
        if p != 1.0 {
            return Err(err(
                "partial_rotary_factor",
                format!("{p} with rope type \"{rope_type}\" is not supported (only 1.0)"),
            ));
        }
    }
    let need = |k: &str| {
        num(k).ok_or_else(|| {
            err(
                key,
                format!("rope type \"{rope_type}\" needs a number \"{k}\""),
            )
        })
    };
    let max_pos = || {
        top("max_position_embeddings")
            .map(|v| v as usize)
            .ok_or_else(|| err("max_position_embeddings", "missing".into()))
    };
    // transformers: a top-level original_max_position_embeddings wins, else the dict's, else
    // max_position_embeddings.
    let original = || match top("original_max_position_embeddings")
        .or(num("original_max_position_embeddings"))
    {
        Some(v) => Ok(v as usize),
        None => max_pos(),
    };
    let scaling = match rope_type {
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: need("factor")?,
            max_pos: max_pos()?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original: original()?,
        },
        "yarn" => {
            let original = original()?;
            let factor = match num("factor") {
                Some(f) => f,
                None => max_pos()? as f64 / original as f64,
            };
            let mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let nonzero = |k: &str| num(k).filter(|&v| v != 0.0);
            let attention_factor = match (num("attention_factor"), nonzero("mscale"), nonzero("mscale_all_dim")) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(md)) => mscale(factor, m) / mscale(factor, md),
                _ => mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor,
                original,
                beta_fast: nonzero("beta_fast").unwrap_or(32.0),
                beta_slow: nonzero("beta_slow").unwrap_or(1.0),
                attention_factor,
                truncate: params.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            }
        }
        other => {
            return Err(err(
                key,
                format!(
                    "rope type \"{other}\" is not supported (supported: default, linear, dynamic, llama3, yarn)"
                ),
            ))
        }
    };
    Ok((base, scaling))
}

impl Arch {
    /// Reads `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Arch, ArchError> {
        Self::from_config(&HfConfig::read(dir)?)
    }

    /// Parses a config.json text; `path` only names the source in errors.
    pub fn from_config_json(text: &str, path: &str) -> Result<Arch, ArchError> {
        Self::from_config(&HfConfig::parse(text, path)?)
    }

    /// The architecture a config.json describes, for every family of `family::TABLE`.
    pub fn from_config(c: &HfConfig) -> Result<Arch, ArchError> {
        let mt = c.model_type.clone();
        let family = Family::of(c)?;
        let tied = c.ties_embeddings();
        let a = match family {
            Family::Llama | Family::Qwen2 | Family::Qwen3 | Family::Gemma3 => {
                let g3 = family == Family::Gemma3;
                let ((base, scaling), local_rope) = if g3 {
                    gemma3_checks(c)?;
                    let [global, local] = gemma3_rope(c)?;
                    (global, Some(local))
                } else {
                    (rope_config(c)?, None)
                };
                let hidden = c.uint("hidden_size")?;
                let heads = c.count("num_attention_heads")?;
                let hd = head_dim(c, "head_dim", hidden, heads)?;
                let (q2, q3) = (family == Family::Qwen2, family == Family::Qwen3);
                Arch {
                    family,
                    vocab: c.uint("vocab_size")?,
                    hidden,
                    layers: c.uint("num_hidden_layers")?,
                    heads,
                    kv_heads: c.uint_or("num_key_value_heads", heads)?,
                    head_dim: hd,
                    ffn: c.uint("intermediate_size")?,
                    norm: if g3 {
                        NormKind::RmsPlusOne
                    } else {
                        NormKind::Rms
                    },
                    eps: c.float_or("rms_norm_eps", 1e-6) as f32,
                    positions: Positions::Rope {
                        kind: RopeKind::Half,
                        rot_dim: hd,
                        base,
                        scaling,
                    },
                    qkv: QkvLayout::Separate,
                    qkv_bias: q2 || c.bool_or("attention_bias", false),
                    qk_norm: q3 || g3,
                    out_bias: false,
                    mlp: if g3 {
                        MlpKind::GeGlu
                    } else {
                        MlpKind::SwiGlu { fused: false }
                    },
                    tied,
                    emb_norm: false,
                    conv1d: false,
                    eos_token_id: c.eos_id(),
                    model_type: mt.clone(),
                    long_context: None,
                    sliding_window: None,
                    local_rope,
                    // transformers: query_pre_attn_scalar**-0.5 and hidden_size**0.5 in f64.
                    attn_scale: g3
                        .then(|| c.float_or("query_pre_attn_scalar", 256.0).powf(-0.5) as f32),
                    emb_scale: g3.then(|| (hidden as f64).sqrt() as f32),
                    sandwich_norms: g3,
                }
            }
            Family::Qwen => {
                let hidden = c.uint("hidden_size")?;
                let heads = c.count("num_attention_heads")?;
                let hd = head_dim(c, "kv_channels", hidden, heads)?;
                let pct = c.float_or("rotary_pct", 1.0);
                Arch {
                    family: Family::Qwen,
                    vocab: c.uint("vocab_size")?,
                    hidden,
                    layers: c.uint("num_hidden_layers")?,
                    heads,
                    kv_heads: heads,
                    head_dim: hd,
                    ffn: c.uint("intermediate_size")? / 2,
                    norm: NormKind::Rms,
                    eps: c.float_or("layer_norm_epsilon", 1e-6) as f32,
                    positions: Positions::Rope {
                        kind: RopeKind::Half,
                        rot_dim: (hd as f64 * pct) as usize,
                        base: c.float_or("rotary_emb_base", 10000.0) as f32,
                        scaling: RopeScaling::None,
                    },
                    qkv: QkvLayout::Concat,
                    qkv_bias: true,
                    qk_norm: false,
                    out_bias: !c.bool_or("no_bias", true),
                    mlp: MlpKind::SwiGlu { fused: false },
                    tied,
                    emb_norm: false,
                    conv1d: false,
                    eos_token_id: c.eos_id(),
                    model_type: mt.clone(),
                    long_context: None,
                    sliding_window: None,
                    local_rope: None,
                    attn_scale: None,
                    emb_scale: None,
                    sandwich_norms: false,
                }
            }
            Family::Glm => {
                if !c.bool_or("position_encoding_2d", true) {
                    return Err(c.key_error(
                        "position_encoding_2d",
                        "only true (ChatGLM-6B's 2D positions) is supported",
                    ));
                }
                if c.get("pre_seq_len").is_some_and(|v| !v.is_null()) {
                    return Err(c.key_error(
                        "pre_seq_len",
                        "P-tuning v2 prefix checkpoints are not supported; use the base model",
                    ));
                }
                if c.uint_or("quantization_bit", 0)? != 0 {
                    return Err(c.key_error(
                        "quantization_bit",
                        "THUDM's pre-quantized (int4/int8) checkpoints are not supported; use the \
                         f16 model (with `quantize` for QLoRA)",
                    ));
                }
                let hidden = c.uint("hidden_size")?;
                let heads = c.count("num_attention_heads")?;
                divides(c, "hidden_size", hidden, "num_attention_heads", heads)?;
                let hd = hidden / heads;
                if hd % 4 != 0 {
                    return Err(c.key_error(
                        "hidden_size",
                        format!("head size {hd} must be a multiple of 4 for 2D rotary positions"),
                    ));
                }
                let id = |k: &str, d: u32| -> Result<u32, ArchError> {
                    Ok(c.uint_or(k, d as usize)? as u32)
                };
                Arch {
                    family,
                    vocab: c.uint("vocab_size")?,
                    hidden,
                    layers: c.uint("num_layers")?,
                    heads,
                    kv_heads: heads,
                    head_dim: hd,
                    ffn: c.uint_or("inner_hidden_size", 4 * hidden)?,
                    norm: NormKind::Layer,
                    eps: c.float_or("layernorm_epsilon", 1e-5) as f32,
                    positions: Positions::Glm2d {
                        rot_dim: hd / 2,
                        base: 10000.0,
                        sop: id("bos_token_id", 130004)?,
                        gmask: id("gmask_token_id", 130001)?,
                        mask: id("mask_token_id", 130000)?,
                    },
                    qkv: QkvLayout::PerHead,
                    qkv_bias: true,
                    qk_norm: false,
                    out_bias: true,
                    mlp: MlpKind::GeluTanh,
                    // PretrainedConfig's default: ChatGLM-6B ties lm_head to the embedding.
                    tied: c.bool_or("tie_word_embeddings", true),
                    emb_norm: false,
                    conv1d: false,
                    eos_token_id: c.eos_id(),
                    model_type: mt.clone(),
                    long_context: None,
                    sliding_window: None,
                    local_rope: None,
                    attn_scale: None,
                    emb_scale: None,
                    sandwich_norms: false,
                }
            }
            Family::ChatGlm => {
                let hidden = c.uint("hidden_size")?;
                let heads = c.count("num_attention_heads")?;
                let hd = head_dim(c, "kv_channels", hidden, heads)?;
                let mqa = c.bool_or("multi_query_attention", false);
                if !c.bool_or("rmsnorm", true) {
                    return Err(
                        c.key_error("rmsnorm", "only rmsnorm=true (ChatGLM2/3) is supported")
                    );
                }
                Arch {
                    family: Family::ChatGlm,
                    vocab: c.uint("padded_vocab_size")?,
                    hidden,
                    layers: c.uint("num_layers")?,
                    heads,
                    kv_heads: if mqa {
                        c.uint("multi_query_group_num")?
                    } else {
                        heads
                    },
                    head_dim: hd,
                    ffn: c.uint("ffn_hidden_size")?,
                    norm: NormKind::Rms,
                    eps: c.float_or("layernorm_epsilon", 1e-5) as f32,
                    positions: Positions::Rope {
                        kind: RopeKind::Interleaved,
                        rot_dim: hd / 2,
                        base: 10000.0 * c.float_or("rope_ratio", 1.0) as f32,
                        scaling: RopeScaling::None,
                    },
                    qkv: QkvLayout::Concat,
                    qkv_bias: c.bool_or("add_qkv_bias", true)
                        || c.bool_or("add_bias_linear", false),
                    qk_norm: false,
                    out_bias: c.bool_or("add_bias_linear", false),
                    mlp: MlpKind::SwiGlu { fused: true },
                    tied: false,
                    emb_norm: false,
                    conv1d: false,
                    eos_token_id: c.eos_id(),
                    model_type: mt.clone(),
                    long_context: None,
                    sliding_window: None,
                    local_rope: None,
                    attn_scale: None,
                    emb_scale: None,
                    sandwich_norms: false,
                }
            }
            Family::Bloom => {
                let hidden = c.uint_or("hidden_size", c.uint_or("n_embed", 0)?)?;
                let heads = c.uint_or("n_head", c.uint_or("num_attention_heads", 0)?)?;
                if hidden == 0 || heads == 0 {
                    return Err(c.key_error("hidden_size/n_head", "missing"));
                }
                divides(c, "hidden_size", hidden, "n_head", heads)?;
                Arch {
                    family: Family::Bloom,
                    vocab: c.uint("vocab_size")?,
                    hidden,
                    layers: c.uint_or("n_layer", c.uint_or("num_hidden_layers", 0)?)?,
                    heads,
                    kv_heads: heads,
                    head_dim: hidden / heads,
                    ffn: 4 * hidden,
                    norm: NormKind::Layer,
                    eps: c.float_or("layer_norm_epsilon", 1e-5) as f32,
                    positions: Positions::Alibi,
                    qkv: QkvLayout::PerHead,
                    qkv_bias: true,
                    qk_norm: false,
                    out_bias: true,
                    mlp: MlpKind::GeluTanh,
                    tied,
                    emb_norm: true,
                    conv1d: false,
                    eos_token_id: c.eos_id(),
                    model_type: mt.clone(),
                    long_context: None,
                    sliding_window: None,
                    local_rope: None,
                    attn_scale: None,
                    emb_scale: None,
                    sandwich_norms: false,
                }
            }
            Family::Gpt2 => {
                let hidden = c.uint("n_embd")?;
                let heads = c.count("n_head")?;
                divides(c, "n_embd", hidden, "n_head", heads)?;
                Arch {
                    family: Family::Gpt2,
                    vocab: c.uint("vocab_size")?,
                    hidden,
                    layers: c.uint("n_layer")?,
                    heads,
                    kv_heads: heads,
                    head_dim: hidden / heads,
                    ffn: c.uint_or("n_inner", 4 * hidden)?,
                    norm: NormKind::Layer,
                    eps: c.float_or("layer_norm_epsilon", 1e-5) as f32,
                    positions: Positions::Learned {
                        max: c.uint("n_positions")?,
                    },
                    qkv: QkvLayout::Concat,
                    qkv_bias: true,
                    qk_norm: false,
                    out_bias: true,
                    mlp: MlpKind::GeluTanh,
                    tied,
                    emb_norm: false,
                    conv1d: true,
                    eos_token_id: c.eos_id(),
                    model_type: mt.clone(),
                    long_context: None,
                    sliding_window: None,
                    local_rope: None,
                    attn_scale: None,
                    emb_scale: None,
                    sandwich_norms: false,
                }
            }
        };
        let mut a = a;
        a.long_context = long_context(c, &mt);
        a.sliding_window = sliding_window(c, &mt, a.layers);
        if a.sliding_window.is_none() {
            a.local_rope = None;
        }
        for (key, n) in [("hidden_size", a.hidden), ("vocab_size", a.vocab)] {
            if n == 0 {
                return Err(c.key_error(key, "must be at least 1"));
            }
        }
        if a.heads == 0 || a.kv_heads == 0 || a.heads % a.kv_heads != 0 {
            return Err(c.key_error(
                "num_key_value_heads",
                format!(
                    "{} heads not divisible into {} kv groups",
                    a.heads, a.kv_heads
                ),
            ));
        }
        Ok(a)
    }

    /// The attention scale: `attn_scale`, else 1/√head_dim.
    pub fn attn_scale(&self) -> f32 {
        self.attn_scale
            .unwrap_or_else(|| 1.0 / (self.head_dim as f32).sqrt())
    }

    /// Whether layer i uses `local_rope` (a sliding-window layer of a model that has one).
    pub fn local_rope_at(&self, i: usize) -> bool {
        self.local_rope.is_some() && self.window(i).is_some()
    }

    /// The attention window of layer i (None: full causal attention).
    pub fn window(&self, i: usize) -> Option<usize> {
        let w = self.sliding_window.as_ref()?;
        w.layers.get(i).copied().unwrap_or(false).then_some(w.len)
    }

    /// The GLM block's residual scale (ChatGLM-6B v1): `out = ln(x)·α + f(ln(x))` around
    /// attention and MLP, α = sqrt(2·28). THUDM's ChatGLMModel builds its GLMBlocks without
    /// passing num_layers, so GLMBlock's default 28 holds whatever the config says.
    pub fn glm_alpha(&self) -> Option<f32> {
        (self.family == Family::Glm).then(|| (2.0f64 * 28.0).sqrt() as f32)
    }

    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Checkpoint names of the embedding, final norm and head (`family::Family::names`).
    pub fn names(&self) -> Names {
        self.family.names(self.tied)
    }

    /// Checkpoint names of layer i's norms and linears (`family::Family::layer_names`).
    pub fn layer_names(&self, i: usize) -> LayerNames {
        self.family.layer_names(i)
    }

    /// Checkpoint names of layer i's per-head q and k norms (`qk_norm`, Qwen3), weights [head_dim].
    pub fn qk_norm_names(&self, i: usize) -> Option<(String, String)> {
        self.qk_norm.then(|| self.family.qk_norm_names(i))
    }

    /// (module name, d_in, d_out, has_bias) of every linear layer of layer i, in forward order.
    pub fn layer_linears(&self, i: usize) -> Vec<(String, usize, usize, bool)> {
        let n = self.layer_names(i);
        let (h, q, kv, f) = (self.hidden, self.q_dim(), self.kv_dim(), self.ffn);
        let mut v = Vec::new();
        match self.qkv {
            QkvLayout::Separate => {
                v.push((n.qkv[0].clone(), h, q, self.qkv_bias));
                v.push((n.qkv[1].clone(), h, kv, self.qkv_bias));
                v.push((n.qkv[2].clone(), h, kv, self.qkv_bias));
            }
            _ => v.push((n.qkv[0].clone(), h, q + 2 * kv, self.qkv_bias)),
        }
        v.push((n.o.clone(), q, h, self.out_bias));
        match self.mlp {
            MlpKind::SwiGlu { fused: false } | MlpKind::GeGlu => {
                v.push((n.mlp_in[0].clone(), h, f, self.out_bias));
                v.push((n.mlp_in[1].clone(), h, f, self.out_bias));
            }
            MlpKind::SwiGlu { fused: true } => {
                v.push((n.mlp_in[0].clone(), h, 2 * f, self.out_bias))
            }
            MlpKind::GeluTanh => v.push((n.mlp_in[0].clone(), h, f, self.out_bias)),
        }
        v.push((n.mlp_out.clone(), f, h, self.out_bias));
        v
    }

    /// The distinct last name parts of a layer's linears (what `target_modules` lists), in
    /// forward order; the output head is not among them.
    pub fn module_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (name, ..) in self.layer_linears(0) {
            let short = name.rsplit('.').next().unwrap_or(&name).to_string();
            if !out.contains(&short) {
                out.push(short);
            }
        }
        out
    }

    /// Parameter counts per module group: embedding, per layer (attention, mlp, norms), head.
    pub fn param_counts(&self) -> ParamCounts {
        let h = self.hidden as u64;
        let norm = if self.norm == NormKind::Layer {
            2 * h
        } else {
            h
        };
        let mut attn = 0;
        let mut mlp = 0;
        for (name, i, o, b) in self.layer_linears(0) {
            let c = (i * o) as u64 + if b { o as u64 } else { 0 };
            if name.contains("mlp") {
                mlp += c
            } else {
                attn += c
            }
        }
        let emb = self.vocab as u64 * h
            + match self.positions {
                Positions::Learned { max } => max as u64 * h,
                _ => 0,
            }
            + if self.emb_norm { norm } else { 0 };
        ParamCounts {
            embedding: emb,
            attention_per_layer: attn,
            mlp_per_layer: mlp,
            norms_per_layer: if self.sandwich_norms { 4 } else { 2 } * norm
                + if self.qk_norm {
                    2 * self.head_dim as u64
                } else {
                    0
                },
            final_norm: norm,
            head: if self.tied { 0 } else { self.vocab as u64 * h },
            layers: self.layers as u64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ParamCounts {
    pub embedding: u64,
    pub attention_per_layer: u64,
    pub mlp_per_layer: u64,
    pub norms_per_layer: u64,
    pub final_norm: u64,
    /// 0 when tied to the embedding.
    pub head: u64,
    pub layers: u64,
}

impl ParamCounts {
    pub fn total(&self) -> u64 {
        self.embedding
            + self.layers * (self.attention_per_layer + self.mlp_per_layer + self.norms_per_layer)
            + self.final_norm
            + self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatglm3_6b_counts_from_config_alone() {
        let cfg = r#"{"model_type":"chatglm","num_layers":28,"padded_vocab_size":65024,"hidden_size":4096,
          "ffn_hidden_size":13696,"kv_channels":128,"num_attention_heads":32,"multi_query_attention":true,
          "multi_query_group_num":2,"layernorm_epsilon":1e-5,"add_qkv_bias":true,"add_bias_linear":false,"rope_ratio":1}"#;
        let a = Arch::from_config_json(cfg, "config.json").unwrap();
        assert_eq!(a.kv_dim(), 256);
        // ChatGLM3-6B's published count: 2·65024·4096 (embedding + output_layer) + 28·(4096·4608
        // + 4608 + 4096² + 4096·27392 + 13696·4096 + 2·4096) + 4096 = 6,243,584,000.
        assert_eq!(a.param_counts().total(), 6_243_584_000);
    }

    /// google/gemma-3-1b-pt's config.json: transformers 5.24 counts 999,885,952 parameters
    /// (tied; four norms per layer and per-head q/k norms of 256), and reads windows of 512 on
    /// five layers of six with RoPE bases 1e4 (local) and 1e6 (global).
    #[test]
    fn gemma3_1b_counts_from_config_alone() {
        let cfg = r#"{"architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "attn_logit_softcapping": null, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1, "final_logit_softcapping": null, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0", "use_cache": true, "vocab_size": 262144}"#;
        let a = Arch::from_config_json(cfg, "config.json").unwrap();
        assert_eq!(a.param_counts().total(), 999_885_952);
        let w: Vec<Option<usize>> = (0..6).map(|i| a.window(i)).collect();
        assert_eq!(
            w,
            [Some(512), Some(512), Some(512), Some(512), Some(512), None]
        );
        assert_eq!(a.local_rope, Some((1e4, RopeScaling::None)));
        assert!(matches!(a.positions, Positions::Rope { base, .. } if base == 1e6));
        assert_eq!(a.attn_scale(), 0.0625);
    }

    #[test]
    fn zero_heads_and_sizes_that_do_not_divide_are_config_errors() {
        let cfg = |heads: u32, hidden: u32| {
            format!(
                r#"{{"model_type":"llama","hidden_size":{hidden},"num_hidden_layers":1,
                    "num_attention_heads":{heads},"intermediate_size":8,"vocab_size":10}}"#
            )
        };
        let err = |t: String| {
            Arch::from_config_json(&t, "config.json")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(cfg(0, 32)),
            "config.json: key \"num_attention_heads\": must be at least 1"
        );
        assert_eq!(
            err(cfg(3, 32)),
            "config.json: key \"hidden_size\": 32 does not divide into num_attention_heads = 3 equal parts"
        );
        // An explicit head_dim need not divide the hidden size.
        let t = cfg(3, 32).replace("\"vocab_size\"", "\"head_dim\":8,\"vocab_size\"");
        assert_eq!(Arch::from_config_json(&t, "c").unwrap().head_dim, 8);
    }

    #[test]
    fn unknown_model_type_lists_supported() {
        let e = Arch::from_config_json(r#"{"model_type":"t5"}"#, "m/config.json")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "m/config.json: unsupported model_type \"t5\" (supported: llama, mistral, qwen2, qwen3, gemma3_text, qwen, chatglm, bloom, gpt2)");
    }
}
