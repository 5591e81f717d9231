//! Linear layers (nn.Linear convention, W [d_out, d_in]) with an optional LoRA adapter. A
//! frozen base weight is dense f32 or a `crate::quant::QuantLinear` (a 4-bit weight).

use crate::backend::{Backend, QuantWeight, Tensor};
pub use crate::quant::QuantLinear;

pub enum LinearWeight {
    /// Row-major [d_out, d_in].
    Dense(Tensor),
    Quant(QuantWeight),
}

/// A LoRA adapter on one linear: A [r, d_in], B [d_out, r], scale s = alpha/r (rsLoRA alpha/√r).
pub struct LoraWeights {
    pub r: usize,
    pub scale: f32,
    pub a: Tensor,
    pub b: Tensor,
    pub grad_a: Tensor,
    pub grad_b: Tensor,
    /// Dropout probability on the adapter's input (PEFT `lora_dropout`).
    pub dropout: f32,
    /// Set by the model during a training forward/backward: the seed of this call's dropout mask
    /// (None: no dropout, e.g. inference). The backward regenerates the same mask from it.
    pub dropout_key: Option<u64>,
}

impl LoraWeights {
    /// Adapter weights A [r, d_in], B [d_out, r] (host values, uploaded here) with zero grads.
    pub fn new(
        be: &dyn Backend,
        r: usize,
        scale: f32,
        a: &[f32],
        b: &[f32],
        d_in: usize,
        d_out: usize,
    ) -> LoraWeights {
        LoraWeights {
            r,
            scale,
            a: be.upload(a),
            b: be.upload(b),
            grad_a: be.zeros(r * d_in),
            grad_b: be.zeros(d_out * r),
            dropout: 0.0,
            dropout_key: None,
        }
    }

    /// The dropout key of this call, when dropout applies.
    fn dropout_key(&self) -> Option<u64> {
        self.dropout_key.filter(|_| self.dropout > 0.0)
    }
}

pub struct Linear {
    /// Module name as in the checkpoint / PEFT (e.g. `model.layers.0.self_attn.q_proj`).
    pub name: String,
    pub d_in: usize,
    pub d_out: usize,
    pub weight: LinearWeight,
    pub bias: Option<Tensor>,
    /// Full fine-tuning / modules_to_save gradients (allocated when trainable).
    pub grad_w: Option<Tensor>,
    pub grad_b: Option<Tensor>,
    pub lora: Option<LoraWeights>,
    /// Stored [in, out] in the checkpoint (GPT-2 Conv1D; PEFT fan_in_fan_out). Held transposed here.
    pub conv1d: bool,
}

impl Linear {
    pub fn dense(
        name: String,
        d_in: usize,
        d_out: usize,
        w: Tensor,
        bias: Option<Tensor>,
    ) -> Linear {
        Linear {
            name,
            d_in,
            d_out,
            weight: LinearWeight::Dense(w),
            bias,
            grad_w: None,
            grad_b: None,
            lora: None,
            conv1d: false,
        }
    }

    /// Makes W (and b) trainable: allocates their gradients (a 16-bit weight is widened to f32
    /// first). Fails for 4-bit weights.
    pub fn set_trainable(&mut self, be: &dyn Backend) -> Result<(), String> {
        if let LinearWeight::Quant(q) = &self.weight {
            match be.quant_dense(q) {
                Some(w) => self.weight = LinearWeight::Dense(w),
                None => {
                    return Err(format!(
                        "{}: a quantized weight cannot be trained",
                        self.name
                    ))
                }
            }
        }
        self.grad_w = Some(be.zeros(self.d_in * self.d_out));
        self.grad_b = self.bias.as_ref().map(|b| be.zeros(b.len()));
        Ok(())
    }

    /// y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ.  y [n, d_out] (overwritten), x [n, d_in].
    pub fn forward(&self, be: &dyn Backend, y: &mut Tensor, x: &Tensor, n: usize) {
        let (di, dout) = (self.d_in, self.d_out);
        match &self.weight {
            LinearWeight::Dense(w) => be.matmul(y, x, w, n, dout, di, false, true, 0.0),
            LinearWeight::Quant(q) => be.quant_matmul(y, x, q, n, false),
        }
        if let Some(b) = &self.bias {
            be.bias_add(y, b, n, dout);
        }
        if let Some(l) = &self.lora {
            let dropped = l.dropout_key().map(|key| {
                let mut xd = be.zeros(n * di);
                be.dropout(&mut xd, x, l.dropout, key, n * di, false);
                xd
            });
            be.lora_fwd(
                y,
                dropped.as_ref().unwrap_or(x),
                &l.a,
                &l.b,
                n,
                di,
                dout,
                l.r,
                l.scale,
            );
        }
    }

    /// From dy [n, d_out]: dx [n, d_in] (= when !accumulate, += otherwise) = dy·W + s·(dy·B)·A;
    /// grads: dW += dyᵀ·x, db += Σdy (when trainable), dA, dB (fused LoRA backward).
    pub fn backward(
        &mut self,
        be: &dyn Backend,
        dx: Option<&mut Tensor>,
        accumulate: bool,
        dy: &Tensor,
        x: &Tensor,
        n: usize,
    ) {
        let (di, dout) = (self.d_in, self.d_out);
        if let Some(gw) = &mut self.grad_w {
            be.matmul(gw, dy, x, dout, di, n, true, false, 1.0);
        }
        if let Some(gb) = &mut self.grad_b {
            be.bias_grad(gb, dy, n, dout);
        }
        let mut scratch;
        let dx = match dx {
            Some(dx) => {
                match &self.weight {
                    LinearWeight::Dense(w) => be.matmul(
                        dx,
                        dy,
                        w,
                        n,
                        di,
                        dout,
                        false,
                        false,
                        if accumulate { 1.0 } else { 0.0 },
                    ),
                    LinearWeight::Quant(q) => {
                        if !accumulate {
                            be.scale(dx, 0.0, n * di);
                        }
                        be.quant_matmul(dx, dy, q, n, true)
                    }
                }
                dx
            }
            None => {
                scratch = be.zeros(if self.lora.is_some() { n * di } else { 0 });
                &mut scratch
            }
        };
        if let Some(l) = &mut self.lora {
            match l.dropout_key() {
                None => be.lora_bwd(
                    dx,
                    &mut l.grad_a,
                    &mut l.grad_b,
                    dy,
                    x,
                    &l.a,
                    &l.b,
                    n,
                    di,
                    dout,
                    l.r,
                    l.scale,
                ),
                Some(key) => {
                    // x_d = x ⊙ mask/(1−p): dX gets dX_d ⊙ mask/(1−p) (same mask, same key).
                    let mut xd = be.zeros(n * di);
                    be.dropout(&mut xd, x, l.dropout, key, n * di, false);
                    let mut dxl = be.zeros(n * di);
                    be.lora_bwd(
                        &mut dxl,
                        &mut l.grad_a,
                        &mut l.grad_b,
                        dy,
                        &xd,
                        &l.a,
                        &l.b,
                        n,
                        di,
                        dout,
                        l.r,
                        l.scale,
                    );
                    be.dropout(dx, &dxl, l.dropout, key, n * di, true);
                }
            }
        }
    }

    /// Number of frozen base parameters.
    pub fn numel(&self) -> usize {
        self.d_in * self.d_out + self.bias.as_ref().map_or(0, |b| b.len())
    }
}
