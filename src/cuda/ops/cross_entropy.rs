//! Launchers for kernels/cross_entropy.cu, and [`LmHeadCe`], the chunked lm_head + loss driver:
//! for each chunk of token rows it computes the chunk's logits (cuBLAS), the loss (fwd), the
//! logit gradient in place (bwd), then dH = dZ·W and dW += dZᵀ·H; full-batch logits never exist
//! (peak extra memory: chunk × vocab bf16).

use crate::cuda::mem::{DevBuf, DevView, DevViewMut};
use half::bf16;

use super::blas::{matmul_bf16, MatMul};
use super::{dim, kname, need, per_row, Elem};
use crate::cuda::error::{shape_err, Result};
use crate::cuda::kernels::CROSS_ENTROPY;
use crate::cuda::Gpu;

const THREADS: u32 = 512;

/// loss[n], lse[n] from logits [n, v] and targets [n] (shifted; -100 ignored → loss 0).
pub fn cross_entropy_fwd<T: Elem>(
    gpu: &Gpu,
    loss: &mut DevBuf<f32>,
    lse: &mut DevBuf<f32>,
    logits: &DevBuf<T>,
    targets: &DevBuf<i32>,
    v: usize,
) -> Result<()> {
    fwd_views(
        gpu,
        &mut loss.slice_mut(..),
        &mut lse.slice_mut(..),
        &logits.slice(..),
        &targets.slice(..),
        v,
    )
}

/// dlogits = grad_scale·(softmax − onehot) in place over `logits` [n, v] (ignored rows → 0).
pub fn cross_entropy_bwd_inplace<T: Elem>(
    gpu: &Gpu,
    logits: &mut DevBuf<T>,
    lse: &DevBuf<f32>,
    targets: &DevBuf<i32>,
    v: usize,
    grad_scale: f32,
) -> Result<()> {
    bwd_inplace_views(
        gpu,
        &mut logits.slice_mut(..),
        &lse.slice(..),
        &targets.slice(..),
        v,
        grad_scale,
    )
}

fn fwd_views<T: Elem>(
    gpu: &Gpu,
    loss: &mut DevViewMut<f32>,
    lse: &mut DevViewMut<f32>,
    logits: &DevView<T>,
    targets: &DevView<i32>,
    v: usize,
) -> Result<()> {
    const OP: &str = "cross_entropy_fwd";
    let n = targets.len();
    need(OP, "logits", logits.len(), n * v)?;
    need(OP, "loss", loss.len(), n)?;
    need(OP, "lse", lse.len(), n)?;
    let f = gpu.function(&CROSS_ENTROPY, &kname::<T>(OP))?;
    let vi = dim(OP, "v", v)?;
    let mut b = gpu.launch_builder(&f);
    b.arg(loss).arg(lse).arg(logits).arg(targets).arg(&vi);
    // SAFETY: sizes checked; one block per row; targets outside [0, v) are treated as ignored.
    unsafe { b.launch(per_row(n, THREADS)) }?;
    Ok(())
}

fn bwd_inplace_views<T: Elem>(
    gpu: &Gpu,
    logits: &mut DevViewMut<T>,
    lse: &DevView<f32>,
    targets: &DevView<i32>,
    v: usize,
    grad_scale: f32,
) -> Result<()> {
    const OP: &str = "cross_entropy_bwd";
    let n = targets.len();
    need(OP, "logits", logits.len(), n * v)?;
    need(OP, "lse", lse.len(), n)?;
    let f = gpu.function(&CROSS_ENTROPY, &kname::<T>(OP))?;
    let vi = dim(OP, "v", v)?;
    // The kernel takes (dlogits, logits): both are this buffer, passed twice.
    let lv = logits.slice(..);
    let mut b = gpu.launch_builder(&f);
    b.arg(&lv)
        .arg(&lv)
        .arg(lse)
        .arg(targets)
        .arg(&vi)
        .arg(&grad_scale);
    // SAFETY: n*v elements checked; each thread reads logits[row, c] before writing the same
    // element (no other thread touches it), so the alias is benign.
    unsafe { b.launch(per_row(n, THREADS)) }?;
    Ok(())
}

/// Chunked lm_head + cross-entropy (forward and backward in one pass over the tokens).
pub struct LmHeadCe {
    pub chunk: usize,
    pub vocab: usize,
    logits: DevBuf<bf16>,
    lse: DevBuf<f32>,
}

impl LmHeadCe {
    /// Allocates the chunk × vocab logits buffer once.
    pub fn new(gpu: &Gpu, chunk: usize, vocab: usize) -> Result<Self> {
        if chunk == 0 || vocab == 0 {
            return Err(shape_err("lm_head_ce", "chunk and vocab must be positive"));
        }
        Ok(LmHeadCe {
            chunk,
            vocab,
            logits: gpu.alloc_zeros(chunk * vocab)?,
            lse: gpu.alloc_zeros(chunk)?,
        })
    }

    /// loss [n] per token (0 where target = -100); dh [n, d] = ∂(grad_scale·Σ loss)/∂h;
    /// dw [vocab, d] += the lm_head gradient when given (full fine-tuning / modules_to_save).
    /// h [n, d] final hidden states; w [vocab, d] lm_head (nn.Linear layout); targets [n] shifted.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        gpu: &Gpu,
        loss: &mut DevBuf<f32>,
        dh: &mut DevBuf<bf16>,
        mut dw: Option<&mut DevBuf<bf16>>,
        h: &DevBuf<bf16>,
        w: &DevBuf<bf16>,
        targets: &DevBuf<i32>,
        d: usize,
        grad_scale: f32,
    ) -> Result<()> {
        const OP: &str = "lm_head_ce";
        let (n, v) = (targets.len(), self.vocab);
        need(OP, "h", h.len(), n * d)?;
        need(OP, "dh", dh.len(), n * d)?;
        need(OP, "w", w.len(), v * d)?;
        need(OP, "loss", loss.len(), n)?;
        if let Some(dw) = dw.as_deref() {
            need(OP, "dw", dw.len(), v * d)?;
        }
        let mut r0 = 0;
        while r0 < n {
            let r1 = (r0 + self.chunk).min(n);
            let c = r1 - r0;
            let hc = h.slice(r0 * d..r1 * d);
            let tc = targets.slice(r0..r1);
            let mut z = self.logits.slice_mut(..c * v);
            matmul_bf16(gpu, &mut z, &hc, &w.slice(..), &MatMul::linear(c, v, d))?;
            fwd_views(
                gpu,
                &mut loss.slice_mut(r0..r1),
                &mut self.lse.slice_mut(..c),
                &z.as_view(),
                &tc,
                v,
            )?;
            bwd_inplace_views(gpu, &mut z, &self.lse.slice(..c), &tc, v, grad_scale)?;
            // dH = dZ·W : [c, v]·[v, d]
            let mm = MatMul {
                trans_b: false,
                ..MatMul::linear(c, d, v)
            };
            matmul_bf16(
                gpu,
                &mut dh.slice_mut(r0 * d..r1 * d),
                &z.as_view(),
                &w.slice(..),
                &mm,
            )?;
            if let Some(dw) = dw.as_deref_mut() {
                // dW += dZᵀ·H : [v, c]·[c, d]
                let mm = MatMul {
                    m: v,
                    n: d,
                    k: c,
                    trans_a: true,
                    trans_b: false,
                    alpha: 1.0,
                    beta: 1.0,
                };
                matmul_bf16(gpu, &mut dw.slice_mut(..), &z.as_view(), &hc, &mm)?;
            }
            r0 = r1;
        }
        Ok(())
    }
}
