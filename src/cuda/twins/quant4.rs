//! Twins of kernels/quant4.cu: bitsandbytes 4-bit (NF4/FP4) dequantization, double-quant absmax
//! and the batch-1 GEMV; plus the quantizers used to make test inputs.

/// The bitsandbytes codes (shared with the CPU quantizer, bit for bit).
pub use crate::quant::codes::{FP4 as FP4_CODE, NF4 as NF4_CODE};

/// Nearest code index for a value already scaled to [-1, 1] (exact ties go to the lower code
/// value, as bnb's midpoint search does for NF4's sorted table).
pub fn nearest_code(code: &[f32], x: f32) -> u8 {
    let mut best = 0usize;
    for (i, &c) in code.iter().enumerate() {
        let (d, db) = ((x - c).abs(), (x - code[best]).abs());
        if d < db || (d == db && c < code[best]) {
            best = i;
        }
    }
    best as u8
}

/// Blockwise 4-bit quantization: (packed bytes [(n+1)/2], absmax [ceil(n/blocksize)]).
pub fn quantize_4bit(x: &[f32], blocksize: usize, code: &[f32; 16]) -> (Vec<u8>, Vec<f32>) {
    let absmax: Vec<f32> = x
        .chunks(blocksize)
        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect();
    let mut packed = vec![0u8; x.len().div_ceil(2)];
    for (i, &v) in x.iter().enumerate() {
        let a = absmax[i / blocksize];
        let s = if a > 0.0 {
            (v / a).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let q = nearest_code(code, s);
        packed[i / 2] |= if i % 2 == 0 { q << 4 } else { q };
    }
    (packed, absmax)
}

/// out[i] = code[nibble(i)] * absmax[i / blocksize]  (first element of a byte = HIGH nibble)
pub fn dequant_4bit(
    out: &mut [f32],
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    blocksize: usize,
) {
    for (i, o) in out.iter_mut().enumerate() {
        let byte = packed[i / 2];
        let nib = if i % 2 == 0 { byte >> 4 } else { byte & 15 };
        *o = code[nib as usize] * absmax[i / blocksize];
    }
}

/// absmax[b] = code8[q[b]] * absmax2[b / nested_blocksize] + offset
pub fn dequant_absmax(
    absmax: &mut [f32],
    q: &[u8],
    code8: &[f32],
    absmax2: &[f32],
    offset: f32,
    nested_blocksize: usize,
) {
    for (b, a) in absmax.iter_mut().enumerate() {
        *a = code8[q[b] as usize] * absmax2[b / nested_blocksize] + offset;
    }
}

/// Blockwise 8-bit quantization against a sorted 256-entry map: (codes, absmax per block).
pub fn quantize_8bit(x: &[f32], blocksize: usize, code8: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let absmax: Vec<f32> = x
        .chunks(blocksize)
        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect();
    let q = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let a = absmax[i / blocksize];
            super::adamw8bit::quantize_nearest(code8, if a > 0.0 { v / a } else { 0.0 })
        })
        .collect();
    (q, absmax)
}

/// y[o] = Σ_c x[c] * W[o, c], W [n_out, k] 4-bit (flat quantization over o*k + c)
pub fn gemv_4bit(
    y: &mut [f32],
    x: &[f32],
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    n_out: usize,
    k: usize,
    blocksize: usize,
) {
    let mut w = vec![0f32; n_out * k];
    dequant_4bit(&mut w, packed, absmax, code, blocksize);
    for o in 0..n_out {
        y[o] = (0..k).map(|c| x[c] * w[o * k + c]).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::twins::Rng;

    #[test]
    fn first_element_is_the_high_nibble() {
        // 1.0 -> code 15, -1.0 -> code 0, absmax 1.
        let (p, a) = quantize_4bit(&[1.0, -1.0, 0.0], 64, &NF4_CODE);
        assert_eq!(p, vec![0xF0, 0x70]);
        assert_eq!(a, vec![1.0]);
        let mut out = [0f32; 3];
        dequant_4bit(&mut out, &p, &a, &NF4_CODE, 64);
        assert_eq!(out, [1.0, -1.0, 0.0]);
    }

    #[test]
    fn nf4_roundtrip_error_is_bounded_by_half_the_widest_gap() {
        let mut r = Rng::new(1);
        let x = r.normals(1000, 1.0);
        let (p, a) = quantize_4bit(&x, 64, &NF4_CODE);
        let mut out = vec![0f32; x.len()];
        dequant_4bit(&mut out, &p, &a, &NF4_CODE, 64);
        for i in 0..x.len() {
            // Widest NF4 gap is -0.6962 - (-1) = 0.304; half of it times absmax.
            assert!((out[i] - x[i]).abs() <= 0.1520 * a[i / 64] + 1e-6, "{i}");
        }
    }

    #[test]
    fn fp4_code_is_bnb_table() {
        assert!((FP4_CODE[2] - 0.6666667).abs() < 1e-6);
        assert!((FP4_CODE[1] - 0.0052083).abs() < 1e-6);
        assert_eq!(FP4_CODE[11], -1.0);
    }

    #[test]
    fn double_quant_absmax() {
        let code8: Vec<f32> = (0..256).map(|i| i as f32 / 255.0).collect();
        let mut out = [0f32; 3];
        dequant_absmax(&mut out, &[0, 255, 51], &code8, &[2.0, 4.0], 0.5, 2);
        assert_eq!(out, [0.5, 2.5, 0.2 * 4.0 + 0.5]);
    }

    #[test]
    fn gemv_matches_dequantized_matvec() {
        let mut r = Rng::new(2);
        let (n, k) = (5, 64);
        let w = r.normals(n * k, 1.0);
        let x = r.normals(k, 1.0);
        let (p, a) = quantize_4bit(&w, 64, &NF4_CODE);
        let mut wd = vec![0f32; n * k];
        dequant_4bit(&mut wd, &p, &a, &NF4_CODE, 64);
        let mut y = vec![0f32; n];
        gemv_4bit(&mut y, &x, &p, &a, &NF4_CODE, n, k, 64);
        for o in 0..n {
            let want: f32 = (0..k).map(|c| x[c] * wd[o * k + c]).sum();
            assert!((y[o] - want).abs() < 1e-4);
        }
    }
}
