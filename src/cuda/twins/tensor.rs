//! Twins of kernels/tensor.cu: strided copy, bias add and column sum, scale, fill, argmax hits
//! and the deterministic one-block sum.

use super::optim::block_reduce;

/// dst[d_off + r·d_ld + c] = src[s_off + r·s_ld + c]
pub fn copy2d(
    dst: &mut [f32],
    src: &[f32],
    rows: usize,
    cols: usize,
    d_ld: usize,
    d_off: usize,
    s_ld: usize,
    s_off: usize,
) {
    for r in 0..rows {
        dst[d_off + r * d_ld..][..cols].copy_from_slice(&src[s_off + r * s_ld..][..cols]);
    }
}

/// y[r, c] += b[c]
pub fn bias_add(y: &mut [f32], b: &[f32], rows: usize, cols: usize) {
    for row in y[..rows * cols].chunks_mut(cols) {
        row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
    }
}

/// gb[c] += dy[r, c] for r in order (the CPU's bias-gradient loop).
pub fn col_sum(gb: &mut [f32], dy: &[f32], rows: usize, cols: usize) {
    for row in dy[..rows * cols].chunks(cols) {
        gb.iter_mut().zip(row).for_each(|(g, d)| *g += d);
    }
}

/// hits[0] += #rows with target >= 0 and util::argmax(row) == target.
pub fn argmax_hits(hits: &mut [f32], logits: &[f32], targets: &[i32], rows: usize, v: usize) {
    let n = (0..rows)
        .filter(|&r| {
            targets[r] >= 0 && crate::util::argmax(&logits[r * v..][..v]) == targets[r] as u32
        })
        .count();
    hits[0] += n as f32;
}

/// acc[0] += Σ x in the kernel's order (1024 strided partial sums, then the block reduction).
pub fn sum_acc(acc: &mut [f32], x: &[f32]) {
    acc[0] += block_reduce(x, 1024, |v| v);
}
