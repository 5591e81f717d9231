//! The host f32 GEMM: the `gemm` crate with row-major strides, rayon above 2^18 multiply-adds.
//! The CPU backend's matmul and the 16-bit weights' matmuls (`quant::half`) both run it, so a
//! 16-bit weight widened to f32 gives the f32 path's bits.

/// C[m,n] = op(A)·op(B) + beta·C, row-major: op(A) = A [m,k] or, with `ta`, Aᵀ of A [k,m];
/// op(B) = B [k,n] or, with `tb`, Bᵀ of B [n,k]. beta = 0 overwrites C (NaNs in C included).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    beta: f32,
) {
    assert!(
        c.len() >= m * n && a.len() >= m * k && b.len() >= k * n,
        "matmul shape"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].iter_mut().for_each(|x| *x *= beta);
        return;
    }
    // A[i,p] at a[i*k+p] (row-major [m,k]) or a[p*m+i] when transposed ([k,m]).
    let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if tb { (k as isize, 1) } else { (1, n as isize) };
    // SAFETY: the asserted lengths cover every index the strides reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            1.0,
            false,
            false,
            false,
            parallelism(m * n * k),
        )
    }
}

fn parallelism(flops: usize) -> gemm::Parallelism {
    if flops > 1 << 18 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}
