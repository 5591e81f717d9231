//! Which optimizer, and its hyper-parameters (the stateful optimizer a run holds is
//! `crate::train::optimizer::Optimizer`).

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

    pub fn is_8bit(self) -> bool {
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
