//! CPU twins: every kernel's math in plain Rust loops over f32 slices, with the kernel's argument
//! order (outputs, inputs, dims). They are the oracle the self-test compares the GPU against, and
//! their own tests check them against independent formulas (naive softmax attention, log-softmax,
//! finite differences).

#![allow(clippy::too_many_arguments)] // twins mirror the kernels' argument lists

pub mod act;
pub mod adamw8bit;
pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod gemm4;
pub mod norm;
pub mod optim;
pub mod quant4;
#[cfg(test)]
mod reference;
pub mod rope;
pub mod tensor;

/// Small seeded generator (SplitMix64) for test and self-test inputs.
#[derive(Debug, Clone)]
pub struct Rng(crate::rng::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(crate::rng::SplitMix64(seed ^ 0x5DEE_CE66_D1CE_5EED))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0.next_f32()
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// Rounds every value to bf16 and back (what a bf16 buffer stores).
pub fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// Max abs error and max relative error (|a-b| / max(|b|, floor)) of `got` against `want`.
pub fn max_errors(got: &[f32], want: &[f32], floor: f32) -> (f32, f32) {
    let mut abs = 0f32;
    let mut rel = 0f32;
    for (&g, &w) in got.iter().zip(want) {
        let d = if g == w {
            0.0 // also equal infinities (lse of an empty attention row)
        } else if g.is_nan() || w.is_nan() {
            f32::INFINITY
        } else {
            (g - w).abs()
        };
        abs = abs.max(d);
        rel = rel.max(d / w.abs().max(floor));
    }
    (abs, rel)
}

#[cfg(test)]
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub(crate) mod testutil {
    /// Central finite difference of scalar `f` with respect to x[i].
    pub fn numgrad(x: &mut [f32], i: usize, h: f32, f: &mut dyn FnMut(&[f32]) -> f64) -> f64 {
        let old = x[i];
        x[i] = old + h;
        let up = f(x);
        x[i] = old - h;
        let dn = f(x);
        x[i] = old;
        (up - dn) / (2.0 * h as f64)
    }

    /// Asserts |a-b| <= atol + rtol*|b| elementwise, printing the first mismatches.
    pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let bad: Vec<_> = got
            .iter()
            .zip(want)
            .enumerate()
            // Negated so that NaN counts as a mismatch.
            .filter(|(_, (g, w))| !((**g - **w).abs() <= atol + rtol * w.abs()))
            .take(5)
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: first mismatches (index, (got, want)): {bad:?}"
        );
    }
}
