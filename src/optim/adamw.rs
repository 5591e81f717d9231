//! torch.optim.AdamW (single-tensor path, amsgrad off) on one f32 tensor.
//!
//! p ← p·(1 − lr·wd)                      decoupled weight decay, before the update
//! m ← m + (1−β1)·(g − m)                 torch `lerp_` (one fused multiply-add)
//! v ← fma((1−β2)·g, g, v·β2)             torch `mul_` + `addcmul_`
//! p ← p + ((−lr/(1−β1^t))·m) / (√v / √(1−β2^t) + ε)
//!
//! √ is correctly rounded here; torch's MKL-backed f32 sqrt is not always (about 1 in 5 values
//! differ by 1 ulp), so parameters agree with torch to ~1 ulp while m and v agree exactly.

/// Scalars of one torch AdamW step, computed in f64 as Python does.
#[derive(Clone, Copy, Debug)]
pub struct AdamwScalars {
    pub decay: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub neg_step_size: f32,
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
}

impl AdamwScalars {
    /// `step` counts from 1.
    pub fn new(lr: f64, betas: (f64, f64), eps: f64, weight_decay: f64, step: u64) -> Self {
        let t = step as f64;
        let bc1 = 1.0 - betas.0.powf(t);
        let bc2 = 1.0 - betas.1.powf(t);
        AdamwScalars {
            decay: (1.0 - lr * weight_decay) as f32,
            one_minus_beta1: (1.0 - betas.0) as f32,
            beta2: betas.1 as f32,
            one_minus_beta2: (1.0 - betas.1) as f32,
            neg_step_size: (-(lr / bc1)) as f32,
            bias_correction2_sqrt: bc2.powf(0.5) as f32,
            eps: eps as f32,
        }
    }
}

/// One AdamW step on p, m, v (all [n]) with gradient g [n].
pub fn adamw_step(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    s: &AdamwScalars,
    weight_decay: bool,
) {
    assert!(p.len() == g.len() && m.len() == g.len() && v.len() == g.len());
    for i in 0..g.len() {
        let mut pi = p[i];
        if weight_decay {
            pi *= s.decay;
        }
        let gi = g[i];
        let mi = s.one_minus_beta1.mul_add(gi - m[i], m[i]);
        let vi = (s.one_minus_beta2 * gi).mul_add(gi, v[i] * s.beta2);
        let denom = vi.sqrt() / s.bias_correction2_sqrt + s.eps;
        p[i] = pi + (s.neg_step_size * mi) / denom;
        m[i] = mi;
        v[i] = vi;
    }
}
