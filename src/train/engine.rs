//! Adapters that let the training loop drive the engine: the CPU `Model`
//! as a [`TrainModel`], `train::optimizer::Optimizer` as an [`Optim`], and a token
//! dataset file as [`Samples`].

use super::batch::{Sample, Samples};
use super::{Optim, TrainModel};
use crate::backend::{Backend, Tensor};
use crate::model::lora::LoraConfig;
use crate::model::{Batch, EvalSums, Model, TrainOptions};
use crate::text::TokenDataset;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;

/// Raw trainables inside a checkpoint (names as `Model::params_mut`).
const TRAINABLES: &str = "trainables.safetensors";

/// What the trained result is saved as.
pub enum Saved {
    /// A PEFT adapter (adapter_config.json + adapter_model.safetensors).
    Lora { cfg: LoraConfig, base_name: String },
    /// Full weights (config.json + model.safetensors), loadable by transformers.
    Full,
}

pub struct EngineModel {
    pub model: Model,
    pub saved: Saved,
    pub checkpointing: bool,
    /// Files copied next to a full save (tokenizer, generation config).
    pub copy_from: Option<std::path::PathBuf>,
}

impl TrainModel for EngineModel {
    fn forward_backward(
        &mut self,
        batch: &Batch,
        scale: f32,
        seed: u64,
        loss: &mut Tensor,
    ) -> Result<usize> {
        if batch.trained_tokens() == 0 {
            return Ok(0);
        }
        let opts = TrainOptions {
            checkpointing: self.checkpointing,
            dropout_seed: seed,
        };
        self.model
            .forward_backward_acc(batch, opts, loss, Some(scale))
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn eval_batch(&mut self, batch: &Batch) -> Result<EvalSums> {
        self.model
            .eval_loss(batch)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn backend(&self) -> Arc<dyn Backend> {
        self.model.backend.clone()
    }

    fn trainables(&mut self) -> Vec<(&mut Tensor, &mut Tensor)> {
        self.model
            .params_mut()
            .into_iter()
            .map(|p| (p.value, p.grad))
            .collect()
    }

    fn trainable_names(&mut self) -> Vec<String> {
        self.model
            .params_mut()
            .into_iter()
            .map(|p| p.name.clone())
            .collect()
    }

    fn zero_grad(&mut self) {
        self.model.zero_grad();
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        match &self.saved {
            Saved::Lora { cfg, base_name } => {
                crate::model::lora::save_peft(&self.model, cfg, base_name, dir)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
            }
            Saved::Full => {
                self.model
                    .save_pretrained(dir)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if let Some(src) = &self.copy_from {
                    copy_tokenizer_files(src, dir)?;
                }
            }
        }
        // Exact values for resume (names and layouts as the engine holds them).
        let be = self.model.backend.clone();
        let params: Vec<(String, Vec<f32>)> = self
            .model
            .params_mut()
            .iter()
            .map(|p| (p.name.clone(), be.download(p.value)))
            .collect();
        let views: Vec<(String, Vec<usize>, &[f32])> = params
            .iter()
            .map(|(name, v)| (name.clone(), vec![v.len()], &v[..]))
            .collect();
        crate::formats::safetensors::write_f32(&dir.join(TRAINABLES), &views)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }

    fn load(&mut self, dir: &Path) -> Result<()> {
        let p = dir.join(TRAINABLES);
        let saved =
            crate::formats::safetensors::read_all(&p).map_err(|e| anyhow::anyhow!("{e}"))?;
        // Check everything before changing anything (a damaged checkpoint is skipped whole).
        let be = self.model.backend.clone();
        let mut params = self.model.params_mut();
        for pm in &params {
            let Some((v, _)) = saved.get(&pm.name) else {
                bail!("checkpoint `{}` has no tensor `{}`", p.display(), pm.name);
            };
            if v.len() != pm.value.len() {
                bail!(
                    "checkpoint `{}`: `{}` has {} values, the model {}",
                    p.display(),
                    pm.name,
                    v.len(),
                    pm.value.len()
                );
            }
            if v.iter().any(|x| !x.is_finite()) {
                bail!(
                    "checkpoint `{}`: `{}` holds a NaN or inf",
                    p.display(),
                    pm.name
                );
            }
        }
        for pm in params.iter_mut() {
            if let Some((v, _)) = saved.get(&pm.name) {
                *pm.value = be.upload(v);
            }
        }
        Ok(())
    }
}

/// Tokenizer files and the generation config, copied next to full weights.
pub fn copy_tokenizer_files(src: &Path, dst: &Path) -> Result<()> {
    let names = crate::formats::TOKENIZER_FILES
        .iter()
        .chain(&["generation_config.json"]);
    for f in names {
        let p = src.join(f);
        if p.is_file() {
            std::fs::copy(&p, dst.join(f)).with_context(|| format!("copying `{}`", p.display()))?;
        }
    }
    Ok(())
}

/// The optimizer crate behind the loop's `Optim` trait.
pub struct EngineOptim(pub crate::train::optimizer::Optimizer);

impl Optim for EngineOptim {
    fn step(&mut self, pg: &mut [(&mut Tensor, &mut Tensor)], lr: f32) -> Result<()> {
        let mut params: Vec<&mut Tensor> = Vec::with_capacity(pg.len());
        let mut grads: Vec<&Tensor> = Vec::with_capacity(pg.len());
        for (p, g) in pg.iter_mut() {
            params.push(&mut **p);
            grads.push(&**g);
        }
        self.0.step(&mut params, &grads, lr as f64);
        Ok(())
    }
    fn save(&self, path: &Path) -> Result<()> {
        self.0.save(path).map_err(|e| anyhow::anyhow!("{e}"))
    }
    fn load(&mut self, path: &Path) -> Result<()> {
        let o = crate::train::optimizer::Optimizer::load(self.0.backend.clone(), path)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let sizes: Vec<usize> = self.0.states.iter().map(|s| s.len()).collect();
        if !sizes.is_empty() {
            o.check_sizes(&sizes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        self.0 = o;
        Ok(())
    }
}

/// A token dataset file as training samples.
pub struct TokenSamples(pub TokenDataset);

impl Samples for TokenSamples {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, i: usize) -> Sample {
        let r = self.0.get(i);
        // Padded rows carry their padding; keep only real tokens so the
        // trainer can pad per batch (left or right) itself.
        let keep: Vec<usize> = (0..r.input_ids.len())
            .filter(|&k| r.attention_mask.get(k).is_none_or(|&m| m == 1))
            .collect();
        let segments = if r.boundaries.len() > 1 {
            let mut seg = vec![0u32; r.input_ids.len()];
            let mut s = 0u32;
            for (k, x) in seg.iter_mut().enumerate() {
                while (s as usize + 1) < r.boundaries.len()
                    && r.boundaries[s as usize + 1] as usize <= k
                {
                    s += 1;
                }
                *x = s;
            }
            keep.iter().map(|&k| seg[k]).collect()
        } else {
            Vec::new()
        };
        Sample {
            input_ids: keep.iter().map(|&k| r.input_ids[k]).collect(),
            labels: keep.iter().map(|&k| r.labels[k]).collect(),
            segments,
        }
    }
    fn length(&self, i: usize) -> usize {
        self.0.get(i).input_ids.len()
    }
}
