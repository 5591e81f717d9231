//! Optimizers as the reference training scripts run them: torch `AdamW`, bitsandbytes
//! `AdamW8bit` / `PagedAdamW8bit` (blockwise 8-bit states), transformers LR schedules and
//! torch's global-norm gradient clipping. Each update replays the reference's f32 operation
//! order (scalars computed in f64 as Python does, then rounded), so a run can be compared
//! bit for bit with torch / bitsandbytes on the CPU.

pub mod adamw;
pub mod adamw8bit;
pub mod clip;
pub mod optimizer;
pub mod schedule;
pub mod state_io;

pub use clip::clip_grad_norm;
pub use optimizer::{OptimConfig, OptimError, OptimKind, Optimizer};
pub use schedule::{warmup_steps, Schedule, ScheduleKind};

#[cfg(test)]
mod tests;
