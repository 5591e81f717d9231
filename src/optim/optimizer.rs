//! The optimizer a training run holds: one kind, its hyper-parameters, and a state per
//! parameter tensor.

use super::adamw::{adamw_step, AdamwScalars};
use super::adamw8bit::{adamw8bit_step, bnb_adam32_step, BnbScalars, State8};
use rayon::prelude::*;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OptimError {
    #[error("unknown optimizer `{0}` (expected adamw_torch, adamw_8bit or paged_adamw_8bit)")]
    UnknownKind(String),
    #[error("{what}: expected {expected}, got {got}")]
    Mismatch {
        what: String,
        expected: String,
        got: String,
    },
    #[error("optimizer state file {path}: {msg}")]
    File { path: String, msg: String },
}

/// Elements per parallel task of the element-wise (32-bit) updates.
const ELEMS_PER_TASK: usize = 1 << 14;

/// Run an element-wise update over matching chunks of p, m, v, g in parallel.
fn par_elementwise(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    f: impl Fn(&mut [f32], &mut [f32], &mut [f32], &[f32]) + Sync,
) {
    p.par_chunks_mut(ELEMS_PER_TASK)
        .zip(m.par_chunks_mut(ELEMS_PER_TASK))
        .zip(v.par_chunks_mut(ELEMS_PER_TASK))
        .zip(g.par_chunks(ELEMS_PER_TASK))
        .for_each(|(((p, m), v), g)| f(p, m, v, g));
}

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimKind {
    /// torch.optim.AdamW
    AdamW,
    /// bitsandbytes AdamW8bit
    AdamW8bit,
    /// bitsandbytes PagedAdamW8bit (same update on the CPU)
    PagedAdamW8bit,
}

impl OptimKind {
    /// Accepts transformers' `optim` names.
    pub fn from_name(name: &str) -> Result<OptimKind, OptimError> {
        match name {
            "adamw" | "adamw_torch" | "adamw_hf" | "adamw_torch_fused" => Ok(OptimKind::AdamW),
            "adamw_8bit" | "adamw_bnb_8bit" | "adamw8bit" => Ok(OptimKind::AdamW8bit),
            "paged_adamw_8bit" | "paged_adamw8bit" => Ok(OptimKind::PagedAdamW8bit),
            other => Err(OptimError::UnknownKind(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OptimKind::AdamW => "adamw_torch",
            OptimKind::AdamW8bit => "adamw_8bit",
            OptimKind::PagedAdamW8bit => "paged_adamw_8bit",
        }
    }

    fn is_8bit(self) -> bool {
        !matches!(self, OptimKind::AdamW)
    }
}

/// Hyper-parameters (transformers' TrainingArguments defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimConfig {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// Tensors smaller than this keep 32-bit state in the 8-bit optimizers (bnb: 4096).
    pub min_8bit_size: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            min_8bit_size: 4096,
        }
    }
}

/// State of one parameter tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamState {
    /// torch AdamW: exp_avg, exp_avg_sq
    F32 { m: Vec<f32>, v: Vec<f32> },
    /// bnb 32-bit state of a small tensor in an 8-bit optimizer
    Bnb32 { m: Vec<f32>, v: Vec<f32> },
    /// bnb blockwise 8-bit state
    Q8(State8),
}

impl ParamState {
    pub fn len(&self) -> usize {
        match self {
            ParamState::F32 { m, .. } | ParamState::Bnb32 { m, .. } => m.len(),
            ParamState::Q8(s) => s.m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of optimizer state (for memory planning).
    pub fn bytes(&self) -> usize {
        match self {
            ParamState::F32 { m, .. } | ParamState::Bnb32 { m, .. } => 8 * m.len(),
            ParamState::Q8(s) => 2 * s.m.len() + 4 * (s.absmax_m.len() + s.absmax_v.len()),
        }
    }
}

/// AdamW family optimizer over a fixed list of parameter tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    pub kind: OptimKind,
    pub config: OptimConfig,
    /// Steps taken so far (the next step is `step + 1`).
    pub step: u64,
    pub states: Vec<ParamState>,
}

impl Optimizer {
    /// Zero state for tensors of `param_sizes` elements.
    pub fn new(kind: OptimKind, config: &OptimConfig, param_sizes: &[usize]) -> Optimizer {
        let states = param_sizes
            .iter()
            .map(|&n| {
                if !kind.is_8bit() {
                    ParamState::F32 {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else if n < config.min_8bit_size {
                    ParamState::Bnb32 {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    ParamState::Q8(State8::zeros(n))
                }
            })
            .collect();
        Optimizer {
            kind,
            config: config.clone(),
            step: 0,
            states,
        }
    }

    /// Bytes of all optimizer state.
    pub fn state_bytes(&self) -> usize {
        self.states.iter().map(|s| s.bytes()).sum()
    }

    /// One update of every tensor with learning rate `lr` (the scheduler's value for this step).
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lr: f64) {
        assert_eq!(
            params.len(),
            self.states.len(),
            "one params slice per state"
        );
        assert_eq!(grads.len(), self.states.len(), "one grads slice per state");
        self.step += 1;
        let c = &self.config;
        let torch = AdamwScalars::new(lr, c.betas, c.eps, c.weight_decay, self.step);
        let bnb = BnbScalars::new(lr, c.betas, c.eps, c.weight_decay, self.step);
        for ((p, g), st) in params.iter_mut().zip(grads).zip(self.states.iter_mut()) {
            assert_eq!(p.len(), st.len(), "param length");
            assert_eq!(g.len(), st.len(), "grad length");
            match st {
                ParamState::F32 { m, v } => par_elementwise(p, m, v, g, |p, m, v, g| {
                    adamw_step(p, m, v, g, &torch, c.weight_decay != 0.0)
                }),
                ParamState::Bnb32 { m, v } => {
                    par_elementwise(p, m, v, g, |p, m, v, g| bnb_adam32_step(p, m, v, g, &bnb))
                }
                ParamState::Q8(s) => adamw8bit_step(p, s, g, &bnb),
            }
        }
    }
}
