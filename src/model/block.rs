//! One transformer layer, forward and backward side by side, for every family through `Arch`:
//! pre-norm attention (RoPE / ALiBi, MHA/GQA/MQA, fused or split QKV) and a SwiGLU, GeGLU or
//! GELU MLP, with Gemma 3's sandwich norms on both outputs when the model has them.

use super::arch::{Arch, MlpKind, NormKind, Positions, QkvLayout};
use super::linear::Linear;
use crate::backend::{AttnDims, AttnMask, Backend, RopeKind, RopeTables, Strided, Tensor};

/// A trainable-or-frozen tensor with its gradient (allocated when trainable).
pub struct Param {
    pub value: Tensor,
    pub grad: Option<Tensor>,
}

impl Param {
    pub fn frozen(value: Tensor) -> Param {
        Param { value, grad: None }
    }
    pub fn set_trainable(&mut self, be: &dyn Backend) {
        self.grad = Some(be.zeros(self.value.len()));
    }
}

/// Makes `t` a tensor of `len` elements of this backend, reusing it when it already is one
/// (its values are then stale: every caller overwrites them).
pub fn ensure(be: &dyn Backend, t: &mut Tensor, len: usize) {
    if t.len() != len || t.is_empty() {
        *t = be.zeros(len);
    }
}

/// [`ensure`] for an activation only the layer's ops read ([`Backend::activation`]: bf16 where
/// products are bf16).
fn ensure_act(be: &dyn Backend, t: &mut Tensor, rows: usize, cols: usize) {
    if t.len() != rows * cols || t.is_empty() {
        *t = be.activation(rows, cols);
    }
}

/// The whole of `src` into `dst` (same length).
pub fn copy_all(be: &dyn Backend, dst: &mut Tensor, src: &Tensor) {
    let len = src.len();
    be.copy2d(
        dst,
        Strided::rows(len, 0),
        src,
        Strided::rows(len, 0),
        1,
        len,
    );
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
    pub mean: Tensor,
    pub rstd: Tensor,
}

/// 1 + w (`NormKind::RmsPlusOne`'s scale), in f32 as transformers computes it.
fn plus_one(be: &dyn Backend, w: &Tensor) -> Tensor {
    let mut t = be.zeros(w.len());
    be.fill(&mut t, 1.0);
    be.add(&mut t, w, w.len());
    t
}

impl Norm {
    /// y [n,d], stats from x [n,d].
    pub fn forward(
        &self,
        be: &dyn Backend,
        y: &mut Tensor,
        st: &mut NormStats,
        x: &Tensor,
        n: usize,
    ) {
        let d = self.w.value.len();
        ensure(be, &mut st.rstd, n);
        match self.kind {
            NormKind::Rms => be.rmsnorm_fwd(y, &mut st.rstd, x, &self.w.value, n, d, self.eps),
            NormKind::RmsPlusOne => {
                let w = plus_one(be, &self.w.value);
                be.rmsnorm_fwd(y, &mut st.rstd, x, &w, n, d, self.eps)
            }
            NormKind::Layer => {
                ensure(be, &mut st.mean, n);
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
        dx: &mut Tensor,
        dy: &Tensor,
        x: &Tensor,
        st: &NormStats,
        n: usize,
    ) {
        let d = self.w.value.len();
        match self.kind {
            NormKind::Rms => be.rmsnorm_bwd(
                dx,
                self.w.grad.as_mut(),
                dy,
                x,
                &self.w.value,
                &st.rstd,
                n,
                d,
            ),
            // d(1 + w)/dw = 1: the gradient of the scale is the weight's.
            NormKind::RmsPlusOne => {
                let w = plus_one(be, &self.w.value);
                be.rmsnorm_bwd(dx, self.w.grad.as_mut(), dy, x, &w, &st.rstd, n, d)
            }
            NormKind::Layer => {
                let b = self.b.as_mut().expect("layernorm bias");
                be.layernorm_bwd(
                    dx,
                    self.w.grad.as_mut(),
                    b.grad.as_mut(),
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
    /// SwiGLU / GeGLU separate: [gate, up]; fused SwiGLU or GELU: [one].
    pub mlp_in: Vec<Linear>,
    pub mlp_out: Linear,
    /// Sandwich norms of the attention and MLP outputs (`Arch::sandwich_norms`, Gemma 3).
    pub post_attn_norm: Option<Norm>,
    pub post_mlp_norm: Option<Norm>,
    /// Sliding attention window of this layer (`Arch::window`).
    pub window: Option<usize>,
    /// Whether this layer rotates with `Ctx::rope_local` (`Arch::local_rope_at`).
    pub local_rope: bool,
}

/// Per-batch attention context shared by all layers, on the backend.
pub struct Ctx {
    pub n: usize,
    pub dims: AttnDims,
    /// [N] input ids, learned-position ids (`Positions::Learned` only).
    pub ids: Tensor<i32>,
    pub pos_ids: Option<Tensor<i32>>,
    pub valid: Tensor<u8>,
    /// [N] packed-example index, −1 on padding.
    pub segment: Tensor<i32>,
    /// ALiBi (slopes [NH], key positions [N]) and whether the positions are relative.
    pub alibi: Option<(Tensor, Tensor)>,
    pub alibi_relative: bool,
    /// This forward's rotary tables (`Model::rope_freqs` at `pos`); None without RoPE.
    pub rope: Option<RopeTables>,
    /// GLM 2D positions: the block-position tables (`Positions::Glm2d`).
    pub rope_block: Option<RopeTables>,
    /// [B] bidirectional prefix per row (`AttnMask::prefix`; GLM: the slot of `<sop>`).
    pub prefix: Option<Tensor<i32>>,
    /// The query's own tables when they differ from `rope` (Qwen v1 logn, `Model::long_rope`).
    pub rope_q: Option<RopeTables>,
    /// The tables of the layers with `Layer::local_rope` (`Arch::local_rope`).
    pub rope_local: Option<RopeTables>,
}

impl Ctx {
    /// The rotary tables of a layer (`local`: `Layer::local_rope`).
    pub fn rope_for(&self, local: bool) -> Option<&RopeTables> {
        if local {
            self.rope_local.as_ref()
        } else {
            self.rope.as_ref()
        }
    }

    /// The attention mask of a layer with sliding window `window` (None: full causal).
    pub fn mask(&self, window: Option<usize>) -> AttnMask<'_> {
        AttnMask {
            valid: &self.valid,
            segment: &self.segment,
            alibi: self.alibi.as_ref().map(|(s, p)| (s, p)),
            alibi_relative: self.alibi_relative,
            window,
            prefix: self.prefix.as_ref(),
        }
    }
}

/// Rotary positions on x [n, heads·hd] in place (`inverse`: the transpose, for the backward).
/// GLM 2D (`Positions::Glm2d`): the first half of each head rotated by `rope` (position ids),
/// the second half by `block` (block position ids), both in rotate_half pairs.
#[allow(clippy::too_many_arguments)]
pub fn apply_rope(
    be: &dyn Backend,
    arch: &Arch,
    x: &mut Tensor,
    heads: usize,
    n: usize,
    rope: Option<&RopeTables>,
    block: Option<&RopeTables>,
    inverse: bool,
) {
    let hd = arch.head_dim;
    match (arch.positions, rope) {
        (Positions::Rope { kind, .. }, Some(tab)) => be.rope(x, tab, n, heads, hd, kind, inverse),
        (Positions::Glm2d { .. }, Some(tab)) => {
            be.rope(x, tab, n, heads, hd, RopeKind::Half, inverse);
            if let Some(bt) = block {
                let (half, rows) = (hd / 2, n * heads);
                let mut tmp = be.zeros_like(x, rows * half);
                let (whole, part) = (Strided::rows(hd, half), Strided::rows(half, 0));
                be.copy2d(&mut tmp, part, x, whole, rows, half);
                be.rope(&mut tmp, bt, n, heads, half, RopeKind::Half, inverse);
                be.copy2d(x, whole, &tmp, part, rows, half);
            }
        }
        _ => {}
    }
}

/// y[..len] += s·x[..len] (the GLM block's scaled residual).
fn add_scaled(be: &dyn Backend, y: &mut Tensor, x: &Tensor, s: f32, len: usize) {
    let mut t = be.zeros(len);
    be.copy2d(
        &mut t,
        Strided::rows(len, 0),
        x,
        Strided::rows(len, 0),
        1,
        len,
    );
    be.scale(&mut t, s, len);
    be.add(y, &t, len);
}

/// Activations a layer keeps for its backward.
#[derive(Default)]
pub struct Acts {
    pub h1: Tensor,
    pub st1: NormStats,
    /// q and k before their per-head norm, and its stats (`Arch::qk_norm` only).
    pub q_pre: Tensor,
    pub k_pre: Tensor,
    pub st_q: NormStats,
    pub st_k: NormStats,
    /// Fused QKV output (before split) is not kept; q/k/v after RoPE are.
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// What the backend's attention saves for its backward (CPU: logsumexp).
    pub attn_saved: Tensor,
    pub att: Tensor,
    /// Attention (o) and MLP outputs before their sandwich norms, and the norms' stats
    /// (`Arch::sandwich_norms` only).
    pub o_out: Tensor,
    pub st_o: NormStats,
    pub m_out: Tensor,
    pub st_m: NormStats,
    pub x2: Tensor,
    pub h2: Tensor,
    pub st2: NormStats,
    /// SwiGLU / GeGLU: e = gate, g = up; GELU: e = fc output, g unused.
    pub e: Tensor,
    pub g: Tensor,
    pub a: Tensor,
}

impl Acts {
    /// f32 values `Layer::forward` leaves in `Acts` for n = B·T tokens (the memory plan's
    /// per-layer term; `n` is f64 so an absurd batch saturates instead of overflowing):
    /// h1, x2, h2 [n,H]; q, att [n,NH·HD]; k, v [n,KV·HD]; the attention's saved buffer
    /// (`Backend::attention_saved_len`, the CPU's logsumexp [B,T,NH], never the [B,NH,T,T]
    /// probabilities); e, a (and g for SwiGLU / GeGLU) [n,F]; norm stats; Qwen3's pre-norm q/k;
    /// the sandwich norms' inputs [n,H] and stats. `bf16`: h1, h2, q, k, v, att, e, g, a are
    /// bf16 ([`Backend::activation`]), half a float each.
    pub fn floats(arch: &Arch, n: f64, bf16: bool) -> f64 {
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
        let gated = if matches!(arch.mlp, MlpKind::SwiGlu { .. } | MlpKind::GeGlu) {
            1.0
        } else {
            0.0
        };
        let qk_norm = if arch.qk_norm {
            q + kv + nh + f(arch.kv_heads)
        } else {
            0.0
        };
        let sandwich = if arch.sandwich_norms {
            2.0 * h + 2.0 * stats
        } else {
            0.0
        };
        let act = if bf16 { 0.5 } else { 1.0 };
        n * (h + nh + 2.0 * stats + qk_norm)
            + n * act * (2.0 * h + 2.0 * q + 2.0 * kv + (2.0 + gated) * ffn)
            + n * sandwich
    }
}

/// The pieces of a fused QKV row [q+2kv] as (columns, offset, width) copies, per row of
/// `rows` rows: per-head layout [h: q|k|v] has n·heads rows of 3·hd; otherwise [q | k | v].
fn qkv_pieces(arch: &Arch, n: usize) -> (usize, usize, [(usize, usize); 3]) {
    let (qd, kd, hd) = (arch.q_dim(), arch.kv_dim(), arch.head_dim);
    match arch.qkv {
        QkvLayout::PerHead => (n * arch.heads, 3 * hd, [(0, hd), (hd, hd), (2 * hd, hd)]),
        _ => (n, qd + 2 * kd, [(0, qd), (qd, kd), (qd + kd, kd)]),
    }
}

/// Splits a fused QKV output [n, q+2kv] into q [n, NH·HD], k, v [n, KV·HD].
fn split_qkv(be: &dyn Backend, arch: &Arch, qkv: [&mut Tensor; 3], buf: &Tensor, n: usize) {
    let (rows, w, pieces) = qkv_pieces(arch, n);
    for (dst, (off, cols)) in qkv.into_iter().zip(pieces) {
        be.copy2d(
            dst,
            Strided::rows(cols, 0),
            buf,
            Strided::rows(w, off),
            rows,
            cols,
        );
    }
}

/// Inverse of `split_qkv`: buf [n, q+2kv] from dq, dk, dv.
fn merge_qkv(be: &dyn Backend, arch: &Arch, buf: &mut Tensor, qkv: [&Tensor; 3], n: usize) {
    let (rows, w, pieces) = qkv_pieces(arch, n);
    for (src, (off, cols)) in qkv.into_iter().zip(pieces) {
        be.copy2d(
            buf,
            Strided::rows(w, off),
            src,
            Strided::rows(cols, 0),
            rows,
            cols,
        );
    }
}

/// Splits rows of [n, 2f] into first/second halves (ChatGLM dense_h_to_4h = [gate; up]).
fn split_halves(
    be: &dyn Backend,
    a: &mut Tensor,
    b: &mut Tensor,
    buf: &Tensor,
    n: usize,
    f: usize,
) {
    be.copy2d(a, Strided::rows(f, 0), buf, Strided::rows(2 * f, 0), n, f);
    be.copy2d(b, Strided::rows(f, 0), buf, Strided::rows(2 * f, f), n, f);
}
fn merge_halves(be: &dyn Backend, buf: &mut Tensor, a: &Tensor, b: &Tensor, n: usize, f: usize) {
    be.copy2d(buf, Strided::rows(2 * f, 0), a, Strided::rows(f, 0), n, f);
    be.copy2d(buf, Strided::rows(2 * f, f), b, Strided::rows(f, 0), n, f);
}

impl Layer {
    /// out [N,H] = layer(x [N,H]); fills `acts` for the backward.
    pub fn forward(
        &self,
        be: &dyn Backend,
        arch: &Arch,
        out: &mut Tensor,
        acts: &mut Acts,
        x: &Tensor,
        ctx: &Ctx,
    ) {
        let n = ctx.n;
        // (Qwen v1's logn query tables are never combined with Gemma's local layers.)
        let rope_q = ctx.rope_q.as_ref().filter(|_| !self.local_rope);
        self.qkv_fwd(
            be,
            arch,
            acts,
            x,
            ctx.rope_for(self.local_rope),
            rope_q,
            ctx.rope_block.as_ref(),
            n,
        );
        ensure(be, &mut acts.attn_saved, be.attention_saved_len(ctx.dims));
        ensure_act(be, &mut acts.att, n, arch.q_dim());
        let mask = ctx.mask(self.window);
        be.attention_fwd(
            &mut acts.att,
            &mut acts.attn_saved,
            &acts.q,
            &acts.k,
            &acts.v,
            &mask,
            ctx.dims,
            arch.attn_scale(),
        );
        self.post_attn_fwd(be, arch, out, acts, x, n);
    }

    /// First half: h1 = ln1(x), q/k/v projections (split from a fused output), the per-head
    /// q/k norm if any, RoPE with the tables `rope` of these n tokens (the query with `rope_q`
    /// when given; GLM's second half with `block`).
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_fwd(
        &self,
        be: &dyn Backend,
        arch: &Arch,
        acts: &mut Acts,
        x: &Tensor,
        rope: Option<&RopeTables>,
        rope_q: Option<&RopeTables>,
        block: Option<&RopeTables>,
        n: usize,
    ) {
        let (h, qd, kd) = (arch.hidden, arch.q_dim(), arch.kv_dim());
        ensure_act(be, &mut acts.h1, n, h);
        self.ln1.forward(be, &mut acts.h1, &mut acts.st1, x, n);
        ensure_act(be, &mut acts.q, n, qd);
        ensure_act(be, &mut acts.k, n, kd);
        ensure_act(be, &mut acts.v, n, kd);
        if self.qkv.len() == 3 {
            self.qkv[0].forward(be, &mut acts.q, &acts.h1, n);
            self.qkv[1].forward(be, &mut acts.k, &acts.h1, n);
            self.qkv[2].forward(be, &mut acts.v, &acts.h1, n);
        } else {
            let mut buf = be.activation(n, qd + 2 * kd);
            self.qkv[0].forward(be, &mut buf, &acts.h1, n);
            split_qkv(be, arch, [&mut acts.q, &mut acts.k, &mut acts.v], &buf, n);
        }
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            std::mem::swap(&mut acts.q, &mut acts.q_pre);
            std::mem::swap(&mut acts.k, &mut acts.k_pre);
            ensure_act(be, &mut acts.q, n, qd);
            ensure_act(be, &mut acts.k, n, kd);
            qn.forward(be, &mut acts.q, &mut acts.st_q, &acts.q_pre, n * arch.heads);
            kn.forward(
                be,
                &mut acts.k,
                &mut acts.st_k,
                &acts.k_pre,
                n * arch.kv_heads,
            );
        }
        let q_tab = rope_q.or(rope);
        apply_rope(be, arch, &mut acts.q, arch.heads, n, q_tab, block, false);
        apply_rope(be, arch, &mut acts.k, arch.kv_heads, n, rope, block, false);
    }

    /// Second half, from the attention output `acts.att` [n, NH·HD]: x2 = x + o(att);
    /// out = x2 + mlp(ln2(x2)), each added output through its sandwich norm if any.
    /// GLM (`Arch::glm_alpha`): x2 = α·h1 + o(att); out = α·h2 + mlp(h2), h2 = ln2(x2).
    pub fn post_attn_fwd(
        &self,
        be: &dyn Backend,
        arch: &Arch,
        out: &mut Tensor,
        acts: &mut Acts,
        x: &Tensor,
        n: usize,
    ) {
        let (h, f) = (arch.hidden, arch.ffn);
        ensure(be, &mut acts.x2, n * h);
        match &self.post_attn_norm {
            Some(pn) => {
                ensure(be, &mut acts.o_out, n * h);
                self.o.forward(be, &mut acts.o_out, &acts.att, n);
                pn.forward(be, &mut acts.x2, &mut acts.st_o, &acts.o_out, n);
            }
            None => self.o.forward(be, &mut acts.x2, &acts.att, n),
        }
        match arch.glm_alpha() {
            Some(a) => add_scaled(be, &mut acts.x2, &acts.h1, a, n * h),
            None => be.add(&mut acts.x2, x, n * h),
        }
        ensure_act(be, &mut acts.h2, n, h);
        self.ln2
            .forward(be, &mut acts.h2, &mut acts.st2, &acts.x2, n);
        ensure_act(be, &mut acts.e, n, f);
        ensure_act(be, &mut acts.a, n, f);
        match arch.mlp {
            MlpKind::SwiGlu { .. } | MlpKind::GeGlu => {
                ensure_act(be, &mut acts.g, n, f);
                if arch.mlp == (MlpKind::SwiGlu { fused: true }) {
                    let mut buf = be.activation(n, 2 * f);
                    self.mlp_in[0].forward(be, &mut buf, &acts.h2, n);
                    split_halves(be, &mut acts.e, &mut acts.g, &buf, n, f);
                } else {
                    self.mlp_in[0].forward(be, &mut acts.e, &acts.h2, n);
                    self.mlp_in[1].forward(be, &mut acts.g, &acts.h2, n);
                }
                if arch.mlp == MlpKind::GeGlu {
                    be.geglu_fwd(&mut acts.a, &acts.e, &acts.g, n * f);
                } else {
                    be.swiglu_fwd(&mut acts.a, &acts.e, &acts.g, n * f);
                }
            }
            MlpKind::GeluTanh => {
                self.mlp_in[0].forward(be, &mut acts.e, &acts.h2, n);
                be.gelu_fwd(&mut acts.a, &acts.e, n * f);
            }
        }
        match &self.post_mlp_norm {
            Some(pn) => {
                ensure(be, &mut acts.m_out, n * h);
                self.mlp_out.forward(be, &mut acts.m_out, &acts.a, n);
                pn.forward(be, out, &mut acts.st_m, &acts.m_out, n);
            }
            None => self.mlp_out.forward(be, out, &acts.a, n),
        }
        match arch.glm_alpha() {
            Some(a) => add_scaled(be, out, &acts.h2, a, n * h),
            None => be.add(out, &acts.x2, n * h),
        }
    }

    /// dx [N,H] (overwritten) from dout [N,H], the layer input x and its saved `acts`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        be: &dyn Backend,
        arch: &Arch,
        dx: &mut Tensor,
        dout: &Tensor,
        x: &Tensor,
        acts: &Acts,
        ctx: &Ctx,
    ) {
        let n = ctx.n;
        let (h, qd, kd, f) = (arch.hidden, arch.q_dim(), arch.kv_dim(), arch.ffn);
        let AttnDims { nh, nkv, .. } = ctx.dims;
        // MLP (through its sandwich norm)
        let mut da = be.activation(n, f);
        let dm = match &mut self.post_mlp_norm {
            Some(pn) => {
                let mut d = be.zeros(n * h);
                pn.backward(be, &mut d, dout, &acts.m_out, &acts.st_m, n);
                Some(d)
            }
            None => None,
        };
        self.mlp_out.backward(
            be,
            Some(&mut da),
            false,
            dm.as_ref().unwrap_or(dout),
            &acts.a,
            n,
        );
        drop(dm);
        let mut dh2 = be.zeros(n * h);
        match arch.mlp {
            MlpKind::SwiGlu { .. } | MlpKind::GeGlu => {
                let (mut de, mut dg) = (be.activation(n, f), be.activation(n, f));
                if arch.mlp == MlpKind::GeGlu {
                    be.geglu_bwd(&mut de, &mut dg, &da, &acts.e, &acts.g, n * f);
                } else {
                    be.swiglu_bwd(&mut de, &mut dg, &da, &acts.e, &acts.g, n * f);
                }
                if arch.mlp == (MlpKind::SwiGlu { fused: true }) {
                    let mut buf = be.activation(n, 2 * f);
                    merge_halves(be, &mut buf, &de, &dg, n, f);
                    self.mlp_in[0].backward(be, Some(&mut dh2), false, &buf, &acts.h2, n);
                } else {
                    self.mlp_in[0].backward(be, Some(&mut dh2), false, &de, &acts.h2, n);
                    self.mlp_in[1].backward(be, Some(&mut dh2), true, &dg, &acts.h2, n);
                }
            }
            MlpKind::GeluTanh => {
                let mut de = be.activation(n, f);
                be.gelu_bwd(&mut de, &da, &acts.e, n * f);
                self.mlp_in[0].backward(be, Some(&mut dh2), false, &de, &acts.h2, n);
            }
        }
        // residual 2: dx2 = dout + ln2ᵀ(dh2); GLM: dx2 = ln2ᵀ(dh2 + α·dout)
        let alpha = arch.glm_alpha();
        if let Some(a) = alpha {
            add_scaled(be, &mut dh2, dout, a, n * h);
        }
        let mut dx2 = be.zeros(n * h);
        self.ln2
            .backward(be, &mut dx2, &dh2, &acts.x2, &acts.st2, n);
        if alpha.is_none() {
            be.add(&mut dx2, dout, n * h);
        }
        // attention (through its sandwich norm)
        let mut datt = be.activation(n, qd);
        let d_o = match &mut self.post_attn_norm {
            Some(pn) => {
                let mut d = be.zeros(n * h);
                pn.backward(be, &mut d, &dx2, &acts.o_out, &acts.st_o, n);
                Some(d)
            }
            None => None,
        };
        self.o.backward(
            be,
            Some(&mut datt),
            false,
            d_o.as_ref().unwrap_or(&dx2),
            &acts.att,
            n,
        );
        drop(d_o);
        let (mut dq, mut dk, mut dv) = (be.zeros(n * qd), be.zeros(n * kd), be.zeros(n * kd));
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
            arch.attn_scale(),
        );
        let (rope, block) = (ctx.rope_for(self.local_rope), ctx.rope_block.as_ref());
        apply_rope(be, arch, &mut dq, nh, n, rope, block, true);
        apply_rope(be, arch, &mut dk, nkv, n, rope, block, true);
        if let (Some(qn), Some(kn)) = (&mut self.q_norm, &mut self.k_norm) {
            let mut d = be.zeros(n * qd);
            qn.backward(be, &mut d, &dq, &acts.q_pre, &acts.st_q, n * nh);
            dq = d;
            let mut d = be.zeros(n * kd);
            kn.backward(be, &mut d, &dk, &acts.k_pre, &acts.st_k, n * nkv);
            dk = d;
        }
        let mut dh1 = be.zeros(n * h);
        if self.qkv.len() == 3 {
            self.qkv[0].backward(be, Some(&mut dh1), false, &dq, &acts.h1, n);
            self.qkv[1].backward(be, Some(&mut dh1), true, &dk, &acts.h1, n);
            self.qkv[2].backward(be, Some(&mut dh1), true, &dv, &acts.h1, n);
        } else {
            let mut buf = be.zeros(n * (qd + 2 * kd));
            merge_qkv(be, arch, &mut buf, [&dq, &dk, &dv], n);
            self.qkv[0].backward(be, Some(&mut dh1), false, &buf, &acts.h1, n);
        }
        // residual 1: dx = dx2 + ln1ᵀ(dh1); GLM: dx = ln1ᵀ(dh1 + α·dx2)
        if let Some(a) = alpha {
            add_scaled(be, &mut dh1, &dx2, a, n * h);
        }
        self.ln1.backward(be, dx, &dh1, x, &acts.st1, n);
        if alpha.is_none() {
            be.add(dx, &dx2, n * h);
        }
    }

    /// Peak f32 scratch `backward` allocates besides `Acts` for n tokens: da, de, dg [n,F]
    /// (+ the fused [gate; up] buffer), dh2, dx2, dh1 [n,H], datt, dq, dk, dv, the CPU
    /// attention backward's per-group copies of dq/dk/dv, the fused QKV buffer, Qwen3's
    /// norm grads, the sandwich norms' input gradients, and a LoRA dropout's masked input and its
    /// gradient (`dropout`). `bf16`: the [n,F] gradients and datt are bf16
    /// ([`Backend::activation`]), half a float each.
    pub fn backward_scratch_floats(arch: &Arch, n: f64, dropout: bool, bf16: bool) -> f64 {
        let f = |x: usize| x as f64;
        let (h, q, kv, ffn) = (
            f(arch.hidden),
            f(arch.q_dim()),
            f(arch.kv_dim()),
            f(arch.ffn),
        );
        let act = if bf16 { 0.5 } else { 1.0 };
        let mlp = act
            * match arch.mlp {
                MlpKind::SwiGlu { fused: true } => 5.0 * ffn,
                MlpKind::SwiGlu { fused: false } | MlpKind::GeGlu => 3.0 * ffn,
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
        let sandwich = if arch.sandwich_norms { 2.0 * h } else { 0.0 };
        let glm = if arch.glm_alpha().is_some() { h } else { 0.0 };
        n * (mlp + 3.0 * h + act * q + 2.0 * qkv + fused_qkv + qk_norm + dropout + sandwich + glm)
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
