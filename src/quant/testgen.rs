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

/// Copies the model dir `src` (config.json + model.safetensors) to `dst` with every tensor
/// stored as bf16: a 16-bit checkpoint for tests of 16-bit loading.
pub fn bf16_copy(src: &std::path::Path, dst: &std::path::Path) -> anyhow::Result<()> {
    use crate::formats::safetensors as st;
    std::fs::copy(src.join("config.json"), dst.join("config.json"))?;
    let all = st::read_all(&src.join("model.safetensors"))?;
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for n in names {
        let (v, shape) = &all[n];
        tensors.push((
            n.as_str(),
            st::Tensor::from_f32(safetensors::Dtype::BF16, shape.clone(), v)?,
        ));
    }
    st::write_file(
        &dst.join("model.safetensors"),
        tensors.iter().map(|(n, t)| (*n, t)),
    )?;
    Ok(())
}
