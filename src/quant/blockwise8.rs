//! 8-bit blockwise quantization with a 256-entry code (bitsandbytes `quantize_blockwise` on
//! the CPU), used for the double-quantized 4-bit absmax and for 8-bit optimizer states.
//!
//! bitsandbytes' CPU kernel does not binary-search the code: it maps the normalized value
//! v = x·(1/absmax) ∈ [-1, 1] to a 16-bit grid index ⌊((v+1)·0.5)·65535 + 0.5⌋ and looks the
//! code index up in a 65536-entry table built from the code's midpoints. We replay that table
//! so the codes are identical (it is not always the nearest code near a midpoint).

/// Grid size of the lookup table.
const LUT_SIZE: usize = 65536;

/// Lookup table from the 16-bit grid to a code index, for one code book.
pub struct Blockwise8 {
    code: [f32; 256],
    lut: Vec<u8>,
}

impl Blockwise8 {
    /// Build the table for a sorted 256-entry code.
    pub fn new(code: [f32; 256]) -> Blockwise8 {
        let mut mids = [0f32; 255];
        for i in 0..255 {
            mids[i] = 0.5 * (code[i] + code[i + 1]);
        }
        let mut lut = vec![0u8; LUT_SIZE];
        let mut idx = 0usize;
        for (i, slot) in lut.iter_mut().enumerate() {
            let val = -1.0f32 + (2.0f32 * i as f32) / (LUT_SIZE - 1) as f32;
            while idx < 255 && mids[idx] < val {
                idx += 1;
            }
            *slot = idx as u8;
        }
        Blockwise8 { code, lut }
    }

    pub fn code(&self) -> &[f32; 256] {
        &self.code
    }

    /// The 65536-entry grid-to-code table (the CUDA kernel uploads it to quantize identically).
    pub fn lut(&self) -> &[u8] {
        &self.lut
    }

    #[inline]
    fn index(&self, v: f32) -> u8 {
        let v = v.clamp(-1.0, 1.0);
        let g = ((v + 1.0) * 0.5) * (LUT_SIZE - 1) as f32 + 0.5;
        self.lut[g as usize]
    }

    /// Quantize `x` in blocks of `blocksize`: `out[i]` code index, `absmax[b]` per block
    /// (an all-zero block gets absmax 0 and codes 0).
    pub fn quantize(&self, out: &mut [u8], absmax: &mut [f32], x: &[f32], blocksize: usize) {
        assert_eq!(out.len(), x.len());
        assert_eq!(absmax.len(), x.len().div_ceil(blocksize));
        for ((xb, ob), am) in x
            .chunks(blocksize)
            .zip(out.chunks_mut(blocksize))
            .zip(absmax.iter_mut())
        {
            // NaN lanes count as 0, as in the kernel
            let m = xb
                .iter()
                .fold(0f32, |m, v| if v.is_nan() { m } else { m.max(v.abs()) });
            *am = m;
            if m == 0.0 {
                ob.fill(0);
                continue;
            }
            let inv = 1.0f32 / m;
            for (o, &v) in ob.iter_mut().zip(xb) {
                *o = self.index(v * inv);
            }
        }
    }

    /// out[i] = code[q[i]] · absmax[i / blocksize]
    pub fn dequantize(&self, out: &mut [f32], q: &[u8], absmax: &[f32], blocksize: usize) {
        assert_eq!(out.len(), q.len());
        for ((ob, qb), &am) in out
            .chunks_mut(blocksize)
            .zip(q.chunks(blocksize))
            .zip(absmax.iter())
        {
            for (o, &c) in ob.iter_mut().zip(qb) {
                *o = self.code[c as usize] * am;
            }
        }
    }
}
