//! Twins of kernels/gemm4.cu: dequant-GEMM forward and input gradient against a 4-bit W [n, k].

use super::quant4::dequant_4bit;

/// Y[m, n] = X[m, k] · Wᵀ   (W dequantized from 4-bit, nn.Linear layout)
#[allow(clippy::too_many_arguments)]
pub fn gemm_4bit(
    y: &mut [f32],
    x: &[f32],
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    m: usize,
    n: usize,
    k: usize,
    blocksize: usize,
) {
    let mut w = vec![0f32; n * k];
    dequant_4bit(&mut w, packed, absmax, code, blocksize);
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f64;
            for c in 0..k {
                acc += x[i * k + c] as f64 * w[j * k + c] as f64;
            }
            y[i * n + j] = acc as f32;
        }
    }
}

/// dX[m, k] = dY[m, n] · W
#[allow(clippy::too_many_arguments)]
pub fn gemm_4bit_dx(
    dx: &mut [f32],
    dy: &[f32],
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    m: usize,
    n: usize,
    k: usize,
    blocksize: usize,
) {
    let mut w = vec![0f32; n * k];
    dequant_4bit(&mut w, packed, absmax, code, blocksize);
    for i in 0..m {
        for c in 0..k {
            let mut acc = 0f64;
            for j in 0..n {
                acc += dy[i * n + j] as f64 * w[j * k + c] as f64;
            }
            dx[i * k + c] = acc as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::twins::quant4::{quantize_4bit, NF4_CODE};
    use crate::cuda::twins::Rng;

    /// <dY, X·Wᵀ> = <dY·W, X>: the two twins are adjoint.
    #[test]
    fn dx_is_the_adjoint_of_forward() {
        let mut r = Rng::new(3);
        let (m, n, k) = (3, 7, 10);
        let (p, a) = quantize_4bit(&r.normals(n * k, 1.0), 64, &NF4_CODE);
        let x = r.normals(m * k, 1.0);
        let dy = r.normals(m * n, 1.0);
        let mut y = vec![0f32; m * n];
        gemm_4bit(&mut y, &x, &p, &a, &NF4_CODE, m, n, k, 64);
        let mut dx = vec![0f32; m * k];
        gemm_4bit_dx(&mut dx, &dy, &p, &a, &NF4_CODE, m, n, k, 64);
        let lhs: f32 = dy.iter().zip(&y).map(|(a, b)| a * b).sum();
        let rhs: f32 = dx.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!(
            (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }
}
