//! Twins of kernels/cross_entropy.cu: per-row softmax cross-entropy with -100 ignored.

/// loss[r] = lse(z_r) − z_r[target] (0 when ignored); lse[r] saved.  logits: [n, v]
pub fn cross_entropy_fwd(
    loss: &mut [f32],
    lse: &mut [f32],
    logits: &[f32],
    targets: &[i32],
    v: usize,
) {
    for (r, z) in logits.chunks(v).enumerate() {
        let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let s: f64 = z.iter().map(|&x| ((x - m) as f64).exp()).sum();
        let l = m + s.ln() as f32;
        lse[r] = l;
        let t = targets[r];
        loss[r] = if t < 0 || t as usize >= v {
            0.0
        } else {
            l - z[t as usize]
        };
    }
}

/// dz = grad_scale·(softmax(z) − onehot(target)), 0 for ignored rows.
pub fn cross_entropy_bwd(
    dlogits: &mut [f32],
    logits: &[f32],
    lse: &[f32],
    targets: &[i32],
    v: usize,
    grad_scale: f32,
) {
    for r in 0..targets.len() {
        let t = targets[r];
        let ignored = t < 0 || t as usize >= v;
        for c in 0..v {
            dlogits[r * v + c] = if ignored {
                0.0
            } else {
                grad_scale
                    * ((logits[r * v + c] - lse[r]).exp() - if c as i32 == t { 1.0 } else { 0.0 })
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::twins::testutil::{assert_close, numgrad};
    use crate::cuda::twins::Rng;

    #[test]
    fn equals_negative_log_softmax_and_ignores_minus_100() {
        let z = [1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5];
        let (mut loss, mut lse) = ([0f32; 2], [0f32; 2]);
        cross_entropy_fwd(&mut loss, &mut lse, &z, &[0, -100], 3);
        let want = -(1f32.exp() / (1f32.exp() + 2f32.exp() + 3f32.exp())).ln();
        assert!((loss[0] - want).abs() < 1e-6);
        assert_eq!(loss[1], 0.0);
        assert!((lse[1] - (0.5 + 3f32.ln())).abs() < 1e-6);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (n, v) = (3, 5);
        let mut z = Rng::new(10).normals(n * v, 2.0);
        let targets = [4, -100, 1];
        let (mut loss, mut lse) = (vec![0f32; n], vec![0f32; n]);
        cross_entropy_fwd(&mut loss, &mut lse, &z, &targets, v);
        let mut dz = vec![0f32; n * v];
        cross_entropy_bwd(&mut dz, &z, &lse, &targets, v, 0.5);
        let num: Vec<f32> = (0..n * v)
            .map(|i| {
                numgrad(&mut z, i, 1e-3, &mut |zz: &[f32]| {
                    let (mut l, mut s) = (vec![0f32; n], vec![0f32; n]);
                    cross_entropy_fwd(&mut l, &mut s, zz, &targets, v);
                    0.5 * l.iter().map(|&x| x as f64).sum::<f64>()
                }) as f32
            })
            .collect();
        assert_close(&dz, &num, 1e-3, 1e-2, "ce grad");
    }
}
