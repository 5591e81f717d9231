//! Optimizers as the reference training scripts run them: torch `AdamW`, bitsandbytes
//! `AdamW8bit` / `PagedAdamW8bit` (blockwise 8-bit states), transformers LR schedules (the
//! stateful optimizer and clipping are `crate::train::optimizer`). Each update replays the reference's f32 operation
//! order (scalars computed in f64 as Python does, then rounded), so a run can be compared
//! bit for bit with torch / bitsandbytes on the CPU.

pub mod adamw;
pub mod adamw8bit;
pub mod optimizer;
pub mod schedule;

pub use optimizer::{OptimConfig, OptimError, OptimKind};
pub use schedule::{warmup_steps, Schedule, ScheduleKind};
