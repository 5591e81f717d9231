//! The CPU transformer engine: a Hugging Face checkpoint loaded into one `Arch`-driven model with
//! explicit forward and backward (no autograd), LoRA / full fine-tuning gradients and optional
//! gradient checkpointing.

pub mod arch;
pub mod block;
pub mod cache;
pub mod family;
#[cfg(test)]
mod glm_tests;
pub mod linear;
mod long_context;
pub mod lora;
pub mod quantized;
#[cfg(test)]
mod quantized_tests;
pub mod random;
#[cfg(test)]
mod tests;

use crate::formats::{FormatError, WeightFiles};
pub use arch::{
    Arch, ArchError, Family, MlpKind, NormKind, ParamCounts, Positions, QkvLayout, RopeScaling,
};
pub use block::{Acts, Ctx, Layer, Norm, Param};
pub use cache::KvCache;
pub use linear::{Linear, LinearWeight, LoraWeights, QuantLinear};

use crate::backend::{AttnDims, Backend, CpuBackend, RopeFreqs, Strided, Tensor};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error(transparent)]
    Load(#[from] FormatError),
    #[error("batch: {0}")]
    Batch(String),
    #[error("{0}")]
    Train(String),
}

/// (checkpoint name, shape, f32 data)
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Row chunk (in logits elements) for the head + cross-entropy in `forward_backward`.
/// (Tiny under test so the fixture tests run several chunks.)
/// 2^25 f32 = 128 MiB: ~1000 rows of a 32k vocabulary, so a 2048×4 batch runs 8 chunks (each
/// chunk narrows a frozen f32 head once more in bf16 mode, and small chunks starve the GEMM).
const HEAD_CHUNK_ELEMS: usize = if cfg!(test) { 100 } else { 1 << 25 };

/// Peak f32 activations of one `forward_backward` over n = B·T tokens (the memory plan's
/// activation term), as `forward_backward_inner` allocates them: every layer's input (L+1 of
/// [n,H]) and the embedding's pre-norm copy; every layer's `Acts`, or with checkpointing only
/// the one layer being recomputed (and its output); the final norm's output and gradient; then
/// the larger of the head chunk (logits and their gradient, `HEAD_CHUNK_ELEMS` each at most)
/// and one layer's backward (dx, dprev and its scratch). `dropout`: LoRA dropout is on.
/// `bf16`: the CUDA backend computing in bf16, which stashes checkpointed inputs as bf16
/// (`Backend::stash`) and holds the layer activations `Backend::activation` allocates as bf16,
/// each counted as half a float (the last layer's output too), plus one f32 [n,H] for the
/// transient copy an op widens a stashed input into.
pub fn train_activation_floats(
    arch: &Arch,
    n: f64,
    checkpointing: bool,
    dropout: bool,
    bf16: bool,
) -> f64 {
    let (h, l, v) = (arch.hidden as f64, arch.layers as f64, arch.vocab as f64);
    let inputs = match checkpointing && bf16 {
        true => (0.5 * (l + 1.0) + 1.0) * n * h,
        false => (l + 2.0) * n * h,
    };
    let acts = Acts::floats(arch, n, bf16);
    let rows = (HEAD_CHUNK_ELEMS as f64 / v).ceil().clamp(1.0, n.max(1.0));
    let head = 2.0 * rows * v;
    let final_norm = 2.0 * n * h;
    let backward = 2.0 * n * h + Layer::backward_scratch_floats(arch, n, dropout, bf16);
    if checkpointing {
        inputs + final_norm + head.max(backward + acts + n * h)
    } else {
        inputs + l * acts + final_norm + head.max(backward)
    }
}

#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Backend to compute with; the CPU backend when None.
    pub backend: Option<Arc<dyn Backend>>,
    /// Called with (module name, W [d_out, d_in] in nn.Linear layout, d_in, d_out) for every
    /// layer linear as it loads (not the head); a returned `QuantLinear` replaces the dense
    /// weight, so a quantized load never holds more than one dense f32 weight at a time.
    pub quantize: Option<QuantizeHook>,
    /// Consulted first for every layer linear with (weight files, weight tensor name, d_in,
    /// d_out): a returned `QuantLinear` is used as the frozen weight instead of reading a dense
    /// tensor (a checkpoint saved already quantized, e.g. bitsandbytes 4-bit).
    pub prequantized: Option<PrequantHook>,
    /// Layer linears stored as bf16 / f16 stay 16-bit in memory (`quant::half::Linear16`: half
    /// of an f32 copy, same results); set for frozen bases (LoRA, inference). A weight made
    /// trainable later is widened to f32 then.
    pub keep_16bit: bool,
}

pub type PrequantHook = Arc<
    dyn Fn(&WeightFiles, &str, usize, usize) -> Result<Option<Box<dyn QuantLinear>>, FormatError>
        + Send
        + Sync,
>;

pub type QuantizeHook =
    Arc<dyn Fn(&str, &[f32], usize, usize) -> Option<Box<dyn QuantLinear>> + Send + Sync>;

/// A batch of token rows: the one batch type (collated for training by `train::batch::collate`,
/// for evaluation by the `evaluate` step). Positions: RoPE / learned positions count from each row's (or packed
/// example's) first token including left padding, as transformers does without position_ids;
/// ALiBi key positions are cumsum(mask)−1 (BLOOM).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    /// [B*T]
    pub input_ids: Vec<u32>,
    /// [B*T] 1 = token, 0 = padding.
    pub attention_mask: Vec<u8>,
    /// [B*T] unshifted labels (-100 = ignored); logits at t predict labels[t+1].
    pub labels: Option<Vec<i64>>,
    /// [B*T] packed-example index per token: no attention across examples, positions restart,
    /// no prediction across a boundary.
    pub segments: Option<Vec<u32>>,
}

impl Batch {
    /// The label that position `k` predicts: labels[k+1] when k+1 is in the same row and the
    /// same packed example, else −100 (also without labels).
    pub fn target(&self, k: usize) -> i64 {
        let (Some(labels), t) = (&self.labels, self.t) else {
            return -100;
        };
        let in_row = k % t + 1 < t;
        if in_row && self.segments.as_ref().is_none_or(|s| s[k] == s[k + 1]) {
            labels[k + 1]
        } else {
            -100
        }
    }

    /// Positions whose target is trained (what the loss averages over).
    pub fn trained_tokens(&self) -> usize {
        (0..self.b * self.t)
            .filter(|&k| self.target(k) >= 0)
            .count()
    }

    /// Non-padding tokens.
    pub fn real_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m == 1).count()
    }

    /// Pads rows of (ids, labels) to the longest row: `left` pads at the start (as for the
    /// causal-LM recipes), else at the end; padding gets `pad_id`, mask 0 and label −100.
    /// `labels` of a row may be empty (no labels for any row = inference batch).
    pub fn padded(rows: &[(Vec<u32>, Vec<i64>)], pad_id: u32, left: bool) -> Batch {
        let b = rows.len();
        let t = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let with_labels = rows.iter().any(|r| !r.1.is_empty());
        let mut batch = Batch {
            b,
            t,
            input_ids: vec![pad_id; b * t],
            attention_mask: vec![0; b * t],
            labels: with_labels.then(|| vec![-100; b * t]),
            segments: None,
        };
        for (r, (ids, labels)) in rows.iter().enumerate() {
            let off = if left { t - ids.len() } else { 0 };
            for (i, &id) in ids.iter().enumerate() {
                batch.input_ids[r * t + off + i] = id;
                batch.attention_mask[r * t + off + i] = 1;
                if let (Some(l), Some(&x)) = (&mut batch.labels, labels.get(i)) {
                    l[r * t + off + i] = x;
                }
            }
        }
        batch
    }

    /// Packs examples greedily, in order, into rows of at most `max_len` tokens (an example
    /// longer than `max_len` gets a row of its own, truncated); rows are right-padded.
    pub fn packed(examples: &[(Vec<u32>, Vec<i64>)], max_len: usize, pad_id: u32) -> Batch {
        let mut rows: Vec<Vec<usize>> = Vec::new();
        let mut used = usize::MAX;
        for (e, (ids, _)) in examples.iter().enumerate() {
            let len = ids.len().min(max_len);
            if used.saturating_add(len) > max_len {
                rows.push(Vec::new());
                used = 0;
            }
            rows.last_mut().expect("row").push(e);
            used += len;
        }
        let t = rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|&e| examples[e].0.len().min(max_len))
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0);
        let b = rows.len();
        let mut batch = Batch {
            b,
            t,
            input_ids: vec![pad_id; b * t],
            attention_mask: vec![0; b * t],
            labels: Some(vec![-100; b * t]),
            segments: Some(vec![u32::MAX; b * t]),
        };
        for (r, row) in rows.iter().enumerate() {
            let mut k = r * t;
            for (s, &e) in row.iter().enumerate() {
                let (ids, labels) = &examples[e];
                for i in 0..ids.len().min(max_len) {
                    batch.input_ids[k] = ids[i];
                    batch.attention_mask[k] = 1;
                    if let (Some(l), Some(&x)) = (&mut batch.labels, labels.get(i)) {
                        l[k] = x;
                    }
                    if let Some(sg) = &mut batch.segments {
                        sg[k] = s as u32;
                    }
                    k += 1;
                }
            }
        }
        batch
    }
}

/// Evaluation sums over a batch's predicted tokens ([`Model::eval_loss`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalSums {
    /// Σ token negative log-likelihood.
    pub nll: f64,
    /// Predicted (trained) tokens.
    pub tokens: usize,
    /// Tokens whose argmax logit is the target.
    pub correct: usize,
}

impl EvalSums {
    pub fn add(&mut self, o: EvalSums) {
        self.nll += o.nll;
        self.tokens += o.tokens;
        self.correct += o.correct;
    }
}

pub struct Output {
    /// [B, T, V]
    pub logits: Vec<f32>,
    /// Mean cross-entropy over predicted tokens (None without labels).
    pub loss: Option<f32>,
    /// Number of tokens the loss averages over.
    pub n_tokens: usize,
}

/// How `forward_backward` keeps activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrainOptions {
    /// Keep only each layer's input; recompute the layer in backward.
    pub checkpointing: bool,
    /// Seed of this step's LoRA dropout masks (vary it per step); dropout is off in `forward`.
    pub dropout_seed: u64,
}

/// One trainable tensor and its accumulated gradient, for the optimizer.
pub struct ParamMut<'a> {
    pub name: String,
    pub value: &'a mut Tensor,
    pub grad: &'a mut Tensor,
}

pub struct Model {
    pub arch: Arch,
    pub emb: Param,
    pub emb_name: String,
    pub pos_emb: Option<Param>,
    pub emb_norm: Option<Norm>,
    pub layers: Vec<Layer>,
    pub final_norm: Norm,
    /// None: tied to `emb`.
    pub head: Option<Linear>,
    pub backend: Arc<dyn Backend>,
    /// The checkpoint's config.json text (written back by `save_pretrained`).
    pub config_json: String,
    /// Dynamic NTK RoPE: the length the base is scaled to, transformers' `max_seq_len_cached`
    /// (0 = max_position_embeddings); see `rope_freqs`.
    rope_cached: AtomicUsize,
}

fn norm_of(
    be: &dyn Backend,
    files: &WeightFiles,
    arch: &Arch,
    name: &str,
) -> Result<Norm, FormatError> {
    norm_of_dim(be, files, arch, name, arch.hidden)
}

/// A checkpoint tensor of `shape` uploaded to the backend.
fn tensor_of(
    be: &dyn Backend,
    files: &WeightFiles,
    name: &str,
    shape: &[usize],
) -> Result<Tensor, FormatError> {
    Ok(be.upload(&files.get_shaped(&resolve(files, name), shape)?))
}

fn norm_of_dim(
    be: &dyn Backend,
    files: &WeightFiles,
    arch: &Arch,
    name: &str,
    h: usize,
) -> Result<Norm, FormatError> {
    let w = Param::frozen(tensor_of(be, files, &format!("{name}.weight"), &[h])?);
    let b = match arch.norm {
        NormKind::Layer => Some(Param::frozen(tensor_of(
            be,
            files,
            &format!("{name}.bias"),
            &[h],
        )?)),
        NormKind::Rms | NormKind::RmsPlusOne => None,
    };
    Ok(Norm {
        name: name.to_string(),
        kind: arch.norm,
        eps: arch.eps,
        w,
        b,
    })
}

/// GPT-2 and BLOOM checkpoints saved from the base model have no `transformer.` prefix; module
/// names stay canonical (as PEFT sees them on the *ForCausalLM model).
pub fn resolve(files: &WeightFiles, name: &str) -> String {
    if !files.contains(name) {
        if let Some(s) = name.strip_prefix("transformer.") {
            if files.contains(s) {
                return s.to_string();
            }
        }
    }
    name.to_string()
}

/// A layer linear from the checkpoint: prequantized (`pre`), quantized as it loads
/// (`quantize`, given the dense host weight) or dense, uploaded to the backend.
fn linear_of(
    be: &dyn Backend,
    files: &WeightFiles,
    arch: &Arch,
    name: &str,
    (d_in, d_out, bias): (usize, usize, bool),
    pre: Option<&PrequantHook>,
    quantize: Option<&QuantizeHook>,
    keep_16bit: bool,
) -> Result<Linear, FormatError> {
    let wname = resolve(files, &format!("{name}.weight"));
    let b = if bias {
        Some(tensor_of(be, files, &format!("{name}.bias"), &[d_out])?)
    } else {
        None
    };
    let quant = match pre {
        Some(p) => p(files, &wname, d_in, d_out)?,
        None => None,
    };
    let quantized = |q| {
        let mut l = Linear::dense(name.to_string(), d_in, d_out, Tensor::default(), None);
        l.weight = LinearWeight::Quant(be.upload_quant(q));
        l.conv1d = arch.conv1d;
        l
    };
    let quant = match quant {
        Some(q) => Some(q),
        None if keep_16bit && !arch.conv1d && quantize.is_none() => {
            half_of(files, &wname, d_in, d_out)?
        }
        None => None,
    };
    if let Some(q) = quant {
        let mut l = quantized(q);
        l.bias = b;
        return Ok(l);
    }
    let w = if arch.conv1d {
        let t = files.get_shaped(&wname, &[d_in, d_out])?;
        let mut w = vec![0.0; d_in * d_out];
        for i in 0..d_in {
            for o in 0..d_out {
                w[o * d_in + i] = t[i * d_out + o];
            }
        }
        w
    } else {
        files.get_shaped(&wname, &[d_out, d_in])?
    };
    if let Some(q) = quantize.and_then(|q| q(name, &w, d_in, d_out)) {
        let mut l = quantized(q);
        l.bias = b;
        return Ok(l);
    }
    let mut l = Linear::dense(name.to_string(), d_in, d_out, be.upload(&w), b);
    l.conv1d = arch.conv1d;
    Ok(l)
}

/// GLM 2D positions of a batch: position and block-position ids [B*T] and the per-row prefix
/// (slot of `<sop>`, or T when a row has none).
struct GlmPositions {
    pos: Vec<f32>,
    block: Vec<f32>,
    prefix: Vec<i32>,
}

/// One unpadded ChatGLM-6B row's positions (tokenization_chatglm.py `_pad`, modeling's
/// get_position_ids): `context` = index of the first `<sop>` (the whole row without one);
/// position ids count up to it, then stay at the index of [gMASK] (else [MASK]; without either
/// they keep counting); block ids are 0 before it and 1, 2, ... from it.
pub(crate) struct GlmRow {
    pub pos: Vec<usize>,
    pub block: Vec<usize>,
    pub context: usize,
}

pub(crate) fn glm_row_positions(ids: &[u32], sop: u32, gmask: u32, mask: u32) -> GlmRow {
    let n = ids.len();
    let context = ids.iter().position(|&x| x == sop).unwrap_or(n);
    let mpos = ids
        .iter()
        .position(|&x| x == gmask)
        .or_else(|| ids.iter().position(|&x| x == mask));
    GlmRow {
        pos: (0..n)
            .map(|c| if c < context { c } else { mpos.unwrap_or(c) })
            .collect(),
        block: (0..n)
            .map(|c| if c < context { 0 } else { c - context + 1 })
            .collect(),
        context,
    }
}

/// GLM's θ_i = base^(−2i/rot_dim), rounded to f16 as RotaryEmbedding stores `inv_freq`
/// (`.half()`; `model.float()` keeps the rounded values, the angles are then f32).
fn glm_freqs(rot_dim: usize, base: f32) -> RopeFreqs {
    let inv = crate::backend::cpu::inv_freq(rot_dim, base)
        .into_iter()
        .map(|x| half::f16::from_f32(x).to_f32())
        .collect();
    RopeFreqs { inv, scale: 1.0 }
}

/// A bf16 / f16 weight [d_out, d_in] as its 16-bit values (None: stored otherwise).
fn half_of(
    files: &WeightFiles,
    wname: &str,
    d_in: usize,
    d_out: usize,
) -> Result<Option<Box<dyn QuantLinear>>, FormatError> {
    use crate::quant::half::{HalfKind, Linear16};
    // Missing or unreadable: the dense path reports it.
    let Ok((dtype, shape, bytes)) = files.raw(wname) else {
        return Ok(None);
    };
    let kind = match dtype {
        safetensors::Dtype::BF16 => HalfKind::Bf16,
        safetensors::Dtype::F16 => HalfKind::F16,
        _ => return Ok(None),
    };
    match Linear16::from_le_bytes(kind, bytes, d_out, d_in) {
        Some(l) if shape == [d_out, d_in] => Ok(Some(Box::new(l))),
        // A wrong shape gets the dense path's error.
        _ => Ok(None),
    }
}

/// ALiBi slopes as BLOOM's build_alibi_tensor computes them.
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    let closest = 1usize << (usize::BITS - 1 - heads.leading_zeros());
    let base = 2f32.powf(-(2f32.powf(-((closest as f32).log2() - 3.0))));
    let mut s: Vec<f32> = (1..=closest).map(|i| base.powi(i as i32)).collect();
    if closest != heads {
        let extra = 2f32.powf(-(2f32.powf(-((2.0 * closest as f32).log2() - 3.0))));
        let n = (heads - closest).min(closest);
        s.extend((0..n).map(|i| extra.powi((1 + 2 * i) as i32)));
    }
    s
}

impl Model {
    /// Loads config.json and the safetensors weights of a Hugging Face model directory.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
        let arch = Arch::from_dir(dir)?;
        let config_json = std::fs::read_to_string(dir.join("config.json")).unwrap_or_default();
        let files = WeightFiles::open(dir)?;
        let backend = opts.backend.clone().unwrap_or_else(|| Arc::new(CpuBackend));
        let be = &*backend;
        let names = arch.names();
        let (v, h) = (arch.vocab, arch.hidden);
        let emb = Param::frozen(tensor_of(
            be,
            &files,
            &format!("{}.weight", names.emb),
            &[v, h],
        )?);
        let pos_emb = match (arch.positions, &names.pos_emb) {
            (Positions::Learned { max }, Some(p)) => Some(Param::frozen(tensor_of(
                be,
                &files,
                &format!("{p}.weight"),
                &[max, h],
            )?)),
            _ => None,
        };
        let emb_norm = match &names.emb_norm {
            Some(n) => Some(norm_of(be, &files, &arch, n)?),
            None => None,
        };
        let mut layers = Vec::with_capacity(arch.layers);
        for i in 0..arch.layers {
            let ln = arch.layer_names(i);
            let mut lin = arch
                .layer_linears(i)
                .into_iter()
                .map(|(n, di, d_o, b)| {
                    linear_of(
                        be,
                        &files,
                        &arch,
                        &n,
                        (di, d_o, b),
                        opts.prequantized.as_ref(),
                        opts.quantize.as_ref(),
                        opts.keep_16bit,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mlp_out = lin.pop().expect("mlp out");
            let n_qkv = if arch.qkv == QkvLayout::Separate {
                3
            } else {
                1
            };
            let rest = lin.split_off(n_qkv);
            let mut rest = rest.into_iter();
            let o = rest.next().expect("o");
            let (q_norm, k_norm) = match arch.qk_norm_names(i) {
                Some((q, k)) => (
                    Some(norm_of_dim(be, &files, &arch, &q, arch.head_dim)?),
                    Some(norm_of_dim(be, &files, &arch, &k, arch.head_dim)?),
                ),
                None => (None, None),
            };
            let [post_attn_norm, post_mlp_norm] = match &ln.post_norms {
                Some([a, m]) => [
                    Some(norm_of(be, &files, &arch, a)?),
                    Some(norm_of(be, &files, &arch, m)?),
                ],
                None => [None, None],
            };
            layers.push(Layer {
                ln1: norm_of(be, &files, &arch, &ln.ln1)?,
                qkv: lin,
                o,
                q_norm,
                k_norm,
                ln2: norm_of(be, &files, &arch, &ln.ln2)?,
                mlp_in: rest.collect(),
                mlp_out,
                post_attn_norm,
                post_mlp_norm,
                window: arch.window(i),
                local_rope: arch.local_rope_at(i),
            });
        }
        let final_norm = norm_of(be, &files, &arch, &names.final_norm)?;
        let head = match &names.head {
            Some(n) => Some(linear_of(
                be,
                &files,
                &Arch {
                    conv1d: false,
                    ..arch.clone()
                },
                n,
                (h, v, false),
                None,
                None,
                false,
            )?),
            None => None,
        };
        Ok(Model {
            arch,
            emb,
            emb_name: names.emb,
            pos_emb,
            emb_norm,
            layers,
            final_norm,
            head,
            backend,
            config_json,
            rope_cached: AtomicUsize::new(0),
        })
    }

    /// The rotary frequencies of a forward whose largest position is `seq_len` − 1 (None
    /// without RoPE). Dynamic NTK follows transformers' `dynamic_rope_update`, state included:
    /// the base is scaled to the longest length seen so far once past max_position_embeddings,
    /// and back to the original when a forward is shorter than max_position_embeddings. So, as
    /// there, keys cached during generation keep the rotation they were computed with.
    pub(crate) fn rope_freqs(&self, seq_len: usize) -> Option<RopeFreqs> {
        if let Positions::Glm2d { rot_dim, base, .. } = self.arch.positions {
            return Some(glm_freqs(rot_dim, base));
        }
        let Positions::Rope {
            rot_dim,
            base,
            scaling,
            ..
        } = self.arch.positions
        else {
            return None;
        };
        let seq = match scaling {
            RopeScaling::Dynamic { max_pos, .. } => {
                let cached = self.rope_cached.load(Ordering::Relaxed).max(max_pos);
                let next = if seq_len > cached {
                    seq_len
                } else if seq_len < max_pos {
                    max_pos
                } else {
                    cached
                };
                self.rope_cached.store(next, Ordering::Relaxed);
                next
            }
            _ => 0,
        };
        Some(scaling.freqs(rot_dim, base, seq))
    }

    /// The rotary frequencies of the `Layer::local_rope` layers (None when the model has no
    /// local RoPE; `Arch::local_rope` is never dynamic, so no state).
    pub(crate) fn rope_local_freqs(&self, seq_len: usize) -> Option<RopeFreqs> {
        let (Positions::Rope { rot_dim, .. }, Some((base, scaling))) =
            (self.arch.positions, self.arch.local_rope)
        else {
            return None;
        };
        Some(scaling.freqs(rot_dim, base, seq_len))
    }

    /// Every weight under its checkpoint name and shape, in the checkpoint's layout (Conv1D
    /// weights back to [in, out]; a tied head is not listed). Fails on quantized weights.
    pub fn state_dict(&self) -> Result<Vec<NamedTensor>, ModelError> {
        let be = &*self.backend;
        let (v, h) = (self.arch.vocab, self.arch.hidden);
        let mut out = vec![(
            format!("{}.weight", self.emb_name),
            vec![v, h],
            be.download(&self.emb.value),
        )];
        if let Some(p) = &self.pos_emb {
            out.push((
                "transformer.wpe.weight".into(),
                vec![p.value.len() / h, h],
                be.download(&p.value),
            ));
        }
        let norm = |out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, n: &Norm| {
            let d = n.w.value.len();
            out.push((
                format!("{}.weight", n.name),
                vec![d],
                be.download(&n.w.value),
            ));
            if let Some(b) = &n.b {
                out.push((format!("{}.bias", n.name), vec![d], be.download(&b.value)));
            }
        };
        let lin =
            |out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, l: &Linear| -> Result<(), ModelError> {
                let LinearWeight::Dense(w) = &l.weight else {
                    return Err(ModelError::Train(format!(
                        "{}: quantized weights cannot be saved densely",
                        l.name
                    )));
                };
                let w = be.download(w);
                if l.conv1d {
                    let mut t = vec![0.0; w.len()];
                    for o in 0..l.d_out {
                        for i in 0..l.d_in {
                            t[i * l.d_out + o] = w[o * l.d_in + i];
                        }
                    }
                    out.push((format!("{}.weight", l.name), vec![l.d_in, l.d_out], t));
                } else {
                    out.push((format!("{}.weight", l.name), vec![l.d_out, l.d_in], w));
                }
                if let Some(b) = &l.bias {
                    out.push((format!("{}.bias", l.name), vec![l.d_out], be.download(b)));
                }
                Ok(())
            };
        if let Some(n) = &self.emb_norm {
            norm(&mut out, n);
        }
        for layer in &self.layers {
            norm(&mut out, &layer.ln1);
            norm(&mut out, &layer.ln2);
            for n in [
                &layer.q_norm,
                &layer.k_norm,
                &layer.post_attn_norm,
                &layer.post_mlp_norm,
            ]
            .into_iter()
            .flatten()
            {
                norm(&mut out, n);
            }
            for l in layer.linears() {
                lin(&mut out, l)?;
            }
        }
        norm(&mut out, &self.final_norm);
        if let Some(l) = &self.head {
            lin(&mut out, l)?;
        }
        Ok(out)
    }

    /// Writes config.json and model.safetensors (f32; shards past 5 GB) loadable by transformers
    /// (and `Model::load`).
    pub fn save_pretrained(&self, dir: &Path) -> Result<(), ModelError> {
        crate::formats::hf_dir::write_f32_dir(dir, &self.config_json, &self.state_dict()?)?;
        Ok(())
    }

    fn ctx(&self, batch: &Batch, training: bool) -> Result<Ctx, ModelError> {
        let (b, t) = (batch.b, batch.t);
        let n = b * t;
        self.check_length(t, training)?;
        if batch.input_ids.len() != n || batch.attention_mask.len() != n {
            return Err(ModelError::Batch(format!(
                "input_ids/attention_mask must have B*T = {n} entries"
            )));
        }
        if let Some(&bad) = batch
            .input_ids
            .iter()
            .find(|&&i| i as usize >= self.arch.vocab)
        {
            return Err(ModelError::Batch(format!(
                "token id {bad} >= vocab size {}",
                self.arch.vocab
            )));
        }
        if let Some(labels) = &batch.labels {
            if labels.len() != n {
                return Err(ModelError::Batch(format!(
                    "labels must have B*T = {n} entries, got {}",
                    labels.len()
                )));
            }
            if let Some(&bad) = labels.iter().find(|&&l| l >= self.arch.vocab as i64) {
                return Err(ModelError::Batch(format!(
                    "label {bad} >= vocab size {}",
                    self.arch.vocab
                )));
            }
        }
        // More than one example in a row (padding aside).
        let packed = batch.segments.as_ref().is_some_and(|s| {
            (0..b).any(|r| {
                let mut real = (r * t..(r + 1) * t).filter(|&k| batch.attention_mask[k] == 1);
                real.next()
                    .is_some_and(|k0| real.any(|k| s.get(k) != s.get(k0)))
            })
        });
        let glm =
            match self.arch.positions {
                Positions::Glm2d { .. } if packed => return Err(ModelError::Batch(
                    "packed sequences are not supported for ChatGLM-6B (v1): its bidirectional \
                     context up to <sop> is per row; turn packing off"
                        .into(),
                )),
                Positions::Glm2d { .. } => Some(self.glm_positions(batch)),
                _ => None,
            };
        let segment = batch.segments.clone().unwrap_or_else(|| vec![0; n]);
        let mut pos = vec![0.0; n];
        let mut kpos = vec![0.0; n];
        for r in 0..b {
            let (mut p, mut c) = (0usize, 0i64);
            for i in 0..t {
                let k = r * t + i;
                if i > 0 && segment[k] != segment[k - 1] {
                    p = 0;
                    c = 0;
                }
                pos[k] = p as f32;
                p += 1;
                c += batch.attention_mask[k] as i64;
                kpos[k] = ((c - 1) * batch.attention_mask[k] as i64) as f32;
            }
        }
        if let Positions::Learned { max } = self.arch.positions {
            if t > max {
                return Err(ModelError::Batch(format!(
                    "sequence length {t} > max positions {max}"
                )));
            }
        }
        let be = &*self.backend;
        let valid = &batch.attention_mask;
        let segment: Vec<i32> = (0..n)
            .map(|k| if valid[k] == 0 { -1 } else { segment[k] as i32 })
            .collect();
        let (alibi, alibi_relative) = if self.arch.positions == Positions::Alibi {
            let rel = crate::backend::alibi_is_relative(valid, &segment, &kpos, b, t);
            let slopes = alibi_slopes(self.arch.heads);
            (Some((be.upload(&slopes), be.upload(&kpos))), rel)
        } else {
            (None, true)
        };
        if let Some(g) = &glm {
            pos.clone_from(&g.pos);
        }
        let seq_len = pos.iter().fold(0.0f32, |a, &p| a.max(p)) as usize + 1;
        let pos_t = be.upload(&pos);
        let mut rope = self
            .rope_freqs(seq_len)
            .map(|f| be.rope_tables(&pos_t, n, &f));
        let rope_block = glm.as_ref().and_then(|g| {
            let f = self.rope_freqs(seq_len)?;
            Some(be.rope_tables(&be.upload(&g.block), n, &f))
        });
        let prefix = glm.as_ref().map(|g| be.upload_i32(&g.prefix));
        // Qwen v1 past seq_length (eval only): each row's NTK base from its real tokens.
        let mut rope_q = None;
        if let (Some(lc), false) = (&self.arch.long_context, training) {
            let alpha: Vec<f64> = long_context::row_counts(&batch.attention_mask, b, t)
                .into_iter()
                .map(|c| lc.ntk_alpha(c))
                .collect();
            if let Some((k, q)) = self.long_rope(&pos, b, t, 0, &alpha) {
                rope = Some(k);
                rope_q = Some(q);
            }
        }
        let rope_local = self
            .rope_local_freqs(seq_len)
            .map(|f| be.rope_tables(&pos_t, n, &f));
        let pos_ids = matches!(self.arch.positions, Positions::Learned { .. }).then(|| {
            let ids: Vec<i32> = pos.iter().map(|&p| p as i32).collect();
            be.upload_i32(&ids)
        });
        let dims = AttnDims {
            b,
            t,
            nh: self.arch.heads,
            nkv: self.arch.kv_heads,
            hd: self.arch.head_dim,
        };
        Ok(Ctx {
            n,
            dims,
            ids: be.upload_i32(
                &batch
                    .input_ids
                    .iter()
                    .map(|&i| i as i32)
                    .collect::<Vec<_>>(),
            ),
            pos_ids,
            valid: be.upload_u8(valid),
            segment: be.upload_i32(&segment),
            alibi,
            alibi_relative,
            rope,
            rope_block,
            prefix,
            rope_q,
            rope_local,
        })
    }

    /// ChatGLM-6B's 2D positions and per-row prefix for an unpacked batch, computed on each
    /// row's real tokens as THUDM's tokenizer `_pad` does (left padding: position 0).
    fn glm_positions(&self, batch: &Batch) -> GlmPositions {
        let Positions::Glm2d {
            sop, gmask, mask, ..
        } = self.arch.positions
        else {
            unreachable!("glm_positions on a non-GLM model")
        };
        let (b, t) = (batch.b, batch.t);
        let mut g = GlmPositions {
            pos: vec![0.0; b * t],
            block: vec![0.0; b * t],
            prefix: vec![t as i32; b],
        };
        for r in 0..b {
            let slots: Vec<usize> = (0..t)
                .filter(|&i| batch.attention_mask[r * t + i] == 1)
                .collect();
            let ids: Vec<u32> = slots.iter().map(|&i| batch.input_ids[r * t + i]).collect();
            let rp = glm_row_positions(&ids, sop, gmask, mask);
            for (c, &i) in slots.iter().enumerate() {
                g.pos[r * t + i] = rp.pos[c] as f32;
                g.block[r * t + i] = rp.block[c] as f32;
            }
            if let Some(&slot) = slots.get(rp.context) {
                g.prefix[r] = slot as i32;
            }
        }
        g
    }

    /// Shifted targets [N]: target[t] = labels[t+1] inside the same row and example, else
    /// -100; and how many are trained (>= 0). Uploaded per head chunk ([`Model::chunk`]).
    fn targets(batch: &Batch, ctx: &Ctx) -> Option<(Vec<i32>, usize)> {
        batch.labels.as_ref()?;
        let tg: Vec<i32> = (0..ctx.n)
            .map(|k| batch.target(k).clamp(-100, i32::MAX as i64) as i32)
            .collect();
        let cnt = tg.iter().filter(|&&t| t >= 0).count();
        Some((tg, cnt))
    }

    /// x [N,H] = embedding (× `Arch::emb_scale`, + learned positions, + embedding layernorm);
    /// also the pre-norm x and the norm's stats when there is an embedding norm.
    pub(crate) fn embed(
        &self,
        ids: &Tensor<i32>,
        pos_ids: Option<&Tensor<i32>>,
        n: usize,
    ) -> (Tensor, Option<(Tensor, block::NormStats)>) {
        let be = &*self.backend;
        let h = self.arch.hidden;
        let mut x = be.zeros(n * h);
        be.embedding_fwd(&mut x, &self.emb.value, ids, n, h);
        if let Some(s) = self.arch.emb_scale {
            be.scale(&mut x, s, n * h);
        }
        if let (Some(pe), Some(ids)) = (&self.pos_emb, pos_ids) {
            let mut p = be.zeros(n * h);
            be.embedding_fwd(&mut p, &pe.value, ids, n, h);
            be.add(&mut x, &p, n * h);
        }
        match &self.emb_norm {
            Some(en) => {
                let mut st = block::NormStats::default();
                let mut y = be.zeros(n * h);
                en.forward(be, &mut y, &mut st, &x, n);
                (y, Some((x, st)))
            }
            None => (x, None),
        }
    }

    /// logits [N,V] from the final hidden states hf [N,H].
    pub(crate) fn head_fwd(&self, logits: &mut Tensor, hf: &Tensor, n: usize) {
        match &self.head {
            Some(l) => l.forward(&*self.backend, logits, hf, n),
            None => self.backend.matmul(
                logits,
                hf,
                &self.emb.value,
                n,
                self.arch.vocab,
                self.arch.hidden,
                false,
                true,
                0.0,
            ),
        }
    }

    /// Forward only (no activations kept beyond one layer): logits [B,T,V] and the loss.
    pub fn forward(&self, batch: &Batch) -> Result<Output, ModelError> {
        let be = &*self.backend;
        let (ctx, hf) = self.final_hidden(batch)?;
        let (n, v) = (ctx.n, self.arch.vocab);
        let mut logits = be.zeros(n * v);
        self.head_fwd(&mut logits, &hf, n);
        let host = be.download(&logits);
        let (loss, n_tokens) = match Self::targets(batch, &ctx) {
            Some((tg, cnt)) => {
                let mut sum = be.zeros(1);
                be.cross_entropy(&mut logits, &mut sum, &be.upload_i32(&tg), n, v, None);
                let s = be.download(&sum)[0];
                (Some(if cnt > 0 { s / cnt as f32 } else { 0.0 }), cnt)
            }
            None => (None, 0),
        };
        Ok(Output {
            logits: host,
            loss,
            n_tokens,
        })
    }

    /// Rows per head + cross-entropy chunk for n tokens.
    fn head_rows(&self, n: usize) -> usize {
        HEAD_CHUNK_ELEMS
            .div_ceil(self.arch.vocab)
            .clamp(1, n.max(1))
    }

    /// The evaluation path every evaluator uses (the trainer's eval, the `evaluate` step): head
    /// + cross-entropy in row chunks, never holding the [N,V] logits, summed over the batch's
    /// predicted tokens ([`Batch::target`]), with the argmax hits for token accuracy.
    /// Needs labels.
    pub fn eval_loss(&self, batch: &Batch) -> Result<EvalSums, ModelError> {
        let be = &*self.backend;
        let (ctx, hf) = self.final_hidden(batch)?;
        let (targets, cnt) = Self::targets(batch, &ctx)
            .ok_or_else(|| ModelError::Batch("labels are required for eval_loss".into()))?;
        let (n, h, v) = (ctx.n, self.arch.hidden, self.arch.vocab);
        let rows = self.head_rows(n);
        let mut hc = be.zeros(rows * h);
        let mut logits = be.zeros(rows * v);
        let (mut nll, mut hits) = (be.zeros(1), be.zeros(1));
        for r0 in (0..n).step_by(rows) {
            let m = rows.min(n - r0);
            let (hc, tc) = self.chunk(&mut hc, &hf, &targets, r0, m);
            self.head_fwd(&mut logits, hc, m);
            be.argmax_hits(&mut hits, &logits, &tc, m, v);
            be.cross_entropy(&mut logits, &mut nll, &tc, m, v, None);
        }
        Ok(EvalSums {
            nll: be.download(&nll)[0] as f64,
            tokens: cnt,
            correct: be.download(&hits)[0] as usize,
        })
    }

    /// Rows r0..r0+m of the hidden states (`hf` itself when the chunk is all of it, else a
    /// copy into the scratch `hc`) and their targets, uploaded.
    fn chunk<'a>(
        &self,
        hc: &'a mut Tensor,
        hf: &'a Tensor,
        targets: &[i32],
        r0: usize,
        m: usize,
    ) -> (&'a Tensor, Tensor<i32>) {
        let be = &*self.backend;
        let h = self.arch.hidden;
        let tc = be.upload_i32(&targets[r0..r0 + m]);
        if r0 == 0 && m * h == hf.len() {
            return (hf, tc);
        }
        be.copy2d(hc, Strided::rows(h, 0), hf, Strided::rows(h, r0 * h), m, h);
        (hc, tc)
    }

    /// Final-norm hidden states [N,H] (no activations kept beyond one layer).
    fn final_hidden(&self, batch: &Batch) -> Result<(Ctx, Tensor), ModelError> {
        let be = &*self.backend;
        let ctx = self.ctx(batch, false)?;
        let (n, h) = (ctx.n, self.arch.hidden);
        let (mut x, _) = self.embed(&ctx.ids, ctx.pos_ids.as_ref(), n);
        let mut acts = Acts::default();
        let mut y = be.zeros(n * h);
        for l in &self.layers {
            l.forward(be, &self.arch, &mut y, &mut acts, &x, &ctx);
            std::mem::swap(&mut x, &mut y);
        }
        self.final_norm
            .forward(be, &mut y, &mut block::NormStats::default(), &x, n);
        Ok((ctx, y))
    }

    /// Forward + backward: accumulates gradients into every trainable tensor (call `zero_grad`
    /// between optimizer steps) and returns the mean loss over the batch's predicted tokens.
    pub fn forward_backward(
        &mut self,
        batch: &Batch,
        opts: TrainOptions,
    ) -> Result<f32, ModelError> {
        let be = self.backend.clone();
        let mut loss = be.zeros(1);
        let cnt = self.forward_backward_acc(batch, opts, &mut loss, None)?;
        let sum = be.download(&loss)[0];
        Ok(if cnt > 0 { sum / cnt as f32 } else { 0.0 })
    }

    /// [`Model::forward_backward`] with the loss sum added to the backend scalar `loss` instead
    /// of read back, and the gradients of `grad_scale`·Σ token losses accumulated (None: of
    /// the mean, 1/trained tokens). Returns the trained-token count.
    pub fn forward_backward_acc(
        &mut self,
        batch: &Batch,
        opts: TrainOptions,
        loss: &mut Tensor,
        grad_scale: Option<f32>,
    ) -> Result<usize, ModelError> {
        let ctx = self.ctx(batch, true)?;
        let (targets, cnt) = Self::targets(batch, &ctx)
            .ok_or_else(|| ModelError::Batch("labels are required for training".into()))?;
        for (i, l) in self.linears_mut().into_iter().enumerate() {
            if let Some(lw) = &mut l.lora {
                lw.dropout_key = Some(
                    opts.dropout_seed.wrapping_mul(crate::rng::GOLDEN)
                        ^ (i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                );
            }
        }
        let scale = grad_scale.unwrap_or(if cnt > 0 { 1.0 / cnt as f32 } else { 0.0 });
        self.forward_backward_inner(opts, ctx, &targets, scale, loss);
        for l in self.linears_mut() {
            if let Some(lw) = &mut l.lora {
                lw.dropout_key = None;
            }
        }
        Ok(cnt)
    }

    fn forward_backward_inner(
        &mut self,
        opts: TrainOptions,
        ctx: Ctx,
        targets: &[i32],
        scale: f32,
        loss: &mut Tensor,
    ) {
        let be = self.backend.clone();
        let be = &*be;
        let (n, h, v) = (ctx.n, self.arch.hidden, self.arch.vocab);
        let (x0, emb_pre) = self.embed(&ctx.ids, ctx.pos_ids.as_ref(), n);
        // forward, keeping each layer's input (and its activations unless checkpointing). With
        // checkpointing the inputs are stashed (bf16 where products are bf16) and every layer
        // computes from its stashed input, so forward and recompute see the same values.
        let keep = |x: Tensor| match opts.checkpointing {
            true => be.stash(x),
            false => x,
        };
        let mut inputs = vec![keep(x0)];
        let mut saved: Vec<Acts> = Vec::new();
        for l in &self.layers {
            let mut acts = Acts::default();
            let mut y = be.zeros(n * h);
            l.forward(
                be,
                &self.arch,
                &mut y,
                &mut acts,
                inputs.last().expect("input"),
                &ctx,
            );
            if !opts.checkpointing {
                saved.push(acts);
            }
            inputs.push(keep(y));
        }
        let xl = inputs.pop().expect("last");
        let mut hf = be.zeros(n * h);
        let mut fst = block::NormStats::default();
        self.final_norm.forward(be, &mut hf, &mut fst, &xl, n);
        // head + cross-entropy in row chunks: logits never exist for all N rows at once; the
        // cross-entropy turns each chunk's logits into their gradient in place.
        let rows = self.head_rows(n);
        let mut logits = be.zeros(rows * v);
        let mut dhf = be.zeros(n * h);
        let mut hc = be.zeros(rows * h);
        let mut dh = be.zeros(rows * h);
        for r0 in (0..n).step_by(rows) {
            let m = rows.min(n - r0);
            let whole = r0 == 0 && m == n;
            let (hcv, tcv) = self.chunk(&mut hc, &hf, targets, r0, m);
            self.head_fwd(&mut logits, hcv, m);
            be.cross_entropy(&mut logits, loss, &tcv, m, v, Some(scale));
            let dh_out = if whole { &mut dhf } else { &mut dh };
            match &mut self.head {
                Some(l) => l.backward(be, Some(dh_out), false, &logits, hcv, m),
                None => {
                    be.matmul(dh_out, &logits, &self.emb.value, m, h, v, false, false, 0.0);
                    if let Some(g) = &mut self.emb.grad {
                        be.matmul(g, &logits, hcv, v, h, m, true, false, 1.0);
                    }
                }
            }
            if !whole {
                be.copy2d(
                    &mut dhf,
                    Strided::rows(h, r0 * h),
                    &dh,
                    Strided::rows(h, 0),
                    m,
                    h,
                );
            }
        }
        drop((logits, hc, dh));
        let mut dx = be.zeros(n * h);
        self.final_norm.backward(be, &mut dx, &dhf, &xl, &fst, n);
        // layers in reverse
        let mut dprev = be.zeros(n * h);
        for (i, l) in self.layers.iter_mut().enumerate().rev() {
            let x = &inputs[i];
            let recomputed;
            let acts = if opts.checkpointing {
                let mut a = Acts::default();
                let mut y = be.zeros(n * h);
                l.forward(be, &self.arch, &mut y, &mut a, x, &ctx);
                recomputed = a;
                &recomputed
            } else {
                &saved[i]
            };
            l.backward(be, &self.arch, &mut dprev, &dx, x, acts, &ctx);
            std::mem::swap(&mut dx, &mut dprev);
        }
        // embedding
        if let (Some(en), Some((x_pre, st))) = (&mut self.emb_norm, &emb_pre) {
            let mut d = be.zeros(n * h);
            en.backward(be, &mut d, &dx, x_pre, st, n);
            dx = d;
        }
        if let (Some(pe), Some(ids)) = (&mut self.pos_emb, &ctx.pos_ids) {
            if let Some(g) = &mut pe.grad {
                be.embedding_bwd(g, &dx, ids, n, h);
            }
        }
        if let Some(g) = &mut self.emb.grad {
            if let Some(s) = self.arch.emb_scale {
                be.scale(&mut dx, s, n * h);
            }
            be.embedding_bwd(g, &dx, &ctx.ids, n, h);
        }
    }

    /// Every linear layer (all layers, then the untied head).
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = self
            .layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .collect();
        if let Some(h) = &mut self.head {
            v.push(h);
        }
        v
    }

    /// Every norm with its module name.
    pub fn norms_mut(&mut self) -> Vec<&mut Norm> {
        let mut v: Vec<&mut Norm> = Vec::new();
        if let Some(n) = &mut self.emb_norm {
            v.push(n);
        }
        for l in &mut self.layers {
            v.push(&mut l.ln1);
            v.push(&mut l.ln2);
            v.extend(l.q_norm.as_mut());
            v.extend(l.k_norm.as_mut());
            v.extend(l.post_attn_norm.as_mut());
            v.extend(l.post_mlp_norm.as_mut());
        }
        v.push(&mut self.final_norm);
        v
    }

    /// Full fine-tuning: every weight trainable (fails on quantized weights).
    pub fn set_full_trainable(&mut self) -> Result<(), ModelError> {
        let be = self.backend.clone();
        let be = &*be;
        self.emb.set_trainable(be);
        if let Some(p) = &mut self.pos_emb {
            p.set_trainable(be);
        }
        for n in self.norms_mut() {
            n.w.set_trainable(be);
            if let Some(b) = &mut n.b {
                b.set_trainable(be);
            }
        }
        for l in self.linears_mut() {
            l.set_trainable(be).map_err(ModelError::Train)?;
        }
        Ok(())
    }

    /// Trainable tensors with their gradients, named as in the checkpoint (`<module>.weight`,
    /// `.bias`, and `<module>.lora_A.weight` / `.lora_B.weight` for adapters).
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let mut out = Vec::new();
        fn push<'a>(out: &mut Vec<ParamMut<'a>>, name: String, p: &'a mut Param) {
            if let Some(g) = &mut p.grad {
                out.push(ParamMut {
                    name,
                    value: &mut p.value,
                    grad: g,
                });
            }
        }
        push(&mut out, format!("{}.weight", self.emb_name), &mut self.emb);
        if let Some(p) = &mut self.pos_emb {
            push(&mut out, "transformer.wpe.weight".into(), p);
        }
        let mut norms: Vec<&mut Norm> = Vec::new();
        if let Some(n) = &mut self.emb_norm {
            norms.push(n);
        }
        let mut lins: Vec<&mut Linear> = Vec::new();
        for l in &mut self.layers {
            norms.push(&mut l.ln1);
            norms.push(&mut l.ln2);
            norms.extend(l.q_norm.as_mut());
            norms.extend(l.k_norm.as_mut());
            norms.extend(l.post_attn_norm.as_mut());
            norms.extend(l.post_mlp_norm.as_mut());
            lins.extend(l.qkv.iter_mut());
            lins.push(&mut l.o);
            lins.extend(l.mlp_in.iter_mut());
            lins.push(&mut l.mlp_out);
        }
        norms.push(&mut self.final_norm);
        if let Some(h) = &mut self.head {
            lins.push(h);
        }
        for n in norms {
            push(&mut out, format!("{}.weight", n.name), &mut n.w);
            if let Some(b) = &mut n.b {
                push(&mut out, format!("{}.bias", n.name), b);
            }
        }
        for l in lins {
            if let (LinearWeight::Dense(w), Some(g)) = (&mut l.weight, &mut l.grad_w) {
                out.push(ParamMut {
                    name: format!("{}.weight", l.name),
                    value: w,
                    grad: g,
                });
            }
            if let (Some(b), Some(g)) = (&mut l.bias, &mut l.grad_b) {
                out.push(ParamMut {
                    name: format!("{}.bias", l.name),
                    value: b,
                    grad: g,
                });
            }
            if let Some(lw) = &mut l.lora {
                out.push(ParamMut {
                    name: format!("{}.lora_A.weight", l.name),
                    value: &mut lw.a,
                    grad: &mut lw.grad_a,
                });
                out.push(ParamMut {
                    name: format!("{}.lora_B.weight", l.name),
                    value: &mut lw.b,
                    grad: &mut lw.grad_b,
                });
            }
        }
        out
    }

    pub fn zero_grad(&mut self) {
        let be = self.backend.clone();
        for p in self.params_mut() {
            be.fill(p.grad, 0.0);
        }
    }
}
