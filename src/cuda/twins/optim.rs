//! Twins of kernels/optim.cu: torch AdamW with f32 state (the CPU optimizer's own function), the
//! sums of squares for grad clipping.

use crate::optim::adamw::AdamwScalars;

/// One torch AdamW step as the CPU optimizer takes it after `clip_grad_norm` scaled the
/// gradient by `grad_scale`: g·grad_scale (rounded), then `optim::adamw::adamw_step`.
pub fn adamw_torch(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grad: &[f32],
    s: &AdamwScalars,
    grad_scale: f32,
    apply_decay: bool,
) {
    let g: Vec<f32> = grad.iter().map(|&x| x * grad_scale).collect();
    crate::optim::adamw::adamw_step(p, m, v, &g, s, apply_decay);
}

/// Σ x²  (f64 accumulation).
pub fn sumsq(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}

/// acc[0] += Σ x² in the `sumsq_acc` kernels' order: each chunk's squares (rounded, then
/// added) reduced as one block does, then the parts summed as `sum_acc` does.
pub fn sumsq_acc(acc: &mut [f32], x: &[f32]) {
    if x.is_empty() {
        return;
    }
    let chunk = crate::cuda::ops::optim::sumsq_chunk(x.len());
    let parts: Vec<f32> = x
        .chunks(chunk)
        .map(|c| block_reduce(c, 1024, |v| v * v))
        .collect();
    acc[0] += block_reduce(&parts, 1024, |v| v);
}

/// One block's order (`tensor::sum_acc`, each `sumsq_acc` chunk): `threads` strided partial sums
/// of f(x), combined as the block reduction does (warp butterflies, then the warp totals).
pub fn block_reduce(x: &[f32], threads: usize, f: impl Fn(f32) -> f32) -> f32 {
    let mut part = vec![0f32; threads];
    for (i, &v) in x.iter().enumerate() {
        part[i % threads] += f(v);
    }
    let warp_sum = |w: &mut [f32]| {
        // __shfl_xor butterflies 16, 8, 4, 2, 1: every lane ends with the same value; lane 0's.
        let mut o = 16;
        while o > 0 {
            let prev = w.to_vec();
            for (l, v) in w.iter_mut().enumerate() {
                *v = prev[l] + prev[l ^ o];
            }
            o >>= 1;
        }
        w[0]
    };
    let mut totals = [0f32; 32];
    for (wi, w) in part.chunks_mut(32).enumerate() {
        totals[wi] = warp_sum(w);
    }
    warp_sum(&mut totals)
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
        let s = AdamwScalars::new(0.1, (0.9, 0.999), 0.0, 0.0, 1);
        adamw_torch(&mut p, &mut m, &mut v, &[3.0, -0.5], &s, 1.0, false);
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

    #[test]
    fn block_reduce_sums() {
        let x: Vec<f32> = (0..3001).map(|i| (i % 7) as f32).collect();
        let want: f32 = x.iter().sum();
        assert_eq!(block_reduce(&x, 1024, |v| v), want); // small integers: exact in any order
        assert_eq!(block_reduce(&[2.0, 3.0], 1024, |v| v * v), 13.0);
    }
}
