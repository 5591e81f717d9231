//! A frozen 16-bit weight (bf16 or f16) held as the checkpoint stores it: half the memory of an
//! f32 copy. Every 16-bit value is exactly an f32, so a matmul widens W into one reused f32
//! scratch (one per thread, grown to the largest weight) and runs the CPU backend's GEMM on it:
//! results equal the f32 path bit for bit.
//! LoRA and QLoRA bases and inference load their layer linears this way
//! ([`crate::model::LoadOptions::keep_16bit`]); a weight made trainable is widened to f32 first.

use std::cell::RefCell;

use super::linear::QuantLinear;

/// How the 16 bits encode a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfKind {
    Bf16,
    F16,
}

impl HalfKind {
    pub fn to_f32(self, b: u16) -> f32 {
        match self {
            HalfKind::Bf16 => half::bf16::from_bits(b).to_f32(),
            HalfKind::F16 => half::f16::from_bits(b).to_f32(),
        }
    }
}

/// A 16-bit weight's raw values, borrowed ([`QuantLinear::half`]): W [d_out, d_in].
pub struct HalfBits<'a> {
    pub bits: &'a [u16],
    pub kind: HalfKind,
}

/// W [d_out, d_in] as 16-bit values.
pub struct Linear16 {
    bits: Vec<u16>,
    kind: HalfKind,
    d_in: usize,
    d_out: usize,
}

thread_local! {
    /// The widened W of the current matmul on this thread, reused by every 16-bit weight.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Linear16 {
    /// From little-endian stored bytes of W [d_out, d_in]; None when the length does not match.
    pub fn from_le_bytes(kind: HalfKind, bytes: &[u8], d_out: usize, d_in: usize) -> Option<Self> {
        if bytes.len() != 2 * d_out * d_in {
            return None;
        }
        let bits = bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        Some(Linear16 {
            bits,
            kind,
            d_in,
            d_out,
        })
    }

    /// W widened to f32 into this thread's scratch, then `f(W)`.
    fn with_f32<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            s.extend(self.bits.iter().map(|&b| self.kind.to_f32(b)));
            f(&s)
        })
    }
}

impl QuantLinear for Linear16 {
    fn d_in(&self) -> usize {
        self.d_in
    }
    fn d_out(&self) -> usize {
        self.d_out
    }
    fn matmul_xwt(&self, y: &mut [f32], x: &[f32], n: usize) {
        let (di, dout) = (self.d_in, self.d_out);
        self.with_f32(|w| crate::host_gemm::matmul(y, x, w, n, dout, di, false, true, 0.0))
    }
    fn matmul_dyw(&self, dx: &mut [f32], dy: &[f32], n: usize) {
        let (di, dout) = (self.d_in, self.d_out);
        self.with_f32(|w| crate::host_gemm::matmul(dx, dy, w, n, di, dout, false, false, 1.0))
    }
    fn half(&self) -> Option<HalfBits<'_>> {
        Some(HalfBits {
            bits: &self.bits,
            kind: self.kind,
        })
    }
    fn dense(&self) -> Option<Vec<f32>> {
        Some(self.bits.iter().map(|&b| self.kind.to_f32(b)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmuls_equal_the_f32_path_bit_for_bit() {
        let (n, di, dout) = (5, 7, 3);
        let mut r = crate::rng::Rng::new(3);
        let mut normal = || r.next_f32() * 2.0 - 1.0;
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            let w32: Vec<f32> = (0..di * dout).map(|_| normal()).collect();
            let bytes: Vec<u8> = w32
                .iter()
                .flat_map(|&v| match kind {
                    HalfKind::Bf16 => half::bf16::from_f32(v).to_le_bytes(),
                    HalfKind::F16 => half::f16::from_f32(v).to_le_bytes(),
                })
                .collect();
            let l = Linear16::from_le_bytes(kind, &bytes, dout, di).unwrap();
            let w = l.dense().unwrap();
            let x: Vec<f32> = (0..n * di).map(|_| normal()).collect();
            let dy: Vec<f32> = (0..n * dout).map(|_| normal()).collect();
            let (mut y, mut y32) = (vec![0.0; n * dout], vec![0.0; n * dout]);
            l.matmul_xwt(&mut y, &x, n);
            crate::backend::CpuBackend.matmul(&mut y32, &x, &w, n, dout, di, false, true, 0.0);
            assert_eq!(y, y32);
            let (mut dx, mut dx32) = (vec![1.0; n * di], vec![1.0; n * di]);
            l.matmul_dyw(&mut dx, &dy, n);
            crate::backend::CpuBackend.matmul(&mut dx32, &dy, &w, n, di, dout, false, false, 1.0);
            assert_eq!(dx, dx32);
            assert!(Linear16::from_le_bytes(kind, &bytes[2..], dout, di).is_none());
        }
    }

    /// A bf16 checkpoint loaded with `keep_16bit` holds its layer linears as 16-bit and trains
    /// (LoRA, then full fine-tuning after widening) to the same bits as its f32 load.
    #[test]
    fn a_16bit_base_trains_like_its_f32_load() {
        use crate::model::{lora, Batch, LinearWeight, LoadOptions, Model, TrainOptions};
        let d = tempfile::tempdir().unwrap();
        let src =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine/llama");
        crate::formats::safetensors::bf16_copy(&src, d.path()).unwrap();
        let load = |keep_16bit| {
            let opts = LoadOptions {
                keep_16bit,
                ..Default::default()
            };
            Model::load(d.path(), &opts).unwrap()
        };
        let (mut a, mut b) = (load(true), load(false));
        let held = |m: &mut Model| {
            m.linears_mut()
                .iter()
                .filter(|l| matches!(l.weight, LinearWeight::Quant(_)))
                .count()
        };
        let n_lin = a.linears_mut().len() - a.head.is_some() as usize;
        assert_eq!((held(&mut a), held(&mut b)), (n_lin, 0));
        let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 5 % 23) as u32 + 2).collect();
        let batch = Batch {
            b: 2,
            t: 9,
            labels: Some(ids.iter().map(|&i| i as i64).collect()),
            input_ids: ids,
            attention_mask: vec![1; 18],
            segments: None,
        };
        let cfg = lora::LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            targets: lora::Targets::AllLinear,
            use_rslora: false,
            modules_to_save: vec![],
            seed: 1,
        };
        let step = |m: &mut Model| {
            m.zero_grad();
            let loss = m.forward_backward(&batch, TrainOptions::default()).unwrap();
            let be = m.backend.clone();
            let grads: Vec<Vec<f32>> = m.params_mut().iter().map(|p| be.download(p.grad)).collect();
            (loss, grads)
        };
        for m in [&mut a, &mut b] {
            lora::apply(m, &cfg).unwrap();
        }
        assert_eq!(step(&mut a), step(&mut b));
        for m in [&mut a, &mut b] {
            lora::merge(m).unwrap();
            m.set_full_trainable().unwrap();
        }
        assert_eq!(held(&mut a), 0);
        assert_eq!(step(&mut a), step(&mut b));
    }
}
