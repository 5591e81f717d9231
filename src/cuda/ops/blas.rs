//! cuBLAS bf16 GEMM (f32 accumulate) for dense matmuls, in ROW-MAJOR terms.
//!
//! cuBLAS is column-major. A row-major [r, c] buffer read column-major is its transpose, so
//! row-major C = op(A)·op(B) is computed as column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands,
//! keep each one's transpose flag, and pass m ↔ n. Leading dimensions are row lengths.
//!
//! On the emulated device the same column-major call goes to a reference GEMM ([`emu_gemm`])
//! that honours the transposes, leading dimensions and batch strides exactly as cuBLAS would.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig, StridedBatchedConfig};
use half::bf16;

use super::{need, Elem};
use crate::cuda::error::{shape_err, Result};
use crate::cuda::mem::{BufRepr, DevBuf, DevView, DevViewMut, ViewMutRepr, ViewRepr};
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

impl MatMul {
    /// Row lengths of A, B and C as stored when each is contiguous: (lda, ldb, ldc).
    pub fn packed_lds(&self) -> (usize, usize, usize) {
        (
            if self.trans_a { self.m } else { self.k },
            if self.trans_b { self.k } else { self.n },
            self.n,
        )
    }

    /// Stored (rows, row length) of A and B: op(A) [m, k] is stored [k, m] when transposed.
    fn stored(&self) -> ((usize, usize), (usize, usize)) {
        (
            if self.trans_a {
                (self.k, self.m)
            } else {
                (self.m, self.k)
            },
            if self.trans_b {
                (self.n, self.k)
            } else {
                (self.k, self.n)
            },
        )
    }
}

/// Column-major cuBLAS config for the row-major product (see module docs).
fn config<T>(mm: &MatMul, alpha: T, beta: T) -> Result<GemmConfig<T>> {
    config_ld(mm, alpha, beta, mm.packed_lds())
}

/// As [`config`] with explicit row-major leading dimensions (lda, ldb, ldc): cuBLAS's column-major
/// lda is B's row length and ldb is A's (operands swapped).
fn config_ld<T>(
    mm: &MatMul,
    alpha: T,
    beta: T,
    (lda, ldb, ldc): (usize, usize, usize),
) -> Result<GemmConfig<T>> {
    Ok(GemmConfig {
        transa: op(mm.trans_b),
        transb: op(mm.trans_a),
        m: i(mm.n)?,
        n: i(mm.m)?,
        k: i(mm.k)?,
        alpha,
        lda: i(ldb)?,
        ldb: i(lda)?,
        beta,
        ldc: i(ldc)?,
    })
}

fn i(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape_err("matmul", format!("dim {v} exceeds i32")))
}

/// C = alpha·op(A)·op(B) + beta·C, bf16 in and out, f32 accumulation (cuBLAS gemmEx).
pub fn matmul_bf16(
    gpu: &Gpu,
    c: &mut DevViewMut<bf16>,
    a: &DevView<bf16>,
    b: &DevView<bf16>,
    mm: &MatMul,
) -> Result<()> {
    const OP: &str = "matmul_bf16";
    need(OP, "a", a.len(), mm.m * mm.k)?;
    need(OP, "b", b.len(), mm.k * mm.n)?;
    need(OP, "c", c.len(), mm.m * mm.n)?;
    let cfg = config(mm, bf16::from_f32(mm.alpha), bf16::from_f32(mm.beta))?;
    match (&a.0, &b.0, &mut c.0) {
        (ViewRepr::Real(av), ViewRepr::Real(bv), ViewMutRepr::Real(cv)) => {
            let blas = gpu.blas()?;
            // SAFETY: buffer lengths checked against m, n, k; the leading dimensions above
            // describe exactly those row-major layouts; all buffers live on blas's stream.
            unsafe { blas.gemm(cfg, bv, av, cv) }?;
        }
        _ => emu_gemm(gpu.is_dry(), OP, &cfg, 1, (0, 0, 0), b, a, c)?,
    }
    Ok(())
}

/// Batched row-major matmul over `batch` problems laid out back to back with element strides
/// (stride_a, stride_b, stride_c) (e.g. per-head products): C_i = alpha·op(A_i)·op(B_i) + beta·C_i.
pub fn matmul_bf16_batched(
    gpu: &Gpu,
    c: &mut DevBuf<bf16>,
    a: &DevBuf<bf16>,
    b: &DevBuf<bf16>,
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
    let gemm = config(mm, bf16::from_f32(mm.alpha), bf16::from_f32(mm.beta))?;
    match (&a.repr, &b.repr, &mut c.repr) {
        (BufRepr::Real(av), BufRepr::Real(bv), BufRepr::Real(cv)) => {
            let cfg = StridedBatchedConfig {
                gemm,
                batch_size: i(batch)?,
                stride_a: sb as i64,
                stride_b: sa as i64,
                stride_c: sc as i64,
            };
            let blas = gpu.blas()?;
            // SAFETY: the last problem of each operand ends inside its buffer (checked above);
            // operands swapped for the row-major trick, strides swapped with them.
            unsafe { blas.gemm_strided_batched(cfg, &**bv, &**av, &mut **cv) }?;
        }
        _ => emu_gemm(
            gpu.is_dry(),
            OP,
            &gemm,
            batch,
            (sb, sa, sc),
            &b.slice(..),
            &a.slice(..),
            &mut c.slice_mut(..),
        )?,
    }
    Ok(())
}

/// Convenience over whole slices.
pub fn matmul_bf16_slices(
    gpu: &Gpu,
    c: &mut DevBuf<bf16>,
    a: &DevBuf<bf16>,
    b: &DevBuf<bf16>,
    mm: &MatMul,
) -> Result<()> {
    matmul_bf16(gpu, &mut c.slice_mut(..), &a.slice(..), &b.slice(..), mm)
}

/// f32 variant (for the self-test and small f32 paths).
pub fn matmul_f32(
    gpu: &Gpu,
    c: &mut DevBuf<f32>,
    a: &DevBuf<f32>,
    b: &DevBuf<f32>,
    mm: &MatMul,
) -> Result<()> {
    const OP: &str = "matmul_f32";
    need(OP, "a", a.len(), mm.m * mm.k)?;
    need(OP, "b", b.len(), mm.k * mm.n)?;
    need(OP, "c", c.len(), mm.m * mm.n)?;
    let cfg = config(mm, mm.alpha, mm.beta)?;
    match (&a.repr, &b.repr, &mut c.repr) {
        (BufRepr::Real(av), BufRepr::Real(bv), BufRepr::Real(cv)) => {
            let blas = gpu.blas()?;
            // SAFETY: as matmul_bf16.
            unsafe { blas.gemm(cfg, &**bv, &**av, &mut **cv) }?;
        }
        _ => emu_gemm(
            gpu.is_dry(),
            OP,
            &cfg,
            1,
            (0, 0, 0),
            &b.slice(..),
            &a.slice(..),
            &mut c.slice_mut(..),
        )?,
    }
    Ok(())
}

/// Tensor-core GEMM: C = alpha·op(A_i)·op(B_i) + beta·C_i for `batch` problems at element
/// strides (stride_a, stride_b, stride_c), A and B bf16, f32 accumulation
/// (cublasGemmStridedBatchedEx, CUBLAS_COMPUTE_32F), C f32 or bf16 (rounded once). What the CUDA
/// backend's bf16 compute mode runs for every dense, frozen-weight and attention product;
/// `batch` 1 is a plain GEMM.
pub fn matmul_bf16_f32<C: Elem>(
    gpu: &Gpu,
    c: &mut DevViewMut<C>,
    a: &DevView<bf16>,
    b: &DevView<bf16>,
    mm: &MatMul,
    batch: usize,
    strides: (usize, usize, usize),
) -> Result<()> {
    matmul_ld(gpu, c, a, b, mm, batch, strides, mm.packed_lds())
}

/// [`matmul_bf16_f32`] on operands whose rows are longer than the matrix (row-major leading
/// dimensions `lds` = (lda, ldb, ldc), each at least its stored row length: e.g. one head of
/// q [T, NH, HD] is a [T, HD] matrix with row length NH·HD), with operands of element type `E`:
/// bf16 (tensor cores), or f32 (plain f32 products: CUBLAS_COMPUTE_32F without TF32, what f32
/// mode's attention GEMMs run).
#[allow(clippy::too_many_arguments)]
pub fn matmul_ld<E: Elem, C: Elem>(
    gpu: &Gpu,
    c: &mut DevViewMut<C>,
    a: &DevView<E>,
    b: &DevView<E>,
    mm: &MatMul,
    batch: usize,
    strides: (usize, usize, usize),
    lds: (usize, usize, usize),
) -> Result<()> {
    use cudarc::cublas::{result, sys};
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    const OP: &str = "matmul_ld";
    if batch == 0 || mm.m == 0 || mm.n == 0 {
        return Ok(());
    }
    let (sa, sb, sc) = strides;
    let ((ar, ac), (br, bc)) = mm.stored();
    for (what, len, (rows, cols), ld, stride) in [
        ("a", a.len(), (ar, ac), lds.0, sa),
        ("b", b.len(), (br, bc), lds.1, sb),
        ("c", c.len(), (mm.m, mm.n), lds.2, sc),
    ] {
        if ld < cols {
            return Err(shape_err(
                OP,
                format!("leading dimension of {what} {ld} < its row length {cols}"),
            ));
        }
        if rows > 0 && cols > 0 {
            need(OP, what, len, (batch - 1) * stride + (rows - 1) * ld + cols)?;
        }
    }
    let g = config_ld(mm, mm.alpha, mm.beta, lds)?;
    match (&a.0, &b.0, &mut c.0) {
        (ViewRepr::Real(av), ViewRepr::Real(bv), ViewMutRepr::Real(cv)) => {
            let blas = gpu.blas()?;
            let stream = &gpu.real()?.stream;
            let (pa, _ra) = av.device_ptr(stream);
            let (pb, _rb) = bv.device_ptr(stream);
            let (pc, _rc) = cv.device_ptr_mut(stream);
            let ty = |suffix: &str| match suffix {
                "bf16" => sys::cudaDataType_t::CUDA_R_16BF,
                _ => sys::cudaDataType_t::CUDA_R_32F,
            };
            let ab = ty(E::SUFFIX);
            // SAFETY: the last problem of each operand ends inside its view (checked above);
            // operands and strides swapped for the row-major trick; alpha/beta are host f32 as
            // CUBLAS_COMPUTE_32F expects; all views live on blas's stream.
            unsafe {
                result::gemm_strided_batched_ex(
                    *blas.handle(),
                    g.transa,
                    g.transb,
                    g.m,
                    g.n,
                    g.k,
                    (&g.alpha) as *const f32 as *const _,
                    pb as *const _,
                    ab,
                    g.lda,
                    sb as i64,
                    pa as *const _,
                    ab,
                    g.ldb,
                    sa as i64,
                    (&g.beta) as *const f32 as *const _,
                    pc as *mut _,
                    ty(C::SUFFIX),
                    g.ldc,
                    sc as i64,
                    i(batch)?,
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }?;
        }
        _ => emu_gemm(gpu.is_dry(), OP, &g, batch, (sb, sa, sc), b, a, c)?,
    }
    Ok(())
}

/// The emulated device's cuBLAS: a column-major reference GEMM taking exactly the cuBLAS call's
/// parameters (transposes, m/n/k, leading dimensions, batch strides), accumulating in f32 and
/// rounding C once, like gemmEx with CUBLAS_COMPUTE_32F. Leading dimensions smaller than cuBLAS
/// allows, or an operand reaching past its buffer, are errors (a real GPU would fault or refuse).
/// As in cuBLAS, C is not read when beta is 0.
fn emu_gemm<S: Elem, T: Elem, U: Elem>(
    dry: bool,
    op: &'static str,
    g: &GemmConfig<S>,
    batch: usize,
    (sa, sb, sc): (usize, usize, usize),
    a: &DevView<T>,
    b: &DevView<T>,
    c: &mut DevViewMut<U>,
) -> Result<()> {
    let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
    let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
    let ta = g.transa == cublasOperation_t::CUBLAS_OP_T;
    let tb = g.transb == cublasOperation_t::CUBLAS_OP_T;
    // Stored shapes (rows, cols), column-major.
    let (ar, ac) = if ta { (k, m) } else { (m, k) };
    let (br, bc) = if tb { (n, k) } else { (k, n) };
    for (what, ld, rows) in [("lda", lda, ar), ("ldb", ldb, br), ("ldc", ldc, m)] {
        if ld < rows.max(1) {
            return Err(shape_err(
                op,
                format!("emulated cuBLAS: {what} = {ld} < {rows} rows"),
            ));
        }
    }
    let reach = |rows: usize, cols: usize, ld: usize, stride: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (batch - 1) * stride + (cols - 1) * ld + rows
        }
    };
    for (what, need_len, len) in [
        ("A", reach(ar, ac, lda, sa), a.len()),
        ("B", reach(br, bc, ldb, sb), b.len()),
        ("C", reach(m, n, ldc, sc), c.len()),
    ] {
        if need_len > len {
            return Err(shape_err(
                op,
                format!("emulated cuBLAS: operand {what} reaches element {need_len} of {len}"),
            ));
        }
    }
    if dry {
        return Ok(());
    }
    let (Some(pa), Some(pb), Some(pc)) = (a.emu_ptr(), b.emu_ptr(), c.emu_ptr()) else {
        panic!("{op}: buffers of the real and the emulated device mixed");
    };
    // SAFETY: emulated views of the stated lengths; C does not alias A or B (distinct
    // allocations or disjoint views, as cuBLAS requires).
    let (a, b, c) = unsafe {
        (
            std::slice::from_raw_parts(pa, a.len()),
            std::slice::from_raw_parts(pb, b.len()),
            std::slice::from_raw_parts_mut(pc, c.len()),
        )
    };
    let (alpha, beta) = (g.alpha.to_f32(), g.beta.to_f32());
    for p in 0..batch {
        let (a, b, c) = (&a[p * sa..], &b[p * sb..], &mut c[p * sc..]);
        for j in 0..n {
            for r in 0..m {
                let mut acc = 0f32;
                for t in 0..k {
                    let av = if ta { a[t + r * lda] } else { a[r + t * lda] };
                    let bv = if tb { b[j + t * ldb] } else { b[t + j * ldb] };
                    acc += av.to_f32() * bv.to_f32();
                }
                let ci = r + j * ldc;
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta * c[ci].to_f32()
                };
                c[ci] = U::from_f32(alpha * acc + old);
            }
        }
    }
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
