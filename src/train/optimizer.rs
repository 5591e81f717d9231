//! The optimizer a training run holds: one kind ([`crate::optim`]'s update rules), its
//! hyper-parameters, and a state per parameter tensor on the parameters' backend; global-norm
//! gradient clipping; and the state's checkpoint file (`optimizer_state.rs`).

use crate::backend::{Adam8State, Backend, Tensor};
use crate::optim::adamw::AdamwScalars;
use crate::optim::adamw8bit::{BnbScalars, State8};
use crate::optim::{OptimConfig, OptimKind};
use std::sync::Arc;

/// State of one parameter tensor, on the backend of its parameter.
pub enum ParamState {
    /// torch AdamW: exp_avg, exp_avg_sq
    F32 { m: Tensor, v: Tensor },
    /// bnb 32-bit state of a small tensor in an 8-bit optimizer
    Bnb32 { m: Tensor, v: Tensor },
    /// bnb blockwise 8-bit state
    Q8(Adam8State),
}

impl ParamState {
    pub fn len(&self) -> usize {
        match self {
            ParamState::F32 { m, .. } | ParamState::Bnb32 { m, .. } => m.len(),
            ParamState::Q8(s) => s.m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of optimizer state (for memory planning).
    pub fn bytes(&self) -> usize {
        match self {
            ParamState::F32 { m, .. } | ParamState::Bnb32 { m, .. } => 8 * m.len(),
            ParamState::Q8(s) => 2 * s.m.len() + 4 * (s.absmax_m.len() + s.absmax_v.len()),
        }
    }

    /// The 8-bit state from its host form.
    pub fn q8(be: &dyn Backend, s: &State8) -> ParamState {
        ParamState::Q8(Adam8State {
            m: be.upload_u8(&s.m),
            v: be.upload_u8(&s.v),
            absmax_m: be.upload(&s.absmax_m),
            absmax_v: be.upload(&s.absmax_v),
        })
    }
}

/// AdamW family optimizer over a fixed list of parameter tensors.
pub struct Optimizer {
    pub kind: OptimKind,
    pub config: OptimConfig,
    /// Steps taken so far (the next step is `step + 1`).
    pub step: u64,
    pub states: Vec<ParamState>,
    /// Where the states live (the parameters' backend).
    pub backend: Arc<dyn Backend>,
}

impl Optimizer {
    /// Zero state for tensors of `param_sizes` elements.
    pub fn new(
        backend: Arc<dyn Backend>,
        kind: OptimKind,
        config: &OptimConfig,
        param_sizes: &[usize],
    ) -> Optimizer {
        let be = &*backend;
        let states = param_sizes
            .iter()
            .map(|&n| {
                if !kind.is_8bit() {
                    ParamState::F32 {
                        m: be.zeros(n),
                        v: be.zeros(n),
                    }
                } else if n < config.min_8bit_size {
                    ParamState::Bnb32 {
                        m: be.zeros(n),
                        v: be.zeros(n),
                    }
                } else {
                    ParamState::q8(be, &State8::zeros(n))
                }
            })
            .collect();
        Optimizer {
            kind,
            config: config.clone(),
            step: 0,
            states,
            backend,
        }
    }

    /// Bytes of all optimizer state.
    pub fn state_bytes(&self) -> usize {
        self.states.iter().map(|s| s.bytes()).sum()
    }

    /// One update of every tensor with learning rate `lr` (the scheduler's value for this step).
    pub fn step(&mut self, params: &mut [&mut Tensor], grads: &[&Tensor], lr: f64) {
        assert_eq!(
            params.len(),
            self.states.len(),
            "one params tensor per state"
        );
        assert_eq!(grads.len(), self.states.len(), "one grads tensor per state");
        self.step += 1;
        let c = &self.config;
        let be = &*self.backend;
        let torch = AdamwScalars::new(lr, c.betas, c.eps, c.weight_decay, self.step);
        let bnb = BnbScalars::new(lr, c.betas, c.eps, c.weight_decay, self.step);
        for ((p, g), st) in params.iter_mut().zip(grads).zip(self.states.iter_mut()) {
            assert_eq!(p.len(), st.len(), "param length");
            assert_eq!(g.len(), st.len(), "grad length");
            match st {
                ParamState::F32 { m, v } => be.adamw(p, m, v, g, &torch, c.weight_decay != 0.0),
                ParamState::Bnb32 { m, v } => be.bnb_adam32(p, m, v, g, &bnb),
                ParamState::Q8(s) => be.adamw8bit(p, s, g, &bnb),
            }
        }
    }
}

/// `torch.nn.utils.clip_grad_norm_` over all gradients (L2, error_if_nonfinite off), on the
/// backend without a host synchronization:
///
/// total = ‖(‖g_1‖, …, ‖g_k‖)‖₂;  coef = min(max_norm / (total + 1e-6), 1);  g ← g·coef.
/// Per-tensor norms come from [`Backend::norms_into`] (the CPU accumulates in f64 and rounds to
/// f32 per tensor; torch sums in f32 in its own order, so the total agrees to about 1e-7
/// relative, not bit for bit).
///
/// Writes out = [coef, total] (out: [>= 2]); with `max_norm`, the gradients are scaled in place.
pub fn clip_grads(
    be: &dyn Backend,
    out: &mut Tensor,
    grads: &mut [&mut Tensor],
    max_norm: Option<f32>,
) {
    let k = grads.len();
    let mut norms = be.zeros(k);
    let views: Vec<&Tensor> = grads.iter().map(|g| &**g).collect();
    be.norms_into(&mut norms, &views);
    be.clip_coef(out, &norms, k, max_norm);
    if max_norm.is_some() {
        for g in grads.iter_mut() {
            let n = g.len();
            be.scale_by(g, out, n);
        }
    }
}

/// [`clip_grads`] with the total norm read back (one host synchronization).
pub fn clip_grad_norm(be: &dyn Backend, grads: &mut [&mut Tensor], max_norm: Option<f32>) -> f32 {
    let mut out = be.zeros(2);
    clip_grads(be, &mut out, grads, max_norm);
    be.download(&out)[1]
}
