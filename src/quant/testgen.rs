//! Deterministic test inputs shared with the Python fixture scripts
//! (`tests/reference/quant_gen.py::gen`): bell-shaped values from splitmix64.

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

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
