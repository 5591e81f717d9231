//! Twins of kernels/adamw8bit.cu: AdamW with 8-bit blockwise state (blocks of 256), plus the
//! bitsandbytes dynamic quantization maps. The bnb-exact kernels' twins are the CPU optimizer's
//! own functions (`adamw8bit_bnb_f32`: `adamw8bit_step`, `bnb_adam32_f32`: `bnb_adam32_step`).

pub use crate::optim::adamw8bit::{adamw8bit_step as adamw8bit_bnb, bnb_adam32_step as bnb_adam32};

/// Elements per quantization block of the optimizer state.
pub const QBLOCK: usize = 256;

/// bitsandbytes `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`, sorted ascending.
/// Signed: 127 positive and 127 negative magnitudes (decades 1e-6..1, each split in 2^i linear
/// steps between 0.1 and 1), plus 0 and 1. Unsigned: 254 positive magnitudes, plus 0 and 1.
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    let max_exp = 7i32;
    let non_sign = 7i32;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..max_exp {
        let items = if signed {
            (1usize << (i + non_sign - max_exp)) + 1
        } else {
            (1usize << (i + non_sign - max_exp + 1)) + 1
        };
        let bounds: Vec<f32> = (0..items)
            .map(|t| 0.1 + 0.9 * t as f32 / (items - 1) as f32)
            .collect();
        let scale = 10f32.powi(-(max_exp - 1) + i);
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.resize(256, 0.0);
    data.sort_by(|a, b| a.total_cmp(b));
    let mut out = [0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// Nearest entry of a sorted 256-entry map (ties to the lower index), as the kernel's search.
pub fn quantize_nearest(code: &[f32], x: f32) -> u8 {
    if x <= code[0] {
        return 0;
    }
    if x >= code[255] {
        return 255;
    }
    let (mut lo, mut hi) = (0usize, 255usize);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if code[mid] <= x {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if x - code[lo] <= code[hi] - x {
        lo as u8
    } else {
        hi as u8
    }
}

/// AdamW hyper-parameters for one step (`step` counts from 1).
#[derive(Debug, Clone, Copy)]
pub struct AdamHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u32,
    /// Multiplies the gradient first (1/loss-scale, or a clipping factor).
    pub grad_scale: f32,
}

impl AdamHyper {
    /// (1 - beta1^t, 1 - beta2^t)
    pub fn bias_corrections(&self) -> (f32, f32) {
        (
            1.0 - self.beta1.powi(self.step as i32),
            1.0 - self.beta2.powi(self.step as i32),
        )
    }
}

/// 8-bit state of one parameter tensor: codes and per-256 absmax for m and v.
#[derive(Debug, Clone, PartialEq)]
pub struct State8 {
    pub qm: Vec<u8>,
    pub absmax_m: Vec<f32>,
    pub qv: Vec<u8>,
    pub absmax_v: Vec<f32>,
}

impl State8 {
    /// Zero state for `n` parameters (code index of 0.0 in each map, absmax 0).
    pub fn zeros(n: usize, code_m: &[f32; 256], code_v: &[f32; 256]) -> Self {
        let zm = quantize_nearest(code_m, 0.0);
        let zv = quantize_nearest(code_v, 0.0);
        let nb = n.div_ceil(QBLOCK);
        State8 {
            qm: vec![zm; n],
            absmax_m: vec![0.0; nb],
            qv: vec![zv; n],
            absmax_v: vec![0.0; nb],
        }
    }
}

/// One AdamW step on `p` with 8-bit state, block by block (see the kernel's doc comment).
pub fn adamw8bit_step(
    p: &mut [f32],
    st: &mut State8,
    grad: &[f32],
    code_m: &[f32; 256],
    code_v: &[f32; 256],
    h: &AdamHyper,
) {
    let (bc1, bc2) = h.bias_corrections();
    let mut m = vec![0f32; QBLOCK];
    let mut v = vec![0f32; QBLOCK];
    for (blk, start) in (0..p.len()).step_by(QBLOCK).enumerate() {
        let end = (start + QBLOCK).min(p.len());
        for i in start..end {
            let g = grad[i] * h.grad_scale;
            let mi = code_m[st.qm[i] as usize] * st.absmax_m[blk];
            let vi = code_v[st.qv[i] as usize] * st.absmax_v[blk];
            let mi = h.beta1 * mi + (1.0 - h.beta1) * g;
            let vi = h.beta2 * vi + (1.0 - h.beta2) * g * g;
            let w = p[i] * (1.0 - h.lr * h.weight_decay);
            p[i] = w - h.lr * (mi / bc1) / ((vi / bc2).sqrt() + h.eps);
            m[i - start] = mi;
            v[i - start] = vi;
        }
        let am = m[..end - start].iter().fold(0f32, |a, x| a.max(x.abs()));
        let av = v[..end - start].iter().fold(0f32, |a, x| a.max(*x));
        for i in start..end {
            st.qm[i] = quantize_nearest(code_m, if am > 0.0 { m[i - start] / am } else { 0.0 });
            st.qv[i] = quantize_nearest(code_v, if av > 0.0 { v[i - start] / av } else { 0.0 });
        }
        st.absmax_m[blk] = am;
        st.absmax_v[blk] = av;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::twins::Rng;

    #[test]
    fn maps_are_sorted_with_zero_and_one() {
        for signed in [true, false] {
            let c = dynamic_map(signed);
            assert!(c.windows(2).all(|w| w[0] <= w[1]));
            assert!(c.contains(&0.0) && c[255] == 1.0);
            assert_eq!(c[0] < 0.0, signed);
        }
        // Smallest positive signed magnitude: 1e-6 * 0.55.
        let c = dynamic_map(true);
        let min_pos = c
            .iter()
            .copied()
            .filter(|&x| x > 0.0)
            .fold(f32::MAX, f32::min);
        assert!((min_pos - 0.55e-6).abs() < 1e-9, "{min_pos}");
    }

    #[test]
    fn quantize_nearest_ties_low_and_clamps() {
        let c = dynamic_map(false);
        assert_eq!(quantize_nearest(&c, 2.0), 255);
        assert_eq!(quantize_nearest(&c, -1.0), 0);
        let mid = (c[100] + c[101]) / 2.0;
        assert_eq!(quantize_nearest(&c, mid), 100);
    }

    /// Five steps of 8-bit AdamW stay close to f32 AdamW (torch formula).
    #[test]
    fn tracks_f32_adamw() {
        let mut r = Rng::new(4);
        let n = 600;
        let (cm, cv) = (dynamic_map(true), dynamic_map(false));
        let mut p8 = r.normals(n, 1.0);
        let mut p32 = p8.clone();
        let mut st = State8::zeros(n, &cm, &cv);
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        for step in 1..=5 {
            let g = r.normals(n, 0.1);
            let h = AdamHyper {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                step,
                grad_scale: 1.0,
            };
            adamw8bit_step(&mut p8, &mut st, &g, &cm, &cv, &h);
            let (bc1, bc2) = h.bias_corrections();
            for i in 0..n {
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                p32[i] = p32[i] * (1.0 - 1e-4) - 1e-2 * (m[i] / bc1) / ((v[i] / bc2).sqrt() + 1e-8);
            }
        }
        // Five steps move each weight by up to 5e-2; the 8-bit state must track within 15% of that.
        let worst = p8
            .iter()
            .zip(&p32)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 7.5e-3, "{worst}");
    }
}
