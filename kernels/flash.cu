// flash.cu: fused attention on bf16 tensor cores (mma.sync m16n8k16, f32 accumulate) for bf16
// compute mode's training: the scores never leave the chip (no T x T buffer), and the causal upper
// triangle (and what a sliding window hides) is skipped a tile at a time. Each kernel comes in two
// element types for q, k, v, o and dout (the `_f32` and `_bf16` names): f32 (narrowed to bf16 as
// the tiles are staged in shared memory) or bf16 (the backend's bf16 activations, copied into
// shared memory by cp.async); dq, dk, dv, lse and delta are f32 in both. Tiles are stored row by
// row as in global memory; every operand fragment is read by ldmatrix, transposed (.trans) where
// the tile's rows are the product's reduction index (V in P·V, K in dS·K, Q and dO in the dK and
// dV products), so nothing is transposed while staged.
//
// q, o, dq, do: [B, T, Hq, D];  k, v, dk, dv: [B, T, Hkv, D];  lse, delta: [B, Hq, T] f32.
// Query head h reads kv head h / (Hq/Hkv). Key j is visible to query i iff (j <= i or
// j < prefix[b]) and kmask[b,j] != 0 and seg[b,i] == seg[b,j] and (window w = 0 or j + w > i):
// attention.cu's rule. s_ij = scale·q_i·k_j + slope_h·(j − i) (ALiBi).
// Forward:   m, l online over key tiles (FlashAttention-2): o_i = Σ_j e^(s_ij − m_i) v_j / l_i;
//            lse_i = m_i + log l_i (+inf and o_i = 0 for a row that sees no key).
// Backward:  p_ij = e^(s_ij − lse_i); delta_i = do_i·o_i (attn_bwd_delta); dp_ij = do_i·v_j;
//            ds_ij = p_ij (dp_ij − delta_i); dq_i = scale Σ_j ds_ij k_j (flash_bwd_dq, one block
//            per query tile); dk_j = scale Σ_i ds_ij q_i, dv_j = Σ_i p_ij do_i (flash_bwd_dkdv,
//            one block per key tile, looping over the group's query heads). Two kernels instead of
//            FlashAttention-2's atomics: S and dP are computed twice, the result is deterministic.
// Operands of each product are rounded to bf16 (q, k, v, do, p, ds); sums are f32.
// Heads: DP = 32, 64 or 128 (D <= DP; columns past D are zero). 4 warps of 16 rows each.
// Nullable pointers (kmask, seg, prefix, slopes) are passed as 0.

#define FBR 64   // forward / dq: query rows per block (16 per warp)
#define FBC 64   // forward: keys per tile
#define FBK 32   // dq: keys per tile; dkdv: queries per tile
#define FPAD 8   // bf16 row padding of every shared tile (rows stay 16-byte aligned)

// dst[r][c] = bf16(src row (r0 + r), column c) for r < rows, c < DP; zero past t or d. Rows of src
// are `stride` floats apart (the [B, T, H, D] row of one head). VEC: with d % 4 == 0 and src
// 16-byte aligned (then every row is: stride is a multiple of d), 16-byte loads and 8-byte stores.
// The forward's f32 variant stages element by element (stage_async's VEC false): the vector path
// costs registers the forward's pipeline already uses.
template <int DP, bool VEC = true>
__device__ __forceinline__ void stage_rows(bf16 (*dst)[DP + FPAD], const float* src, i64 stride,
                                           i32 r0, int rows, i32 t, i32 d) {
    if (VEC && d % 4 == 0 && ((u64)src & 15) == 0) {
        for (int e = threadIdx.x; e < rows * DP / 4; e += blockDim.x) {
            int r = e / (DP / 4), c = 4 * (e % (DP / 4));
            i32 rr = r0 + r;
            float4 v = {0.f, 0.f, 0.f, 0.f};
            if (rr < t && c < d) v = *(const float4*)&src[(i64)rr * stride + c];
            uint2 packed = {pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w)};
            *(uint2*)&dst[r][c] = packed;
        }
        return;
    }
    for (int e = threadIdx.x; e < rows * DP; e += blockDim.x) {
        int r = e / DP, c = e % DP;
        i32 rr = r0 + r;
        dst[r][c] = __float2bfloat16(rr < t && c < d ? src[(i64)rr * stride + c] : 0.f);
    }
}

// stage_rows from bf16 rows: the same tile, copied (8-byte loads of 4 values when d % 4 == 0
// and src is 8-byte aligned).
template <int DP, bool VEC = true>
__device__ __forceinline__ void stage_rows(bf16 (*dst)[DP + FPAD], const bf16* src, i64 stride,
                                           i32 r0, int rows, i32 t, i32 d) {
    if (VEC && d % 4 == 0 && ((u64)src & 7) == 0) {
        for (int e = threadIdx.x; e < rows * DP / 4; e += blockDim.x) {
            int r = e / (DP / 4), c = 4 * (e % (DP / 4));
            i32 rr = r0 + r;
            uint2 v = {0u, 0u};
            if (rr < t && c < d) v = *(const uint2*)&src[(i64)rr * stride + c];
            *(uint2*)&dst[r][c] = v;
        }
        return;
    }
    for (int e = threadIdx.x; e < rows * DP; e += blockDim.x) {
        int r = e / DP, c = e % DP;
        i32 rr = r0 + r;
        dst[r][c] = rr < t && c < d ? src[(i64)rr * stride + c] : __float2bfloat16(0.f);
    }
}

// Tile rows r0.. of src into dst, as stage_rows, but by cp.async when src is bf16 with
// d % 8 == 0 and 16-byte aligned (one 16-byte copy per 8 values, zero-filled past t or d): the
// copies land while the warps compute, visible after cp_async_wait and a barrier. Otherwise (f32
// sources, odd head dims) synchronously by stage_rows (VEC false: the forward's register budget).
// The caller commits the group either way.
template <int DP, bool VEC = false>
__device__ __forceinline__ void stage_async(bf16 (*dst)[DP + FPAD], const bf16* src, i64 stride,
                                            i32 r0, int rows, i32 t, i32 d) {
    if (d % 8 == 0 && ((u64)src & 15) == 0) {
        for (int e = threadIdx.x; e < rows * DP / 8; e += blockDim.x) {
            int r = e / (DP / 8), c = 8 * (e % (DP / 8));
            i32 rr = r0 + r;
            bool in = rr < t && c < d;
            cp_async16(&dst[r][c], in ? &src[(i64)rr * stride + c] : src, in);
        }
        return;
    }
    stage_rows<DP, VEC>(dst, src, stride, r0, rows, t, d);
}
template <int DP, bool VEC = false>
__device__ __forceinline__ void stage_async(bf16 (*dst)[DP + FPAD], const float* src, i64 stride,
                                            i32 r0, int rows, i32 t, i32 d) {
    stage_rows<DP, VEC>(dst, src, stride, r0, rows, t, d);
}

// Operand fragments come from shared tiles by ldmatrix (ldsm_x4): lane 8i + r addresses row r of
// the 8x8 matrix i that lands in register i. i = lane >> 3, r = lane & 7 below.

// A-operand fragments of a warp's 16 rows (row0..row0+15 of tile) over DP columns: matrix i is
// rows + 8·(i & 1), columns + 8·(i >> 1) of each 16-column step.
template <int DP>
__device__ __forceinline__ void frag_a(u32 (*a)[4], bf16 (*tile)[DP + FPAD], int row0) {
    int lane = threadIdx.x & 31, i = lane >> 3, r = lane & 7;
#pragma unroll
    for (int kk = 0; kk < DP / 16; kk++)
        ldsm_x4<false>(a[kk], &tile[row0 + r + 8 * (i & 1)][kk * 16 + 8 * (i >> 1)]);
}

// acc[n][·] += A · B for a warp: A from fragments a [16 × K], B [K × N] from the shared tile bt,
// stored either as Bᵀ [N][K + pad] (TRANS false: its rows are the output columns, as K in
// S = Q·Kᵀ; ldmatrix matrix i is n-tile n + (i >> 1), columns + 8·(i & 1)) or as B [K][N + pad]
// (TRANS true: its rows are the reduction index, as V in P·V, read by ldmatrix.trans; matrix i is
// rows + 8·(i & 1), n-tile n + (i >> 1)). One ldmatrix gives the B registers of two n-tiles.
template <bool TRANS, int K, int N, int LD>
__device__ __forceinline__ void mma_tile(float (*acc)[4], const u32 (*a)[4], bf16 (*bt)[LD]) {
    static_assert(N % 16 == 0, "n-tiles are loaded in pairs");
    int lane = threadIdx.x & 31, i = lane >> 3, r = lane & 7;
#pragma unroll
    for (int kk = 0; kk < K / 16; kk++)
#pragma unroll
        for (int n = 0; n < N / 8; n += 2) {
            u32 b[4];
            ldsm_x4<TRANS>(b, TRANS ? &bt[kk * 16 + r + 8 * (i & 1)][(n + (i >> 1)) * 8]
                                    : &bt[(n + (i >> 1)) * 8 + r][kk * 16 + 8 * (i & 1)]);
            mma_bf16_16816(acc[n], a[kk], b);
            mma_bf16_16816(acc[n + 1], a[kk], b + 2);
        }
}

// A fragments from an accumulator [16 × K] (K/8 n-tiles of 4): the C layout of one product is
// the A layout of the next (FlashAttention-2's P·V without a trip through shared memory).
template <int K>
__device__ __forceinline__ void acc_to_a(u32 (*a)[4], const float (*c)[4]) {
#pragma unroll
    for (int kk = 0; kk < K / 16; kk++) {
        a[kk][0] = pack_bf16x2(c[2 * kk][0], c[2 * kk][1]);
        a[kk][1] = pack_bf16x2(c[2 * kk][2], c[2 * kk][3]);
        a[kk][2] = pack_bf16x2(c[2 * kk + 1][0], c[2 * kk + 1][1]);
        a[kk][3] = pack_bf16x2(c[2 * kk + 1][2], c[2 * kk + 1][3]);
    }
}

// The masks of one key tile, staged once: ok[j] = key j0+j exists and is not padding; sg[j] its
// segment id.
template <int N>
__device__ __forceinline__ void stage_keys(u8* ok, i32* sg, const u8* kmask, const i32* seg,
                                           i32 b, i32 j0, i32 t) {
    for (int e = threadIdx.x; e < N; e += blockDim.x) {
        i32 j = j0 + e;
        ok[e] = j < t && (!kmask || kmask[(i64)b * t + j] != 0);
        sg[e] = (seg && j < t) ? seg[(i64)b * t + j] : 0;
    }
}

// Whether query i (segment segi) sees key j (staged as ok, sgj), given prefix pre and window w.
__device__ __forceinline__ bool sees(i32 i, i32 j, i32 t, bool ok, i32 sgj, i32 segi, i32 pre,
                                     i32 w) {
    return i < t && ok && (j <= i || j < pre) && sgj == segi && (w == 0 || j + w > i);
}

// Masks are checked element by element only where they can hide something. A warp's rows are
// "plain" when all are real queries of one segment (rs); a tile of N staged keys is then fully
// visible to them when its keys are real keys of segment rs, all at or before the warp's first
// row (causal) and inside the window of its last one. Both tests are warp-uniform.
__device__ __forceinline__ bool rows_plain(i32* rs, const i32* ri, const i32* segi, i32 t) {
    float s0 = __shfl_sync(0xffffffffu, (float)segi[0], 0);
    bool ok = ri[0] < t && ri[1] < t && (float)segi[0] == s0 && (float)segi[1] == s0;
    *rs = (i32)s0;
    return warp_sum(ok ? 1.f : 0.f) == 32.f;
}
template <int N>
__device__ __forceinline__ bool keys_in_segment(const u8* ok, const i32* sg, i32 rs) {
    float c = 0.f;
    for (int e = threadIdx.x & 31; e < N; e += 32) c += (ok[e] && sg[e] == rs) ? 1.f : 0.f;
    return warp_sum(c) == (float)N;
}

// Rows a warp holds in the C layout: element e of a tile sits at row g + 8·(e >> 1), column
// 2·tq + (e & 1) of its 8-wide n-tile.
#define CROW(e) (g + 8 * ((e) >> 1))
#define CCOL(n, e) ((n) * 8 + 2 * tq + ((e) & 1))

// Grid (ceil(t / FBR), hq, batch), 128 threads. Query tiles run longest-first (the causal tail).
// K and V tiles are two cp.async groups on one buffer each: the next tile's K lands while this
// tile's softmax and P·V run, its V while the next S = Q·Kᵀ runs (FlashAttention-2's pipeline).
template <int DP, typename T>
__device__ void flash_fwd(T* o, float* lse, const T* q, const T* k, const T* v,
                          const u8* kmask, const i32* seg, const i32* prefix, const float* slopes,
                          i32 t, i32 hq, i32 hkv, i32 d, float scale, i32 window) {
    __shared__ __align__(16) bf16 Ks[FBC][DP + FPAD];  // the Q tile first, then each K tile
    __shared__ __align__(16) bf16 Vs[FBC][DP + FPAD];  // V tile [key][dim]
    __shared__ u8 Kok[2][FBC];                         // the key masks of this and the next tile
    __shared__ i32 Kseg[2][FBC];
    static_assert(FBR == FBC, "the Q tile is staged in the K tile's buffer");
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    i32 b = blockIdx.z, h = blockIdx.y, i0 = (gridDim.x - 1 - blockIdx.x) * FBR;
    i32 kvh = h / (hq / hkv), iw = i0 + warp * 16;
    i64 qs = (i64)hq * d, ks = (i64)hkv * d;
    const T* qb = q + (i64)b * t * qs + (i64)h * d;
    const T* kb = k + (i64)b * t * ks + (i64)kvh * d;
    const T* vb = v + (i64)b * t * ks + (i64)kvh * d;
    stage_async<DP>(Ks, qb, qs, i0, FBR, t, d);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    u32 qa[DP / 16][4];
    frag_a<DP>(qa, Ks, warp * 16);
    float slope = slopes ? slopes[h] : 0.f;
    i32 pre = prefix ? prefix[b] : 0;
    i32 ri[2] = {iw + g, iw + g + 8}, segi[2];
#pragma unroll
    for (int x = 0; x < 2; x++) segi[x] = (seg && ri[x] < t) ? seg[(i64)b * t + ri[x]] : 0;
    i32 rs;
    bool plain = rows_plain(&rs, ri, segi, t);
    float m[2] = {-RECIPE_INF, -RECIPE_INF}, l[2] = {0.f, 0.f}, acc[DP / 8][4] = {};
    i32 jend = min(t, max(i0 + FBR, pre));
    i32 jbeg = window > 0 ? max(0, i0 - window + 1) / FBC * FBC : 0;
    __syncthreads();  // every warp holds its Q fragments: Ks takes the K tiles
    if (jbeg < jend) {
        stage_async<DP>(Ks, kb, ks, jbeg, FBC, t, d);
        cp_async_commit();
        stage_async<DP>(Vs, vb, ks, jbeg, FBC, t, d);
        cp_async_commit();
        stage_keys<FBC>(Kok[0], Kseg[0], kmask, seg, b, jbeg, t);
    }
    for (i32 j0 = jbeg, u = 0; j0 < jend; j0 += FBC, u ^= 1) {
        bool more = j0 + FBC < jend;
        cp_async_wait<1>();  // this tile's K (its V may still be in flight)
        __syncthreads();
        // Warp-uniform: the warp's rows see nothing of this tile (past the diagonal or the window).
        bool none = (j0 > iw + 15 && j0 >= pre) || (window > 0 && j0 + FBC - 1 + window <= iw);
        bool full = !none && plain && j0 + FBC - 1 <= iw &&
                    (window == 0 || j0 + window > iw + 15) &&
                    keys_in_segment<FBC>(Kok[u], Kseg[u], rs);
        float s[FBC / 8][4] = {};
        if (!none) mma_tile<false, DP, FBC, DP + FPAD>(s, qa, Ks);
        __syncthreads();  // Ks is read: the next K tile may land in it
        if (more) {
            stage_async<DP>(Ks, kb, ks, j0 + FBC, FBC, t, d);
            cp_async_commit();
            stage_keys<FBC>(Kok[u ^ 1], Kseg[u ^ 1], kmask, seg, b, j0 + FBC, t);
        }
        u32 pa[FBC / 16][4];
        if (!none) {
            float mx[2] = {-RECIPE_INF, -RECIPE_INF};
#pragma unroll
            for (int n = 0; n < FBC / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int x = e >> 1, jl = CCOL(n, e);
                    i32 i = ri[x], j = j0 + jl;
                    s[n][e] = (full || sees(i, j, t, Kok[u][jl], Kseg[u][jl], segi[x], pre, window))
                                  ? s[n][e] * scale + slope * (float)(j - i)
                                  : -RECIPE_INF;
                    mx[x] = fmaxf(mx[x], s[n][e]);
                }
            float alpha[2], sum[2] = {0.f, 0.f};
#pragma unroll
            for (int x = 0; x < 2; x++) {
                mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 1));
                mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 2));
                float mnew = fmaxf(m[x], mx[x]);
                alpha[x] = (m[x] == -RECIPE_INF) ? 0.f : __expf(m[x] - mnew);
                m[x] = mnew;
            }
#pragma unroll
            for (int n = 0; n < FBC / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int x = e >> 1;
                    s[n][e] = s[n][e] == -RECIPE_INF ? 0.f : __expf(s[n][e] - m[x]);
                    sum[x] += s[n][e];
                }
#pragma unroll
            for (int x = 0; x < 2; x++) {
                sum[x] += __shfl_xor_sync(0xffffffffu, sum[x], 1);
                sum[x] += __shfl_xor_sync(0xffffffffu, sum[x], 2);
                l[x] = l[x] * alpha[x] + sum[x];
            }
#pragma unroll
            for (int n = 0; n < DP / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[n][e] *= alpha[e >> 1];
            acc_to_a<FBC>(pa, s);
        }
        if (more)
            cp_async_wait<1>();  // this tile's V (the next K may still be in flight)
        else
            cp_async_wait<0>();
        __syncthreads();
        if (!none) mma_tile<true, FBC, DP, DP + FPAD>(acc, pa, Vs);
        __syncthreads();  // Vs is read
        if (more) {
            stage_async<DP>(Vs, vb, ks, j0 + FBC, FBC, t, d);
            cp_async_commit();
        }
    }
    T* ob = o + (i64)b * t * qs + (i64)h * d;
#pragma unroll
    for (int n = 0; n < DP / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int x = e >> 1, c = CCOL(n, e);
            if (ri[x] < t && c < d) st(ob, (i64)ri[x] * qs + c, l[x] > 0.f ? acc[n][e] / l[x] : 0.f);
        }
    if (tq == 0)
#pragma unroll
        for (int x = 0; x < 2; x++)
            if (ri[x] < t)
                lse[((i64)b * hq + h) * t + ri[x]] = l[x] > 0.f ? m[x] + __logf(l[x]) : RECIPE_INF;
}

// dq: grid (ceil(t / FBR), hq, batch), 128 threads; key tiles of FBK. dq is overwritten.
// Double-buffered: the next tile's K and V (one cp.async group) land while this one is used.
template <int DP, typename T>
__device__ void flash_bwd_dq(float* dq, const T* dout, const T* q, const T* k,
                             const T* v, const float* lse, const float* delta,
                             const u8* kmask, const i32* seg, const i32* prefix,
                             const float* slopes, i32 t, i32 hq, i32 hkv, i32 d, float scale,
                             i32 window) {
    // Q, then dO (FBR rows), for the fragments; then two buffers of a K and a V tile.
    __shared__ __align__(16) bf16 Sm[4 * FBK][DP + FPAD];
    __shared__ u8 Kok[2][FBK];
    __shared__ i32 Kseg[2][FBK];
    static_assert(FBR == 2 * FBK, "the Q / dO tile is the first K / V buffer");
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    i32 b = blockIdx.z, h = blockIdx.y, i0 = (gridDim.x - 1 - blockIdx.x) * FBR;
    i32 kvh = h / (hq / hkv), iw = i0 + warp * 16;
    i64 qs = (i64)hq * d, ks = (i64)hkv * d;
    i64 qoff = (i64)b * t * qs + (i64)h * d, koff = (i64)b * t * ks + (i64)kvh * d;
    u32 qa[DP / 16][4], da[DP / 16][4];
    stage_async<DP, true>(Sm, q + qoff, qs, i0, FBR, t, d);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    frag_a<DP>(qa, Sm, warp * 16);
    __syncthreads();
    stage_async<DP, true>(Sm, dout + qoff, qs, i0, FBR, t, d);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    frag_a<DP>(da, Sm, warp * 16);
    float slope = slopes ? slopes[h] : 0.f;
    i32 pre = prefix ? prefix[b] : 0;
    i32 ri[2] = {iw + g, iw + g + 8}, segi[2];
    float ls[2], de[2];
#pragma unroll
    for (int x = 0; x < 2; x++) {
        bool in = ri[x] < t;
        i64 li = ((i64)b * hq + h) * t + ri[x];
        segi[x] = (seg && in) ? seg[(i64)b * t + ri[x]] : 0;
        ls[x] = in ? lse[li] : RECIPE_INF;
        de[x] = in ? delta[li] : 0.f;
    }
    i32 rs;
    bool plain = rows_plain(&rs, ri, segi, t);
    float acc[DP / 8][4] = {};
    i32 jend = min(t, max(i0 + FBR, pre));
    i32 jbeg = window > 0 ? max(0, i0 - window + 1) / FBK * FBK : 0;
    __syncthreads();  // every warp holds its fragments: Sm takes the K / V tiles
    if (jbeg < jend) {
        stage_async<DP, true>(Sm, k + koff, ks, jbeg, FBK, t, d);
        stage_async<DP, true>(Sm + FBK, v + koff, ks, jbeg, FBK, t, d);
        cp_async_commit();
        stage_keys<FBK>(Kok[0], Kseg[0], kmask, seg, b, jbeg, t);
    }
    for (i32 j0 = jbeg, u = 0; j0 < jend; j0 += FBK, u ^= 1) {
        bf16(*Ks)[DP + FPAD] = Sm + 2 * FBK * u;
        bf16(*Vs)[DP + FPAD] = Ks + FBK;
        if (j0 + FBK < jend) {  // the next tile into the other buffer (read before the last barrier)
            stage_async<DP, true>(Sm + 2 * FBK * (u ^ 1), k + koff, ks, j0 + FBK, FBK, t, d);
            stage_async<DP, true>(Sm + 2 * FBK * (u ^ 1) + FBK, v + koff, ks, j0 + FBK, FBK, t, d);
            cp_async_commit();
            stage_keys<FBK>(Kok[u ^ 1], Kseg[u ^ 1], kmask, seg, b, j0 + FBK, t);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        bool none = (j0 > iw + 15 && j0 >= pre) || (window > 0 && j0 + FBK - 1 + window <= iw);
        if (!none) {
            bool full = plain && j0 + FBK - 1 <= iw && (window == 0 || j0 + window > iw + 15) &&
                        keys_in_segment<FBK>(Kok[u], Kseg[u], rs);
            float s[FBK / 8][4] = {}, dp[FBK / 8][4] = {};
            mma_tile<false, DP, FBK, DP + FPAD>(s, qa, Ks);
            mma_tile<false, DP, FBK, DP + FPAD>(dp, da, Vs);
#pragma unroll
            for (int n = 0; n < FBK / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int x = e >> 1, jl = CCOL(n, e);
                    i32 i = ri[x], j = j0 + jl;
                    float p = 0.f;
                    if (full || (ls[x] != RECIPE_INF &&
                                 sees(i, j, t, Kok[u][jl], Kseg[u][jl], segi[x], pre, window)))
                        p = __expf(s[n][e] * scale + slope * (float)(j - i) - ls[x]);
                    s[n][e] = p * (dp[n][e] - de[x]);  // ds
                }
            u32 dsa[FBK / 16][4];
            acc_to_a<FBK>(dsa, s);
            mma_tile<true, FBK, DP, DP + FPAD>(acc, dsa, Ks);
        }
        __syncthreads();  // buffer u is read: the tile after next lands in it
    }
    float* out = dq + qoff;
#pragma unroll
    for (int n = 0; n < DP / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int x = e >> 1, c = CCOL(n, e);
            if (ri[x] < t && c < d) out[(i64)ri[x] * qs + c] = acc[n][e] * scale;
        }
}

// dk, dv: grid (ceil(t / FBR), hkv, batch), 128 threads: a block owns FBR keys (16 per warp) of
// one kv head and loops over the group's query heads and query tiles of QT (16 at DP 128, where
// 32 would spill: four [16 × DP] operand and accumulator sets live in registers). The products run
// transposed (keys as rows): Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, dV += Pᵀ·dO, dK += dSᵀ·Q. Overwritten.
template <int DP, int QT, typename T>
__device__ void flash_bwd_dkdv(float* dk, float* dv, const T* dout, const T* q,
                               const T* k, const T* v, const float* lse,
                               const float* delta, const u8* kmask, const i32* seg,
                               const i32* prefix, const float* slopes, i32 t, i32 hq, i32 hkv,
                               i32 d, float scale, i32 window) {
    // One buffer: the K and V tiles (FBR rows) for the fragments, then two buffers (DB) of a Q
    // and a dO tile (QT rows each) for the loop: the next (head, query tile)'s land while this
    // one is used. At DP 128 the second buffer's bookkeeping would spill (255 registers hold
    // four [16 × DP] fragment sets), so there one buffer is staged, waited for and used in turn.
    constexpr bool DB = DP < 128;
    constexpr int QROWS = (DB ? 4 : 2) * QT;  // the Q / dO buffers
    constexpr int ROWS = QROWS > FBR ? QROWS : FBR;
    __shared__ __align__(16) bf16 buf[ROWS][DP + FPAD];
    __shared__ float Ls[2][QT], Es[2][QT];
    __shared__ u8 Qok[2][QT];
    __shared__ i32 Qseg[2][QT];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    i32 b = blockIdx.z, kvh = blockIdx.y, j0 = (gridDim.x - 1 - blockIdx.x) * FBR;
    i32 group = hq / hkv, jw = j0 + warp * 16;
    i64 qs = (i64)hq * d, ks = (i64)hkv * d;
    i64 koff = (i64)b * t * ks + (i64)kvh * d;
    u32 ka[DP / 16][4], va[DP / 16][4];
    stage_rows<DP>(buf, k + koff, ks, j0, FBR, t, d);
    __syncthreads();
    frag_a<DP>(ka, buf, warp * 16);
    __syncthreads();
    stage_rows<DP>(buf, v + koff, ks, j0, FBR, t, d);
    __syncthreads();
    frag_a<DP>(va, buf, warp * 16);
    i32 pre = prefix ? prefix[b] : 0;
    // The warp's keys as rows: rj[x] (x = 0, 1 for rows g, g + 8), their staged masks.
    i32 rj[2] = {jw + g, jw + g + 8}, sgj[2];
    bool okj[2];
#pragma unroll
    for (int x = 0; x < 2; x++) {
        bool in = rj[x] < t;
        okj[x] = in && (!kmask || kmask[(i64)b * t + rj[x]] != 0);
        sgj[x] = (seg && in) ? seg[(i64)b * t + rj[x]] : 0;
    }
    // The warp's keys are plain when all are real keys of one segment (rs).
    float s0 = __shfl_sync(0xffffffffu, (float)sgj[0], 0);
    bool kok = okj[0] && okj[1] && (float)sgj[0] == s0 && (float)sgj[1] == s0;
    bool plain = warp_sum(kok ? 1.f : 0.f) == 32.f;
    i32 rs = (i32)s0;
    float dka[DP / 8][4] = {}, dva[DP / 8][4] = {};
    // Queries before the block's first key see it only through the prefix; past the window none.
    i32 qbeg = j0 < pre ? 0 : j0 / QT * QT;
    i32 qend = window > 0 ? min(t, j0 + FBR - 1 + window) : t;
    // The steps run over the group's heads, and per head over the query tiles from qbeg.
    auto stage = [&](int u, i32 h, i32 q0) {
        i64 qoff = (i64)b * t * qs + (i64)h * d;
        stage_async<DP, true>(buf + 2 * QT * u, q + qoff, qs, q0, QT, t, d);
        stage_async<DP, true>(buf + 2 * QT * u + QT, dout + qoff, qs, q0, QT, t, d);
        cp_async_commit();
        for (int e = threadIdx.x; e < QT; e += blockDim.x) {
            i32 i = q0 + e;
            bool in = i < t;
            i64 li = ((i64)b * hq + h) * t + i;
            Ls[u][e] = in ? lse[li] : RECIPE_INF;
            Es[u][e] = in ? delta[li] : 0.f;
            Qok[u][e] = in;
            Qseg[u][e] = (seg && in) ? seg[(i64)b * t + i] : 0;
        }
    };
    i32 hend = qbeg < qend ? (kvh + 1) * group : kvh * group;
    __syncthreads();  // every warp holds its K and V fragments: buf takes the Q / dO tiles
    if (DB && kvh * group < hend) stage(0, kvh * group, qbeg);
    for (i32 h = kvh * group, q0 = qbeg, u = 0; h < hend; u ^= (DB ? 1 : 0)) {
        i32 hn = h, qn = q0 + QT;  // the next step
        if (qn >= qend) hn++, qn = qbeg;
        if (!DB) {
            stage(0, h, q0);
            cp_async_wait<0>();
        } else if (hn < hend) {  // into the other buffer (read before the last barrier)
            stage(u ^ 1, hn, qn);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        float slope = slopes ? slopes[h] : 0.f;
        bf16(*Qs)[DP + FPAD] = buf + 2 * QT * u;
        bf16(*Ds)[DP + FPAD] = Qs + QT;
        bool none = (q0 + QT - 1 < jw && jw >= pre) || (window > 0 && q0 >= jw + 15 + window);
        if (!none) {
            // Every (query, key) pair visible: real queries of segment rs, all at or after the
            // warp's last key and inside the window of its first.
            bool full = plain && q0 >= jw + 15 && (window == 0 || q0 + QT - 1 < jw + window) &&
                        keys_in_segment<QT>(Qok[u], Qseg[u], rs);
            float s[QT / 8][4] = {}, dp[QT / 8][4] = {};
            mma_tile<false, DP, QT, DP + FPAD>(s, ka, Qs);
            mma_tile<false, DP, QT, DP + FPAD>(dp, va, Ds);
#pragma unroll
            for (int nt = 0; nt < QT / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int x = e >> 1, il = CCOL(nt, e);
                    i32 i = q0 + il, j = rj[x];
                    float p = 0.f;
                    if (full || (Qok[u][il] && Ls[u][il] != RECIPE_INF &&
                                 sees(i, j, t, okj[x], sgj[x], Qseg[u][il], pre, window)))
                        p = __expf(s[nt][e] * scale + slope * (float)(j - i) - Ls[u][il]);
                    dp[nt][e] = p * (dp[nt][e] - Es[u][il]);  // dsᵀ
                    s[nt][e] = p;                             // pᵀ
                }
            u32 pa[QT / 16][4], dsa[QT / 16][4];
            acc_to_a<QT>(pa, s);
            acc_to_a<QT>(dsa, dp);
            mma_tile<true, QT, DP, DP + FPAD>(dva, pa, Ds);
            mma_tile<true, QT, DP, DP + FPAD>(dka, dsa, Qs);
        }
        __syncthreads();  // buffer u is read: the step after next lands in it
        h = hn, q0 = qn;
    }
#pragma unroll
    for (int n = 0; n < DP / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int x = e >> 1, c = CCOL(n, e);
            if (rj[x] < t && c < d) {
                i64 dst = koff + (i64)rj[x] * ks + c;
                dk[dst] = dka[n][e] * scale;
                dv[dst] = dva[n][e];
            }
        }
}

#define FLASH_KERNELS(DP, T, S)                                                                    \
    extern "C" __global__ void __launch_bounds__(128) flash_fwd_##S##_d##DP(                       \
        T* o, float* lse, const T* q, const T* k, const T* v, const u8* kmask, const i32* seg,     \
        const i32* prefix, const float* slopes, i32 t, i32 hq, i32 hkv, i32 d, float scale,        \
        i32 window) {                                                                              \
        flash_fwd<DP>(o, lse, q, k, v, kmask, seg, prefix, slopes, t, hq, hkv, d, scale, window);  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) flash_bwd_dq_##S##_d##DP(                    \
        float* dq, const T* dout, const T* q, const T* k, const T* v, const float* lse,            \
        const float* delta, const u8* kmask, const i32* seg, const i32* prefix,                    \
        const float* slopes, i32 t, i32 hq, i32 hkv, i32 d, float scale, i32 window) {             \
        flash_bwd_dq<DP>(dq, dout, q, k, v, lse, delta, kmask, seg, prefix, slopes, t, hq, hkv, d, \
                         scale, window);                                                           \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128, 1) flash_bwd_dkdv_##S##_d##DP(               \
        float* dk, float* dv, const T* dout, const T* q, const T* k, const T* v,                   \
        const float* lse, const float* delta, const u8* kmask, const i32* seg, const i32* prefix,  \
        const float* slopes, i32 t, i32 hq, i32 hkv, i32 d, float scale, i32 window) {             \
        flash_bwd_dkdv<DP, DP == 128 ? 16 : FBK>(dk, dv, dout, q, k, v, lse, delta, kmask, seg,     \
                                                 prefix, slopes, t, hq, hkv, d, scale, window);    \
    }
FLASH_KERNELS(32, float, f32)
FLASH_KERNELS(64, float, f32)
FLASH_KERNELS(128, float, f32)
FLASH_KERNELS(32, bf16, bf16)
FLASH_KERNELS(64, bf16, bf16)
FLASH_KERNELS(128, bf16, bf16)
