"""The deterministic test inputs that `crate::quant::testgen::gen` reimplements in Rust
(shared by quant_fixtures.py and quant_unaligned_fixtures.py)."""
import numpy as np

M64 = (1 << 64) - 1


def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def gen(seed, n, scale):
    """Bell-shaped values: (u1+u2+u3-1.5)*scale computed in f64, rounded to f32."""
    out = np.empty(n, np.float32)
    base = (seed * 1_000_003) & M64
    for i in range(n):
        u = [(splitmix64((base + 3 * i + k) & M64) >> 40) / 16777216.0 for k in range(3)]
        out[i] = np.float32((u[0] + u[1] + u[2] - 1.5) * scale)
    return out
