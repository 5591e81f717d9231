//! Twins of kernels/act.cu: SwiGLU, GELU-tanh, GeGLU, scaled accumulate and LoRA dropout.

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// a[r, c] = silu(e[r, c]) * g[r, c]; e and g rows have stride ld_in (a is dense [rows, cols]).
pub fn swiglu_fwd(a: &mut [f32], e: &[f32], g: &[f32], rows: usize, cols: usize, ld_in: usize) {
    for r in 0..rows {
        for c in 0..cols {
            let (ev, gv) = (e[r * ld_in + c], g[r * ld_in + c]);
            a[r * cols + c] = ev * sigmoid(ev) * gv;
        }
    }
}

/// dg = da·e·σ(e); de = da·g·σ(e)·(1 + e·(1−σ(e)))   (written at stride ld_in like e and g)
#[allow(clippy::too_many_arguments)]
pub fn swiglu_bwd(
    de: &mut [f32],
    dg: &mut [f32],
    da: &[f32],
    e: &[f32],
    g: &[f32],
    rows: usize,
    cols: usize,
    ld_in: usize,
) {
    for r in 0..rows {
        for c in 0..cols {
            let src = r * ld_in + c;
            let (ev, gv, d) = (e[src], g[src], da[r * cols + c]);
            let s = sigmoid(ev);
            dg[src] = d * ev * s;
            de[src] = d * gv * s * (1.0 + ev * (1.0 - s));
        }
    }
}

const K0: f32 = 0.797_884_6;

/// y = 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))
pub fn gelu_tanh_fwd(y: &mut [f32], x: &[f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = 0.5 * v * (1.0 + (K0 * (v + 0.044715 * v * v * v)).tanh());
    }
}

/// dx = dy · d/dx gelu_tanh(x)
pub fn gelu_tanh_bwd(dx: &mut [f32], dy: &[f32], x: &[f32]) {
    for i in 0..x.len() {
        let v = x[i];
        let th = (K0 * (v + 0.044715 * v * v * v)).tanh();
        dx[i] = dy[i]
            * (0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * K0 * (1.0 + 3.0 * 0.044715 * v * v));
    }
}

/// a = gelu_tanh(e)·g
pub fn geglu_fwd(a: &mut [f32], e: &[f32], g: &[f32]) {
    gelu_tanh_fwd(a, e);
    a.iter_mut().zip(g).for_each(|(a, g)| *a *= g);
}

/// dg = da·gelu_tanh(e); de = da·g·gelu_tanh'(e)
pub fn geglu_bwd(de: &mut [f32], dg: &mut [f32], da: &[f32], e: &[f32], g: &[f32]) {
    gelu_tanh_fwd(dg, e);
    dg.iter_mut().zip(da).for_each(|(dg, d)| *dg *= d);
    let dag: Vec<f32> = da.iter().zip(g).map(|(d, g)| d * g).collect();
    gelu_tanh_bwd(de, &dag, e);
}

/// y += s·t
pub fn scale_add(y: &mut [f32], t: &[f32], s: f32) {
    for (a, b) in y.iter_mut().zip(t) {
        *a += s * b;
    }
}

/// y = kept(i) ? x·keep : 0 with the shared mask `rng::dropout_keep(key, i, p)` and
/// keep = 1/(1−p) in f32 (the CPU's LoRA dropout, bit for bit).
pub fn dropout(y: &mut [f32], x: &[f32], p: f32, key: u64) {
    let keep = 1.0 / (1.0 - p);
    for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
        *o = if crate::rng::dropout_keep(key, i as u64, p) {
            v * keep
        } else {
            0.0
        };
    }
}

/// y += kept(i) ? x·keep : 0 (dropped elements untouched): the backward of `dropout` into an
/// accumulated gradient.
pub fn dropout_acc(y: &mut [f32], x: &[f32], p: f32, key: u64) {
    let keep = 1.0 / (1.0 - p);
    for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
        if crate::rng::dropout_keep(key, i as u64, p) {
            *o += v * keep;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::twins::testutil::{assert_close, numgrad};
    use crate::cuda::twins::Rng;

    #[test]
    fn swiglu_backward_matches_finite_differences_with_packed_layout() {
        // ChatGLM packing: h = [gate | up] per row, ld_in = 2*cols.
        let (rows, cols) = (2, 3);
        let mut r = Rng::new(8);
        let mut h = r.normals(rows * 2 * cols, 1.0);
        let da = r.normals(rows * cols, 1.0);
        let f = |hh: &[f32]| {
            let mut a = vec![0f32; rows * cols];
            swiglu_fwd(&mut a, hh, &hh[cols..], rows, cols, 2 * cols);
            a.iter().zip(&da).map(|(x, y)| (x * y) as f64).sum::<f64>()
        };
        let mut dh = vec![0f32; h.len()];
        let mut dg = vec![0f32; h.len()];
        swiglu_bwd(&mut dh, &mut dg, &da, &h, &h[cols..], rows, cols, 2 * cols);
        // dg was written at g's offsets (dg[src] for src = r*ld + c) -> shift into the up half.
        for rr in 0..rows {
            for c in 0..cols {
                dh[rr * 2 * cols + cols + c] = dg[rr * 2 * cols + c];
            }
        }
        let num: Vec<f32> = (0..h.len())
            .map(|i| numgrad(&mut h, i, 1e-3, &mut |x: &[f32]| f(x)) as f32)
            .collect();
        assert_close(&dh, &num, 1e-3, 1e-2, "swiglu");
    }

    #[test]
    fn gelu_backward_matches_finite_differences() {
        let mut x = Rng::new(9).normals(20, 2.0);
        let mut dx = vec![0f32; 20];
        gelu_tanh_bwd(&mut dx, &[1.0; 20], &x);
        let num: Vec<f32> = (0..20)
            .map(|i| {
                numgrad(&mut x, i, 1e-3, &mut |xx: &[f32]| {
                    let mut y = vec![0f32; 20];
                    gelu_tanh_fwd(&mut y, xx);
                    y.iter().map(|&v| v as f64).sum()
                }) as f32
            })
            .collect();
        assert_close(&dx, &num, 1e-3, 1e-2, "gelu");
        // Known value: gelu_tanh(1) = 0.8411920
        let mut y = [0f32];
        gelu_tanh_fwd(&mut y, &[1.0]);
        assert!((y[0] - 0.841192).abs() < 1e-5);
    }

    #[test]
    fn dropout_keeps_about_1_minus_p_and_rescales() {
        let x = vec![1f32; 10000];
        let mut y = vec![0f32; 10000];
        dropout(&mut y, &x, 0.1, 42);
        let kept = y.iter().filter(|&&v| v != 0.0).count();
        assert!((8800..9200).contains(&kept), "{kept}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
    }

    /// The CPU's LoRA dropout loop (model::linear `LoraWeights::dropped`, copied as it stands):
    /// the shared mask must reproduce it exactly, values bit for bit.
    #[test]
    fn dropout_equals_the_cpu_lora_loop() {
        let x = Rng::new(3).normals(5003, 1.0);
        for (key, p) in [
            (0u64, 0.1f32),
            (0x1234_5678_9abc_def0, 0.05),
            (u64::MAX, 0.5),
        ] {
            let mut rng = crate::rng::SplitMix64(key);
            let keep = 1.0 / (1.0 - p);
            let want: Vec<f32> = x
                .iter()
                .map(|v| {
                    if (rng.uniform() + 1.0) * 0.5 >= p {
                        v * keep
                    } else {
                        0.0
                    }
                })
                .collect();
            let mut y = vec![7f32; x.len()];
            dropout(&mut y, &x, p, key);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&want), "key {key:#x} p {p}");
            // The backward adds the same kept values.
            let mut acc = vec![0.5f32; x.len()];
            dropout_acc(&mut acc, &x, p, key);
            let sum: Vec<f32> = want
                .iter()
                .map(|w| if *w == 0.0 { 0.5 } else { 0.5 + w })
                .collect();
            assert_eq!(bits(&acc), bits(&sum), "acc key {key:#x} p {p}");
        }
    }
}
