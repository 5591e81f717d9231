//! Twins of kernels/optim.cu: AdamW with f32 state and the sum of squares for grad clipping.

use super::adamw8bit::AdamHyper;

/// One torch-AdamW step (see the kernel's doc comment).  p, m, v, grad: [n]
pub fn adamw_step(p: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], h: &AdamHyper) {
    let (bc1, bc2) = h.bias_corrections();
    for i in 0..p.len() {
        let g = grad[i] * h.grad_scale;
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g;
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g * g;
        p[i] = p[i] * (1.0 - h.lr * h.weight_decay)
            - h.lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + h.eps);
    }
}

/// Σ x²  (f64 accumulation).
pub fn sumsq(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}

/// Clip factor for a max global norm: min(1, max_norm / (norm + 1e-6)) (torch clip_grad_norm_).
pub fn clip_factor(total_sumsq: f64, max_norm: f32) -> f32 {
    let norm = total_sumsq.sqrt() as f32;
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_weight_by_lr() {
        // At t = 1, m/bc1 = g and sqrt(v/bc2) = |g|: the update is lr·sign(g) (eps aside).
        let (mut p, mut m, mut v) = (vec![1.0, -2.0], vec![0.0; 2], vec![0.0; 2]);
        let h = AdamHyper {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 0.0,
            weight_decay: 0.0,
            step: 1,
            grad_scale: 1.0,
        };
        adamw_step(&mut p, &mut m, &mut v, &[3.0, -0.5], &h);
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] + 1.9).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn clip_factor_matches_torch_rule() {
        assert_eq!(clip_factor(9.0, 10.0), 1.0);
        assert!((clip_factor(400.0, 1.0) - 1.0 / 20.000001).abs() < 1e-7);
    }
}
