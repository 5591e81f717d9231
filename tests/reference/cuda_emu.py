"""Runs kernels/*.cu on the CPU (kernels/emu/cuda_emu.h) and checks them against numpy.

A developer tool for machines without a GPU: it exercises the kernels' indexing, tiling, masks,
reductions and the vectorized/ragged paths. It does NOT prove the real mma.sync fragment layout
(the emulation encodes our reading of the PTX ISA) nor timing or races on real hardware; the GPU
self-test (src/cuda/selftest.rs) does that. Needs g++ (C++20) and numpy.

Run: /work/pyenv/bin/python tests/reference/cuda_emu.py
"""
import ctypes
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(tempfile.gettempdir(), "recipe_cuda_emu")
os.makedirs(BUILD, exist_ok=True)
CTYPES = {"float": ctypes.c_float, "i32": ctypes.c_int32, "i64": ctypes.c_int64, "u64": ctypes.c_uint64, "int": ctypes.c_int}


def build(name):
    common = open(os.path.join(ROOT, "kernels", "common.cuh")).read().replace("#include <cuda_bf16.h>", "")
    body = open(os.path.join(ROOT, "kernels", name + ".cu")).read()
    src = '#include "%s"\n%s\n%s\n' % (os.path.join(ROOT, "kernels", "emu", "cuda_emu.h"), common, body)
    pre = subprocess.run(["g++", "-std=c++20", "-DRECIPE_EMU", "-E", "-P", "-x", "c++", "-"], input=src, capture_output=True, text=True, check=True).stdout
    sigs = re.findall(r'extern "C"\s+void\s+(\w+)\s*\(([^)]*)\)', pre)
    wrappers, table = [], {}
    for fn, params in sigs:
        ps = [p.strip() for p in params.split(",") if p.strip()]
        names = [re.findall(r"(\w+)$", p)[0] for p in ps]
        types = [p[: -len(n)].strip() for p, n in zip(ps, names)]
        wrappers.append('extern "C" void emu_%s(unsigned gx, unsigned gy, unsigned gz, unsigned bx, %s) { emu_launch({gx, gy, gz}, {bx, 1, 1}, [=] { %s(%s); }); }'
                        % (fn, ", ".join(ps), fn, ", ".join(names)))
        table[fn] = [ctypes.c_void_p if "*" in t else CTYPES[t.replace("const", "").strip()] for t in types]
    path = os.path.join(BUILD, name + ".cpp")
    open(path, "w").write(src + "\n".join(wrappers) + "\n")
    so = os.path.join(BUILD, name + ".so")
    subprocess.run(["g++", "-std=c++20", "-O1", "-DRECIPE_EMU", "-shared", "-fPIC", "-pthread", "-w", path, "-o", so], check=True)
    lib = ctypes.CDLL(so)
    for fn, argt in table.items():
        getattr(lib, "emu_" + fn).argtypes = [ctypes.c_uint] * 4 + argt
    return lib, table


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def bf16(a):
    """Round to bf16 (RNE); returns (uint16 storage, float32 values)."""
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return u, (u.astype(np.uint32) << 16).view(np.float32)


def f32_of(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


RESULTS = []


def check(name, got, want, atol, rtol):
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    with np.errstate(invalid="ignore"):
        same = (got == want) | (np.abs(got - want) <= atol + rtol * np.abs(want))
        err = np.max(np.abs(np.where(got == want, 0, got - want))) if got.size else 0.0
    ok = bool(same.all()) and got.shape == want.shape
    RESULTS.append(ok)
    print("%-52s max_abs %.3e  %s" % (name, err, "PASS" if ok else "FAIL"))
    if not ok:
        i = int(np.argmin(same))
        print("    first mismatch at %d: got %r want %r" % (i, got[i], want[i]))


NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)


def quant4(w, bs):
    flat = w.ravel().astype(np.float32)
    nb = -(-flat.size // bs)
    pad = np.zeros(nb * bs, np.float32)
    pad[: flat.size] = flat
    absmax = np.abs(pad.reshape(nb, bs)).max(1).astype(np.float32)
    scaled = pad / np.repeat(np.where(absmax > 0, absmax, 1), bs)
    q = np.abs(scaled[:, None] - NF4[None, :]).argmin(1).astype(np.uint8)[: flat.size]
    if q.size % 2:
        q = np.append(q, 0)
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8)
    deq = NF4[q[: flat.size]] * np.repeat(absmax, bs)[: flat.size]
    return packed, absmax, deq.reshape(w.shape)


def test_gemm4(rng):
    lib, _ = build("gemm4")
    for m, n, k in [(64, 64, 64), (100, 72, 96), (3, 130, 258), (70, 128, 64)]:
        w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
        packed, absmax, wd = quant4(w, 64)
        _, wd = bf16(wd)
        xu, x = bf16(rng.standard_normal((m, k)))
        y = np.zeros(m * n, np.uint16)
        for aligned in (0, 1):
            lib.emu_gemm_4bit_bf16(-(-n // 64), -(-m // 64), 1, 128, ptr(y), ptr(xu), ptr(packed), ptr(absmax), ptr(NF4), m, n, k, 64, 0, aligned)
            check("gemm_4bit_bf16 m=%d n=%d k=%d aligned=%d" % (m, n, k, aligned), f32_of(y), x.astype(np.float64) @ wd.T.astype(np.float64), 2e-2, 1e-2)
        dyu, dy = bf16(rng.standard_normal((m, n)))
        dx = np.zeros(m * k, np.uint16)
        lib.emu_gemm_4bit_dx_bf16(-(-k // 64), -(-m // 64), 1, 128, ptr(dx), ptr(dyu), ptr(packed), ptr(absmax), ptr(NF4), m, n, k, 64, 0, 1)
        check("gemm_4bit_dx_bf16 m=%d n=%d k=%d" % (m, n, k), f32_of(dx), dy.astype(np.float64) @ wd.astype(np.float64), 2e-2, 1e-2)


def test_quant4(rng):
    lib, _ = build("quant4")
    for rows, cols in [(96, 256), (13, 608)]:
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        packed, absmax, wd = quant4(w, 64)
        x = rng.standard_normal(cols).astype(np.float32)
        y = np.zeros(rows, np.float32)
        lib.emu_gemv_4bit_f32(-(-rows // 8), 1, 1, 256, ptr(y), ptr(x), ptr(packed), ptr(absmax), ptr(NF4), rows, cols, 64)
        check("gemv_4bit_f32 %dx%d" % (rows, cols), y, wd @ x, 1e-4, 1e-4)
        out = np.zeros(rows * cols, np.float32)
        lib.emu_dequant_4bit_f32(-(-(rows * cols // 2) // 256), 1, 1, 256, ptr(out), ptr(packed), ptr(absmax), ptr(NF4), rows * cols, 64)
        check("dequant_4bit_f32 %dx%d" % (rows, cols), out, wd, 0, 1e-6)


def attn_ref(q, k, v, kmask, seg, slopes, scale):
    B, T, HQ, D = q.shape
    HKV = k.shape[2]
    o = np.zeros_like(q, dtype=np.float64)
    lse = np.full((B, HQ, T), np.inf)
    for b in range(B):
        for h in range(HQ):
            g = h // (HQ // HKV)
            s = q[b, :, h].astype(np.float64) @ k[b, :, g].T.astype(np.float64) * scale
            i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
            s = s + (slopes[h] * (j - i) if slopes is not None else 0)
            vis = j <= i
            if kmask is not None:
                vis &= kmask[b][None, :] != 0
            if seg is not None:
                vis &= seg[b][None, :] == seg[b][:, None]
            s = np.where(vis, s, -np.inf)
            m = s.max(1)
            ok = np.isfinite(m)
            p = np.where(vis, np.exp(s - np.where(ok, m, 0)[:, None]), 0)
            l = p.sum(1)
            o[b, :, h] = np.where(ok[:, None], (p / np.where(ok, l, 1)[:, None]) @ v[b, :, g], 0)
            lse[b, h] = np.where(ok, m + np.log(np.where(ok, l, 1)), np.inf)
    return o, lse


def test_attention(rng):
    lib, _ = build("attention")
    for B, T, HQ, HKV, D, masked in [(2, 37, 4, 2, 64, True), (1, 40, 2, 1, 128, False), (2, 20, 3, 3, 80, True)]:
        q, k, v = (rng.standard_normal(s).astype(np.float32) for s in [(B, T, HQ, D), (B, T, HKV, D), (B, T, HKV, D)])
        kmask = np.array([[0 if (b == 0 and t < 3) else 1 for t in range(T)] for b in range(B)], np.uint8)
        seg = np.array([[1 if (b == 1 and t >= T // 2) else 0 for t in range(T)] for b in range(B)], np.int32)
        slopes = np.array([2.0 ** -(h + 1) for h in range(HQ)], np.float32)
        scale = 1 / np.sqrt(D)
        mk = (kmask, seg, slopes) if masked else (None, None, None)
        o_ref, lse_ref = attn_ref(q, k, v, *mk, scale)
        o = np.zeros_like(q)
        lse = np.zeros((B, HQ, T), np.float32)
        args = [ptr(a) if a is not None else None for a in mk]
        lib.emu_attn_fwd_f32(-(-T // 8), HQ, B, 256, ptr(o), ptr(lse), ptr(q), ptr(k), ptr(v), *args, T, HQ, HKV, D, scale)
        name = "B=%d T=%d HQ=%d HKV=%d D=%d%s" % (B, T, HQ, HKV, D, " masked" if masked else "")
        check("attn_fwd_f32 " + name + " o", o, o_ref, 1e-4, 1e-4)
        check("attn_fwd_f32 " + name + " lse", lse, lse_ref, 1e-4, 1e-4)
        # Backward vs autograd-free numpy: dq, dk, dv of <dout, o>.
        dout = rng.standard_normal(q.shape).astype(np.float32)
        delta = np.zeros((B, HQ, T), np.float32)
        dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
        lib.emu_attn_bwd_delta_f32(-(-(B * T * HQ * 32) // 256), 1, 1, 256, ptr(delta), ptr(dout), ptr(o), B, T, HQ, D)
        lib.emu_attn_bwd_dq_f32(-(-T // 8), HQ, B, 256, ptr(dq), ptr(dout), ptr(q), ptr(k), ptr(v), ptr(lse), ptr(delta), *args, T, HQ, HKV, D, scale)
        lib.emu_attn_bwd_dkdv_f32(-(-T // 8), HKV, B, 256, ptr(dk), ptr(dv), ptr(dout), ptr(q), ptr(k), ptr(v), ptr(lse), ptr(delta), *args, T, HQ, HKV, D, scale)
        eps = 1e-3
        for nm, arr, grad in [("dq", q, dq), ("dk", k, dk), ("dv", v, dv)]:
            idx = [tuple(rng.integers(0, s) for s in arr.shape) for _ in range(12)]
            num = []
            for ix in idx:
                old = arr[ix]
                arr[ix] = old + eps
                up = (attn_ref(q, k, v, *mk, scale)[0] * dout).sum()
                arr[ix] = old - eps
                dn = (attn_ref(q, k, v, *mk, scale)[0] * dout).sum()
                arr[ix] = old
                num.append((up - dn) / (2 * eps))
            check("attn_bwd_f32 %s %s (12 finite differences)" % (name, nm), [grad[ix] for ix in idx], num, 2e-3, 1e-2)


def test_cross_entropy(rng):
    lib, _ = build("cross_entropy")
    for n, v in [(5, 1000), (3, 32001)]:
        z = (rng.standard_normal((n, v)) * 3).astype(np.float32)
        t = rng.integers(0, v, n).astype(np.int32)
        t[1] = -100
        loss, lse = np.zeros(n, np.float32), np.zeros(n, np.float32)
        lib.emu_cross_entropy_fwd_f32(n, 1, 1, 512, ptr(loss), ptr(lse), ptr(z), ptr(t), v)
        zz = z.astype(np.float64)
        lse_ref = np.log(np.exp(zz - zz.max(1, keepdims=True)).sum(1)) + zz.max(1)
        loss_ref = np.where(t >= 0, lse_ref - zz[np.arange(n), np.clip(t, 0, None)], 0)
        check("cross_entropy_fwd_f32 n=%d v=%d" % (n, v), loss, loss_ref, 1e-4, 1e-5)
        dz = z.copy()
        lib.emu_cross_entropy_bwd_f32(n, 1, 1, 512, ptr(dz), ptr(dz), ptr(lse), ptr(t), v, ctypes.c_float(0.5))
        g = np.exp(zz - lse_ref[:, None])
        g[np.arange(n), np.clip(t, 0, None)] -= 1
        g = np.where((t >= 0)[:, None], 0.5 * g, 0)
        check("cross_entropy_bwd_f32 in place n=%d v=%d" % (n, v), dz, g, 1e-6, 1e-4)


def test_norm(rng):
    lib, _ = build("norm")
    for rows, d in [(7, 64), (3, 1000)]:
        x = rng.standard_normal((rows, d)).astype(np.float32)
        w = rng.standard_normal(d).astype(np.float32)
        dy = rng.standard_normal((rows, d)).astype(np.float32)
        y, rstd = np.zeros_like(x), np.zeros(rows, np.float32)
        lib.emu_rmsnorm_fwd_f32(rows, 1, 1, 256, ptr(y), ptr(rstd), ptr(x), ptr(w), d, ctypes.c_float(1e-5))
        r = 1 / np.sqrt((x.astype(np.float64) ** 2).mean(1) + 1e-5)
        check("rmsnorm_fwd_f32 %dx%d" % (rows, d), y, x * r[:, None] * w, 1e-5, 1e-4)
        dx, dw = np.zeros_like(x), np.zeros(d, np.float32)
        lib.emu_rmsnorm_bwd_f32(rows, 1, 1, 256, ptr(dx), ptr(dw), ptr(dy), ptr(x), ptr(w), ptr(rstd), d)
        xh = x * r[:, None]
        gw = dy * w
        check("rmsnorm_bwd_f32 %dx%d dx" % (rows, d), dx, r[:, None] * (gw - xh * (gw * xh).mean(1, keepdims=True)), 1e-4, 1e-4)
        check("rmsnorm_bwd_f32 %dx%d dw" % (rows, d), dw, (dy * xh).sum(0), 1e-4, 1e-4)


def test_adamw8bit(rng):
    lib, _ = build("adamw8bit")
    sys.path.insert(0, os.path.dirname(__file__))
    import json
    fx = json.load(open(os.path.join(ROOT, "tests", "fixtures", "cuda", "twins.json")))
    cm, cv = np.array(fx["dynamic_map_signed"], np.float32), np.array(fx["dynamic_map_unsigned"], np.float32)
    n = 256 * 3 + 77
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 0.1).astype(np.float32)
    qm = np.full(n, np.argmin(np.abs(cm)), np.uint8)
    qv = np.full(n, np.argmin(np.abs(cv)), np.uint8)
    am, av = np.zeros(4, np.float32), np.zeros(4, np.float32)
    p0 = p.copy()
    b1, b2, lr, eps, wd = 0.9, 0.999, 1e-3, 1e-8, 0.01
    lib.emu_adamw8bit_f32(4, 1, 1, 256, ptr(p), ptr(g), ptr(qm), ptr(am), ptr(qv), ptr(av), ptr(cm), ptr(cv),
                          *[ctypes.c_float(x) for x in (lr, b1, b2, eps, wd, 1 - b1, 1 - b2, 1.0)], n)
    m, v = (1 - b1) * g, (1 - b2) * g * g
    p_ref = p0 * (1 - lr * wd) - lr * (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + eps)
    check("adamw8bit_f32 step 1 params", p, p_ref, 1e-6, 1e-5)
    am_ref = np.array([np.abs(m[i:i + 256]).max() for i in range(0, n, 256)])
    check("adamw8bit_f32 step 1 absmax_m", am, am_ref, 1e-9, 1e-5)
    deq = cm[qm] * np.repeat(am, 256)[:n]
    check("adamw8bit_f32 step 1 m (dequantized, within map resolution)", deq, m, 1e-3 * am_ref.max(), 0.1)


def test_rope(rng):
    lib, _ = build("rope")
    for layout, T, H, HD, ROT in [("half", 9, 3, 64, 64), ("half", 5, 2, 80, 40), ("glm", 11, 4, 128, 64)]:
        maxp, half = 40, ROT // 2
        theta = 10000.0 ** (-2 * np.arange(half) / ROT)
        ang = np.arange(maxp)[:, None] * theta[None, :]
        c, s_ = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
        pos = rng.integers(0, maxp, T).astype(np.int32)
        x = rng.standard_normal((T, H, HD)).astype(np.float32)
        for sgn, kind in [(1, "fwd"), (-1, "bwd")]:
            cc, ss = c[pos][:, None, :], sgn * s_[pos][:, None, :]
            y = x.copy()
            if layout == "half":
                a, b = x[..., :half], x[..., half:ROT]
                y[..., :half], y[..., half:ROT] = a * cc - b * ss, b * cc + a * ss
            else:
                a, b = x[..., 0:ROT:2], x[..., 1:ROT:2]
                y[..., 0:ROT:2], y[..., 1:ROT:2] = a * cc - b * ss, b * cc + a * ss
            out = np.zeros_like(x)
            fn = getattr(lib, "emu_rope_%s_%s_f32" % (layout, kind))
            nthreads = T * H * (HD - half)
            fn(-(-nthreads // 256), 1, 1, 256, ptr(out), ptr(x), ptr(c), ptr(s_), ptr(pos), T, H, HD, ROT)
            check("rope_%s_%s_f32 T=%d H=%d HD=%d ROT=%d" % (layout, kind, T, H, HD, ROT), out, y, 1e-6, 1e-5)
    slopes = np.array([2.0 ** -(h + 1) for h in range(12)], np.float32)
    kpos = np.tile(np.arange(33, dtype=np.int32), 2)
    bias = np.zeros(2 * 12 * 33, np.float32)
    lib.emu_alibi_bias_f32(-(-bias.size // 256), 1, 1, 256, ptr(bias), ptr(slopes), ptr(kpos), 2, 12, 33)
    check("alibi_bias_f32 b=2 h=12 t=33", bias, (slopes[None, :, None] * kpos.reshape(2, 1, 33)).ravel(), 0, 1e-6)


def hash_u32(seed, i):
    M = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + i * 0xD1B54A32D192ED03) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    z ^= z >> 31
    return z >> 32


def test_act(rng):
    lib, _ = build("act")
    rows, cols = 5, 37
    h = (rng.standard_normal((rows, 2 * cols)) * 1.5).astype(np.float32)
    da = rng.standard_normal((rows, cols)).astype(np.float32)
    e, g = h[:, :cols].astype(np.float64), h[:, cols:].astype(np.float64)
    sg = 1 / (1 + np.exp(-e))
    a = np.zeros((rows, cols), np.float32)
    n = rows * cols
    lib.emu_swiglu_fwd_f32(-(-n // 256), 1, 1, 256, ptr(a), ptr(h), ctypes.c_void_p(h.ctypes.data + 4 * cols), rows, cols, 2 * cols)
    check("swiglu_fwd_f32 packed %dx%d" % (rows, cols), a, e * sg * g, 1e-6, 1e-5)
    dh = np.zeros_like(h)
    lib.emu_swiglu_bwd_f32(-(-n // 256), 1, 1, 256, ptr(dh), ctypes.c_void_p(dh.ctypes.data + 4 * cols), ptr(da), ptr(h), ctypes.c_void_p(h.ctypes.data + 4 * cols), rows, cols, 2 * cols)
    want = np.concatenate([da * g * sg * (1 + e * (1 - sg)), da * e * sg], axis=1)
    check("swiglu_bwd_f32 packed %dx%d" % (rows, cols), dh, want, 1e-6, 1e-5)
    x = (rng.standard_normal(1000) * 3).astype(np.float32)
    y = np.zeros_like(x)
    lib.emu_gelu_tanh_fwd_f32(4, 1, 1, 256, ptr(y), ptr(x), 1000)
    xd = x.astype(np.float64)
    check("gelu_tanh_fwd_f32 n=1000", y, 0.5 * xd * (1 + np.tanh(np.sqrt(2 / np.pi) * (xd + 0.044715 * xd ** 3))), 1e-6, 1e-5)
    lib.emu_dropout_f32(4, 1, 1, 256, ptr(y), ptr(x), ctypes.c_float(0.1), 1234, 1000)
    thr = int(0.1 * 2 ** 32)
    keep = np.array([hash_u32(1234, i) >= thr for i in range(1000)])
    check("dropout_f32 n=1000 (mask = Rust twin's hash)", y, np.where(keep, x / np.float32(0.9), 0), 1e-7, 1e-6)


def test_embedding(rng):
    lib, _ = build("embedding")
    vocab, d, n = 50, 72, 37
    table = rng.standard_normal((vocab, d)).astype(np.float32)
    ids = rng.integers(0, vocab, n).astype(np.int32)
    ids[3], ids[5], ids[7] = -1, vocab, ids[8]
    dout = rng.standard_normal((n, d)).astype(np.float32)
    out = np.zeros((n, d), np.float32)
    lib.emu_embedding_fwd_f32(-(-n * d // 256), 1, 1, 256, ptr(out), ptr(ids), ptr(table), n, d, vocab)
    valid = (ids >= 0) & (ids < vocab)
    check("embedding_fwd_f32", out, np.where(valid[:, None], table[np.clip(ids, 0, vocab - 1)], 0), 0, 0)
    dt = np.zeros((vocab, d), np.float32)
    lib.emu_embedding_bwd_f32(-(-n * d // 256), 1, 1, 256, ptr(dt), ptr(ids), ptr(dout), n, d, vocab)
    want = np.zeros((vocab, d))
    for i in range(n):
        if valid[i]:
            want[ids[i]] += dout[i]
    check("embedding_bwd_f32 (atomic scatter)", dt, want, 1e-6, 1e-6)


def test_layernorm_bf16(rng):
    lib, _ = build("norm")
    rows, d = 4, 300
    xu, x = bf16(rng.standard_normal((rows, d)))
    wu, w = bf16(rng.standard_normal(d))
    bu, b = bf16(rng.standard_normal(d))
    y = np.zeros(rows * d, np.uint16)
    mean, rstd = np.zeros(rows, np.float32), np.zeros(rows, np.float32)
    lib.emu_layernorm_fwd_bf16(rows, 1, 1, 256, ptr(y), ptr(mean), ptr(rstd), ptr(xu), ptr(wu), ptr(bu), d, ctypes.c_float(1e-5))
    xd = x.astype(np.float64)
    mu = xd.mean(1, keepdims=True)
    r = 1 / np.sqrt(((xd - mu) ** 2).mean(1, keepdims=True) + 1e-5)
    check("layernorm_fwd_bf16 %dx%d" % (rows, d), f32_of(y), (xd - mu) * r * w + b, 2e-2, 1e-2)


def test_attention_bf16(rng):
    lib, _ = build("attention")
    B, T, HQ, HKV, D = 1, 19, 4, 1, 64
    (qu, q), (ku, k), (vu, v) = (bf16(rng.standard_normal(s)) for s in [(B, T, HQ, D), (B, T, HKV, D), (B, T, HKV, D)])
    o_ref, lse_ref = attn_ref(q, k, v, None, None, None, 0.125)
    o = np.zeros(q.size, np.uint16)
    lse = np.zeros((B, HQ, T), np.float32)
    lib.emu_attn_fwd_bf16(-(-T // 8), HQ, B, 256, ptr(o), ptr(lse), ptr(qu), ptr(ku), ptr(vu), None, None, None, T, HQ, HKV, D, ctypes.c_float(0.125))
    check("attn_fwd_bf16 MQA B=1 T=19 HQ=4 HKV=1 D=64", f32_of(o), o_ref, 2e-2, 2e-2)


def test_optim(rng):
    lib, _ = build("optim")
    n = 1000
    p, m, v = rng.standard_normal(n).astype(np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
    g = (rng.standard_normal(n) * 0.1).astype(np.float32)
    p0 = p.copy()
    lib.emu_adamw_f32(4, 1, 1, 256, ptr(p), ptr(m), ptr(v), ptr(g), *[ctypes.c_float(x) for x in (1e-3, 0.9, 0.999, 1e-8, 0.01, 0.1, 0.001, 1.0)], n)
    check("adamw_f32 step 1", p, p0 * (1 - 1e-5) - 1e-3 * g / (np.abs(g) + 1e-8), 1e-6, 1e-5)
    out = np.zeros(1, np.float32)
    lib.emu_sumsq_f32(3, 1, 1, 256, ptr(out), ptr(p0), n)
    check("sumsq_f32 n=1000 (grid-stride, 3 blocks)", out, [(p0.astype(np.float64) ** 2).sum()], 1e-3, 1e-5)


def main():
    rng = np.random.default_rng(0)
    for t in [test_quant4, test_gemm4, test_norm, test_cross_entropy, test_adamw8bit, test_rope, test_act,
              test_embedding, test_layernorm_bf16, test_optim, test_attention_bf16, test_attention]:
        t(rng)
    print("%d checks, %d failed" % (len(RESULTS), RESULTS.count(False)))
    sys.exit(0 if all(RESULTS) else 1)


if __name__ == "__main__":
    main()
