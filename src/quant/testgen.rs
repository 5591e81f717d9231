//! Deterministic test inputs shared with the Python fixture scripts
//! (`tests/reference/quant_gen.py::gen`): bell-shaped values from splitmix64.

use crate::rng::splitmix64;

/// n values (u1 + u2 + u3 − 1.5)·scale, computed in f64 and rounded to f32.
pub fn gen(seed: u64, n: usize, scale: f64) -> Vec<f32> {
    let base = seed.wrapping_mul(1_000_003);
    (0..n as u64)
        .map(|i| {
            let u = |k: u64| (splitmix64(base.wrapping_add(3 * i + k)) >> 40) as f64 / 16_777_216.0;
            ((u(0) + u(1) + u(2) - 1.5) * scale) as f32
        })
        .collect()
}
