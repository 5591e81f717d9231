//! Twins of kernels/norm.cu: RMSNorm and LayerNorm forward/backward over rows of length d.

/// RMSNorm: rstd = 1/sqrt(mean(x²)+eps); y = x·rstd·w.  y, x: [rows, d]; w: [d]; rstd: [rows]
pub fn rmsnorm_fwd(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], d: usize, eps: f32) {
    for (r, xr) in x.chunks(d).enumerate() {
        let ms = xr.iter().map(|v| (v * v) as f64).sum::<f64>() / d as f64;
        let rs = 1.0 / (ms as f32 + eps).sqrt();
        rstd[r] = rs;
        for c in 0..d {
            y[r * d + c] = xr[c] * rs * w[c];
        }
    }
}

/// dx = rstd·(dy·w − xh·mean(dy·w·xh)); dw += Σ_rows dy·xh.  (xh = x·rstd)
pub fn rmsnorm_bwd(
    dx: &mut [f32],
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    d: usize,
) {
    for r in 0..x.len() / d {
        let rs = rstd[r];
        let (xr, gr) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
        let dot = (0..d)
            .map(|c| (gr[c] * w[c] * xr[c] * rs) as f64)
            .sum::<f64>() as f32
            / d as f32;
        for c in 0..d {
            let xh = xr[c] * rs;
            dx[r * d + c] = rs * (gr[c] * w[c] - xh * dot);
            dw[c] += gr[c] * xh;
        }
    }
}

/// LayerNorm: y = (x−mean)·rstd·w + b.  mean, rstd: [rows]
#[allow(clippy::too_many_arguments)]
pub fn layernorm_fwd(
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    d: usize,
    eps: f32,
) {
    for (r, xr) in x.chunks(d).enumerate() {
        let mu = (xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64) as f32;
        let var = xr
            .iter()
            .map(|&v| ((v - mu) * (v - mu)) as f64)
            .sum::<f64>()
            / d as f64;
        let rs = 1.0 / (var as f32 + eps).sqrt();
        mean[r] = mu;
        rstd[r] = rs;
        for c in 0..d {
            y[r * d + c] = (xr[c] - mu) * rs * w[c] + b[c];
        }
    }
}

/// dx = rstd·(gw − mean(gw) − xh·mean(gw·xh)); dw += dy·xh; db += dy.  (gw = dy·w)
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd(
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    d: usize,
) {
    for r in 0..x.len() / d {
        let (mu, rs) = (mean[r], rstd[r]);
        let (xr, gr) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
        let (mut s1, mut s2) = (0f64, 0f64);
        for c in 0..d {
            let gw = gr[c] * w[c];
            s1 += gw as f64;
            s2 += (gw * (xr[c] - mu) * rs) as f64;
        }
        let (s1, s2) = ((s1 / d as f64) as f32, (s2 / d as f64) as f32);
        for c in 0..d {
            let xh = (xr[c] - mu) * rs;
            dx[r * d + c] = rs * (gr[c] * w[c] - s1 - xh * s2);
            dw[c] += gr[c] * xh;
            db[c] += gr[c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::twins::testutil::{assert_close, numgrad};
    use crate::cuda::twins::Rng;

    fn loss(y: &[f32], dy: &[f32]) -> f64 {
        y.iter()
            .zip(dy)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum()
    }

    #[test]
    fn rmsnorm_backward_matches_finite_differences() {
        let (rows, d) = (3, 7);
        let mut r = Rng::new(5);
        let mut x = r.normals(rows * d, 1.0);
        let mut w = r.normals(d, 1.0);
        let dy = r.normals(rows * d, 1.0);
        let (mut y, mut rs) = (vec![0f32; rows * d], vec![0f32; rows]);
        rmsnorm_fwd(&mut y, &mut rs, &x, &w, d, 1e-5);
        let (mut dx, mut dw) = (vec![0f32; rows * d], vec![0f32; d]);
        rmsnorm_bwd(&mut dx, &mut dw, &dy, &x, &w, &rs, d);
        let wc = w.clone();
        let num: Vec<f32> = (0..x.len())
            .map(|i| {
                numgrad(&mut x, i, 1e-2, &mut |xx: &[f32]| {
                    let (mut y, mut rs) = (vec![0f32; rows * d], vec![0f32; rows]);
                    rmsnorm_fwd(&mut y, &mut rs, xx, &wc, d, 1e-5);
                    loss(&y, &dy)
                }) as f32
            })
            .collect();
        assert_close(&dx, &num, 2e-3, 1e-2, "rmsnorm dx");
        let xc = x.clone();
        let numw: Vec<f32> = (0..d)
            .map(|i| {
                numgrad(&mut w, i, 1e-2, &mut |ww: &[f32]| {
                    let (mut y, mut rs) = (vec![0f32; rows * d], vec![0f32; rows]);
                    rmsnorm_fwd(&mut y, &mut rs, &xc, ww, d, 1e-5);
                    loss(&y, &dy)
                }) as f32
            })
            .collect();
        assert_close(&dw, &numw, 2e-3, 1e-2, "rmsnorm dw");
    }

    #[test]
    fn layernorm_backward_matches_finite_differences() {
        let (rows, d) = (2, 9);
        let mut r = Rng::new(6);
        let mut x = r.normals(rows * d, 1.0);
        let w = r.normals(d, 1.0);
        let b = r.normals(d, 1.0);
        let dy = r.normals(rows * d, 1.0);
        let run = |xx: &[f32], y: &mut Vec<f32>, mu: &mut Vec<f32>, rs: &mut Vec<f32>| {
            layernorm_fwd(y, mu, rs, xx, &w, &b, d, 1e-5)
        };
        let (mut y, mut mu, mut rs) = (vec![0f32; rows * d], vec![0f32; rows], vec![0f32; rows]);
        run(&x, &mut y, &mut mu, &mut rs);
        let (mut dx, mut dw, mut db) = (vec![0f32; rows * d], vec![0f32; d], vec![0f32; d]);
        layernorm_bwd(&mut dx, &mut dw, &mut db, &dy, &x, &w, &mu, &rs, d);
        let num: Vec<f32> = (0..x.len())
            .map(|i| {
                numgrad(&mut x, i, 1e-2, &mut |xx: &[f32]| {
                    let (mut y, mut mu, mut rs) =
                        (vec![0f32; rows * d], vec![0f32; rows], vec![0f32; rows]);
                    run(xx, &mut y, &mut mu, &mut rs);
                    loss(&y, &dy)
                }) as f32
            })
            .collect();
        assert_close(&dx, &num, 2e-3, 1e-2, "layernorm dx");
        let want_db: Vec<f32> = (0..d).map(|c| dy[c] + dy[d + c]).collect();
        assert_close(&db, &want_db, 1e-6, 0.0, "layernorm db");
    }
}
