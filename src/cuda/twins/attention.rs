//! Twin of kernels/attention.cu and kernels/flash.cu: causal attention with GQA, key padding mask,
//! packed-sequence segment ids, optional ALiBi and sliding window, computed row by row with a full softmax (the oracle; the
//! kernel computes the same thing with an online softmax).

/// Shapes and options shared by forward and backward.
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    pub batch: usize,
    pub t: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub scale: f32,
}

/// Masks: kmask [batch, t] (0 = padding key), seg [batch, t], slopes [hq].
#[derive(Debug, Clone, Copy, Default)]
pub struct AttnMasks<'a> {
    pub kmask: Option<&'a [u8]>,
    pub seg: Option<&'a [i32]>,
    pub slopes: Option<&'a [f32]>,
    /// Sliding window w (kernels/flash.cu only): key j is also hidden from query i when
    /// j + w <= i.
    pub window: Option<usize>,
}

impl AttnMasks<'_> {
    pub fn visible(&self, b: usize, t: usize, i: usize, j: usize) -> bool {
        j <= i
            && self.kmask.is_none_or(|m| m[b * t + j] != 0)
            && self.seg.is_none_or(|s| s[b * t + j] == s[b * t + i])
            && self.window.is_none_or(|w| j + w > i)
    }
}

/// Attention of `tn` new queries per row over a KV cache (generation): query i of row b sits in
/// slot `past + i` of the row's `cap` slots. q, out [b·tn, nh, hd]; k, v [b·cap, nkv, hd].
#[derive(Debug, Clone, Copy)]
pub struct CachedDims {
    pub b: usize,
    pub tn: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
    pub cap: usize,
    pub past: usize,
    /// Sliding window w: slot j is visible to slot s iff j + w > s. None = no window.
    pub window: Option<usize>,
    pub scale: f32,
}

/// out = softmax(s)·v for each new query, s_j = scale·q·k_j (+ slopes[h]·kpos[slot j]) over the
/// visible slots j <= past+i (valid[slot] != 0, inside the window); a query whose own slot is
/// invalid gets 0. valid, kpos: [b·cap]; slopes: [nh].
pub fn attn_cached_fwd(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    valid: &[u8],
    alibi: Option<(&[f32], &[f32])>,
    dm: &CachedDims,
) {
    let (nh, nkv, hd) = (dm.nh, dm.nkv, dm.hd);
    for ti in 0..dm.b * dm.tn {
        let (b, i) = (ti / dm.tn, ti % dm.tn);
        let last = dm.past + i;
        for h in 0..nh {
            let o = &mut out[(ti * nh + h) * hd..][..hd];
            o.fill(0.0);
            if valid[b * dm.cap + last] == 0 {
                continue;
            }
            let g = h / (nh / nkv);
            let qh = &q[(ti * nh + h) * hd..][..hd];
            let s: Vec<Option<f32>> = (0..=last)
                .map(|j| {
                    let slot = b * dm.cap + j;
                    let seen = valid[slot] != 0 && dm.window.is_none_or(|w| j + w > last);
                    seen.then(|| {
                        let kj = &k[(slot * nkv + g) * hd..][..hd];
                        let dot: f32 = qh.iter().zip(kj).map(|(a, b)| a * b).sum();
                        dot * dm.scale + alibi.map_or(0.0, |(sl, kp)| sl[h] * kp[slot])
                    })
                })
                .collect();
            let mx = s.iter().flatten().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let p: Vec<f32> = s
                .iter()
                .map(|x| x.map_or(0.0, |x| (x - mx).exp()))
                .collect();
            let sum: f32 = p.iter().sum();
            for (j, &pj) in p.iter().enumerate() {
                let vj = &v[((b * dm.cap + j) * nkv + g) * hd..][..hd];
                for d in 0..hd {
                    o[d] += pj / sum * vj[d];
                }
            }
        }
    }
}

fn qidx(dm: &AttnDims, b: usize, i: usize, h: usize) -> usize {
    ((b * dm.t + i) * dm.hq + h) * dm.d
}
fn kidx(dm: &AttnDims, b: usize, j: usize, h: usize) -> usize {
    ((b * dm.t + j) * dm.hkv + h) * dm.d
}

/// Scores of row (b, h, i) over keys 0..=i (None = not visible).
fn scores(
    dm: &AttnDims,
    mk: &AttnMasks,
    q: &[f32],
    k: &[f32],
    b: usize,
    h: usize,
    i: usize,
) -> Vec<Option<f32>> {
    let kvh = h / (dm.hq / dm.hkv);
    let slope = mk.slopes.map_or(0.0, |s| s[h]);
    (0..=i)
        .map(|j| {
            mk.visible(b, dm.t, i, j).then(|| {
                let (qi, kj) = (qidx(dm, b, i, h), kidx(dm, b, j, kvh));
                let dot: f32 = (0..dm.d).map(|c| q[qi + c] * k[kj + c]).sum();
                dot * dm.scale + slope * (j as f32 - i as f32)
            })
        })
        .collect()
}

/// o = softmax(s)·v per row; lse [batch, hq, t] (+inf for a row that sees no key, o = 0).
pub fn attn_fwd(
    o: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mk: &AttnMasks,
    dm: &AttnDims,
) {
    let kvh_of = |h: usize| h / (dm.hq / dm.hkv);
    for b in 0..dm.batch {
        for h in 0..dm.hq {
            for i in 0..dm.t {
                let s = scores(dm, mk, q, k, b, h, i);
                let m = s.iter().flatten().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let oi = qidx(dm, b, i, h);
                o[oi..oi + dm.d].fill(0.0);
                if m == f32::NEG_INFINITY {
                    lse[(b * dm.hq + h) * dm.t + i] = f32::INFINITY;
                    continue;
                }
                let l: f64 = s.iter().flatten().map(|&x| ((x - m) as f64).exp()).sum();
                for (j, sj) in s.iter().enumerate() {
                    if let Some(sj) = sj {
                        let p = (((sj - m) as f64).exp() / l) as f32;
                        let vj = kidx(dm, b, j, kvh_of(h));
                        for c in 0..dm.d {
                            o[oi + c] += p * v[vj + c];
                        }
                    }
                }
                lse[(b * dm.hq + h) * dm.t + i] = m + l.ln() as f32;
            }
        }
    }
}

/// Gradients of <dout, o> (see the kernel's doc comment): dq, dk, dv (dk/dv summed over each
/// kv head's group of query heads).
#[allow(clippy::too_many_arguments)]
pub fn attn_bwd(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    mk: &AttnMasks,
    dm: &AttnDims,
) {
    dq.fill(0.0);
    dk.fill(0.0);
    dv.fill(0.0);
    for b in 0..dm.batch {
        for h in 0..dm.hq {
            let kvh = h / (dm.hq / dm.hkv);
            for i in 0..dm.t {
                let oi = qidx(dm, b, i, h);
                let delta: f32 = (0..dm.d).map(|c| dout[oi + c] * o[oi + c]).sum();
                let l = lse[(b * dm.hq + h) * dm.t + i];
                for (j, sj) in scores(dm, mk, q, k, b, h, i).iter().enumerate() {
                    let Some(sj) = sj else { continue };
                    let p = (sj - l).exp();
                    let kj = kidx(dm, b, j, kvh);
                    let dp: f32 = (0..dm.d).map(|c| dout[oi + c] * v[kj + c]).sum();
                    let ds = p * (dp - delta);
                    for c in 0..dm.d {
                        dv[kj + c] += p * dout[oi + c];
                        dq[oi + c] += dm.scale * ds * k[kj + c];
                        dk[kj + c] += dm.scale * ds * q[oi + c];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::twins::testutil::{assert_close, numgrad};
    use crate::cuda::twins::Rng;

    /// Dense reference: materialize S = QKᵀ·scale + bias with −inf where masked, softmax, ·V.
    fn naive(q: &[f32], k: &[f32], v: &[f32], mk: &AttnMasks, dm: &AttnDims) -> Vec<f32> {
        let mut o = vec![0f32; q.len()];
        for b in 0..dm.batch {
            for h in 0..dm.hq {
                let g = h / (dm.hq / dm.hkv);
                let mut s = vec![vec![f32::NEG_INFINITY; dm.t]; dm.t];
                for i in 0..dm.t {
                    for j in 0..dm.t {
                        if mk.visible(b, dm.t, i, j) {
                            let dot: f32 = (0..dm.d)
                                .map(|c| q[qidx(dm, b, i, h) + c] * k[kidx(dm, b, j, g) + c])
                                .sum();
                            s[i][j] = dot * dm.scale
                                + mk.slopes.map_or(0.0, |sl| sl[h]) * (j as f32 - i as f32);
                        }
                    }
                    let m = s[i].iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                    if m == f32::NEG_INFINITY {
                        continue;
                    }
                    let e: Vec<f32> = s[i].iter().map(|&x| (x - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for j in 0..dm.t {
                        for c in 0..dm.d {
                            o[qidx(dm, b, i, h) + c] += e[j] / z * v[kidx(dm, b, j, g) + c];
                        }
                    }
                }
            }
        }
        o
    }

    fn setup(seed: u64) -> (AttnDims, Vec<f32>, Vec<f32>, Vec<f32>) {
        let dm = AttnDims {
            batch: 2,
            t: 5,
            hq: 4,
            hkv: 2,
            d: 3,
            scale: 0.6,
        };
        let mut r = Rng::new(seed);
        let q = r.normals(dm.batch * dm.t * dm.hq * dm.d, 1.0);
        let k = r.normals(dm.batch * dm.t * dm.hkv * dm.d, 1.0);
        let v = r.normals(dm.batch * dm.t * dm.hkv * dm.d, 1.0);
        (dm, q, k, v)
    }

    #[test]
    fn forward_equals_dense_softmax_with_masks_gqa_and_alibi() {
        let (dm, q, k, v) = setup(11);
        let kmask = [0u8, 1, 1, 1, 1, 1, 1, 1, 1, 0];
        let seg = [0, 0, 0, 1, 1, 0, 0, 1, 1, 1];
        let slopes = [0.5, 0.25, 0.125, 0.0625];
        for mk in [
            AttnMasks::default(),
            AttnMasks {
                kmask: Some(&kmask),
                seg: Some(&seg),
                slopes: Some(&slopes),
                window: None,
            },
            AttnMasks {
                kmask: Some(&kmask),
                seg: Some(&seg),
                slopes: Some(&slopes),
                window: Some(2),
            },
        ] {
            let (mut o, mut lse) = (vec![0f32; q.len()], vec![0f32; dm.batch * dm.hq * dm.t]);
            attn_fwd(&mut o, &mut lse, &q, &k, &v, &mk, &dm);
            assert_close(&o, &naive(&q, &k, &v, &mk, &dm), 1e-5, 1e-5, "attn fwd");
        }
        // Query 0 of batch 0 sees only key 0, which is padding: empty row -> zeros, lse = +inf.
        let mk = AttnMasks {
            kmask: Some(&kmask),
            ..Default::default()
        };
        let (mut o, mut lse) = (vec![0f32; q.len()], vec![0f32; dm.batch * dm.hq * dm.t]);
        attn_fwd(&mut o, &mut lse, &q, &k, &v, &mk, &dm);
        assert_eq!(lse[0], f32::INFINITY);
        assert_eq!(&o[..3], &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (dm, mut q, mut k, mut v) = setup(12);
        let seg = [0, 0, 1, 1, 1, 0, 0, 0, 0, 0];
        let slopes = [0.5, 0.25, 0.125, 0.0625];
        let mk = AttnMasks {
            kmask: None,
            seg: Some(&seg),
            slopes: Some(&slopes),
            window: Some(4),
        };
        let dout = Rng::new(13).normals(q.len(), 1.0);
        let (mut o, mut lse) = (vec![0f32; q.len()], vec![0f32; dm.batch * dm.hq * dm.t]);
        attn_fwd(&mut o, &mut lse, &q, &k, &v, &mk, &dm);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.len()],
            vec![0f32; k.len()],
            vec![0f32; v.len()],
        );
        attn_bwd(
            &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &o, &lse, &mk, &dm,
        );
        let loss = |q: &[f32], k: &[f32], v: &[f32]| {
            let (mut o, mut lse) = (vec![0f32; q.len()], vec![0f32; dm.batch * dm.hq * dm.t]);
            attn_fwd(&mut o, &mut lse, q, k, v, &mk, &dm);
            o.iter()
                .zip(&dout)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum::<f64>()
        };
        let (kc, vc) = (k.clone(), v.clone());
        let nq: Vec<f32> = (0..q.len())
            .map(|i| numgrad(&mut q, i, 1e-2, &mut |x: &[f32]| loss(x, &kc, &vc)) as f32)
            .collect();
        assert_close(&dq, &nq, 2e-3, 2e-2, "dq");
        let qc = q.clone();
        let nk: Vec<f32> = (0..k.len())
            .map(|i| numgrad(&mut k, i, 1e-2, &mut |x: &[f32]| loss(&qc, x, &vc)) as f32)
            .collect();
        assert_close(&dk, &nk, 2e-3, 2e-2, "dk");
        let kc = k.clone();
        let nv: Vec<f32> = (0..v.len())
            .map(|i| numgrad(&mut v, i, 1e-2, &mut |x: &[f32]| loss(&qc, &kc, x)) as f32)
            .collect();
        assert_close(&dv, &nv, 2e-3, 2e-2, "dv");
    }
}
