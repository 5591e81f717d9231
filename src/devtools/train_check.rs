//! The end-to-end check of the CUDA backend (issue #6): a tiny random LLaMA-shaped model trained
//! for a few LoRA steps with [`CpuBackend`] and with [`CudaBackend`] from the same seed, weights,
//! adapter init and batches, through the unchanged model code. `recipe selftest --device cuda`
//! runs it after the kernel checks.
//!
//! Pass: every step's loss agrees within [`LOSS_RTOL`] relative. Both backends compute in f32,
//! so the only differences are f32 summation order (cuBLAS, the kernels' reductions, the
//! online softmax); 1e-3 leaves room for ten AdamW steps to carry them forward while any wrong
//! index, mask or transpose moves the loss by far more.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{Backend, CpuBackend, CudaBackend, Tensor};
use crate::model::lora::{self, LoraConfig, Targets};
use crate::model::random::RandomLlama;
use crate::model::{Batch, LoadOptions, Model, TrainOptions};
use crate::optim::{OptimConfig, OptimKind};
use crate::train::optimizer::Optimizer;

use crate::cuda::twins::Rng;

/// Relative tolerance on each step's loss.
pub const LOSS_RTOL: f64 = 1e-3;
/// Optimizer steps per backend.
pub const STEPS: usize = 10;

const HIDDEN: usize = 64;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FFN: usize = 160;
const VOCAB: usize = 96;
const BATCH: usize = 2;
const SEQ: usize = 24;

/// Outcome of [`cpu_vs_cuda`].
#[derive(Debug, Clone)]
pub struct TrainCheck {
    pub cpu: Vec<f32>,
    pub cuda: Vec<f32>,
    /// max over steps of |cuda − cpu| / |cpu|.
    pub max_rel: f64,
}

impl TrainCheck {
    pub fn passed(&self) -> bool {
        self.cpu.len() == self.cuda.len() && self.max_rel <= LOSS_RTOL
    }
}

/// Trains the tiny model on the CPU and on GPU `ordinal` and compares the per-step losses.
pub fn cpu_vs_cuda(ordinal: usize) -> anyhow::Result<TrainCheck> {
    cpu_vs(Arc::new(CudaBackend::new(ordinal)?), STEPS)
}

/// The same comparison against any backend over `steps` steps.
pub fn cpu_vs(cuda: Arc<dyn Backend>, steps: usize) -> anyhow::Result<TrainCheck> {
    let dir = TempDir::new()?;
    write_model(dir.path())?;
    let r = compare(dir.path(), cuda, steps, &Run::LORA)?;
    Ok(TrainCheck {
        max_rel: r.max_rel_loss,
        cpu: r.cpu,
        cuda: r.other,
    })
}

/// max |b − a| / max(|a|, 1e-12) (∞ when the lengths differ or a value is not finite).
pub fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let r = (y as f64 - x as f64).abs() / (x as f64).abs().max(1e-12);
            if r.is_nan() {
                f64::INFINITY
            } else {
                r
            }
        })
        .fold(0.0, f64::max)
}

/// One training configuration of [`compare`]: LoRA on every linear of a base model, or QLoRA
/// (the base quantized to NF4 with double quantization as it loads).
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub qlora: bool,
    pub optim: OptimKind,
    pub checkpointing: bool,
    pub dropout: f32,
}

impl Run {
    /// LoRA, torch AdamW, no dropout.
    pub const LORA: Run = Run {
        qlora: false,
        optim: OptimKind::AdamW,
        checkpointing: false,
        dropout: 0.0,
    };
    /// LoRA with dropout 0.1 (the mask shared by every backend).
    pub const LORA_DROPOUT: Run = Run {
        dropout: 0.1,
        ..Run::LORA
    };
    /// QLoRA: NF4 + double quant base, 8-bit AdamW, gradient checkpointing.
    pub const QLORA: Run = Run {
        qlora: true,
        optim: OptimKind::AdamW8bit,
        checkpointing: true,
        dropout: 0.0,
    };
}

/// The tiny fixture models of every family besides LLaMA and ChatGLM (`tests/fixtures`, relative
/// to the repository root): the CPU-vs-device checks train each of them.
pub const OTHER_FAMILIES: &[&str] = &[
    "engine/bloom",
    "engine/gpt2",
    "engine/qwen",
    "engine/qwen2",
    "bases/qwen3",
    "bases/mistral",
    "bases/qwen2_sliding",
    "bases/gemma3",
    "bases/rope_linear",
    "bases/rope_dynamic",
    "bases/rope_llama3",
    "bases/rope_yarn",
    "glm6b/tiny",
];

/// Per-step losses and the final adapter of one [`Run`] on one backend.
pub struct Trained {
    pub losses: Vec<f32>,
    /// (name, values) of every trainable tensor after the last step.
    pub adapter: Vec<(String, Vec<f32>)>,
}

/// CPU vs another backend on the same [`Run`].
#[derive(Debug, Clone)]
pub struct RunCheck {
    pub cpu: Vec<f32>,
    pub other: Vec<f32>,
    /// max over steps of |other − cpu| / |cpu|.
    pub max_rel_loss: f64,
    /// max over adapter tensors of max|other − cpu| / max|cpu|.
    pub max_rel_adapter: f64,
    /// max over adapter tensors of ‖other − cpu‖₂ / ‖cpu‖₂.
    pub l2_rel_adapter: f64,
}

/// Trains `run` for `steps` optimizer steps on the model in `dir` (any family) with
/// `backend`: LoRA r 4 / alpha 8 on every linear (seed 0), lr 1e-3, fixed batches.
pub fn train(
    dir: &Path,
    backend: Arc<dyn Backend>,
    steps: usize,
    run: &Run,
) -> anyhow::Result<Trained> {
    let opts = LoadOptions {
        backend: Some(backend.clone()),
        ..Default::default()
    };
    let mut model = if run.qlora {
        let spec = crate::model::quantized::QuantizeSpec {
            quant_type: crate::quant::QuantType::Nf4,
            double_quant: true,
            blocksize: 64,
            ..Default::default()
        };
        crate::model::quantized::quantize_on_load(dir, &spec, &opts)?
    } else {
        Model::load(dir, &opts)?
    };
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: run.dropout,
        targets: Targets::AllLinear,
        use_rslora: false,
        modules_to_save: vec![],
        seed: 0,
    };
    lora::apply(&mut model, &cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sizes: Vec<usize> = model.params_mut().iter().map(|p| p.value.len()).collect();
    let mut opt = Optimizer::new(backend.clone(), run.optim, &OptimConfig::default(), &sizes);
    let vocab = model.arch.vocab;
    // GPT-2 fixtures have few learned positions.
    let seq = match model.arch.positions {
        crate::model::Positions::Learned { max } => SEQ.min(max),
        _ => SEQ,
    };
    let mut losses = Vec::with_capacity(steps);
    for s in 0..steps {
        model.zero_grad();
        let loss = model.forward_backward(
            &batch_of(s, vocab as u32, seq),
            TrainOptions {
                checkpointing: run.checkpointing,
                dropout_seed: s as u64,
            },
        )?;
        let (mut values, grads): (Vec<&mut Tensor>, Vec<&Tensor>) = model
            .params_mut()
            .into_iter()
            .map(|p| (p.value, &*p.grad))
            .unzip();
        opt.step(&mut values, &grads, 1e-3);
        losses.push(loss);
    }
    let adapter = model
        .params_mut()
        .iter()
        .map(|p| (p.name.clone(), backend.download(p.value)))
        .collect();
    Ok(Trained { losses, adapter })
}

/// [`train`] on the CPU and on `other`, compared. The backend trait has no error path, so a
/// CUDA failure inside an op panics; it is reported here as an error.
pub fn compare(
    dir: &Path,
    other: Arc<dyn Backend>,
    steps: usize,
    run: &Run,
) -> anyhow::Result<RunCheck> {
    let cpu = train(dir, Arc::new(CpuBackend), steps, run)?;
    let oth = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(dir, other, steps, run)
    }))
    .map_err(|p| anyhow::anyhow!("{}", crate::util::panic_message(p.as_ref())))??;
    let max_rel_adapter = cpu
        .adapter
        .iter()
        .zip(&oth.adapter)
        .map(|((_, a), (_, b))| {
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            (diff / scale) as f64
        })
        .fold(0.0, f64::max);
    let l2_rel_adapter = cpu
        .adapter
        .iter()
        .zip(&oth.adapter)
        .map(|((_, a), (_, b))| {
            let norm = a.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let diff = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            diff / norm.max(1e-30)
        })
        .fold(0.0, f64::max);
    Ok(RunCheck {
        max_rel_loss: max_rel(&cpu.losses, &oth.losses),
        max_rel_adapter,
        l2_rel_adapter,
        cpu: cpu.losses,
        other: oth.losses,
    })
}

/// Batch `s` (two of them, alternating) of `seq` tokens per row over token ids below `vocab`:
/// row 0 full length, row 1
/// right-padded by 5 tokens; the first 4 labels of each row are -100 (a prompt), as
/// instruction data has.
fn batch_of(s: usize, vocab: u32, seq: usize) -> Batch {
    let mut rng = Rng::new(100 + (s % 2) as u64);
    let ids: Vec<u32> = (0..BATCH * seq).map(|_| rng.below(vocab)).collect();
    let mut mask = vec![1u8; BATCH * seq];
    mask[2 * seq - 5..].fill(0);
    let labels = (0..BATCH * seq)
        .map(|i| {
            if i % seq < 4 || mask[i] == 0 {
                -100
            } else {
                ids[i] as i64
            }
        })
        .collect();
    Batch {
        b: BATCH,
        t: seq,
        input_ids: ids,
        attention_mask: mask,
        labels: Some(labels),
        segments: None,
    }
}

/// config.json + model.safetensors of a random LLaMA with GQA (std 0.05 weights, unit norms).
pub fn write_model(dir: &Path) -> anyhow::Result<()> {
    let shape = RandomLlama {
        hidden: HIDDEN,
        ffn: FFN,
        layers: LAYERS,
        heads: HEADS,
        kv_heads: KV_HEADS,
        vocab: VOCAB,
        max_positions: 128,
    };
    let mut rng = Rng::new(42);
    shape.write(dir, |n| rng.normals(n, 0.05))?;
    Ok(())
}

/// A directory under the system temp dir, removed on drop (tempfile is a dev-dependency only).
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p =
            std::env::temp_dir().join(format!("recipe-train-check-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness itself, on the CPU twice: the loss falls, and the same backend twice agrees
    /// exactly (so any CPU-vs-CUDA difference is the backend's).
    #[test]
    fn tiny_training_run_is_deterministic_and_learns() {
        let dir = TempDir::new().unwrap();
        write_model(dir.path()).unwrap();
        let run = |_| {
            train(dir.path(), Arc::new(CpuBackend), 4, &Run::LORA)
                .unwrap()
                .losses
        };
        let (a, b) = (run(0), run(1));
        assert_eq!(max_rel(&a, &b), 0.0);
        // ln(96) = 4.56: a random model starts near uniform (4.80 with these weights).
        assert!((a[0] - 4.8).abs() < 0.05, "{a:?}");
        assert!(a[2] < a[0], "{a:?}");
        assert!((max_rel(&[2.0], &[2.002]) - 1e-3).abs() < 1e-6); // 2.002 in f32
    }
}
