//! `torch.sum` / `torch.mean` of a contiguous f32 vector as torch computes them on one CPU
//! thread (ATen `cascade_sum`: 8-lane vectors, 4-way ILP, 4 cascade levels; checked against
//! torch 2.15 on an AVX512 machine, whose reductions still run the 8-lane kernel).
//! Used for the double-quant offset `absmax.mean()`, so that offsets match bit for bit.
//! (With several threads torch splits inputs above 32768 elements; that order is not modelled.)

#![allow(clippy::needless_range_loop)] // index loops mirror ATen's code

/// Lanes of the `Vectorized<float>` torch sums with.
const LANES: usize = 8;
const ILP: usize = 4;
const LEVELS: usize = 4;

fn ceil_log2(x: usize) -> u32 {
    if x <= 2 {
        1
    } else {
        usize::BITS - (x - 1).leading_zeros()
    }
}

/// ATen `multi_row_sum`: `size` rows of `ILP` accumulators `A`, cascaded every `2^level_power`.
fn multi_row_sum<A: Copy>(
    size: usize,
    zero: A,
    add: impl Fn(A, A) -> A,
    load: impl Fn(usize, usize) -> A,
) -> [A; ILP] {
    let level_power = ceil_log2(size).div_euclid(LEVELS as u32).max(4) as usize;
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[zero; ILP]; LEVELS];
    let mut i = 0usize;
    while i + level_step <= size {
        for _ in 0..level_step {
            for k in 0..ILP {
                acc[0][k] = add(acc[0][k], load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..ILP {
                acc[j][k] = add(acc[j][k], acc[j - 1][k]);
                acc[j - 1][k] = zero;
            }
            let mask = level_mask << (j * level_power);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < size {
        for k in 0..ILP {
            acc[0][k] = add(acc[0][k], load(i, k));
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..ILP {
            acc[0][k] = add(acc[0][k], acc[j][k]);
        }
    }
    acc[0]
}

/// ATen `row_sum`: element i of the row is `load(i)`.
fn row_sum<A: Copy>(
    size: usize,
    zero: A,
    add: impl Fn(A, A) -> A + Copy,
    load: impl Fn(usize) -> A,
) -> A {
    let size_ilp = size / ILP;
    let mut partial = multi_row_sum(size_ilp, zero, add, |i, k| load(i * ILP + k));
    for i in size_ilp * ILP..size {
        partial[0] = add(partial[0], load(i));
    }
    for k in 1..ILP {
        partial[0] = add(partial[0], partial[k]);
    }
    partial[0]
}

/// torch.sum(x) for contiguous f32 on one thread.
pub fn torch_sum_f32(x: &[f32]) -> f32 {
    let n = x.len();
    if n < LANES {
        return row_sum(n, 0f32, |a, b| a + b, |i| x[i]);
    }
    type V = [f32; LANES];
    let vadd = |a: V, b: V| -> V {
        let mut o = a;
        for l in 0..LANES {
            o[l] += b[l];
        }
        o
    };
    let nvec = n / LANES;
    let vacc = row_sum(nvec, [0f32; LANES], vadd, |i| {
        let mut v = [0f32; LANES];
        v.copy_from_slice(&x[i * LANES..(i + 1) * LANES]);
        v
    });
    let mut acc = 0f32;
    for &v in &x[nvec * LANES..] {
        acc += v;
    }
    for l in vacc {
        acc += l;
    }
    acc
}

/// torch.mean(x): the sum divided by the element count in f32.
pub fn torch_mean_f32(x: &[f32]) -> f32 {
    torch_sum_f32(x) / x.len() as f32
}
