//! cuBLAS bf16 GEMM (f32 accumulate) for dense matmuls, in ROW-MAJOR terms.
//!
//! cuBLAS is column-major. A row-major [r, c] buffer read column-major is its transpose, so
//! row-major C = op(A)·op(B) is computed as column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands,
//! keep each one's transpose flag, and pass m ↔ n. Leading dimensions are row lengths.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use half::bf16;

use super::need;
use crate::cuda::error::{shape_err, Result};
use crate::cuda::Gpu;

/// Row-major matmul description: C[m, n] = alpha·op(A)·op(B) + beta·C with op(A) [m, k] and
/// op(B) [k, n]; `trans_a` means A is stored [k, m], `trans_b` means B is stored [n, k].
#[derive(Debug, Clone, Copy)]
pub struct MatMul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl MatMul {
    /// nn.Linear: Y[m, n] = X[m, k]·Wᵀ with W [n, k].
    pub fn linear(m: usize, n: usize, k: usize) -> Self {
        MatMul {
            m,
            n,
            k,
            trans_a: false,
            trans_b: true,
            alpha: 1.0,
            beta: 0.0,
        }
    }
}

fn op(t: bool) -> cublasOperation_t {
    if t {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

/// Column-major cuBLAS config for the row-major product (see module docs).
fn config<T>(mm: &MatMul, alpha: T, beta: T) -> Result<GemmConfig<T>> {
    Ok(GemmConfig {
        transa: op(mm.trans_b),
        transb: op(mm.trans_a),
        m: i(mm.n)?,
        n: i(mm.m)?,
        k: i(mm.k)?,
        alpha,
        lda: i(if mm.trans_b { mm.k } else { mm.n })?,
        ldb: i(if mm.trans_a { mm.m } else { mm.k })?,
        beta,
        ldc: i(mm.n)?,
    })
}

fn i(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape_err("matmul", format!("dim {v} exceeds i32")))
}

/// C = alpha·op(A)·op(B) + beta·C, bf16 in and out, f32 accumulation (cuBLAS gemmEx).
pub fn matmul_bf16(
    gpu: &Gpu,
    c: &mut CudaViewMut<bf16>,
    a: &CudaView<bf16>,
    b: &CudaView<bf16>,
    mm: &MatMul,
) -> Result<()> {
    const OP: &str = "matmul_bf16";
    need(OP, "a", a.len(), mm.m * mm.k)?;
    need(OP, "b", b.len(), mm.k * mm.n)?;
    need(OP, "c", c.len(), mm.m * mm.n)?;
    let cfg = config(mm, bf16::from_f32(mm.alpha), bf16::from_f32(mm.beta))?;
    let blas = gpu.blas()?;
    // SAFETY: buffer lengths checked against m, n, k; the leading dimensions above describe
    // exactly those row-major layouts; all buffers live on blas's stream (gpu.stream).
    unsafe { blas.gemm(cfg, b, a, c) }?;
    Ok(())
}

/// Batched row-major matmul over `batch` problems laid out back to back with element strides
/// (stride_a, stride_b, stride_c) (e.g. per-head products): C_i = alpha·op(A_i)·op(B_i) + beta·C_i.
pub fn matmul_bf16_batched(
    gpu: &Gpu,
    c: &mut CudaSlice<bf16>,
    a: &CudaSlice<bf16>,
    b: &CudaSlice<bf16>,
    mm: &MatMul,
    batch: usize,
    strides: (usize, usize, usize),
) -> Result<()> {
    const OP: &str = "matmul_bf16_batched";
    if batch == 0 {
        return Ok(());
    }
    let (sa, sb, sc) = strides;
    need(OP, "a", a.len(), (batch - 1) * sa + mm.m * mm.k)?;
    need(OP, "b", b.len(), (batch - 1) * sb + mm.k * mm.n)?;
    need(OP, "c", c.len(), (batch - 1) * sc + mm.m * mm.n)?;
    let cfg = StridedBatchedConfig {
        gemm: config(mm, bf16::from_f32(mm.alpha), bf16::from_f32(mm.beta))?,
        batch_size: i(batch)?,
        stride_a: sb as i64,
        stride_b: sa as i64,
        stride_c: sc as i64,
    };
    let blas = gpu.blas()?;
    // SAFETY: the last problem of each operand ends inside its buffer (checked above); operands
    // swapped for the row-major trick, strides swapped with them.
    unsafe { blas.gemm_strided_batched(cfg, b, a, c) }?;
    Ok(())
}

/// Convenience over whole slices.
pub fn matmul_bf16_slices(
    gpu: &Gpu,
    c: &mut CudaSlice<bf16>,
    a: &CudaSlice<bf16>,
    b: &CudaSlice<bf16>,
    mm: &MatMul,
) -> Result<()> {
    matmul_bf16(gpu, &mut c.slice_mut(..), &a.slice(..), &b.slice(..), mm)
}

/// f32 variant (for the self-test and small f32 paths).
pub fn matmul_f32(
    gpu: &Gpu,
    c: &mut CudaSlice<f32>,
    a: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    mm: &MatMul,
) -> Result<()> {
    const OP: &str = "matmul_f32";
    need(OP, "a", a.len(), mm.m * mm.k)?;
    need(OP, "b", b.len(), mm.k * mm.n)?;
    need(OP, "c", c.len(), mm.m * mm.n)?;
    let cfg = config(mm, mm.alpha, mm.beta)?;
    let blas = gpu.blas()?;
    // SAFETY: as matmul_bf16.
    unsafe { blas.gemm(cfg, b, a, c) }?;
    Ok(())
}

/// Row-major reference used by tests and twins: C = alpha·op(A)·op(B) + beta·C.
pub fn matmul_ref(c: &mut [f32], a: &[f32], b: &[f32], mm: &MatMul) {
    for r in 0..mm.m {
        for col in 0..mm.n {
            let mut acc = 0f64;
            for t in 0..mm.k {
                let av = if mm.trans_a {
                    a[t * mm.m + r]
                } else {
                    a[r * mm.k + t]
                };
                let bv = if mm.trans_b {
                    b[col * mm.k + t]
                } else {
                    b[t * mm.n + col]
                };
                acc += av as f64 * bv as f64;
            }
            c[r * mm.n + col] = mm.alpha * acc as f32 + mm.beta * c[r * mm.n + col];
        }
    }
}
