//! NF4 / FP4 blockwise 4-bit quantization as `bitsandbytes.functional.quantize_4bit` does on
//! the CPU, with optional double quantization of the per-block absmax.
//!
//! - Flatten, split into blocks of `blocksize` (32..4096, default 64); absmax per block (f32).
//!   Blocks run over the FLATTENED row-major tensor, never per row: when a row is not a whole
//!   number of blocks (e.g. [out, 48] with blocksize 64) blocks straddle rows, and element
//!   (r, c) of an [out, in] weight belongs to block (r·in + c) / blocksize. bnb's CUDA kernels
//!   and its generic torch ops do exactly this. bnb 0.50.2's C++ CPU dequant kernel does not:
//!   its AVX-512 branch (in % 16 == 0, blocksize < 2048) reads absmax[r·(in / blocksize) +
//!   c / blocksize], per-row blocks, and returns wrong weights for such shapes, so
//!   transformers' 4-bit models on an AVX-512 CPU disagree with us there and we are the
//!   correct side (issue 12; tests/reference/quant_unaligned_fixtures.py, `unaligned_tests`).
//!   Full blocks scale by x·(1/max(absmax, 1e-38)); the partial last block divides by
//!   max(absmax, 1e-38) and stores that clamped value.
//! - Clamp to [-1, 1], pick the code by midpoints (a tie goes to the lower code).
//! - Pack two nibbles per byte, FIRST element in the HIGH nibble; an odd count is padded with
//!   the nibble of 0.0 (NF4: 7, FP4: 0). Storage is u8 [(n+1)/2, 1].
//! - Double quant: offset = mean(absmax) (torch's f32 summation order), then absmax − offset is
//!   8-bit quantized in blocks of 256 with the signed dynamic map.
//!   Dequant: absmax_i = code8[q_i]·absmax2[i/256] + offset; w = code4[nibble]·absmax_i.

use super::blockwise8::Blockwise8;
use super::codes::{dynamic_map, Bounds4, QuantType};
use super::torch_sum::torch_mean_f32;
use rayon::prelude::*;
use thiserror::Error;

/// Block size of the 8-bit quantization of the absmax (bnb `nested_blocksize`).
pub const NESTED_BLOCKSIZE: usize = 256;

#[derive(Debug, Error, PartialEq)]
pub enum QuantError {
    #[error("invalid 4-bit blocksize {0} (expected 32, 64, 128, 256, 512, 1024, 2048 or 4096)")]
    BlockSize(usize),
    #[error("shape {shape:?} has {expected} elements but the data has {got}")]
    ShapeMismatch {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("quant state `{key}`: {msg}")]
    State { key: String, msg: String },
}

/// Per-block scales: plain f32, or double-quantized (u8 codes + f32 absmax per 256 + offset).
#[allow(clippy::large_enum_variant)] // the 1 KiB code book sits beside megabytes of codes
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    Plain(Vec<f32>),
    Nested {
        /// 8-bit code index per 4-bit block.
        codes: Vec<u8>,
        /// absmax of each group of 256 codes.
        absmax2: Vec<f32>,
        /// mean of the original absmax, added back on dequantization.
        offset: f32,
        /// the 8-bit code book (signed dynamic map).
        code: [f32; 256],
        /// bnb `nested_blocksize` (256).
        blocksize: usize,
    },
}

/// Everything needed to dequantize a packed 4-bit tensor (bnb `QuantState`).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantState {
    pub quant_type: QuantType,
    pub blocksize: usize,
    /// Original shape (e.g. [out, in]).
    pub shape: Vec<usize>,
    /// Original dtype name as torch prints it ("float32", "bfloat16", "float16").
    pub dtype: String,
    pub absmax: Absmax,
    /// 4-bit code per nibble (bnb `quant_map`).
    pub code: [f32; 16],
}

/// A packed 4-bit tensor with its state.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized4 {
    /// u8 [(n+1)/2], first element in the high nibble.
    pub packed: Vec<u8>,
    pub state: QuantState,
}

pub fn check_blocksize(blocksize: usize) -> Result<(), QuantError> {
    match blocksize {
        32 | 64 | 128 | 256 | 512 | 1024 | 2048 | 4096 => Ok(()),
        b => Err(QuantError::BlockSize(b)),
    }
}

/// Nibbles of one block, written into `q` (len = block len).
fn quantize_block(q: &mut [u8], x: &[f32], bounds: &Bounds4, full: bool) -> f32 {
    let am = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let clamped = am.max(1e-38);
    if full {
        let inv = 1.0f32 / clamped;
        for (o, &v) in q.iter_mut().zip(x) {
            *o = bounds.nibble_of((v * inv).clamp(-1.0, 1.0));
        }
        am
    } else {
        for (o, &v) in q.iter_mut().zip(x) {
            *o = bounds.nibble_of((v / clamped).clamp(-1.0, 1.0));
        }
        clamped
    }
}

/// Quantize the absmax vector to 8 bits (double quantization).
pub fn quantize_absmax(absmax: &[f32]) -> Absmax {
    let offset = torch_mean_f32(absmax);
    let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let q8 = Blockwise8::new(dynamic_map(true));
    let mut codes = vec![0u8; absmax.len()];
    let mut absmax2 = vec![0f32; absmax.len().div_ceil(NESTED_BLOCKSIZE)];
    q8.quantize(&mut codes, &mut absmax2, &centered, NESTED_BLOCKSIZE);
    Absmax::Nested {
        codes,
        absmax2,
        offset,
        code: *q8.code(),
        blocksize: NESTED_BLOCKSIZE,
    }
}

/// Nibbles (one per element, unpacked) and the plain absmax of `x`.
pub fn quantize_nibbles(
    x: &[f32],
    blocksize: usize,
    quant_type: QuantType,
) -> Result<(Vec<u8>, Vec<f32>), QuantError> {
    check_blocksize(blocksize)?;
    let bounds = Bounds4::new(quant_type);
    let n = x.len();
    let mut q = vec![0u8; n];
    let mut absmax = vec![0f32; n.div_ceil(blocksize)];
    let full_blocks = n / blocksize;
    q.par_chunks_mut(blocksize)
        .zip(x.par_chunks(blocksize))
        .zip(absmax.par_iter_mut())
        .enumerate()
        .for_each(|(b, ((qb, xb), am))| {
            *am = quantize_block(qb, xb, &bounds, b < full_blocks);
        });
    Ok((q, absmax))
}

/// `quantize_4bit(x, blocksize, compress_statistics=double_quant, quant_type)` of a tensor of
/// `shape` (row-major `x`), dtype recorded as `dtype`.
pub fn quantize_4bit(
    x: &[f32],
    shape: &[usize],
    blocksize: usize,
    quant_type: QuantType,
    double_quant: bool,
    dtype: &str,
) -> Result<Quantized4, QuantError> {
    let expected: usize = shape.iter().product();
    if expected != x.len() {
        return Err(QuantError::ShapeMismatch {
            shape: shape.to_vec(),
            expected,
            got: x.len(),
        });
    }
    let (q, absmax) = quantize_nibbles(x, blocksize, quant_type)?;
    let pad = Bounds4::new(quant_type).nibble_of(0.0);
    let packed = q
        .chunks(2)
        .map(|p| (p[0] << 4) | p.get(1).copied().unwrap_or(pad))
        .collect();
    let absmax = if double_quant {
        quantize_absmax(&absmax)
    } else {
        Absmax::Plain(absmax)
    };
    Ok(Quantized4 {
        packed,
        state: QuantState {
            quant_type,
            blocksize,
            shape: shape.to_vec(),
            dtype: dtype.to_string(),
            absmax,
            code: quant_type.code(),
        },
    })
}

impl QuantState {
    /// Number of original elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Per-block f32 scales (dequantizing the nested absmax when double-quantized).
    pub fn absmax_f32(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::Plain(a) => a.clone(),
            Absmax::Nested {
                codes,
                absmax2,
                offset,
                code,
                blocksize,
            } => codes
                .iter()
                .enumerate()
                .map(|(i, &c)| code[c as usize] * absmax2[i / blocksize] + offset)
                .collect(),
        }
    }
}

impl Quantized4 {
    /// Dequantize everything into a new row-major f32 vector of `shape`.
    pub fn dequantize(&self) -> Vec<f32> {
        let absmax = self.state.absmax_f32();
        let mut out = vec![0f32; self.state.numel()];
        dequantize_range(
            &mut out,
            &self.packed,
            &absmax,
            &self.state.code,
            self.state.blocksize,
            0,
        );
        out
    }
}

/// Dequantize elements [start, start + out.len()) of a packed tensor, indexed flat (a range
/// may start and end mid-block, and a block may straddle rows).
/// out[i] = code[nibble(start + i)] · absmax[(start + i) / blocksize]
pub fn dequantize_range(
    out: &mut [f32],
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    blocksize: usize,
    start: usize,
) {
    let end = start + out.len();
    let mut e = start;
    let mut o = 0usize;
    while e < end {
        let b = e / blocksize;
        let block_end = ((b + 1) * blocksize).min(end);
        let s = absmax[b];
        if e & 1 == 1 {
            out[o] = code[(packed[e >> 1] & 0x0f) as usize] * s;
            e += 1;
            o += 1;
        }
        while e + 1 < block_end {
            let byte = packed[e >> 1];
            out[o] = code[(byte >> 4) as usize] * s;
            out[o + 1] = code[(byte & 0x0f) as usize] * s;
            e += 2;
            o += 2;
        }
        if e < block_end {
            out[o] = code[(packed[e >> 1] >> 4) as usize] * s;
            e += 1;
            o += 1;
        }
    }
}
