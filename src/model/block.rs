//! One transformer layer, forward and backward side by side, for every family through `Arch`:
//! pre-norm attention (RoPE / ALiBi, MHA/GQA/MQA, fused or split QKV) and a SwiGLU or GELU MLP.

use super::arch::{Arch, MlpKind, NormKind, Positions, QkvLayout};
use super::linear::Linear;
use crate::backend::{AttnDims, AttnMask, Backend, RopeFreqs};

/// A trainable-or-frozen tensor with its gradient (allocated when trainable).
pub struct Param {
    pub value: Vec<f32>,
    pub grad: Option<Vec<f32>>,
}

impl Param {
    pub fn frozen(value: Vec<f32>) -> Param {
        Param { value, grad: None }
    }
    pub fn set_trainable(&mut self) {
        self.grad = Some(vec![0.0; self.value.len()]);
    }
}

pub struct Norm {
    pub name: String,
    pub kind: NormKind,
    pub eps: f32,
    pub w: Param,
    /// LayerNorm only.
    pub b: Option<Param>,
}

/// Saved statistics of a norm: mean (LayerNorm) and rstd, [n] each.
#[derive(Default)]
pub struct NormStats {
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
}

impl Norm {
    /// y [n,d], stats from x [n,d].
    pub fn forward(
        &self,
        be: &dyn Backend,
        y: &mut [f32],
        st: &mut NormStats,
        x: &[f32],
        n: usize,
    ) {
        let d = self.w.value.len();
        st.rstd.resize(n, 0.0);
        match self.kind {
            NormKind::Rms => be.rmsnorm_fwd(y, &mut st.rstd, x, &self.w.value, n, d, self.eps),
            NormKind::Layer => {
                st.mean.resize(n, 0.0);
                let b = &self.b.as_ref().expect("layernorm bias").value;
                be.layernorm_fwd(
                    y,
                    &mut st.mean,
                    &mut st.rstd,
                    x,
                    &self.w.value,
                    b,
                    n,
                    d,
                    self.eps,
                )
            }
        }
    }

    /// dx [n,d] (overwritten) from dy [n,d]; accumulates dw/db when trainable.
    pub fn backward(
        &mut self,
        be: &dyn Backend,
        dx: &mut [f32],
        dy: &[f32],
        x: &[f32],
        st: &NormStats,
        n: usize,
    ) {
        let d = self.w.value.len();
        match self.kind {
            NormKind::Rms => be.rmsnorm_bwd(
                dx,
                self.w.grad.as_deref_mut(),
                dy,
                x,
                &self.w.value,
                &st.rstd,
                n,
                d,
            ),
            NormKind::Layer => {
                let b = self.b.as_mut().expect("layernorm bias");
                be.layernorm_bwd(
                    dx,
                    self.w.grad.as_deref_mut(),
                    b.grad.as_deref_mut(),
                    dy,
                    x,
                    &self.w.value,
                    &st.mean,
                    &st.rstd,
                    n,
                    d,
                )
            }
        }
    }
}

pub struct Layer {
    pub ln1: Norm,
    /// Separate: [q, k, v]; fused: [qkv].
    pub qkv: Vec<Linear>,
    pub o: Linear,
    /// Per-head RMSNorm of q and k before RoPE (`Arch::qk_norm`, Qwen3).
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub ln2: Norm,
    /// SwiGLU separate: [gate, up]; fused SwiGLU or GELU: [one].
    pub mlp_in: Vec<Linear>,
    pub mlp_out: Linear,
    /// Sliding attention window of this layer (`Arch::window`).
    pub window: Option<usize>,
}

/// Per-batch attention context shared by all layers.
pub struct Ctx {
    pub n: usize,
    pub dims: AttnDims,
    /// [N] rotary / learned positions.
    pub pos: Vec<f32>,
    pub valid: Vec<u8>,
    pub segment: Vec<u32>,
    /// ALiBi (slopes [NH], key positions [N]).
    pub alibi: Option<(Vec<f32>, Vec<f32>)>,
    /// This forward's rotary frequencies (`Model::rope_freqs`); None without RoPE.
    pub rope: Option<RopeFreqs>,
}

impl Ctx {
    /// The attention mask of a layer with sliding window `window` (None: full causal).
    pub fn mask(&self, window: Option<usize>) -> AttnMask<'_> {
        AttnMask {
            valid: &self.valid,
            segment: &self.segment,
            alibi: self.alibi.as_ref().map(|(s, p)| (&s[..], &p[..])),
            window,
        }
    }
}

/// Activations a layer keeps for its backward.
#[derive(Default)]
pub struct Acts {
    pub h1: Vec<f32>,
    pub st1: NormStats,
    /// q and k before their per-head norm, and its stats (`Arch::qk_norm` only).
    pub q_pre: Vec<f32>,
    pub k_pre: Vec<f32>,
    pub st_q: NormStats,
    pub st_k: NormStats,
    /// Fused QKV output (before split) is not kept; q/k/v after RoPE are.
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// What the backend's attention saves for its backward (CPU: probabilities).
    pub attn_saved: Vec<f32>,
    pub att: Vec<f32>,
    pub x2: Vec<f32>,
    pub h2: Vec<f32>,
    pub st2: NormStats,
    /// SwiGLU: e = gate, g = up; GELU: e = fc output, g unused.
    pub e: Vec<f32>,
    pub g: Vec<f32>,
    pub a: Vec<f32>,
}

impl Acts {
    /// f32 values `Layer::forward` leaves in `Acts` for n = B·T tokens (the memory plan's
    /// per-layer term; `n` is f64 so an absurd batch saturates instead of overflowing):
    /// h1, x2, h2 [n,H]; q, att [n,NH·HD]; k, v [n,KV·HD]; the attention's saved buffer
    /// (`Backend::attention_saved_len`, the CPU's logsumexp [B,T,NH], never the [B,NH,T,T]
    /// probabilities); e, a (and g for SwiGLU) [n,F]; norm stats; Qwen3's pre-norm q/k.
    pub fn floats(arch: &Arch, n: f64) -> f64 {
        let f = |x: usize| x as f64;
        let (h, q, kv, ffn, nh) = (
            f(arch.hidden),
            f(arch.q_dim()),
            f(arch.kv_dim()),
            f(arch.ffn),
            f(arch.heads),
        );
        let stats = if arch.norm == NormKind::Layer {
            2.0
        } else {
            1.0
        };
        let gated = if matches!(arch.mlp, MlpKind::SwiGlu { .. }) {
            1.0
        } else {
            0.0
        };
        let qk_norm = if arch.qk_norm {
            q + kv + nh + f(arch.kv_heads)
        } else {
            0.0
        };
        n * (3.0 * h + 2.0 * q + 2.0 * kv + nh + (2.0 + gated) * ffn + 2.0 * stats + qk_norm)
    }
}

/// Splits a fused QKV output [n, q+2kv] into q [n, NH·HD], k, v [n, KV·HD].
fn split_qkv(arch: &Arch, q: &mut [f32], k: &mut [f32], v: &mut [f32], buf: &[f32], n: usize) {
    let (qd, kd, hd) = (arch.q_dim(), arch.kv_dim(), arch.head_dim);
    let w = qd + 2 * kd;
    for t in 0..n {
        let row = &buf[t * w..(t + 1) * w];
        match arch.qkv {
            QkvLayout::PerHead => {
                for h in 0..arch.heads {
                    let o = h * 3 * hd;
                    q[t * qd + h * hd..][..hd].copy_from_slice(&row[o..o + hd]);
                    k[t * kd + h * hd..][..hd].copy_from_slice(&row[o + hd..o + 2 * hd]);
                    v[t * kd + h * hd..][..hd].copy_from_slice(&row[o + 2 * hd..o + 3 * hd]);
                }
            }
            _ => {
                q[t * qd..(t + 1) * qd].copy_from_slice(&row[..qd]);
                k[t * kd..(t + 1) * kd].copy_from_slice(&row[qd..qd + kd]);
                v[t * kd..(t + 1) * kd].copy_from_slice(&row[qd + kd..]);
            }
        }
    }
}

/// Inverse of `split_qkv`: buf [n, q+2kv] from dq, dk, dv.
fn merge_qkv(arch: &Arch, buf: &mut [f32], q: &[f32], k: &[f32], v: &[f32], n: usize) {
    let (qd, kd, hd) = (arch.q_dim(), arch.kv_dim(), arch.head_dim);
    let w = qd + 2 * kd;
    for t in 0..n {
        let row = &mut buf[t * w..(t + 1) * w];
        match arch.qkv {
            QkvLayout::PerHead => {
                for h in 0..arch.heads {
                    let o = h * 3 * hd;
                    row[o..o + hd].copy_from_slice(&q[t * qd + h * hd..][..hd]);
                    row[o + hd..o + 2 * hd].copy_from_slice(&k[t * kd + h * hd..][..hd]);
                    row[o + 2 * hd..o + 3 * hd].copy_from_slice(&v[t * kd + h * hd..][..hd]);
                }
            }
            _ => {
                row[..qd].copy_from_slice(&q[t * qd..(t + 1) * qd]);
                row[qd..qd + kd].copy_from_slice(&k[t * kd..(t + 1) * kd]);
                row[qd + kd..].copy_from_slice(&v[t * kd..(t + 1) * kd]);
            }
        }
    }
}

/// Splits rows of [n, 2f] into first/second halves (ChatGLM dense_h_to_4h = [gate; up]).
fn split_halves(a: &mut [f32], b: &mut [f32], buf: &[f32], n: usize, f: usize) {
    for t in 0..n {
        a[t * f..(t + 1) * f].copy_from_slice(&buf[t * 2 * f..t * 2 * f + f]);
        b[t * f..(t + 1) * f].copy_from_slice(&buf[t * 2 * f + f..(t + 1) * 2 * f]);
    }
}
fn merge_halves(buf: &mut [f32], a: &[f32], b: &[f32], n: usize, f: usize) {
    for t in 0..n {
        buf[t * 2 * f..t * 2 * f + f].copy_from_slice(&a[t * f..(t + 1) * f]);
        buf[t * 2 * f + f..(t + 1) * 2 * f].copy_from_slice(&b[t * f..(t + 1) * f]);
    }
}

impl Layer {
    /// out [N,H] = layer(x [N,H]); fills `acts` for the backward.
    pub fn forward(
        &self,
        be: &dyn Backend,
        arch: &Arch,
        out: &mut [f32],
        acts: &mut Acts,
        x: &[f32],
        ctx: &Ctx,
    ) {
        let n = ctx.n;
        let hd = ctx.dims.hd;
        self.qkv_fwd(be, arch, acts, x, &ctx.pos, ctx.rope.as_ref(), n);
        acts.attn_saved
            .resize(be.attention_saved_len(ctx.dims), 0.0);
        acts.att.resize(n * arch.q_dim(), 0.0);
        let mask = ctx.mask(self.window);
        be.attention_fwd(
            &mut acts.att,
            &mut acts.attn_saved,
            &acts.q,
            &acts.k,
            &acts.v,
            &mask,
            ctx.dims,
            1.0 / (hd as f32).sqrt(),
        );
        self.post_attn_fwd(be, arch, out, acts, x, n);
    }

    /// First half: h1 = ln1(x), q/k/v projections (split from a fused output), the per-head
    /// q/k norm if any, RoPE with `rope` at pos [n].
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_fwd(
        &self,
        be: &dyn Backend,
        arch: &Arch,
        acts: &mut Acts,
        x: &[f32],
        pos: &[f32],
        rope: Option<&RopeFreqs>,
        n: usize,
    ) {
        let (h, qd, kd, hd) = (arch.hidden, arch.q_dim(), arch.kv_dim(), arch.head_dim);
        acts.h1.resize(n * h, 0.0);
        self.ln1.forward(be, &mut acts.h1, &mut acts.st1, x, n);
        acts.q.resize(n * qd, 0.0);
        acts.k.resize(n * kd, 0.0);
        acts.v.resize(n * kd, 0.0);
        if self.qkv.len() == 3 {
            self.qkv[0].forward(be, &mut acts.q, &acts.h1, n);
            self.qkv[1].forward(be, &mut acts.k, &acts.h1, n);
            self.qkv[2].forward(be, &mut acts.v, &acts.h1, n);
        } else {
            let mut buf = vec![0.0; n * (qd + 2 * kd)];
            self.qkv[0].forward(be, &mut buf, &acts.h1, n);
            split_qkv(arch, &mut acts.q, &mut acts.k, &mut acts.v, &buf, n);
        }
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            acts.q_pre.clone_from(&acts.q);
            acts.k_pre.clone_from(&acts.k);
            qn.forward(be, &mut acts.q, &mut acts.st_q, &acts.q_pre, n * arch.heads);
            kn.forward(
                be,
                &mut acts.k,
                &mut acts.st_k,
                &acts.k_pre,
                n * arch.kv_heads,
            );
        }
        if let (Positions::Rope { kind, .. }, Some(f)) = (arch.positions, rope) {
            be.rope(&mut acts.q, pos, n, arch.heads, hd, f, kind, false);
            be.rope(&mut acts.k, pos, n, arch.kv_heads, hd, f, kind, false);
        }
    }

    /// Second half, from the attention output `acts.att` [n, NH·HD]: x2 = x + o(att);
    /// out = x2 + mlp(ln2(x2)).
    pub fn post_attn_fwd(
        &self,
        be: &dyn Backend,
        arch: &Arch,
        out: &mut [f32],
        acts: &mut Acts,
        x: &[f32],
        n: usize,
    ) {
        let (h, f) = (arch.hidden, arch.ffn);
        acts.x2.resize(n * h, 0.0);
        self.o.forward(be, &mut acts.x2, &acts.att, n);
        acts.x2.iter_mut().zip(x).for_each(|(y, x)| *y += x);
        acts.h2.resize(n * h, 0.0);
        self.ln2
            .forward(be, &mut acts.h2, &mut acts.st2, &acts.x2, n);
        acts.e.resize(n * f, 0.0);
        acts.a.resize(n * f, 0.0);
        match arch.mlp {
            MlpKind::SwiGlu { fused } => {
                acts.g.resize(n * f, 0.0);
                if fused {
                    let mut buf = vec![0.0; n * 2 * f];
                    self.mlp_in[0].forward(be, &mut buf, &acts.h2, n);
                    split_halves(&mut acts.e, &mut acts.g, &buf, n, f);
                } else {
                    self.mlp_in[0].forward(be, &mut acts.e, &acts.h2, n);
                    self.mlp_in[1].forward(be, &mut acts.g, &acts.h2, n);
                }
                be.swiglu_fwd(&mut acts.a, &acts.e, &acts.g);
            }
            MlpKind::GeluTanh => {
                self.mlp_in[0].forward(be, &mut acts.e, &acts.h2, n);
                be.gelu_fwd(&mut acts.a, &acts.e);
            }
        }
        self.mlp_out.forward(be, out, &acts.a, n);
        out.iter_mut().zip(&acts.x2).for_each(|(y, x)| *y += x);
    }

    /// dx [N,H] (overwritten) from dout [N,H], the layer input x and its saved `acts`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        be: &dyn Backend,
        arch: &Arch,
        dx: &mut [f32],
        dout: &[f32],
        x: &[f32],
        acts: &Acts,
        ctx: &Ctx,
    ) {
        let n = ctx.n;
        let (h, qd, kd, f) = (arch.hidden, arch.q_dim(), arch.kv_dim(), arch.ffn);
        let AttnDims { nh, nkv, hd, .. } = ctx.dims;
        // MLP
        let mut da = vec![0.0; n * f];
        self.mlp_out
            .backward(be, Some(&mut da), false, dout, &acts.a, n);
        let mut dh2 = vec![0.0; n * h];
        match arch.mlp {
            MlpKind::SwiGlu { fused } => {
                let (mut de, mut dg) = (vec![0.0; n * f], vec![0.0; n * f]);
                be.swiglu_bwd(&mut de, &mut dg, &da, &acts.e, &acts.g);
                if fused {
                    let mut buf = vec![0.0; n * 2 * f];
                    merge_halves(&mut buf, &de, &dg, n, f);
                    self.mlp_in[0].backward(be, Some(&mut dh2), false, &buf, &acts.h2, n);
                } else {
                    self.mlp_in[0].backward(be, Some(&mut dh2), false, &de, &acts.h2, n);
                    self.mlp_in[1].backward(be, Some(&mut dh2), true, &dg, &acts.h2, n);
                }
            }
            MlpKind::GeluTanh => {
                let mut de = vec![0.0; n * f];
                be.gelu_bwd(&mut de, &da, &acts.e);
                self.mlp_in[0].backward(be, Some(&mut dh2), false, &de, &acts.h2, n);
            }
        }
        // residual 2: dx2 = dout + ln2ᵀ(dh2)
        let mut dx2 = vec![0.0; n * h];
        self.ln2
            .backward(be, &mut dx2, &dh2, &acts.x2, &acts.st2, n);
        dx2.iter_mut().zip(dout).for_each(|(a, b)| *a += b);
        // attention
        let mut datt = vec![0.0; n * qd];
        self.o
            .backward(be, Some(&mut datt), false, &dx2, &acts.att, n);
        let (mut dq, mut dk, mut dv) = (vec![0.0; n * qd], vec![0.0; n * kd], vec![0.0; n * kd]);
        let mask = ctx.mask(self.window);
        be.attention_bwd(
            &mut dq,
            &mut dk,
            &mut dv,
            &datt,
            &acts.q,
            &acts.k,
            &acts.v,
            &acts.attn_saved,
            &mask,
            ctx.dims,
            1.0 / (hd as f32).sqrt(),
        );
        if let (Positions::Rope { kind, .. }, Some(f)) = (arch.positions, &ctx.rope) {
            be.rope(&mut dq, &ctx.pos, n, nh, hd, f, kind, true);
            be.rope(&mut dk, &ctx.pos, n, nkv, hd, f, kind, true);
        }
        if let (Some(qn), Some(kn)) = (&mut self.q_norm, &mut self.k_norm) {
            let mut d = vec![0.0; n * qd];
            qn.backward(be, &mut d, &dq, &acts.q_pre, &acts.st_q, n * nh);
            dq = d;
            let mut d = vec![0.0; n * kd];
            kn.backward(be, &mut d, &dk, &acts.k_pre, &acts.st_k, n * nkv);
            dk = d;
        }
        let mut dh1 = vec![0.0; n * h];
        if self.qkv.len() == 3 {
            self.qkv[0].backward(be, Some(&mut dh1), false, &dq, &acts.h1, n);
            self.qkv[1].backward(be, Some(&mut dh1), true, &dk, &acts.h1, n);
            self.qkv[2].backward(be, Some(&mut dh1), true, &dv, &acts.h1, n);
        } else {
            let mut buf = vec![0.0; n * (qd + 2 * kd)];
            merge_qkv(arch, &mut buf, &dq, &dk, &dv, n);
            self.qkv[0].backward(be, Some(&mut dh1), false, &buf, &acts.h1, n);
        }
        // residual 1: dx = dx2 + ln1ᵀ(dh1)
        self.ln1.backward(be, dx, &dh1, x, &acts.st1, n);
        dx.iter_mut().zip(&dx2).for_each(|(a, b)| *a += b);
    }

    /// Peak f32 scratch `backward` allocates besides `Acts` for n tokens: da, de, dg [n,F]
    /// (+ the fused [gate; up] buffer), dh2, dx2, dh1 [n,H], datt, dq, dk, dv, the CPU
    /// attention backward's per-group copies of dq/dk/dv, the fused QKV buffer, Qwen3's
    /// norm grads, and a LoRA dropout's masked input and its gradient (`dropout`).
    pub fn backward_scratch_floats(arch: &Arch, n: f64, dropout: bool) -> f64 {
        let f = |x: usize| x as f64;
        let (h, q, kv, ffn) = (
            f(arch.hidden),
            f(arch.q_dim()),
            f(arch.kv_dim()),
            f(arch.ffn),
        );
        let mlp = match arch.mlp {
            MlpKind::SwiGlu { fused: true } => 5.0 * ffn,
            MlpKind::SwiGlu { fused: false } => 3.0 * ffn,
            MlpKind::GeluTanh => 2.0 * ffn,
        };
        let qkv = q + 2.0 * kv;
        let fused_qkv = if arch.qkv == QkvLayout::Separate {
            0.0
        } else {
            qkv
        };
        let qk_norm = if arch.qk_norm { q + kv } else { 0.0 };
        let widest = h.max(ffn).max(q);
        let dropout = if dropout { 2.0 * widest } else { 0.0 };
        n * (mlp + 3.0 * h + q + 2.0 * qkv + fused_qkv + qk_norm + dropout)
    }

    /// Every linear of the layer, in forward order.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.qkv
            .iter_mut()
            .chain(std::iter::once(&mut self.o))
            .chain(self.mlp_in.iter_mut())
            .chain(std::iter::once(&mut self.mlp_out))
    }
    pub fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.qkv
            .iter()
            .chain(std::iter::once(&self.o))
            .chain(self.mlp_in.iter())
            .chain(std::iter::once(&self.mlp_out))
    }
}
