//! Matmuls against a frozen 4-bit weight, dequantizing tiles on the fly (QLoRA on the CPU).
//! No dense copy of W is kept: each rayon task dequantizes a tile of W into a small scratch
//! buffer and multiplies it with the `gemm` crate.

use super::four_bit::{dequantize_range, QuantError, Quantized4};
use rayon::prelude::*;

/// Scratch elements per tile (256 KiB of f32).
const TILE_ELEMS: usize = 1 << 16;

/// A frozen quantized weight W [d_out, d_in] that can multiply without materializing W.
pub trait QuantLinear: Send + Sync {
    fn d_in(&self) -> usize;
    fn d_out(&self) -> usize;
    /// y[n, d_out] = x[n, d_in] · Wᵀ (overwrites y).
    fn matmul_xwt(&self, y: &mut [f32], x: &[f32], n: usize);
    /// dx[n, d_in] += dy[n, d_out] · W.
    fn matmul_dyw(&self, dx: &mut [f32], dy: &[f32], n: usize);
    /// The bitsandbytes 4-bit form, for a backend that keeps it on its device: (packed nibbles,
    /// f32 absmax per block (double quantization undone), the 16-entry code, blocksize).
    fn four_bit(&self) -> Option<FourBit<'_>> {
        None
    }
    /// The 16-bit form ([`super::half::Linear16`]), for a backend that keeps it on its device.
    fn half(&self) -> Option<super::half::HalfBits<'_>> {
        None
    }
    /// W [d_out, d_in] as f32 when that is exact (16-bit weights), to make it trainable.
    fn dense(&self) -> Option<Vec<f32>> {
        None
    }
}

/// A 4-bit weight's buffers, borrowed ([`QuantLinear::four_bit`]).
pub struct FourBit<'a> {
    pub packed: &'a [u8],
    pub absmax: &'a [f32],
    pub code: &'a [f32; 16],
    pub blocksize: usize,
}

/// A 4-bit (NF4/FP4, optionally double-quantized) weight of shape [out, in].
pub struct Linear4bit {
    q: Quantized4,
    /// Per-block f32 scales (the nested absmax dequantized once: ~1/64 of the weight count).
    absmax: Vec<f32>,
    out_features: usize,
    in_features: usize,
}

/// Raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of the output, and the pointer outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl Linear4bit {
    /// Wrap a quantized 2-D weight [out, in].
    pub fn new(q: Quantized4) -> Result<Linear4bit, QuantError> {
        let [out_features, in_features] = q.state.shape[..] else {
            return Err(QuantError::State {
                key: "shape".into(),
                msg: format!(
                    "a linear weight must be 2-D [out, in], got {:?}",
                    q.state.shape
                ),
            });
        };
        let absmax = q.state.absmax_f32();
        Ok(Linear4bit {
            q,
            absmax,
            out_features,
            in_features,
        })
    }

    pub fn quantized(&self) -> &Quantized4 {
        &self.q
    }

    /// Dequantize W[r0..r0+rows, c0..c0+cols] into `scratch` (row-major rows × cols).
    /// Each row piece starts at its flat index (r·in + c0): blocks are flat, not per row.
    fn dequantize_tile(&self, scratch: &mut [f32], r0: usize, rows: usize, c0: usize, cols: usize) {
        let st = &self.q.state;
        for r in 0..rows {
            dequantize_range(
                &mut scratch[r * cols..(r + 1) * cols],
                &self.q.packed,
                &self.absmax,
                &st.code,
                st.blocksize,
                (r0 + r) * self.in_features + c0,
            );
        }
    }
}

/// dst[m, n] = lhs[m, k] · rhs[k, n] with explicit strides (row stride, column stride).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    accumulate: bool,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        accumulate,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

impl Linear4bit {
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Dense W[out, in], row-major (for merging / checks).
    pub fn dequantize(&self) -> Vec<f32> {
        self.q.dequantize()
    }
}

/// The engine's frozen-weight interface: y = x·Wᵀ (overwrite), dx += dy·W.
impl QuantLinear for Linear4bit {
    fn d_out(&self) -> usize {
        self.out_features
    }

    fn four_bit(&self) -> Option<FourBit<'_>> {
        Some(FourBit {
            packed: &self.q.packed,
            absmax: &self.absmax,
            code: &self.q.state.code,
            blocksize: self.q.state.blocksize,
        })
    }

    fn d_in(&self) -> usize {
        self.in_features
    }

    /// Tiles over rows of W: y[:, r0..r1] = x · W[r0..r1, :]ᵀ.
    fn matmul_xwt(&self, y: &mut [f32], x: &[f32], n: usize) {
        let (o, i) = (self.out_features, self.in_features);
        assert_eq!(x.len(), n * i, "x must be [n, in]");
        assert_eq!(y.len(), n * o, "y must be [n, out]");
        if n == 0 || o == 0 {
            return;
        }
        if i == 0 {
            y.fill(0.0);
            return;
        }
        let rows = (TILE_ELEMS / i).clamp(1, o);
        let yp = OutPtr(y.as_mut_ptr());
        (0..o.div_ceil(rows)).into_par_iter().for_each(|t| {
            let r0 = t * rows;
            let nr = rows.min(o - r0);
            let mut scratch = vec![0f32; nr * i];
            self.dequantize_tile(&mut scratch, r0, nr, 0, i);
            #[allow(clippy::redundant_locals)] // capture the Send wrapper, not its raw field
            let yp = yp;
            // SAFETY: y is [n, o]; this task writes only columns r0..r0+nr of it; x is
            // [n, i] and scratch [nr, i], both read within bounds.
            unsafe {
                gemm_strided(
                    n,
                    nr,
                    i,
                    yp.0.add(r0),
                    o as isize,
                    x.as_ptr(),
                    i as isize,
                    1,
                    scratch.as_ptr(),
                    1,
                    i as isize,
                    false,
                );
            }
        });
    }

    /// Tiles over columns of W: dx[:, c0..c1] += dy · W[:, c0..c1].
    fn matmul_dyw(&self, dx: &mut [f32], dy: &[f32], n: usize) {
        let (o, i) = (self.out_features, self.in_features);
        assert_eq!(dy.len(), n * o, "dy must be [n, out]");
        assert_eq!(dx.len(), n * i, "dx must be [n, in]");
        if n == 0 || i == 0 {
            return;
        }
        if o == 0 {
            return;
        }
        let cols = ((TILE_ELEMS / o).max(16).next_multiple_of(2)).min(i);
        let dxp = OutPtr(dx.as_mut_ptr());
        (0..i.div_ceil(cols)).into_par_iter().for_each(|t| {
            let c0 = t * cols;
            let nc = cols.min(i - c0);
            let mut scratch = vec![0f32; o * nc];
            self.dequantize_tile(&mut scratch, 0, o, c0, nc);
            #[allow(clippy::redundant_locals)] // capture the Send wrapper, not its raw field
            let dxp = dxp;
            // SAFETY: dx is [n, i]; this task writes only columns c0..c0+nc; dy is [n, o]
            // and scratch [o, nc], both read within bounds.
            unsafe {
                gemm_strided(
                    n,
                    nc,
                    o,
                    dxp.0.add(c0),
                    i as isize,
                    dy.as_ptr(),
                    o as isize,
                    1,
                    scratch.as_ptr(),
                    nc as isize,
                    1,
                    true,
                );
            }
        });
    }
}
