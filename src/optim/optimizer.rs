//! The optimizer a training run holds: one kind, its hyper-parameters, and a state per
//! parameter tensor.

use super::adamw::AdamwScalars;
use super::adamw8bit::{BnbScalars, State8};
use crate::backend::{Adam8State, Backend, Tensor};
use std::sync::Arc;
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

/// State of one parameter tensor, on the backend of its parameter.
pub enum ParamState {
    /// torch AdamW: exp_avg, exp_avg_sq
    F32 { m: Tensor, v: Tensor },
    /// bnb 32-bit state of a small tensor in an 8-bit optimizer
    Bnb32 { m: Tensor, v: Tensor },
    /// bnb blockwise 8-bit state
    Q8(Adam8State),
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

    /// The 8-bit state from its host form.
    pub fn q8(be: &dyn Backend, s: &State8) -> ParamState {
        ParamState::Q8(Adam8State {
            m: be.upload_u8(&s.m),
            v: be.upload_u8(&s.v),
            absmax_m: be.upload(&s.absmax_m),
            absmax_v: be.upload(&s.absmax_v),
        })
    }
}

/// AdamW family optimizer over a fixed list of parameter tensors.
pub struct Optimizer {
    pub kind: OptimKind,
    pub config: OptimConfig,
    /// Steps taken so far (the next step is `step + 1`).
    pub step: u64,
    pub states: Vec<ParamState>,
    /// Where the states live (the parameters' backend).
    pub backend: Arc<dyn Backend>,
}

impl Optimizer {
    /// Zero state for tensors of `param_sizes` elements.
    pub fn new(
        backend: Arc<dyn Backend>,
        kind: OptimKind,
        config: &OptimConfig,
        param_sizes: &[usize],
    ) -> Optimizer {
        let be = &*backend;
        let states = param_sizes
            .iter()
            .map(|&n| {
                if !kind.is_8bit() {
                    ParamState::F32 {
                        m: be.zeros(n),
                        v: be.zeros(n),
                    }
                } else if n < config.min_8bit_size {
                    ParamState::Bnb32 {
                        m: be.zeros(n),
                        v: be.zeros(n),
                    }
                } else {
                    ParamState::q8(be, &State8::zeros(n))
                }
            })
            .collect();
        Optimizer {
            kind,
            config: config.clone(),
            step: 0,
            states,
            backend,
        }
    }

    /// Bytes of all optimizer state.
    pub fn state_bytes(&self) -> usize {
        self.states.iter().map(|s| s.bytes()).sum()
    }

    /// One update of every tensor with learning rate `lr` (the scheduler's value for this step).
    pub fn step(&mut self, params: &mut [&mut Tensor], grads: &[&Tensor], lr: f64) {
        assert_eq!(
            params.len(),
            self.states.len(),
            "one params tensor per state"
        );
        assert_eq!(grads.len(), self.states.len(), "one grads tensor per state");
        self.step += 1;
        let c = &self.config;
        let be = &*self.backend;
        let torch = AdamwScalars::new(lr, c.betas, c.eps, c.weight_decay, self.step);
        let bnb = BnbScalars::new(lr, c.betas, c.eps, c.weight_decay, self.step);
        for ((p, g), st) in params.iter_mut().zip(grads).zip(self.states.iter_mut()) {
            assert_eq!(p.len(), st.len(), "param length");
            assert_eq!(g.len(), st.len(), "grad length");
            match st {
                ParamState::F32 { m, v } => be.adamw(p, m, v, g, &torch, c.weight_decay != 0.0),
                ParamState::Bnb32 { m, v } => be.bnb_adam32(p, m, v, g, &bnb),
                ParamState::Q8(s) => be.adamw8bit(p, s, g, &bnb),
            }
        }
    }
}
