//! Linear layers (nn.Linear convention, W [d_out, d_in]) with an optional LoRA adapter. A
//! frozen base weight is dense f32 or a `crate::quant::QuantLinear` (a 4-bit weight).

use crate::backend::Backend;
pub use crate::quant::QuantLinear;

pub enum LinearWeight {
    /// Row-major [d_out, d_in].
    Dense(Vec<f32>),
    Quant(Box<dyn QuantLinear>),
}

/// A LoRA adapter on one linear: A [r, d_in], B [d_out, r], scale s = alpha/r (rsLoRA alpha/√r).
pub struct LoraWeights {
    pub r: usize,
    pub scale: f32,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub grad_a: Vec<f32>,
    pub grad_b: Vec<f32>,
    /// Dropout probability on the adapter's input (PEFT `lora_dropout`).
    pub dropout: f32,
    /// Set by the model during a training forward/backward: the seed of this call's dropout mask
    /// (None: no dropout, e.g. inference). The backward regenerates the same mask from it.
    pub dropout_key: Option<u64>,
}

impl LoraWeights {
    pub fn new(
        r: usize,
        scale: f32,
        a: Vec<f32>,
        b: Vec<f32>,
        d_in: usize,
        d_out: usize,
    ) -> LoraWeights {
        LoraWeights {
            r,
            scale,
            a,
            b,
            grad_a: vec![0.0; r * d_in],
            grad_b: vec![0.0; d_out * r],
            dropout: 0.0,
            dropout_key: None,
        }
    }

    /// x ⊙ mask / (1 − p) with the mask drawn from `dropout_key` (None when no dropout applies).
    fn dropped(&self, x: &[f32]) -> Option<Vec<f32>> {
        let key = self.dropout_key?;
        if self.dropout <= 0.0 {
            return None;
        }
        let mut rng = crate::rng::SplitMix64(key);
        let keep = 1.0 / (1.0 - self.dropout);
        Some(
            x.iter()
                .map(|v| {
                    if (rng.uniform() + 1.0) * 0.5 >= self.dropout {
                        v * keep
                    } else {
                        0.0
                    }
                })
                .collect(),
        )
    }
}

pub struct Linear {
    /// Module name as in the checkpoint / PEFT (e.g. `model.layers.0.self_attn.q_proj`).
    pub name: String,
    pub d_in: usize,
    pub d_out: usize,
    pub weight: LinearWeight,
    pub bias: Option<Vec<f32>>,
    /// Full fine-tuning / modules_to_save gradients (allocated when trainable).
    pub grad_w: Option<Vec<f32>>,
    pub grad_b: Option<Vec<f32>>,
    pub lora: Option<LoraWeights>,
    /// Stored [in, out] in the checkpoint (GPT-2 Conv1D; PEFT fan_in_fan_out). Held transposed here.
    pub conv1d: bool,
}

impl Linear {
    pub fn dense(
        name: String,
        d_in: usize,
        d_out: usize,
        w: Vec<f32>,
        bias: Option<Vec<f32>>,
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

    /// Makes W (and b) trainable: allocates their gradients. Fails for quantized weights.
    pub fn set_trainable(&mut self) -> Result<(), String> {
        if matches!(self.weight, LinearWeight::Quant(_)) {
            return Err(format!(
                "{}: a quantized weight cannot be trained",
                self.name
            ));
        }
        self.grad_w = Some(vec![0.0; self.d_in * self.d_out]);
        self.grad_b = self.bias.as_ref().map(|b| vec![0.0; b.len()]);
        Ok(())
    }

    /// y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ.  y [n, d_out] (overwritten), x [n, d_in].
    pub fn forward(&self, be: &dyn Backend, y: &mut [f32], x: &[f32], n: usize) {
        let (di, dout) = (self.d_in, self.d_out);
        match &self.weight {
            LinearWeight::Dense(w) => be.matmul(y, x, w, n, dout, di, false, true, 0.0),
            LinearWeight::Quant(q) => q.matmul_xwt(y, x, n),
        }
        if let Some(b) = &self.bias {
            for row in y[..n * dout].chunks_mut(dout) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
        if let Some(l) = &self.lora {
            let xd = l.dropped(&x[..n * di]);
            be.lora_fwd(
                y,
                xd.as_deref().unwrap_or(x),
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
        dx: Option<&mut [f32]>,
        accumulate: bool,
        dy: &[f32],
        x: &[f32],
        n: usize,
    ) {
        let (di, dout) = (self.d_in, self.d_out);
        if let Some(gw) = &mut self.grad_w {
            be.matmul(gw, dy, x, dout, di, n, true, false, 1.0);
        }
        if let Some(gb) = &mut self.grad_b {
            for row in dy[..n * dout].chunks(dout) {
                gb.iter_mut().zip(row).for_each(|(g, d)| *g += d);
            }
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
                            dx[..n * di].iter_mut().for_each(|v| *v = 0.0);
                        }
                        q.matmul_dyw(dx, dy, n)
                    }
                }
                dx
            }
            None => {
                scratch = vec![0.0; if self.lora.is_some() { n * di } else { 0 }];
                &mut scratch[..]
            }
        };
        if let Some(l) = &mut self.lora {
            match l.dropped(&x[..n * di]) {
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
                Some(xd) => {
                    // x_d = x ⊙ mask/(1−p): dX gets dX_d ⊙ mask/(1−p) (same mask, same key).
                    let mut dxl = vec![0.0; n * di];
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
                    let keep = 1.0 / (1.0 - l.dropout);
                    let mut rng = crate::rng::SplitMix64(l.dropout_key.unwrap_or(0));
                    for (d, v) in dx[..n * di].iter_mut().zip(&dxl) {
                        if (rng.uniform() + 1.0) * 0.5 >= l.dropout {
                            *d += v * keep;
                        }
                    }
                }
            }
        }
    }

    /// Number of frozen base parameters.
    pub fn numel(&self) -> usize {
        self.d_in * self.d_out + self.bias.as_ref().map_or(0, |b| b.len())
    }
}
