//! Launchers for kernels/quant4.cu: 4-bit dequantization and small-batch GEMV.

use crate::cuda::mem::{AsDevView, AsDevViewMut, DevBuf};
use cudarc::driver::LaunchConfig;

use super::{dim, grid1, kname, need, Elem};
use crate::cuda::error::{shape_err, Result};
use crate::cuda::kernels::QUANT4;
use crate::cuda::Gpu;

/// A bitsandbytes 4-bit weight [rows, cols] (nn.Linear: rows = out, cols = in) on the device.
pub struct Quant4Weight {
    /// (rows*cols + 1) / 2 bytes, first element in the high nibble.
    pub packed: DevBuf<u8>,
    /// f32 absmax per block (already de-double-quantized, see [`dequant_absmax`]).
    pub absmax: DevBuf<f32>,
    /// 16-entry code table (NF4 or FP4).
    pub code: DevBuf<f32>,
    pub blocksize: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Quant4Weight {
    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }
    /// Checks buffer sizes against rows/cols/blocksize.
    pub fn check(&self, op: &'static str) -> Result<()> {
        if self.blocksize == 0 {
            return Err(shape_err(op, "blocksize 0"));
        }
        need(op, "packed", self.packed.len(), self.numel().div_ceil(2))?;
        need(
            op,
            "absmax",
            self.absmax.len(),
            self.numel().div_ceil(self.blocksize),
        )?;
        need(op, "code", self.code.len(), 16)
    }
}

/// absmax[b] = code8[q[b]]·absmax2[b/nested_blocksize] + offset.  absmax, q: [nblocks]
pub fn dequant_absmax(
    gpu: &Gpu,
    absmax: &mut DevBuf<f32>,
    q: &DevBuf<u8>,
    code8: &DevBuf<f32>,
    absmax2: &DevBuf<f32>,
    offset: f32,
    nested_blocksize: usize,
) -> Result<()> {
    const OP: &str = "dequant_absmax";
    let n = q.len();
    need(OP, "absmax", absmax.len(), n)?;
    need(OP, "code8", code8.len(), 256)?;
    need(
        OP,
        "absmax2",
        absmax2.len(),
        n.div_ceil(nested_blocksize.max(1)),
    )?;
    let f = gpu.function(&QUANT4, "dequant_absmax_f32")?;
    let (nb, nbs) = (n as i64, dim(OP, "nested_blocksize", nested_blocksize)?);
    let mut b = gpu.launch_builder(&f);
    b.arg(absmax)
        .arg(q)
        .arg(code8)
        .arg(absmax2)
        .arg(&offset)
        .arg(&nb)
        .arg(&nbs);
    // SAFETY: absmax/q hold n elements, absmax2 ceil(n/nbs), code8 256 (checked above); one
    // thread per block index < n.
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}

/// out = dequant(w), out: [rows*cols] in T.
pub fn dequant_4bit<T: Elem>(gpu: &Gpu, out: &mut DevBuf<T>, w: &Quant4Weight) -> Result<()> {
    const OP: &str = "dequant_4bit";
    w.check(OP)?;
    need(OP, "out", out.len(), w.numel())?;
    let f = gpu.function(&QUANT4, &kname::<T>("dequant_4bit"))?;
    let (n, bs) = (w.numel() as i64, dim(OP, "blocksize", w.blocksize)?);
    let mut b = gpu.launch_builder(&f);
    b.arg(out)
        .arg(&w.packed)
        .arg(&w.absmax)
        .arg(&w.code)
        .arg(&n)
        .arg(&bs);
    // SAFETY: sizes checked by w.check and need(out); one thread per 16 outputs, bounds-checked
    // against n in the kernel; out and packed start at allocation-aligned addresses.
    unsafe { b.launch(grid1(w.numel().div_ceil(16), 256)) }?;
    Ok(())
}

/// Most x rows [`gemv_4bit`] takes (decode batch); larger batches take dequantize + GEMM.
pub const GEMV_MAX_ROWS: usize = 8;

/// y[m, rows] = x[m, cols]·W[rows, cols]ᵀ for m <= [`GEMV_MAX_ROWS`] (small-batch decode): every
/// weight byte is read once for all m rows. Needs cols % 32 == 0 and blocksize % 32 == 0 (16-byte
/// loads of 32 weights sharing one absmax).
pub fn gemv_4bit<T: Elem>(
    gpu: &Gpu,
    y: &mut impl AsDevViewMut<T>,
    x: &impl AsDevView<T>,
    w: &Quant4Weight,
    m: usize,
) -> Result<()> {
    const OP: &str = "gemv_4bit";
    w.check(OP)?;
    if w.cols % 32 != 0 || w.blocksize % 32 != 0 {
        return Err(shape_err(
            OP,
            format!(
                "needs cols % 32 == 0 and blocksize % 32 == 0, got cols {} blocksize {}",
                w.cols, w.blocksize
            ),
        ));
    }
    if m > GEMV_MAX_ROWS {
        return Err(shape_err(
            OP,
            format!("{m} rows of x, at most {GEMV_MAX_ROWS}"),
        ));
    }
    let (mut y, x) = (y.dev_view_mut(), x.dev_view());
    need(OP, "x", x.len(), m * w.cols)?;
    need(OP, "y", y.len(), m * w.rows)?;
    if m * w.rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&QUANT4, &kname::<T>("gemv_4bit"))?;
    let (mi, n_out, k, bs) = (
        dim(OP, "m", m)?,
        dim(OP, "rows", w.rows)?,
        dim(OP, "cols", w.cols)?,
        dim(OP, "blocksize", w.blocksize)?,
    );
    let warps_per_block = 8u32;
    let cfg = LaunchConfig {
        grid_dim: (w.rows.div_ceil(warps_per_block as usize) as u32, 1, 1),
        block_dim: (32 * warps_per_block, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut y)
        .arg(&x)
        .arg(&w.packed)
        .arg(&w.absmax)
        .arg(&w.code)
        .arg(&mi)
        .arg(&n_out)
        .arg(&k)
        .arg(&bs);
    // SAFETY: packed is a fresh cudarc allocation (256-byte aligned) and every row starts at
    // o*cols/2 bytes, a multiple of 16 since cols % 32 == 0, so the uint4 loads are aligned; x
    // takes 16-byte loads only when its address is 16-byte aligned (tested in the kernel), and
    // then every row and chunk is too (cols % 32 == 0); sizes checked above (x holds m·cols, y
    // m·rows); rows >= n_out exit early.
    unsafe { b.launch(cfg) }?;
    Ok(())
}
