//! Throughput helpers for `recipe bench` (not used by tests).

use crate::quant::codes::QuantType;
use crate::quant::four_bit::quantize_4bit;
use crate::quant::linear::Linear4bit;
use crate::quant::testgen::gen;
use crate::quant::QuantLinear;
use std::time::Instant;

/// Quantize `n` f32 values to NF4 with double quant `iters` times; returns input GB/s.
pub fn quantize_throughput(n: usize, iters: usize) -> f64 {
    let x = gen(1, n, 0.05);
    let t = Instant::now();
    for _ in 0..iters.max(1) {
        let q = quantize_4bit(&x, &[n], 64, QuantType::Nf4, true, "float32")
            .expect("blocksize 64 is valid");
        std::hint::black_box(q);
    }
    (n * 4 * iters.max(1)) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// GFLOP/s of `matmul_xwt` for x[n, in] · W[out, in]ᵀ with an NF4 weight.
pub fn matmul_throughput(n: usize, out_f: usize, in_f: usize, iters: usize) -> f64 {
    let w = gen(2, out_f * in_f, 0.05);
    let q = quantize_4bit(&w, &[out_f, in_f], 64, QuantType::Nf4, true, "float32")
        .expect("blocksize 64 is valid");
    let lin = Linear4bit::new(q).expect("2-D weight");
    let x = gen(3, n * in_f, 1.0);
    let mut y = vec![0f32; n * out_f];
    let t = Instant::now();
    for _ in 0..iters.max(1) {
        lin.matmul_xwt(&mut y, &x, n);
    }
    (2 * n * out_f * in_f * iters.max(1)) as f64 / t.elapsed().as_secs_f64() / 1e9
}
