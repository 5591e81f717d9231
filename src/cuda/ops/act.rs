//! Launchers for kernels/act.cu: SwiGLU, GELU-tanh, GeGLU, scaled accumulate, LoRA dropout.

use crate::cuda::mem::{AsDevView, AsDevViewMut, DevBuf, DevView, DevViewMut};

use super::{dim, grid1, kname, need, Elem};
use crate::cuda::error::{shape_err, Result};
use crate::cuda::kernels::ACT;
use crate::cuda::Gpu;

/// Where gate (e) and up (g) live: two separate [rows, cols] buffers, or ChatGLM's packed
/// [rows, 2·cols] buffer with gate first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GluLayout {
    Separate,
    Packed,
}

/// a[rows, cols] = silu(e)·g. Separate: e, g = `e`, `g`; Packed: both from `e` ([rows, 2·cols]),
/// `g` unused (pass `e` again).
pub fn swiglu_fwd<T: Elem>(
    gpu: &Gpu,
    a: &mut DevBuf<T>,
    e: &DevBuf<T>,
    g: &DevBuf<T>,
    rows: usize,
    cols: usize,
    layout: GluLayout,
) -> Result<()> {
    const OP: &str = "swiglu_fwd";
    need(OP, "a", a.len(), rows * cols)?;
    let f = gpu.function(&ACT, &kname::<T>(OP))?;
    let (r, c) = (dim(OP, "rows", rows)?, dim(OP, "cols", cols)?);
    let (ev, gv, ld): (DevView<T>, DevView<T>, i32) = match layout {
        GluLayout::Separate => {
            need(OP, "e", e.len(), rows * cols)?;
            need(OP, "g", g.len(), rows * cols)?;
            (e.slice(..), g.slice(..), c)
        }
        GluLayout::Packed => {
            need(OP, "h", e.len(), rows * 2 * cols)?;
            (e.slice(..), e.slice(cols..), 2 * c)
        }
    };
    let mut b = gpu.launch_builder(&f);
    b.arg(a).arg(&ev).arg(&gv).arg(&r).arg(&c).arg(&ld);
    // SAFETY: e/g views cover (rows-1)*ld + cols elements (checked above); one thread per output.
    unsafe { b.launch(grid1(rows * cols, 256)) }?;
    Ok(())
}

/// de, dg from da (DESIGN.md SwiGLU backward). Separate: de, dg, e, g all [rows, cols].
/// Packed: `e` is h [rows, 2·cols] and `de` receives dh [rows, 2·cols] (gate grads first, up
/// grads second); `dg` and `g` are not touched (pass any buffers).
#[allow(clippy::too_many_arguments)]
pub fn swiglu_bwd<T: Elem>(
    gpu: &Gpu,
    de: &mut DevBuf<T>,
    dg: &mut DevBuf<T>,
    da: &DevBuf<T>,
    e: &DevBuf<T>,
    g: &DevBuf<T>,
    rows: usize,
    cols: usize,
    layout: GluLayout,
) -> Result<()> {
    const OP: &str = "swiglu_bwd";
    need(OP, "da", da.len(), rows * cols)?;
    let f = gpu.function(&ACT, &kname::<T>(OP))?;
    let (r, c) = (dim(OP, "rows", rows)?, dim(OP, "cols", cols)?);
    match layout {
        GluLayout::Separate => {
            for (what, len) in [
                ("de", de.len()),
                ("dg", dg.len()),
                ("e", e.len()),
                ("g", g.len()),
            ] {
                need(OP, what, len, rows * cols)?;
            }
            let mut b = gpu.launch_builder(&f);
            b.arg(de)
                .arg(dg)
                .arg(da)
                .arg(e)
                .arg(g)
                .arg(&r)
                .arg(&c)
                .arg(&c);
            // SAFETY: all buffers hold rows*cols (checked); one thread per element.
            unsafe { b.launch(grid1(rows * cols, 256)) }?;
        }
        GluLayout::Packed => {
            need(OP, "dh", de.len(), rows * 2 * cols)?;
            need(OP, "h", e.len(), rows * 2 * cols)?;
            let ld = 2 * c;
            let (ev, gv) = (e.slice(..), e.slice(cols..));
            let (mut d_gate, mut d_up): (DevViewMut<T>, DevViewMut<T>) = de.split_at_mut(cols);
            let mut b = gpu.launch_builder(&f);
            b.arg(&mut d_gate)
                .arg(&mut d_up)
                .arg(da)
                .arg(&ev)
                .arg(&gv)
                .arg(&r)
                .arg(&c)
                .arg(&ld);
            // SAFETY: the kernel writes d_gate[r*ld + c] and d_up[r*ld + c] (c < cols): gate and
            // up halves of the same row, disjoint, within the checked rows*2*cols buffer (the
            // d_up view starts at `cols`, so its last write is at rows*ld - 1 overall).
            unsafe { b.launch(grid1(rows * cols, 256)) }?;
        }
    }
    Ok(())
}

/// y = gelu_tanh(x), [n].
pub fn gelu_tanh_fwd<T: Elem>(gpu: &Gpu, y: &mut DevBuf<T>, x: &DevBuf<T>) -> Result<()> {
    const OP: &str = "gelu_tanh_fwd";
    let n = x.len();
    need(OP, "y", y.len(), n)?;
    let f = gpu.function(&ACT, &kname::<T>(OP))?;
    let n64 = n as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(y).arg(x).arg(&n64);
    // SAFETY: y holds n (checked); one thread per element.
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}

/// dx = dy·gelu_tanh'(x), [n].
pub fn gelu_tanh_bwd<T: Elem>(
    gpu: &Gpu,
    dx: &mut DevBuf<T>,
    dy: &DevBuf<T>,
    x: &DevBuf<T>,
) -> Result<()> {
    const OP: &str = "gelu_tanh_bwd";
    let n = x.len();
    need(OP, "dx", dx.len(), n)?;
    need(OP, "dy", dy.len(), n)?;
    let f = gpu.function(&ACT, &kname::<T>(OP))?;
    let n64 = n as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(dx).arg(dy).arg(x).arg(&n64);
    // SAFETY: sizes checked; one thread per element.
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}

/// a = gelu_tanh(e)·g, [n] (Gemma's GeGLU).
pub fn geglu_fwd<T: Elem>(
    gpu: &Gpu,
    a: &mut DevBuf<T>,
    e: &DevBuf<T>,
    g: &DevBuf<T>,
    n: usize,
) -> Result<()> {
    const OP: &str = "geglu_fwd";
    need(OP, "a", a.len(), n)?;
    need(OP, "e", e.len(), n)?;
    need(OP, "g", g.len(), n)?;
    let f = gpu.function(&ACT, &kname::<T>(OP))?;
    let n64 = n as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(a).arg(e).arg(g).arg(&n64);
    // SAFETY: every buffer holds n (checked); one thread per element.
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}

/// dg = da·gelu_tanh(e), de = da·g·gelu_tanh'(e), [n].
pub fn geglu_bwd<T: Elem>(
    gpu: &Gpu,
    de: &mut DevBuf<T>,
    dg: &mut DevBuf<T>,
    da: &DevBuf<T>,
    e: &DevBuf<T>,
    g: &DevBuf<T>,
    n: usize,
) -> Result<()> {
    const OP: &str = "geglu_bwd";
    for (what, len) in [
        ("de", de.len()),
        ("dg", dg.len()),
        ("da", da.len()),
        ("e", e.len()),
        ("g", g.len()),
    ] {
        need(OP, what, len, n)?;
    }
    let f = gpu.function(&ACT, &kname::<T>(OP))?;
    let n64 = n as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(de).arg(dg).arg(da).arg(e).arg(g).arg(&n64);
    // SAFETY: every buffer holds n (checked); one thread per element.
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}

/// y += s·t over t.len() elements (the LoRA term when computed apart).
pub fn scale_add<T: Elem>(gpu: &Gpu, y: &mut DevBuf<T>, t: &DevBuf<T>, s: f32) -> Result<()> {
    const OP: &str = "scale_add";
    let n = t.len();
    need(OP, "y", y.len(), n)?;
    let f = gpu.function(&ACT, &kname::<T>(OP))?;
    let n64 = n as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(y).arg(t).arg(&s).arg(&n64);
    // SAFETY: sizes checked; one thread per element.
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}

/// y = dropout(x): element i kept iff `rng::dropout_keep(key, i, p)` (the CPU's LoRA mask), kept
/// values times 1/(1−p), dropped ones 0. y, x: [x.len()] (y at least that long). p in [0, 1).
pub fn dropout<T: Elem>(
    gpu: &Gpu,
    y: &mut impl AsDevViewMut<T>,
    x: &impl AsDevView<T>,
    p: f32,
    key: u64,
) -> Result<()> {
    dropout_launch(gpu, "dropout", y, x, p, key)
}

/// y += dropout(x) with the same mask as `dropout(.., p, key)`; dropped elements of y are not
/// touched (the backward: dX += mask·dX_d/(1−p)).
pub fn dropout_acc<T: Elem>(
    gpu: &Gpu,
    y: &mut impl AsDevViewMut<T>,
    x: &impl AsDevView<T>,
    p: f32,
    key: u64,
) -> Result<()> {
    dropout_launch(gpu, "dropout_acc", y, x, p, key)
}

fn dropout_launch<T: Elem>(
    gpu: &Gpu,
    op: &'static str,
    y: &mut impl AsDevViewMut<T>,
    x: &impl AsDevView<T>,
    p: f32,
    key: u64,
) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(shape_err(op, format!("p = {p} outside [0, 1)")));
    }
    let (mut yv, xv) = (y.dev_view_mut(), x.dev_view());
    let n = xv.len();
    need(op, "y", yv.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&ACT, &kname::<T>(op))?;
    let n64 = n as i64;
    let mut b = gpu.launch_builder(&f);
    b.arg(&mut yv).arg(&xv).arg(&p).arg(&key).arg(&n64);
    // SAFETY: y holds at least n = x.len() elements (checked); one thread per element.
    unsafe { b.launch(grid1(n, 256)) }?;
    Ok(())
}
