//! Launchers for kernels/tensor.cu: strided 2-D copy, bias add and its column sum, scale, fill,
//! the argmax hit count, the deterministic sum into a device scalar, and the 16-bit conversions
//! (16-bit weights widened, f32 narrowed to bf16 tensor-core operands). f32 storage; every
//! buffer argument is a [`DevBuf`](crate::cuda::DevBuf) or a view of one.

use cudarc::driver::LaunchConfig;

use super::optim::one_block_reduce;
use super::{dim, grid1, kname, need, per_row, Elem};
use crate::cuda::error::{shape_err, Result};
use crate::cuda::kernels::TENSOR;
use crate::cuda::mem::{AsDevView, AsDevViewMut, DevBuf};
use crate::cuda::Gpu;

/// One side of a 2-D copy: element (r, c) is at `off + r·ld + c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strided {
    pub ld: usize,
    pub off: usize,
}

impl Strided {
    /// Rows of `ld` elements starting at `off`.
    pub fn new(ld: usize, off: usize) -> Self {
        Strided { ld, off }
    }
}

/// dst[d.off + r·d.ld + c] = src[s.off + r·s.ld + c] for r < rows, c < cols (QKV split/merge,
/// KV-cache writes, last-token gathers). Destination rows may not overlap (cols <= d.ld when
/// rows > 1); source rows may (s.ld = 0 broadcasts one row).
pub fn copy2d<T: Elem>(
    gpu: &Gpu,
    dst: &mut impl AsDevViewMut<T>,
    d: Strided,
    src: &impl AsDevView<T>,
    s: Strided,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "copy2d";
    let (mut dv, sv) = (dst.dev_view_mut(), src.dev_view());
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    if rows > 1 && cols > d.ld {
        return Err(shape_err(
            OP,
            format!("cols {cols} > dst ld {}: rows overlap", d.ld),
        ));
    }
    let end = |x: Strided| (rows - 1) * x.ld + x.off + cols;
    need(OP, "dst", dv.len(), end(d))?;
    need(OP, "src", sv.len(), end(s))?;
    let (r, c) = (dim(OP, "rows", rows)?, dim(OP, "cols", cols)?);
    let [dld, doff, sld, soff] = [d.ld, d.off, s.ld, s.off].map(|v| v as i64);
    let f = gpu.function(&TENSOR, &kname::<T>("copy2d"))?;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut dv).arg(&sv).arg(&r).arg(&c);
    b.arg(&dld).arg(&doff).arg(&sld).arg(&soff);
    // SAFETY: the last element either side is (rows-1)·ld + off + cols - 1 < len (checked); dst
    // rows are disjoint (cols <= ld), so no two threads write one element.
    unsafe { b.launch(grid1(rows * cols, 256)) }?;
    Ok(())
}

/// y[r, c] += b[c]; y [rows, cols] (dense), b [cols].
pub fn bias_add(
    gpu: &Gpu,
    y: &mut impl AsDevViewMut<f32>,
    b: &impl AsDevView<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "bias_add";
    rows_cols_launch(
        gpu,
        OP,
        "bias_add_f32",
        y,
        b,
        rows,
        cols,
        grid1(rows * cols, 256),
    )
}

/// gb[c] += Σ_r dy[r, c], rows added in order onto gb[c] (the CPU's row loop: same bits);
/// gb [cols], dy [rows, cols].
pub fn col_sum(
    gpu: &Gpu,
    gb: &mut impl AsDevViewMut<f32>,
    dy: &impl AsDevView<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "col_sum";
    let (mut gv, dv) = (gb.dev_view_mut(), dy.dev_view());
    need(OP, "gb", gv.len(), cols)?;
    need(OP, "dy", dv.len(), rows * cols)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let (r, c) = (dim(OP, "rows", rows)?, dim(OP, "cols", cols)?);
    let f = gpu.function(&TENSOR, "col_sum_f32")?;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut gv).arg(&dv).arg(&r).arg(&c);
    // SAFETY: gb holds cols, dy rows·cols (checked); one thread per column.
    unsafe { b.launch(grid1(cols, 256)) }?;
    Ok(())
}

fn rows_cols_launch(
    gpu: &Gpu,
    op: &'static str,
    name: &str,
    y: &mut impl AsDevViewMut<f32>,
    b: &impl AsDevView<f32>,
    rows: usize,
    cols: usize,
    cfg: LaunchConfig,
) -> Result<()> {
    let (mut yv, bv) = (y.dev_view_mut(), b.dev_view());
    need(op, "y", yv.len(), rows * cols)?;
    need(op, "b", bv.len(), cols)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let (r, c) = (dim(op, "rows", rows)?, dim(op, "cols", cols)?);
    let f = gpu.function(&TENSOR, name)?;
    let mut l = gpu.launch_builder(&f);
    l.arg(&mut yv).arg(&bv).arg(&r).arg(&c);
    // SAFETY: y holds rows·cols and b cols elements (checked); one thread per element of y.
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// y *= s over all of y.
pub fn scale(gpu: &Gpu, y: &mut impl AsDevViewMut<f32>, s: f32) -> Result<()> {
    scalar_launch(gpu, "scale_f32", y, s)
}

/// y *= s[0] over all of y (s: a device scalar).
pub fn scale_by(gpu: &Gpu, y: &mut impl AsDevViewMut<f32>, s: &impl AsDevView<f32>) -> Result<()> {
    const OP: &str = "scale_by_f32";
    let (mut yv, sv) = (y.dev_view_mut(), s.dev_view());
    need(OP, "s", sv.len(), 1)?;
    let n = yv.len();
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&TENSOR, OP)?;
    let n64 = n as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut yv).arg(&sv).arg(&n64);
    // SAFETY: n is y's length, one thread per element; s holds one element (checked).
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}

/// 16-bit values [`widen16`] reads: raw bits (u16) or bf16.
pub trait Bits16: cudarc::driver::DeviceRepr {}
impl Bits16 for u16 {}
impl Bits16 for half::bf16 {}

/// out[..w.len()] = w as f32 (exact) or bf16 (f16 rounded to nearest even; bf16 bits copied);
/// `bf16`: w holds bfloat16 bits, else IEEE f16.
pub fn widen16<T: Elem, W: Bits16>(
    gpu: &Gpu,
    out: &mut impl AsDevViewMut<T>,
    w: &impl AsDevView<W>,
    bf16: bool,
) -> Result<()> {
    let op = kname::<T>("widen16");
    let (mut ov, wv) = (out.dev_view_mut(), w.dev_view());
    let n = wv.len();
    need("widen16", "out", ov.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&TENSOR, &op)?;
    let (kind, n64) = (if bf16 { 0i32 } else { 1 }, n as i64);
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut ov).arg(&wv).arg(&kind).arg(&n64);
    // SAFETY: one thread per element of w (n), out holds at least n (checked).
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}

/// Most x rows [`gemv16`] takes (decode batch); larger batches take widen + GEMM.
pub const GEMV16_MAX_ROWS: usize = 8;

/// y[m, rows] = x[m, cols]·Wᵀ for a 16-bit weight W [rows, cols] (`bf16` bits, else IEEE f16) and
/// m <= [`GEMV16_MAX_ROWS`] (small-batch decode): each weight read once for all m rows. Needs
/// cols % 8 == 0 (16-byte loads of 8 weights; W's rows then start 16-byte aligned).
#[allow(clippy::too_many_arguments)]
pub fn gemv16(
    gpu: &Gpu,
    y: &mut impl AsDevViewMut<f32>,
    x: &impl AsDevView<f32>,
    w: &DevBuf<u16>,
    bf16: bool,
    m: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "gemv16";
    if cols % 8 != 0 || m > GEMV16_MAX_ROWS {
        return Err(shape_err(
            OP,
            format!("needs cols % 8 == 0 and at most {GEMV16_MAX_ROWS} rows of x, got cols {cols}, {m} rows"),
        ));
    }
    let (mut yv, xv, wv) = (y.dev_view_mut(), x.dev_view(), w.slice(..));
    need(OP, "w", wv.len(), rows * cols)?;
    need(OP, "x", xv.len(), m * cols)?;
    need(OP, "y", yv.len(), m * rows)?;
    if m * rows == 0 {
        return Ok(());
    }
    if w.device_addr() % 16 != 0 {
        return Err(shape_err(OP, "weight not 16-byte aligned"));
    }
    let f = gpu.function(&TENSOR, "gemv16_f32")?;
    let (kind, mi, n_out, k) = (
        if bf16 { 0i32 } else { 1 },
        dim(OP, "m", m)?,
        dim(OP, "rows", rows)?,
        dim(OP, "cols", cols)?,
    );
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut yv)
        .arg(&xv)
        .arg(&wv)
        .arg(&kind)
        .arg(&mi)
        .arg(&n_out)
        .arg(&k);
    // SAFETY: w is 16-byte aligned (checked) and every row starts at o·cols·2 bytes, a multiple of
    // 16 (cols % 8 == 0), so the uint4 loads are aligned; x takes 16-byte loads only when its
    // address is 16-byte aligned (tested in the kernel); sizes checked above; warps past `rows`
    // exit early.
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (rows.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }?;
    Ok(())
}

/// out[..n] = bf16(x) (round to nearest even) for the n = x.len() values of x.
pub fn narrow_bf16(
    gpu: &Gpu,
    out: &mut impl AsDevViewMut<half::bf16>,
    x: &impl AsDevView<f32>,
) -> Result<()> {
    const OP: &str = "narrow_bf16";
    let (mut ov, xv) = (out.dev_view_mut(), x.dev_view());
    let n = xv.len();
    need(OP, "out", ov.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&TENSOR, OP)?;
    let n64 = n as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut ov).arg(&xv).arg(&n64);
    // SAFETY: one thread per element of x (n), out holds at least n (checked).
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}

/// y = v over all of y.
pub fn fill(gpu: &Gpu, y: &mut impl AsDevViewMut<f32>, v: f32) -> Result<()> {
    scalar_launch(gpu, "fill_f32", y, v)
}

fn scalar_launch(gpu: &Gpu, name: &str, y: &mut impl AsDevViewMut<f32>, s: f32) -> Result<()> {
    let mut yv = y.dev_view_mut();
    let n = yv.len();
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&TENSOR, name)?;
    let n64 = n as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut yv).arg(&s).arg(&n64);
    // SAFETY: n is y's length; one thread per element.
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}

/// hits[0] += number of rows r with targets[r] >= 0 and argmax(logits[r, :]) == targets[r]
/// (first index of the maximum, as `util::argmax`). logits [rows, v], targets [rows] i32 (any
/// negative value = ignored), hits f32 [>= 1] (an exact count below 2^24).
pub fn argmax_hits(
    gpu: &Gpu,
    hits: &mut impl AsDevViewMut<f32>,
    logits: &impl AsDevView<f32>,
    targets: &impl AsDevView<i32>,
    rows: usize,
    v: usize,
) -> Result<()> {
    const OP: &str = "argmax_hits";
    let (mut hv, lv, tv) = (hits.dev_view_mut(), logits.dev_view(), targets.dev_view());
    need(OP, "hits", hv.len(), 1)?;
    need(OP, "logits", lv.len(), rows * v)?;
    need(OP, "targets", tv.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    if v == 0 {
        return Err(shape_err(OP, "vocabulary of 0 columns"));
    }
    let (r, vv) = (dim(OP, "rows", rows)?, dim(OP, "v", v)?);
    let f = gpu.function(&TENSOR, "argmax_hits_f32")?;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut hv).arg(&lv).arg(&tv).arg(&r).arg(&vv);
    // SAFETY: one 256-thread block per row (the kernel's fixed reduction width) reading row·v ..
    // row·v + v - 1 < rows·v (checked); thread 0 of each block adds to hits[0] atomically.
    unsafe { b.launch(per_row(rows, 256)) }?;
    Ok(())
}

/// acc[0] += Σ x over all of x, deterministic (one 1024-thread block, fixed order: the same x
/// gives the same bits every run). acc: f32 [>= 1]. Per-row losses into a step's loss scalar.
pub fn sum_acc(gpu: &Gpu, acc: &mut impl AsDevViewMut<f32>, x: &impl AsDevView<f32>) -> Result<()> {
    one_block_reduce(gpu, &TENSOR, "sum_acc_f32", acc, x)
}
