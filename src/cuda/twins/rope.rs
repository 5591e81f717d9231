//! Twins of kernels/rope.cu: rotary embeddings (rotate_half and GLM interleaved) and ALiBi.

/// cos/sin tables [max_pos, rot/2] with theta_i = base^(-2i/rot).
pub fn rope_tables(max_pos: usize, rot: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
    let half = rot / 2;
    let (mut c, mut s) = (vec![0f32; max_pos * half], vec![0f32; max_pos * half]);
    for p in 0..max_pos {
        for i in 0..half {
            let theta = (base as f64).powf(-2.0 * i as f64 / rot as f64);
            let a = p as f64 * theta;
            c[p * half + i] = a.cos() as f32;
            s[p * half + i] = a.sin() as f32;
        }
    }
    (c, s)
}

/// Per-token tables: cos[t, i] = cos(pos[t]·inv[i])·scale, sin likewise (f32 angle, as the CPU
/// backend's `rope`). cos, sin: [pos.len(), inv.len()].
pub fn rope_table(cos: &mut [f32], sin: &mut [f32], pos: &[f32], inv: &[f32], scale: f32) {
    let half = inv.len();
    for (t, &p) in pos.iter().enumerate() {
        for (i, &f) in inv.iter().enumerate() {
            let ang = p * f;
            cos[t * half + i] = ang.cos() * scale;
            sin[t * half + i] = ang.sin() * scale;
        }
    }
}

/// Which pairs rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// (i, i + rot/2), LLaMA/Qwen2/Mistral.
    Half,
    /// (2i, 2i+1) over the first `rot` dims, ChatGLM2/3.
    Glm,
}

/// y = rotate(x) by +theta (sgn = 1, forward) or -theta (sgn = -1, backward).
/// y, x: [tokens, heads, hd]; pos: [tokens]; dims >= rot pass through.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    y: &mut [f32],
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    pos: &[i32],
    heads: usize,
    hd: usize,
    rot: usize,
    layout: RopeLayout,
    sgn: f32,
) {
    let half = rot / 2;
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            let base = (t * heads + h) * hd;
            y[base + rot..base + hd].copy_from_slice(&x[base + rot..base + hd]);
            for i in 0..half {
                let (c, s) = (cos[p as usize * half + i], sgn * sin[p as usize * half + i]);
                let (ia, ib) = match layout {
                    RopeLayout::Half => (i, i + half),
                    RopeLayout::Glm => (2 * i, 2 * i + 1),
                };
                let (a, b) = (x[base + ia], x[base + ib]);
                y[base + ia] = a * c - b * s;
                y[base + ib] = b * c + a * s;
            }
        }
    }
}

/// BLOOM's ALiBi slopes for `heads` heads (closest power of two, then interleaved extras).
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    let p2 = 1usize << (usize::BITS - 1 - heads.leading_zeros());
    let base = 2f64.powf(-(2f64.powf(-((p2 as f64).log2() - 3.0))));
    let mut s: Vec<f32> = (1..=p2).map(|i| base.powi(i as i32) as f32).collect();
    if p2 < heads {
        let extra_base = 2f64.powf(-(2f64.powf(-((2.0 * p2 as f64).log2() - 3.0))));
        let n = heads - p2;
        s.extend((0..n).map(|i| extra_base.powi((1 + 2 * i) as i32) as f32));
    }
    s
}

/// bias[b, h, j] = slopes[h] * kpos[b, j]
pub fn alibi_bias(bias: &mut [f32], slopes: &[f32], kpos: &[i32], batch: usize, t: usize) {
    let heads = slopes.len();
    for b in 0..batch {
        for h in 0..heads {
            for j in 0..t {
                bias[(b * heads + h) * t + j] = slopes[h] * kpos[b * t + j] as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::twins::testutil::assert_close;
    use crate::cuda::twins::Rng;

    #[test]
    fn backward_undoes_forward_in_both_layouts() {
        let (heads, hd, rot) = (2, 8, 4);
        let (c, s) = rope_tables(16, rot, 10000.0);
        let x = Rng::new(7).normals(3 * heads * hd, 1.0);
        for layout in [RopeLayout::Half, RopeLayout::Glm] {
            let (mut y, mut back) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            rope(&mut y, &x, &c, &s, &[0, 5, 9], heads, hd, rot, layout, 1.0);
            rope(
                &mut back,
                &y,
                &c,
                &s,
                &[0, 5, 9],
                heads,
                hd,
                rot,
                layout,
                -1.0,
            );
            assert_close(&back, &x, 1e-5, 0.0, "rope inverse");
            // Position 0 is the identity; pass-through dims are untouched.
            assert_close(&y[..heads * hd], &x[..heads * hd], 0.0, 0.0, "pos 0");
            assert_eq!(y[hd + rot..2 * hd], x[hd + rot..2 * hd]);
        }
    }

    #[test]
    fn glm_rotates_adjacent_pairs() {
        // x = [1, 0, 0, 1] at position 1, rot 4: pair (0,1) by theta_0 = 1, pair (2,3) by 10000^-0.5.
        let (c, s) = rope_tables(2, 4, 10000.0);
        let mut y = [0f32; 4];
        rope(
            &mut y,
            &[1.0, 0.0, 0.0, 1.0],
            &c,
            &s,
            &[1],
            1,
            4,
            4,
            RopeLayout::Glm,
            1.0,
        );
        let t1 = 0.01f32;
        assert_close(
            &y,
            &[1f32.cos(), 1f32.sin(), -t1.sin(), t1.cos()],
            1e-6,
            0.0,
            "glm",
        );
    }

    #[test]
    fn alibi_slopes_match_bloom() {
        // HF build_alibi_tensor: 8 heads -> 2^-1 .. 2^-8; 12 heads adds 2^-0.5, 2^-1.5, ...
        let s8 = alibi_slopes(8);
        assert_close(
            &s8,
            &(1..=8).map(|i| 0.5f32.powi(i)).collect::<Vec<_>>(),
            1e-7,
            0.0,
            "8",
        );
        let s12 = alibi_slopes(12);
        assert_eq!(s12.len(), 12);
        assert!((s12[8] - 2f32.powf(-0.5)).abs() < 1e-6 && (s12[9] - 2f32.powf(-1.5)).abs() < 1e-6);
    }
}
