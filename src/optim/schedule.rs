//! Learning-rate schedules of `transformers.get_scheduler` (LambdaLR factors, f64 as Python).
//! Optimizer step k (counting from 0) uses lr(k).

/// Schedule kind, named as transformers' `lr_scheduler_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    Constant,
    ConstantWithWarmup,
    Linear,
    Cosine,
}

impl ScheduleKind {
    pub fn from_name(name: &str) -> Option<ScheduleKind> {
        match name {
            "constant" => Some(ScheduleKind::Constant),
            "constant_with_warmup" => Some(ScheduleKind::ConstantWithWarmup),
            "linear" => Some(ScheduleKind::Linear),
            "cosine" => Some(ScheduleKind::Cosine),
            _ => None,
        }
    }
}

/// transformers `TrainingArguments.get_warmup_steps`: a value >= 1 is a step count, below 1 a
/// ratio of the total, rounded up (`math.ceil(total * ratio)`; 0.03 of 100 gives 4).
pub fn warmup_steps(total_steps: usize, warmup: f64) -> usize {
    if warmup >= 1.0 {
        warmup as usize
    } else {
        (total_steps as f64 * warmup).ceil() as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub total_steps: usize,
    pub warmup_steps: usize,
}

impl Schedule {
    pub fn new(kind: ScheduleKind, total_steps: usize, warmup_steps: usize) -> Schedule {
        Schedule {
            kind,
            total_steps,
            warmup_steps,
        }
    }

    /// The LambdaLR factor at `step`.
    pub fn factor(&self, step: usize) -> f64 {
        let (t, w) = (self.total_steps as f64, self.warmup_steps as f64);
        let s = step as f64;
        let warm = |den_min: f64| s / w.max(den_min);
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::ConstantWithWarmup => {
                if step < self.warmup_steps {
                    warm(1.0)
                } else {
                    1.0
                }
            }
            ScheduleKind::Linear => {
                if step < self.warmup_steps {
                    warm(1.0)
                } else {
                    let den = (self.total_steps as i64 - self.warmup_steps as i64).max(1) as f64;
                    ((t - s) / den).max(0.0)
                }
            }
            ScheduleKind::Cosine => {
                if step < self.warmup_steps {
                    warm(1.0)
                } else {
                    let den = (self.total_steps as i64 - self.warmup_steps as i64).max(1) as f64;
                    let progress = (s - w) / den;
                    let num_cycles = 0.5f64;
                    (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos()))
                        .max(0.0)
                }
            }
        }
    }

    /// base_lr · factor(step)
    pub fn lr(&self, step: usize, base_lr: f64) -> f64 {
        base_lr * self.factor(step)
    }
}
