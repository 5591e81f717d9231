//! `torch.nn.utils.clip_grad_norm_` over all gradients (L2, error_if_nonfinite off).
//!
//! total = ‖(‖g_1‖, …, ‖g_k‖)‖₂;  coef = min(max_norm / (total + 1e-6), 1);  g ← g·coef.
//! Norms accumulate in f64 and round to f32 per tensor (torch sums in f32 in its own order,
//! so the total agrees to about 1e-7 relative, not bit for bit).

/// Clip in place; returns the total norm before clipping.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let norms: Vec<f32> = grads
        .iter()
        .map(|g| {
            g.iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect();
    let total = norms
        .iter()
        .map(|&n| (n as f64) * (n as f64))
        .sum::<f64>()
        .sqrt() as f32;
    let coef = max_norm / (total + 1e-6f32);
    // torch.clamp(max=1): NaN stays NaN
    let coef = if coef > 1.0 { 1.0 } else { coef };
    for g in grads.iter_mut() {
        g.iter_mut().for_each(|x| *x *= coef);
    }
    total
}
