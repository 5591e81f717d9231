//! Non-finite weights (NaN, ±inf): merge, generate, evaluate and export refuse them, naming
//! the tensor, instead of passing a broken model along with exit 0. One check for every
//! consumer: on tensors in memory ([`check_finite`]), a model dir ([`check_finite_dir`]) or
//! one safetensors file ([`check_finite_file`]). Only float tensors are looked at (4-bit
//! packed bytes are codes, their absmax scales are f32 and are checked).

use std::path::Path;

use safetensors::Dtype;

use crate::formats::safetensors::read_dir;
use crate::formats::{FormatError, Result, Tensor, Tensors};

/// The first non-finite element of a float tensor: (index, value as text), by bit pattern
/// (no decoding pass: an all-ones exponent is inf or NaN in every IEEE float).
pub fn first_non_finite(t: &Tensor) -> Option<(usize, &'static str)> {
    let b = t.bytes();
    let kind = |nan: bool, neg: bool| match (nan, neg) {
        (true, _) => "NaN",
        (false, false) => "inf",
        (false, true) => "-inf",
    };
    match t.dtype {
        Dtype::F32 => b.chunks_exact(4).enumerate().find_map(|(i, c)| {
            let x = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            (x & 0x7f80_0000 == 0x7f80_0000).then(|| (i, kind(x & 0x007f_ffff != 0, x >> 31 == 1)))
        }),
        Dtype::BF16 => b.chunks_exact(2).enumerate().find_map(|(i, c)| {
            let x = u16::from_le_bytes([c[0], c[1]]);
            (x & 0x7f80 == 0x7f80).then(|| (i, kind(x & 0x007f != 0, x >> 15 == 1)))
        }),
        Dtype::F16 => b.chunks_exact(2).enumerate().find_map(|(i, c)| {
            let x = u16::from_le_bytes([c[0], c[1]]);
            (x & 0x7c00 == 0x7c00).then(|| (i, kind(x & 0x03ff != 0, x >> 15 == 1)))
        }),
        Dtype::F64 => b.chunks_exact(8).enumerate().find_map(|(i, c)| {
            let x = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            (x & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000)
                .then(|| (i, kind(x & 0x000f_ffff_ffff_ffff != 0, x >> 63 == 1)))
        }),
        _ => None,
    }
}

/// An error naming the first tensor (in file order) that holds a NaN or an infinity.
/// `origin` says where the tensors come from (a dir, a file, "the merged model").
pub fn check_finite(tensors: &Tensors, origin: &str) -> Result<()> {
    for (name, t) in tensors {
        if let Some((i, what)) = first_non_finite(t) {
            return Err(FormatError::NonFinite {
                origin: origin.to_string(),
                tensor: name.clone(),
                index: i,
                what,
            });
        }
    }
    Ok(())
}

/// [`check_finite`] on a model dir's weights (`model.safetensors` or shards).
pub fn check_finite_dir(dir: &Path) -> Result<()> {
    check_finite(&read_dir(dir)?, &dir.display().to_string())
}

/// [`check_finite`] on one safetensors file (e.g. `adapter_model.safetensors`).
pub fn check_finite_file(path: &Path) -> Result<()> {
    let tensors = crate::formats::peft::read_any(path)?;
    check_finite(&tensors, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors(dtype: Dtype, values: &[f32]) -> Tensors {
        let mut m = Tensors::new();
        m.insert(
            "ok".into(),
            Tensor::from_f32(dtype, vec![2], &[1.0, -2.0]).unwrap(),
        );
        m.insert(
            "layers.0.w".into(),
            Tensor::from_f32(dtype, vec![values.len()], values).unwrap(),
        );
        m
    }

    #[test]
    fn names_the_tensor_and_element_in_every_float_dtype() {
        for dt in [Dtype::F32, Dtype::BF16, Dtype::F16, Dtype::F64] {
            let t = if dt == Dtype::F64 {
                let mut m = Tensors::new();
                let bytes: Vec<u8> = [0.5f64, f64::NEG_INFINITY]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect();
                m.insert(
                    "layers.0.w".into(),
                    Tensor::from_bytes(dt, vec![2], bytes).unwrap(),
                );
                m
            } else {
                tensors(dt, &[0.0, 3.0, f32::NAN])
            };
            let e = check_finite(&t, "m").unwrap_err().to_string();
            let want = if dt == Dtype::F64 {
                "m: tensor `layers.0.w` holds -inf (element 1): the weights are broken (a diverged training run?); refusing to use them"
            } else {
                "m: tensor `layers.0.w` holds NaN (element 2): the weights are broken (a diverged training run?); refusing to use them"
            };
            assert_eq!(e, want, "{dt:?}");
        }
        let e = check_finite(&tensors(Dtype::BF16, &[f32::INFINITY]), "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds inf (element 0)"), "{e}");
        // Large but finite values pass; integer tensors are not looked at.
        assert!(check_finite(&tensors(Dtype::F16, &[65504.0, -65504.0]), "m").is_ok());
        let mut m = Tensors::new();
        m.insert(
            "q".into(),
            Tensor::from_bytes(Dtype::U8, vec![2], vec![0xff, 0xff]).unwrap(),
        );
        assert!(check_finite(&m, "m").is_ok());
    }
}
