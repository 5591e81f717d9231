//! bitsandbytes `AdamW8bit` / `PagedAdamW8bit` as its CPU backend runs it (bnb 0.50).
//!
//! Tensors with at least `min_8bit_size` (4096) elements keep m and v as u8 codes in blocks of
//! 256 with an f32 absmax per block: m with the signed dynamic map, v with the unsigned one.
//! Each step dequantizes both states, updates in f32, and requantizes:
//!   m ← fma(g, 1−β1, m·β1);  v ← fma((1−β2)·g, g, v·β2)
//!   p ← p·(1 − lr·wd) (when wd > 0);  p ← p + (−lr/(1−β1^t))·m / (√v/√(1−β2^t) + ε)
//! Smaller tensors use bnb's 32-bit update (a different formula from torch's):
//!   update = m / (√v + ε·√(1−β2^t));  p ← fma(update, −lr·√(1−β2^t)/(1−β1^t), p·(1 − lr·wd))
//! (√ is correctly rounded here, torch's MKL sqrt is not always: parameters agree to ~1 ulp.)
//! "Paged" only changes where the GPU keeps the state; on the CPU it is the same update.

use crate::quant::{dynamic_map, Blockwise8};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Block size of the 8-bit optimizer states (bnb hard-codes 256).
pub const STATE_BLOCKSIZE: usize = 256;

/// The signed (m) and unsigned (v) 8-bit quantizers, built once.
pub fn state_quantizers() -> &'static (Blockwise8, Blockwise8) {
    static Q: OnceLock<(Blockwise8, Blockwise8)> = OnceLock::new();
    Q.get_or_init(|| {
        (
            Blockwise8::new(dynamic_map(true)),
            Blockwise8::new(dynamic_map(false)),
        )
    })
}

/// Scalars of one bnb step (`step` counts from 1).
#[derive(Clone, Copy, Debug)]
pub struct BnbScalars {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// 8-bit path: √(1−β2^t) and −lr/(1−β1^t)
    pub correction2: f32,
    pub neg_lr_over_c1: f32,
    pub eps: f32,
    /// 32-bit path: ε·√(1−β2^t) and −lr·√(1−β2^t)/(1−β1^t)
    pub eps_c2: f32,
    pub step_size32: f32,
    pub decay: Option<f32>,
}

impl BnbScalars {
    pub fn new(lr: f64, betas: (f64, f64), eps: f64, weight_decay: f64, step: u64) -> Self {
        let t = step as f64;
        let c1 = 1.0 - betas.0.powf(t);
        let c2 = (1.0 - betas.1.powf(t)).sqrt();
        BnbScalars {
            beta1: betas.0 as f32,
            one_minus_beta1: (1.0 - betas.0) as f32,
            beta2: betas.1 as f32,
            one_minus_beta2: (1.0 - betas.1) as f32,
            correction2: c2 as f32,
            neg_lr_over_c1: (-lr / c1) as f32,
            eps: eps as f32,
            eps_c2: (eps * c2) as f32,
            step_size32: (-lr * c2 / c1) as f32,
            decay: (weight_decay > 0.0).then_some((1.0 - lr * weight_decay) as f32),
        }
    }
}

/// 8-bit state of one tensor: codes and per-block absmax for m and v.
#[derive(Clone, Debug, PartialEq)]
pub struct State8 {
    pub m: Vec<u8>,
    pub v: Vec<u8>,
    pub absmax_m: Vec<f32>,
    pub absmax_v: Vec<f32>,
}

impl State8 {
    pub fn zeros(n: usize) -> State8 {
        let blocks = n.div_ceil(STATE_BLOCKSIZE);
        State8 {
            m: vec![0; n],
            v: vec![0; n],
            absmax_m: vec![0.0; blocks],
            absmax_v: vec![0.0; blocks],
        }
    }
}

/// Blocks per parallel task (16 × 256 = 4096 elements).
const BLOCKS_PER_TASK: usize = 16;

/// One 8-bit step on p [n] with gradient g [n]. Blocks are independent, so groups of blocks
/// run in parallel (rayon) with identical results.
pub fn adamw8bit_step(
    p: &mut [f32],
    qm8: &mut [u8],
    qv8: &mut [u8],
    absmax_m: &mut [f32],
    absmax_v: &mut [f32],
    g: &[f32],
    s: &BnbScalars,
) {
    let n = g.len();
    assert!(p.len() == n && qm8.len() == n && qv8.len() == n);
    let (qm, qv) = state_quantizers();
    let chunk = STATE_BLOCKSIZE * BLOCKS_PER_TASK;
    p.par_chunks_mut(chunk)
        .zip(g.par_chunks(chunk))
        .zip(qm8.par_chunks_mut(chunk).zip(qv8.par_chunks_mut(chunk)))
        .zip(
            absmax_m
                .par_chunks_mut(BLOCKS_PER_TASK)
                .zip(absmax_v.par_chunks_mut(BLOCKS_PER_TASK)),
        )
        .for_each(|(((p, g), (qm8, qv8)), (am, av))| {
            let len = g.len();
            let mut m = vec![0f32; len];
            let mut v = vec![0f32; len];
            qm.dequantize(&mut m, qm8, am, STATE_BLOCKSIZE);
            qv.dequantize(&mut v, qv8, av, STATE_BLOCKSIZE);
            for i in 0..len {
                let gi = g[i];
                m[i] = gi.mul_add(s.one_minus_beta1, m[i] * s.beta1);
                v[i] = (s.one_minus_beta2 * gi).mul_add(gi, v[i] * s.beta2);
                let denom = v[i].sqrt() / s.correction2 + s.eps;
                let mut pi = p[i];
                if let Some(d) = s.decay {
                    pi *= d;
                }
                p[i] = pi + (s.neg_lr_over_c1 * m[i]) / denom;
            }
            qm.quantize(qm8, am, &m, STATE_BLOCKSIZE);
            qv.quantize(qv8, av, &v, STATE_BLOCKSIZE);
        });
}

/// bnb's 32-bit update for tensors below `min_8bit_size`.
pub fn bnb_adam32_step(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &BnbScalars) {
    let n = g.len();
    assert!(p.len() == n && m.len() == n && v.len() == n);
    for i in 0..n {
        let gi = g[i];
        m[i] = gi.mul_add(s.one_minus_beta1, m[i] * s.beta1);
        v[i] = (s.one_minus_beta2 * gi).mul_add(gi, v[i] * s.beta2);
        let mut pi = p[i];
        if let Some(d) = s.decay {
            pi *= d;
        }
        let update = m[i] / (v[i].sqrt() + s.eps_c2);
        p[i] = update.mul_add(s.step_size32, pi);
    }
}
