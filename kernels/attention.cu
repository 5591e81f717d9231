// attention.cu: causal flash-style attention forward/backward (online softmax; no T x T matrix is
// ever stored). f32 math on CUDA cores; T storage f32 or bf16. The tensor-core attention (cuBLAS
// GEMMs, src/cuda/ops/attention_tc.rs) uses the attn_tc_* kernels below for its softmax.
//
// q, o, dq, do: [B, T, Hq, D];  k, v, dk, dv: [B, T, Hkv, D];  lse, delta: [B, Hq, T] f32.
// GQA/MQA: query head h reads kv head h / (Hq/Hkv) (consecutive heads share a group).
// Key j is visible to query i iff j <= i or j < prefix[b] (if prefix: ChatGLM-6B's bidirectional
// prompt), kmask[b,j] != 0 (if kmask), seg[b,i] == seg[b,j] (if seg: packed sequences) and
// j + window > i (if window > 0: sliding window). Score s_ij = scale * q_i·k_j + slope_h * (j - i)
// (if slopes: ALiBi).
// Forward:   o_i = Σ_j softmax_j(s_i·) v_j ;  lse_i = log Σ_j exp(s_ij)  (+inf for a row that sees
//            no key: its o is 0 and every p in the backward is exp(s - inf) = 0).
// Backward:  p_ij = exp(s_ij - lse_i) ; delta_i = do_i·o_i ; ds_ij = p_ij (do_i·v_j - delta_i)
//            dq_i = scale Σ_j ds_ij k_j ; dk_j = scale Σ_i ds_ij q_i ; dv_j = Σ_i p_ij do_i
// D <= 128. Nullable pointers (kmask, seg, prefix, slopes) are passed as 0.

#define DMAX 128
#define ROWS 8
#define KT 32

// visible() with the row's values loaded once: segi = seg[b, i] (0 without seg), pre =
// prefix[b] (0 without prefix).
__device__ __forceinline__ bool visible_q(i32 i, i32 j, i32 b, i32 t, const u8* kmask,
                                          const i32* seg, i32 segi, i32 pre, i32 window) {
    if (j >= t || i >= t) return false;
    if (j > i && j >= pre) return false;
    if (window > 0 && j + window <= i) return false;
    if (kmask && kmask[(i64)b * t + j] == 0) return false;
    if (seg && seg[(i64)b * t + j] != segi) return false;
    return true;
}
__device__ __forceinline__ bool visible(i32 i, i32 j, i32 b, i32 t, const u8* kmask,
                                        const i32* seg, const i32* prefix, i32 window) {
    i32 segi = (seg && i < t) ? seg[(i64)b * t + i] : 0;
    return visible_q(i, j, b, t, kmask, seg, segi, prefix ? prefix[b] : 0, window);
}

// Block: 8 warps = 8 consecutive query rows of one (b, h); lane = key within a 32-key tile for
// scores and = head dim (lane + 32r) for the output accumulator.
template <typename T>
__device__ void attn_fwd(T* o, float* lse, const T* q, const T* k, const T* v, const u8* kmask,
                         const i32* seg, const i32* prefix, const float* slopes, i32 t, i32 hq,
                         i32 hkv, i32 d, float scale, i32 window) {
    __shared__ float Ks[KT][DMAX + 1];
    __shared__ float Vs[KT][DMAX];
    __shared__ float Qs[ROWS][DMAX];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    i32 b = blockIdx.z, h = blockIdx.y, i0 = blockIdx.x * ROWS, i = i0 + warp;
    i32 kvh = h / (hq / hkv);
    for (int e = threadIdx.x; e < ROWS * d; e += blockDim.x) {
        int r = e / d, c = e % d, ii = i0 + r;
        Qs[r][c] = ii < t ? ld(q, (((i64)b * t + ii) * hq + h) * d + c) : 0.f;
    }
    float slope = slopes ? slopes[h] : 0.f;
    float m = -RECIPE_INF, l = 0.f, acc[DMAX / 32] = {};
    i32 jend = min(max(i0 + ROWS, prefix ? prefix[b] : 0), t);
    for (i32 j0 = 0; j0 < jend; j0 += KT) {
        __syncthreads();
        for (int e = threadIdx.x; e < KT * d; e += blockDim.x) {
            int r = e / d, c = e % d, jj = j0 + r;
            i64 src = (((i64)b * t + jj) * hkv + kvh) * d + c;
            Ks[r][c] = jj < t ? ld(k, src) : 0.f;
            Vs[r][c] = jj < t ? ld(v, src) : 0.f;
        }
        __syncthreads();
        if (i < t) {
            i32 j = j0 + lane;
            bool ok = visible(i, j, b, t, kmask, seg, prefix, window);
            float s = -RECIPE_INF;
            if (ok) {
                float dot = 0.f;
                for (int c = 0; c < d; c++) dot += Qs[warp][c] * Ks[lane][c];
                s = dot * scale + slope * (float)(j - i);
            }
            float mnew = fmaxf(m, warp_max(s));
            if (mnew != -RECIPE_INF) {
                float p = ok ? __expf(s - mnew) : 0.f;
                float alpha = (m == -RECIPE_INF) ? 0.f : __expf(m - mnew);
                l = l * alpha + warp_sum(p);
#pragma unroll
                for (int r = 0; r < DMAX / 32; r++) acc[r] *= alpha;
                for (int jj = 0; jj < KT; jj++) {
                    float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
                    for (int r = 0; r < DMAX / 32; r++) {
                        int c = lane + 32 * r;
                        if (c < d) acc[r] += pj * Vs[jj][c];
                    }
                }
                m = mnew;
            }
        }
    }
    if (i < t) {
        float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
        for (int r = 0; r < DMAX / 32; r++) {
            int c = lane + 32 * r;
            if (c < d) st(o, (((i64)b * t + i) * hq + h) * d + c, acc[r] * inv);
        }
        if (lane == 0) lse[((i64)b * hq + h) * t + i] = l > 0.f ? m + __logf(l) : RECIPE_INF;
    }
}

// delta[b, h, i] = Σ_c do[b, i, h, c] * o[b, i, h, c]; one warp per (b, i, h) row.
template <typename TD, typename TO>
__device__ void attn_bwd_delta(float* delta, const TD* dout, const TO* o, i32 bsz, i32 t, i32 hq,
                               i32 d) {
    int lane = threadIdx.x & 31;
    i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;  // (b*t + i)*hq + h
    if (row >= (i64)bsz * t * hq) return;
    float s = 0.f;
    for (int c = lane; c < d; c += 32) s += ld(dout, row * d + c) * ld(o, row * d + c);
    s = warp_sum(s);
    i64 h = row % hq, bi = row / hq, i = bi % t, b = bi / t;
    if (lane == 0) delta[(b * hq + h) * t + i] = s;
}

// dq: same tiling as the forward (8 query rows per block, 32-key tiles).
template <typename T>
__device__ void attn_bwd_dq(T* dq, const T* dout, const T* q, const T* k, const T* v,
                            const float* lse, const float* delta, const u8* kmask, const i32* seg,
                            const i32* prefix, const float* slopes, i32 t, i32 hq, i32 hkv, i32 d,
                            float scale, i32 window) {
    __shared__ float Ks[KT][DMAX + 1];
    __shared__ float Vs[KT][DMAX + 1];
    __shared__ float Qs[ROWS][DMAX];
    __shared__ float Ds[ROWS][DMAX];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    i32 b = blockIdx.z, h = blockIdx.y, i0 = blockIdx.x * ROWS, i = i0 + warp;
    i32 kvh = h / (hq / hkv);
    for (int e = threadIdx.x; e < ROWS * d; e += blockDim.x) {
        int r = e / d, c = e % d, ii = i0 + r;
        i64 src = (((i64)b * t + ii) * hq + h) * d + c;
        Qs[r][c] = ii < t ? ld(q, src) : 0.f;
        Ds[r][c] = ii < t ? ld(dout, src) : 0.f;
    }
    float slope = slopes ? slopes[h] : 0.f;
    float lse_i = i < t ? lse[((i64)b * hq + h) * t + i] : 0.f;
    float delta_i = i < t ? delta[((i64)b * hq + h) * t + i] : 0.f;
    float acc[DMAX / 32] = {};
    i32 jend = min(max(i0 + ROWS, prefix ? prefix[b] : 0), t);
    for (i32 j0 = 0; j0 < jend; j0 += KT) {
        __syncthreads();
        for (int e = threadIdx.x; e < KT * d; e += blockDim.x) {
            int r = e / d, c = e % d, jj = j0 + r;
            i64 src = (((i64)b * t + jj) * hkv + kvh) * d + c;
            Ks[r][c] = jj < t ? ld(k, src) : 0.f;
            Vs[r][c] = jj < t ? ld(v, src) : 0.f;
        }
        __syncthreads();
        if (i < t) {
            i32 j = j0 + lane;
            float ds = 0.f;
            if (visible(i, j, b, t, kmask, seg, prefix, window)) {
                float qk = 0.f, dp = 0.f;
                for (int c = 0; c < d; c++) {
                    qk += Qs[warp][c] * Ks[lane][c];
                    dp += Ds[warp][c] * Vs[lane][c];
                }
                float p = __expf(qk * scale + slope * (float)(j - i) - lse_i);
                ds = p * (dp - delta_i);
            }
            for (int jj = 0; jj < KT; jj++) {
                float dsj = __shfl_sync(0xffffffffu, ds, jj);
#pragma unroll
                for (int r = 0; r < DMAX / 32; r++) {
                    int c = lane + 32 * r;
                    if (c < d) acc[r] += dsj * Ks[jj][c];
                }
            }
        }
    }
    if (i < t) {
#pragma unroll
        for (int r = 0; r < DMAX / 32; r++) {
            int c = lane + 32 * r;
            if (c < d) st(dq, (((i64)b * t + i) * hq + h) * d + c, acc[r] * scale);
        }
    }
}

// dk, dv: 8 keys per block (one per warp) of one (b, kv head); loops over the group's query
// heads and 32-query tiles at or after the block's first key (all of them for a prefix key). No atomics: each block owns its rows.
template <typename T>
__device__ void attn_bwd_dkdv(T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                              const float* lse, const float* delta, const u8* kmask,
                              const i32* seg, const i32* prefix, const float* slopes, i32 t,
                              i32 hq, i32 hkv, i32 d, float scale, i32 window) {
    __shared__ float Qs[KT][DMAX + 1];
    __shared__ float Ds[KT][DMAX + 1];
    __shared__ float Ks[ROWS][DMAX];
    __shared__ float Vs[ROWS][DMAX];
    __shared__ float Ls[KT], Es[KT];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    i32 b = blockIdx.z, kvh = blockIdx.y, j0 = blockIdx.x * ROWS, j = j0 + warp;
    i32 group = hq / hkv;
    for (int e = threadIdx.x; e < ROWS * d; e += blockDim.x) {
        int r = e / d, c = e % d, jj = j0 + r;
        i64 src = (((i64)b * t + jj) * hkv + kvh) * d + c;
        Ks[r][c] = jj < t ? ld(k, src) : 0.f;
        Vs[r][c] = jj < t ? ld(v, src) : 0.f;
    }
    float dka[DMAX / 32] = {}, dva[DMAX / 32] = {};
    for (i32 h = kvh * group; h < (kvh + 1) * group; h++) {
        float slope = slopes ? slopes[h] : 0.f;
        // Queries before the block's first key see it only through the prefix.
        i32 qstart = (prefix && j0 < prefix[b]) ? 0 : (j0 / KT) * KT;
        for (i32 q0 = qstart; q0 < t; q0 += KT) {
            __syncthreads();
            for (int e = threadIdx.x; e < KT * d; e += blockDim.x) {
                int r = e / d, c = e % d, ii = q0 + r;
                i64 src = (((i64)b * t + ii) * hq + h) * d + c;
                Qs[r][c] = ii < t ? ld(q, src) : 0.f;
                Ds[r][c] = ii < t ? ld(dout, src) : 0.f;
            }
            if (threadIdx.x < KT) {
                i32 ii = q0 + threadIdx.x;
                Ls[threadIdx.x] = ii < t ? lse[((i64)b * hq + h) * t + ii] : RECIPE_INF;
                Es[threadIdx.x] = ii < t ? delta[((i64)b * hq + h) * t + ii] : 0.f;
            }
            __syncthreads();
            if (j < t) {
                i32 i = q0 + lane;
                float p = 0.f, ds = 0.f;
                if (visible(i, j, b, t, kmask, seg, prefix, window)) {
                    float qk = 0.f, dp = 0.f;
                    for (int c = 0; c < d; c++) {
                        qk += Qs[lane][c] * Ks[warp][c];
                        dp += Ds[lane][c] * Vs[warp][c];
                    }
                    p = __expf(qk * scale + slope * (float)(j - i) - Ls[lane]);
                    ds = p * (dp - Es[lane]);
                }
                for (int ii = 0; ii < KT; ii++) {
                    float pi = __shfl_sync(0xffffffffu, p, ii);
                    float dsi = __shfl_sync(0xffffffffu, ds, ii);
#pragma unroll
                    for (int r = 0; r < DMAX / 32; r++) {
                        int c = lane + 32 * r;
                        if (c < d) {
                            dva[r] += pi * Ds[ii][c];
                            dka[r] += dsi * Qs[ii][c];
                        }
                    }
                }
            }
        }
    }
    if (j < t) {
#pragma unroll
        for (int r = 0; r < DMAX / 32; r++) {
            int c = lane + 32 * r;
            if (c < d) {
                i64 dst = (((i64)b * t + j) * hkv + kvh) * d + c;
                st(dk, dst, dka[r] * scale);
                st(dv, dst, dva[r]);
            }
        }
    }
}

#define ATTN_KERNELS(T, S)                                                                         \
    extern "C" __global__ void __launch_bounds__(256) attn_fwd_##S(                                \
        T* o, float* lse, const T* q, const T* k, const T* v, const u8* kmask, const i32* seg,     \
        const i32* prefix, const float* slopes, i32 t, i32 hq, i32 hkv, i32 d, float scale,        \
        i32 window) {                                                                              \
        attn_fwd(o, lse, q, k, v, kmask, seg, prefix, slopes, t, hq, hkv, d, scale, window);       \
    }                                                                                              \
    extern "C" __global__ void attn_bwd_delta_##S(float* delta, const T* dout, const T* o,         \
                                                  i32 bsz, i32 t, i32 hq, i32 d) {                 \
        attn_bwd_delta(delta, dout, o, bsz, t, hq, d);                                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) attn_bwd_dq_##S(                             \
        T* dq, const T* dout, const T* q, const T* k, const T* v, const float* lse,                \
        const float* delta, const u8* kmask, const i32* seg, const i32* prefix,                    \
        const float* slopes, i32 t, i32 hq, i32 hkv, i32 d, float scale, i32 window) {             \
        attn_bwd_dq(dq, dout, q, k, v, lse, delta, kmask, seg, prefix, slopes, t, hq, hkv, d,      \
                    scale, window);                                                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) attn_bwd_dkdv_##S(                           \
        T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const float* lse,         \
        const float* delta, const u8* kmask, const i32* seg, const i32* prefix,                    \
        const float* slopes, i32 t, i32 hq, i32 hkv, i32 d, float scale, i32 window) {             \
        attn_bwd_dkdv(dk, dv, dout, q, k, v, lse, delta, kmask, seg, prefix, slopes, t, hq, hkv,   \
                      d, scale, window);                                                           \
    }
ATTN_KERNELS(float, f32)
ATTN_KERNELS(bf16, bf16)
// The fused kernels' bf16 backward: dO as the bf16 activation it is, O as saved (f32).
extern "C" __global__ void attn_bwd_delta_bf16_f32(float* delta, const bf16* dout, const float* o,
                                                   i32 bsz, i32 t, i32 hq, i32 d) {
    attn_bwd_delta(delta, dout, o, bsz, t, hq, d);
}

// Tensor-core attention (src/cuda/ops/attention_tc.rs): the products run as cuBLAS GEMMs on the
// scores of one batch row b at a time, s [hq, t, ld] f32 = scale·q·kᵀ (row length ld >= t, the
// columns past t unused); these kernels are its elementwise part, with the masks, ALiBi and lse
// of the kernels above.
// Forward: lse_i = log Σ_j exp(s_ij + slope_h (j - i)) over visible j (+inf if none);
//          p_ij = exp(s_ij + slope_h (j - i) - lse_i) on visible keys, 0 elsewhere (bf16, the
//          next GEMM's operand). lse is [B, hq, t] as attn_fwd's.
// One block of 256 threads per (h, i) row: thread k holds keys k, k + 256, ... (up to
// TC_REG·256 = 4096 keys) in registers, so each visible score is read once and the mask is
// evaluated once; hidden keys (the causal upper triangle) are never read. Keys past 4096 are
// re-read in each of the three passes.
// P is bf16 (`attn_tc_softmax_f32`, bf16 mode) or f32 (`attn_tc_softmax_p32`, f32 mode's
// products on f32 operands).
#define TC_THREADS 256
#define TC_REG 16
template <typename TP>
__device__ void attn_tc_softmax(TP* p, float* lse, const float* s, const u8* kmask, const i32* seg,
                                const i32* prefix, const float* slopes, i32 b, i32 t, i32 ld,
                                i32 hq, i32 window) {
    __shared__ float scratch[32];
    i64 row = blockIdx.x;  // h * t + i
    i32 h = row / t, i = row % t;
    float slope = slopes ? slopes[h] : 0.f;
    i32 segi = seg ? seg[(i64)b * t + i] : 0, pre = prefix ? prefix[b] : 0;
    const float* sr = s + row * ld;
    float x[TC_REG];
    float m = -RECIPE_INF;
#pragma unroll
    for (int c = 0; c < TC_REG; c++) {
        i32 j = threadIdx.x + c * TC_THREADS;
        x[c] = -RECIPE_INF;
        if (visible_q(i, j, b, t, kmask, seg, segi, pre, window)) x[c] = sr[j] + slope * (float)(j - i);
        m = fmaxf(m, x[c]);
    }
    for (i32 j = threadIdx.x + TC_REG * TC_THREADS; j < t; j += TC_THREADS)
        if (visible_q(i, j, b, t, kmask, seg, segi, pre, window)) m = fmaxf(m, sr[j] + slope * (float)(j - i));
    m = block_max(m, scratch);
    float l = 0.f;
    if (m != -RECIPE_INF) {
#pragma unroll
        for (int c = 0; c < TC_REG; c++) l += x[c] == -RECIPE_INF ? 0.f : __expf(x[c] - m);
        for (i32 j = threadIdx.x + TC_REG * TC_THREADS; j < t; j += TC_THREADS)
            if (visible_q(i, j, b, t, kmask, seg, segi, pre, window))
                l += __expf(sr[j] + slope * (float)(j - i) - m);
    }
    l = block_sum(l, scratch);
    float ls = l > 0.f ? m + __logf(l) : RECIPE_INF;
    TP* pr = p + row * ld;
#pragma unroll
    for (int c = 0; c < TC_REG; c++) {
        i32 j = threadIdx.x + c * TC_THREADS;
        if (j < t) st(pr, j, l > 0.f && x[c] != -RECIPE_INF ? __expf(x[c] - ls) : 0.f);
    }
    for (i32 j = threadIdx.x + TC_REG * TC_THREADS; j < t; j += TC_THREADS) {
        bool ok = l > 0.f && visible_q(i, j, b, t, kmask, seg, segi, pre, window);
        st(pr, j, ok ? __expf(sr[j] + slope * (float)(j - i) - ls) : 0.f);
    }
    if (threadIdx.x == 0) lse[((i64)b * hq + h) * t + i] = ls;
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
    attn_tc_softmax_f32(bf16* p, float* lse, const float* s, const u8* kmask, const i32* seg,
                        const i32* prefix, const float* slopes, i32 b, i32 t, i32 ld, i32 hq,
                        i32 window) {
    attn_tc_softmax(p, lse, s, kmask, seg, prefix, slopes, b, t, ld, hq, window);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
    attn_tc_softmax_p32(float* p, float* lse, const float* s, const u8* kmask, const i32* seg,
                        const i32* prefix, const float* slopes, i32 b, i32 t, i32 ld, i32 hq,
                        i32 window) {
    attn_tc_softmax(p, lse, s, kmask, seg, prefix, slopes, b, t, ld, hq, window);
}

// Backward: with s recomputed by the same GEMM and dp [hq, t, ld] = do·vᵀ,
// p_ij = exp(s_ij + slope_h (j - i) - lse_i) on visible keys (0 elsewhere and for lse = +inf),
// ds_ij = p_ij (dp_ij - delta_i) (delta as attn_bwd_delta); both bf16 (`_f32`) or f32 (`_p32`)
// for the GEMMs dv = pᵀ·do, dq = scale·ds·k, dk = scale·dsᵀ·q. One warp per (h, i) row; s and
// dp are read only where the key is visible.
template <typename TP>
__device__ void attn_tc_bwd_ds(TP* p, TP* ds, const float* s, const float* dp, const float* lse,
                               const float* delta, const u8* kmask, const i32* seg,
                               const i32* prefix, const float* slopes, i32 b, i32 t, i32 ld,
                               i32 hq, i32 window) {
    int lane = threadIdx.x & 31;
    i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;  // h * t + i
    if (row >= (i64)hq * t) return;
    i32 h = row / t, i = row % t;
    float slope = slopes ? slopes[h] : 0.f;
    i64 li = ((i64)b * hq + h) * t + i, r0 = row * ld;
    float ls = lse[li], de = delta[li];
    i32 segi = seg ? seg[(i64)b * t + i] : 0, pre = prefix ? prefix[b] : 0;
    for (i32 j = lane; j < t; j += 32) {
        float pj = 0.f, dsj = 0.f;
        if (ls != RECIPE_INF && visible_q(i, j, b, t, kmask, seg, segi, pre, window)) {
            pj = __expf(s[r0 + j] + slope * (float)(j - i) - ls);
            dsj = pj * (dp[r0 + j] - de);
        }
        st(p, r0 + j, pj);
        st(ds, r0 + j, dsj);
    }
}
extern "C" __global__ void attn_tc_bwd_ds_f32(bf16* p, bf16* ds, const float* s, const float* dp,
                                              const float* lse, const float* delta,
                                              const u8* kmask, const i32* seg, const i32* prefix,
                                              const float* slopes, i32 b, i32 t, i32 ld,
                                              i32 hq, i32 window) {
    attn_tc_bwd_ds(p, ds, s, dp, lse, delta, kmask, seg, prefix, slopes, b, t, ld, hq, window);
}
extern "C" __global__ void attn_tc_bwd_ds_p32(float* p, float* ds, const float* s, const float* dp,
                                              const float* lse, const float* delta,
                                              const u8* kmask, const i32* seg, const i32* prefix,
                                              const float* slopes, i32 b, i32 t, i32 ld,
                                              i32 hq, i32 window) {
    attn_tc_bwd_ds(p, ds, s, dp, lse, delta, kmask, seg, prefix, slopes, b, t, ld, hq, window);
}

// Attention of new queries over a KV cache (generation), the CPU backend's
// `attention_cached_fwd`. q, out: [b*tn, nh, hd]; k, v: [b*cap, nkv, hd] (cache slots);
// valid: [b*cap] u8; slopes: [nh] and kpos: [b*cap] f32 (ALiBi, both null when off).
// Query i of row bi sits in cache slot past+i and sees slot j iff j <= past+i, valid[j] != 0 and
// (window w > 0) j + w > past+i. Score s_j = scale*q·k_j (+ slopes[h]*kpos[j]); out = softmax·v;
// a query whose own slot is invalid outputs 0. GQA: kv head h / (nh/nkv).
// One block of 256 threads per (row·query, head); keys in chunks of 256 with an online softmax:
// each warp scores 32 keys of the chunk (lanes over hd, warp sum), then thread d < hd accumulates
// acc_d = acc_d·e^(m_old - m_new) + Σ_j p_j v_j[d]; out = acc / l. hd <= 256.
#define CACHED_THREADS 256
extern "C" __global__ void __launch_bounds__(CACHED_THREADS)
    attn_cached_fwd_f32(float* out, const float* q, const float* k, const float* v, const u8* valid,
                        const float* slopes, const float* kpos, i32 tn, i32 nh, i32 nkv, i32 hd,
                        i32 cap, i32 past, i32 window, float scale) {
    __shared__ float Qs[CACHED_THREADS];
    __shared__ float P[CACHED_THREADS];
    __shared__ float scratch[32];
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = CACHED_THREADS / 32;
    i64 ti = blockIdx.x;  // row * tn + query
    i32 h = blockIdx.y, g = h / (nh / nkv);
    i64 bi = ti / tn;
    i32 i = ti % tn, last = past + i;  // the query's own slot (in its row)
    float* o = out + (ti * nh + h) * hd;
    if (valid[bi * cap + last] == 0) {
        if (tid < hd) o[tid] = 0.f;
        return;
    }
    if (tid < hd) Qs[tid] = q[(ti * nh + h) * hd + tid];
    __syncthreads();
    float slope = slopes ? slopes[h] : 0.f;
    i32 first = (window > 0 && last + 1 - window > 0) ? last + 1 - window : 0;
    float m = -RECIPE_INF, l = 0.f, acc = 0.f;
    for (i32 j0 = first; j0 <= last; j0 += CACHED_THREADS) {
        for (int jj = warp; jj < CACHED_THREADS; jj += nw) {
            i32 j = j0 + jj;
            i64 slot = bi * cap + j;
            bool ok = j <= last && valid[slot] != 0;  // uniform across the warp
            float s = -RECIPE_INF;
            if (ok) {
                const float* kj = k + (slot * nkv + g) * hd;
                float dot = 0.f;
                for (int d = lane; d < hd; d += 32) dot += Qs[d] * kj[d];
                s = warp_sum(dot) * scale;
                if (slopes) s += slope * kpos[slot];
            }
            if (lane == 0) P[jj] = s;
        }
        __syncthreads();
        float s = P[tid];
        float mnew = fmaxf(m, block_max(s, scratch));
        float p = s == -RECIPE_INF ? 0.f : expf(s - mnew);
        float alpha = m == -RECIPE_INF ? 0.f : expf(m - mnew);
        l = l * alpha + block_sum(p, scratch);
        P[tid] = p;
        __syncthreads();
        if (tid < hd) {
            acc *= alpha;
            i32 cnt = min(CACHED_THREADS, last + 1 - j0);
            for (int jj = 0; jj < cnt; jj++) {
                float pj = P[jj];
                if (pj != 0.f) acc += pj * v[((bi * cap + j0 + jj) * nkv + g) * hd + tid];
            }
        }
        m = mnew;
        __syncthreads();
    }
    if (tid < hd) o[tid] = l > 0.f ? acc / l : 0.f;
}
