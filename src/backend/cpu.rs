//! CPU backend: f32 compute, `gemm` for matmul, rayon over rows. The oracle for every other backend.

use super::{AttnDims, AttnMask, Backend, RopeKind};
use rayon::prelude::*;

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

/// Scores of query (row bi, position i, head h, kv group g) against keys 0..=i into `p`
/// (−∞ where masked). Returns false when the query sees no key (padding).
#[allow(clippy::too_many_arguments)]
fn scores(
    p: &mut [f32],
    q: &[f32],
    k: &[f32],
    mask: &AttnMask,
    dims: AttnDims,
    bi: usize,
    i: usize,
    h: usize,
    g: usize,
    scale: f32,
) -> bool {
    let AttnDims { t, nh, nkv, hd, .. } = dims;
    let ti = bi * t + i;
    if mask.valid[ti] == 0 {
        return false;
    }
    let qi = &q[(ti * nh + h) * hd..][..hd];
    let mut any = false;
    for (j, pj) in p.iter_mut().enumerate().take(i + 1) {
        let tj = bi * t + j;
        if mask.valid[tj] == 0 || mask.segment[tj] != mask.segment[ti] {
            *pj = f32::NEG_INFINITY;
            continue;
        }
        let kj = &k[(tj * nkv + g) * hd..][..hd];
        let mut s = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
        if let Some((slopes, kpos)) = mask.alibi {
            s += slopes[h] * kpos[tj];
        }
        *pj = s;
        any = true;
    }
    any
}

impl CpuBackend {
    /// y[n,m] = x[n,k]·w[m,k]ᵀ in plain loops (the slow oracle for matmul paths).
    pub fn matmul_ref(&self, y: &mut [f32], x: &[f32], w: &[f32], n: usize, m: usize, k: usize) {
        for t in 0..n {
            for o in 0..m {
                y[t * m + o] = (0..k).map(|i| x[t * k + i] * w[o * k + i]).sum();
            }
        }
    }
}

fn parallelism(flops: usize) -> gemm::Parallelism {
    if flops > 1 << 18 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

impl Backend for CpuBackend {
    fn matmul(
        &self,
        c: &mut [f32],
        a: &[f32],
        b: &[f32],
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        beta: f32,
    ) {
        assert!(
            c.len() >= m * n && a.len() >= m * k && b.len() >= k * n,
            "matmul shape"
        );
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            c[..m * n].iter_mut().for_each(|x| *x *= beta);
            return;
        }
        // A[i,p] at a[i*k+p] (row-major [m,k]) or a[p*m+i] when transposed ([k,m]).
        let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
        let (b_cs, b_rs) = if tb { (k as isize, 1) } else { (1, n as isize) };
        // SAFETY: the asserted lengths cover every index the strides reach.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                beta != 0.0,
                a.as_ptr(),
                a_cs,
                a_rs,
                b.as_ptr(),
                b_cs,
                b_rs,
                beta,
                1.0,
                false,
                false,
                false,
                parallelism(m * n * k),
            )
        }
    }

    fn rmsnorm_fwd(
        &self,
        y: &mut [f32],
        rstd: &mut [f32],
        x: &[f32],
        w: &[f32],
        n: usize,
        d: usize,
        eps: f32,
    ) {
        y[..n * d]
            .par_chunks_mut(d)
            .zip(rstd[..n].par_iter_mut())
            .enumerate()
            .for_each(|(i, (y, r))| {
                let x = &x[i * d..(i + 1) * d];
                let ms = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
                *r = 1.0 / (ms + eps).sqrt();
                for j in 0..d {
                    y[j] = w[j] * (x[j] * *r);
                }
            });
    }

    fn rmsnorm_bwd(
        &self,
        dx: &mut [f32],
        dw: Option<&mut [f32]>,
        dy: &[f32],
        x: &[f32],
        w: &[f32],
        rstd: &[f32],
        n: usize,
        d: usize,
    ) {
        dx[..n * d]
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(i, dx)| {
                let (x, dy, r) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d], rstd[i]);
                let dot = (0..d).map(|j| w[j] * dy[j] * x[j] * r).sum::<f32>() / d as f32;
                for j in 0..d {
                    dx[j] = r * (w[j] * dy[j] - x[j] * r * dot);
                }
            });
        if let Some(dw) = dw {
            for i in 0..n {
                for j in 0..d {
                    dw[j] += dy[i * d + j] * x[i * d + j] * rstd[i];
                }
            }
        }
    }

    fn layernorm_fwd(
        &self,
        y: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
        x: &[f32],
        w: &[f32],
        b: &[f32],
        n: usize,
        d: usize,
        eps: f32,
    ) {
        y[..n * d]
            .par_chunks_mut(d)
            .zip(mean[..n].par_iter_mut().zip(rstd[..n].par_iter_mut()))
            .enumerate()
            .for_each(|(i, (y, (m, r)))| {
                let x = &x[i * d..(i + 1) * d];
                *m = x.iter().sum::<f32>() / d as f32;
                let var = x.iter().map(|v| (v - *m) * (v - *m)).sum::<f32>() / d as f32;
                *r = 1.0 / (var + eps).sqrt();
                for j in 0..d {
                    y[j] = (x[j] - *m) * *r * w[j] + b[j];
                }
            });
    }

    fn layernorm_bwd(
        &self,
        dx: &mut [f32],
        dw: Option<&mut [f32]>,
        db: Option<&mut [f32]>,
        dy: &[f32],
        x: &[f32],
        w: &[f32],
        mean: &[f32],
        rstd: &[f32],
        n: usize,
        d: usize,
    ) {
        dx[..n * d]
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(i, dx)| {
                let (x, dy, m, r) = (
                    &x[i * d..(i + 1) * d],
                    &dy[i * d..(i + 1) * d],
                    mean[i],
                    rstd[i],
                );
                let (mut mg, mut mgx) = (0.0f32, 0.0f32);
                for j in 0..d {
                    let g = w[j] * dy[j];
                    mg += g;
                    mgx += g * (x[j] - m) * r;
                }
                mg /= d as f32;
                mgx /= d as f32;
                for j in 0..d {
                    dx[j] = r * (w[j] * dy[j] - mg - (x[j] - m) * r * mgx);
                }
            });
        if let Some(dw) = dw {
            for i in 0..n {
                for j in 0..d {
                    dw[j] += dy[i * d + j] * (x[i * d + j] - mean[i]) * rstd[i];
                }
            }
        }
        if let Some(db) = db {
            for i in 0..n {
                for j in 0..d {
                    db[j] += dy[i * d + j];
                }
            }
        }
    }

    fn rope(
        &self,
        x: &mut [f32],
        pos: &[f32],
        n: usize,
        heads: usize,
        hd: usize,
        rot_dim: usize,
        base: f32,
        kind: RopeKind,
        inverse: bool,
    ) {
        let half = rot_dim / 2;
        // inv_freq as transformers computes it (f32).
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / rot_dim as f32))
            .collect();
        x[..n * heads * hd]
            .par_chunks_mut(heads * hd)
            .enumerate()
            .for_each(|(t, row)| {
                for (i, f) in inv.iter().enumerate() {
                    let ang = pos[t] * f;
                    let (c, mut s) = (ang.cos(), ang.sin());
                    if inverse {
                        s = -s;
                    }
                    let (i0, i1) = match kind {
                        RopeKind::Half => (i, i + half),
                        RopeKind::Interleaved => (2 * i, 2 * i + 1),
                    };
                    for h in 0..heads {
                        let x = &mut row[h * hd..(h + 1) * hd];
                        let (a, b) = (x[i0], x[i1]);
                        x[i0] = a * c - b * s;
                        x[i1] = b * c + a * s;
                    }
                }
            });
    }

    fn attention_fwd(
        &self,
        out: &mut [f32],
        saved: &mut [f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: &AttnMask,
        dims: AttnDims,
        scale: f32,
    ) {
        let AttnDims { t, nh, nkv, hd, .. } = dims;
        let rep = nh / nkv;
        // one token per task: all its heads (out row and lse row are contiguous).
        out.par_chunks_mut(nh * hd)
            .zip(saved.par_chunks_mut(nh))
            .enumerate()
            .for_each(|(ti, (o, lse))| {
                let (bi, i) = (ti / t, ti % t);
                o.iter_mut().for_each(|x| *x = 0.0);
                let mut p = vec![0.0f32; i + 1];
                for h in 0..nh {
                    lse[h] = f32::NEG_INFINITY;
                    if !scores(&mut p, q, k, mask, dims, bi, i, h, h / rep, scale) {
                        continue;
                    }
                    let mx = p.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = p
                        .iter()
                        .map(|s| {
                            if *s == f32::NEG_INFINITY {
                                0.0
                            } else {
                                (s - mx).exp()
                            }
                        })
                        .sum();
                    lse[h] = mx + sum.ln();
                    let oh = &mut o[h * hd..(h + 1) * hd];
                    for (j, s) in p.iter().enumerate() {
                        if *s == f32::NEG_INFINITY {
                            continue;
                        }
                        let pj = (s - lse[h]).exp();
                        let vj = &v[((bi * t + j) * nkv + h / rep) * hd..][..hd];
                        oh.iter_mut().zip(vj).for_each(|(o, v)| *o += pj * v);
                    }
                }
            });
    }

    fn attention_bwd(
        &self,
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        dout: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        saved: &[f32],
        mask: &AttnMask,
        dims: AttnDims,
        scale: f32,
    ) {
        let AttnDims { t, nh, nkv, hd, .. } = dims;
        let rep = nh / nkv;
        // one batch row per task: it owns its slices of dq/dk/dv.
        dq.par_chunks_mut(t * nh * hd)
            .zip(
                dk.par_chunks_mut(t * nkv * hd)
                    .zip(dv.par_chunks_mut(t * nkv * hd)),
            )
            .enumerate()
            .for_each(|(bi, (dq, (dk, dv)))| {
                dq.iter_mut()
                    .chain(dk.iter_mut())
                    .chain(dv.iter_mut())
                    .for_each(|x| *x = 0.0);
                let mut p = vec![0.0f32; t];
                let mut dp = vec![0.0f32; t];
                for i in 0..t {
                    let ti = bi * t + i;
                    for h in 0..nh {
                        let g = h / rep;
                        let lse = saved[ti * nh + h];
                        if lse == f32::NEG_INFINITY
                            || !scores(&mut p[..=i], q, k, mask, dims, bi, i, h, g, scale)
                        {
                            continue;
                        }
                        let doi = &dout[(ti * nh + h) * hd..][..hd];
                        let mut dot = 0.0;
                        for j in 0..=i {
                            if p[j] == f32::NEG_INFINITY {
                                p[j] = 0.0;
                                continue;
                            }
                            p[j] = (p[j] - lse).exp();
                            let vj = &v[((bi * t + j) * nkv + g) * hd..][..hd];
                            dp[j] = doi.iter().zip(vj).map(|(a, b)| a * b).sum::<f32>();
                            dot += dp[j] * p[j];
                            dv[(j * nkv + g) * hd..][..hd]
                                .iter_mut()
                                .zip(doi)
                                .for_each(|(d, o)| *d += p[j] * o);
                        }
                        let qi = &q[(ti * nh + h) * hd..][..hd];
                        for j in 0..=i {
                            if p[j] == 0.0 {
                                continue;
                            }
                            let s = p[j] * (dp[j] - dot) * scale;
                            let kj = &k[((bi * t + j) * nkv + g) * hd..][..hd];
                            dq[(i * nh + h) * hd..][..hd]
                                .iter_mut()
                                .zip(kj)
                                .for_each(|(d, k)| *d += s * k);
                            dk[(j * nkv + g) * hd..][..hd]
                                .iter_mut()
                                .zip(qi)
                                .for_each(|(d, q)| *d += s * q);
                        }
                    }
                }
            });
    }

    fn attention_cached_fwd(
        &self,
        out: &mut [f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        valid: &[u8],
        alibi: Option<(&[f32], &[f32])>,
        dims: AttnDims,
        cap: usize,
        past: usize,
        scale: f32,
    ) {
        let AttnDims { t, nh, nkv, hd, .. } = dims;
        let rep = nh / nkv;
        out.par_chunks_mut(nh * hd).enumerate().for_each(|(ti, o)| {
            let (bi, i) = (ti / t, ti % t);
            o.iter_mut().for_each(|x| *x = 0.0);
            let qslot = bi * cap + past + i;
            if valid[qslot] == 0 {
                return;
            }
            let mut p = vec![f32::NEG_INFINITY; past + i + 1];
            for h in 0..nh {
                let g = h / rep;
                let qh = &q[(ti * nh + h) * hd..][..hd];
                let mut mx = f32::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate() {
                    let slot = bi * cap + j;
                    if valid[slot] == 0 {
                        *pj = f32::NEG_INFINITY;
                        continue;
                    }
                    let kj = &k[(slot * nkv + g) * hd..][..hd];
                    let mut s = qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                    if let Some((slopes, kpos)) = alibi {
                        s += slopes[h] * kpos[slot];
                    }
                    *pj = s;
                    mx = mx.max(s);
                }
                let mut sum = 0.0;
                for pj in p.iter_mut() {
                    *pj = if *pj == f32::NEG_INFINITY {
                        0.0
                    } else {
                        (*pj - mx).exp()
                    };
                    sum += *pj;
                }
                let oh = &mut o[h * hd..(h + 1) * hd];
                for (j, &pj) in p.iter().enumerate() {
                    if pj == 0.0 {
                        continue;
                    }
                    let vj = &v[((bi * cap + j) * nkv + g) * hd..][..hd];
                    for d in 0..hd {
                        oh[d] += pj / sum * vj[d];
                    }
                }
            }
        });
    }

    fn swiglu_fwd(&self, a: &mut [f32], e: &[f32], g: &[f32]) {
        a.par_iter_mut().enumerate().for_each(|(i, a)| {
            let s = 1.0 / (1.0 + (-e[i]).exp());
            *a = e[i] * s * g[i];
        });
    }

    fn swiglu_bwd(&self, de: &mut [f32], dg: &mut [f32], da: &[f32], e: &[f32], g: &[f32]) {
        de.par_iter_mut()
            .zip(dg.par_iter_mut())
            .enumerate()
            .for_each(|(i, (de, dg))| {
                let s = 1.0 / (1.0 + (-e[i]).exp());
                *dg = da[i] * e[i] * s;
                *de = da[i] * g[i] * s * (1.0 + e[i] * (1.0 - s));
            });
    }

    fn gelu_fwd(&self, y: &mut [f32], x: &[f32]) {
        const C: f32 = 0.797_884_6;
        y.par_iter_mut().enumerate().for_each(|(i, y)| {
            let x = x[i];
            *y = 0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh());
        });
    }

    fn gelu_bwd(&self, dx: &mut [f32], dy: &[f32], x: &[f32]) {
        const C: f32 = 0.797_884_6;
        dx.par_iter_mut().enumerate().for_each(|(i, dx)| {
            let x = x[i];
            let th = (C * (x + 0.044715 * x * x * x)).tanh();
            let d =
                0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * C * (1.0 + 3.0 * 0.044715 * x * x);
            *dx = dy[i] * d;
        });
    }

    fn embedding_fwd(&self, y: &mut [f32], table: &[f32], ids: &[u32], d: usize) {
        y.par_chunks_mut(d)
            .zip(ids.par_iter())
            .for_each(|(y, &id)| {
                y.copy_from_slice(&table[id as usize * d..(id as usize + 1) * d]);
            });
    }

    fn embedding_bwd(&self, dtable: &mut [f32], dy: &[f32], ids: &[u32], d: usize) {
        for (i, &id) in ids.iter().enumerate() {
            let row = &mut dtable[id as usize * d..(id as usize + 1) * d];
            for j in 0..d {
                row[j] += dy[i * d + j];
            }
        }
    }

    fn cross_entropy(
        &self,
        dlogits: Option<&mut [f32]>,
        logits: &[f32],
        targets: &[i64],
        v: usize,
        scale: f32,
    ) -> f64 {
        let row_loss = |i: usize, d: Option<&mut [f32]>| -> f64 {
            let l = &logits[i * v..(i + 1) * v];
            let tgt = targets[i];
            if tgt < 0 {
                if let Some(d) = d {
                    d.iter_mut().for_each(|x| *x = 0.0);
                }
                return 0.0;
            }
            let mx = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = l.iter().map(|x| (x - mx).exp()).sum();
            let lse = mx + sum.ln();
            if let Some(d) = d {
                for j in 0..v {
                    d[j] = scale * (l[j] - lse).exp();
                }
                d[tgt as usize] -= scale;
            }
            (lse - l[tgt as usize]) as f64
        };
        match dlogits {
            Some(d) => d
                .par_chunks_mut(v)
                .enumerate()
                .map(|(i, d)| row_loss(i, Some(d)))
                .sum(),
            None => (0..targets.len())
                .into_par_iter()
                .map(|i| row_loss(i, None))
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    c[i * n + j] += av * bv;
                }
            }
        }
        c
    }

    #[test]
    fn matmul_all_transposes_match_loops() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let want = naive(&a, &b, m, n, k, ta, tb);
                let mut c = vec![1.0; m * n];
                CpuBackend.matmul(&mut c, &a, &b, m, n, k, ta, tb, 1.0);
                for i in 0..m * n {
                    assert!((c[i] - 1.0 - want[i]).abs() < 1e-5, "ta={ta} tb={tb} i={i}");
                }
            }
        }
    }

    /// GLM half-interleaved RoPE vs a direct transcription of the formula:
    /// out[2i] = x[2i]·c − x[2i+1]·s, out[2i+1] = x[2i+1]·c + x[2i]·s, θ_i = base^(−2i/rot), rest passes.
    #[test]
    fn glm_rope_matches_formula_and_inverts() {
        let (heads, hd, rot, base) = (2, 8, 4, 20000.0f32);
        let pos = [0.0f32, 3.0, 7.0];
        let x: Vec<f32> = (0..3 * heads * hd)
            .map(|i| (i as f32 * 0.13).sin())
            .collect();
        let mut y = x.clone();
        CpuBackend.rope(
            &mut y,
            &pos,
            3,
            heads,
            hd,
            rot,
            base,
            RopeKind::Interleaved,
            false,
        );
        for t in 0..3 {
            for h in 0..heads {
                let o = (t * heads + h) * hd;
                for d in 0..hd {
                    let want = if d < rot {
                        let i = d / 2;
                        let th = pos[t] as f64 * (base as f64).powf(-2.0 * i as f64 / rot as f64);
                        let (c, s) = (th.cos(), th.sin());
                        let (a, b) = (x[o + 2 * i] as f64, x[o + 2 * i + 1] as f64);
                        if d % 2 == 0 {
                            a * c - b * s
                        } else {
                            b * c + a * s
                        }
                    } else {
                        x[o + d] as f64
                    };
                    assert!((y[o + d] as f64 - want).abs() < 1e-5, "t={t} h={h} d={d}");
                }
            }
        }
        CpuBackend.rope(
            &mut y,
            &pos,
            3,
            heads,
            hd,
            rot,
            base,
            RopeKind::Interleaved,
            true,
        );
        for i in 0..x.len() {
            assert!((y[i] - x[i]).abs() < 1e-5);
        }
    }
}
