//! `torch.nn.utils.clip_grad_norm_` over all gradients (L2, error_if_nonfinite off).
//!
//! total = ‖(‖g_1‖, …, ‖g_k‖)‖₂;  coef = min(max_norm / (total + 1e-6), 1);  g ← g·coef.
//! Per-tensor norms come from [`Backend::norms`] (the CPU accumulates in f64 and rounds to f32
//! per tensor; torch sums in f32 in its own order, so the total agrees to about 1e-7 relative,
//! not bit for bit). One host synchronization for all tensors.

use crate::backend::{Backend, Tensor};

/// The total norm before clipping; with `max_norm`, the gradients are scaled in place.
pub fn clip_grad_norm(be: &dyn Backend, grads: &mut [&mut Tensor], max_norm: Option<f32>) -> f32 {
    let views: Vec<&Tensor> = grads.iter().map(|g| &**g).collect();
    let total = be
        .norms(&views)
        .iter()
        .map(|&n| (n as f64) * (n as f64))
        .sum::<f64>()
        .sqrt() as f32;
    if let Some(max_norm) = max_norm {
        let coef = max_norm / (total + 1e-6f32);
        // torch.clamp(max=1): NaN stays NaN
        let coef = if coef > 1.0 { 1.0 } else { coef };
        for g in grads.iter_mut() {
            let n = g.len();
            be.scale(g, coef, n);
        }
    }
    total
}
