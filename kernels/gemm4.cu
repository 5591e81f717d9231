// gemm4.cu: dequant-GEMM against a bitsandbytes 4-bit weight W [n, k] (nn.Linear layout, NF4 or
// FP4 through the code table) for training and prefill, on bf16 tensor cores with f32 accumulate.
//
// Each 128-thread block computes a 64x64 output tile; each of its 4 warps a 32x32 sub-tile made of
// 2x4 `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32` tiles. Per 32-wide reduction step the
// block stages the activation tile and the *dequantized* weight tile (bf16) in shared memory, so
// the weight never exists densely in global memory. Ragged edges are zero-filled. Needs k even
// (rows start on a byte boundary). Full tiles with k % 8 == 0 take a vectorized path (16-byte
// activation loads, 4-byte weight loads, one absmax per 8 weights); ragged tiles a scalar one.
// Single-buffered: a first version (see kernels/NOTES.md for what comes next).

#define BM 64
#define BN 64
#define BK 32
#define PAD 8

__device__ __forceinline__ float w4(const u8* packed, const float* absmax, const float* code,
                                    i64 idx, i32 blocksize) {
    u8 byte = packed[idx >> 1];
    u8 nib = (idx & 1) ? (byte & 15) : (byte >> 4);
    return code[nib] * absmax[idx / blocksize];
}

// Shared tiles: As[row][kk] (activation rows), Bs[col][kk] (one output column per row, reduction
// index contiguous = the "col" operand of mma). Computes acc for the block's 64x64 tile.
__device__ __forceinline__ void mma_tile(float acc[2][4][4], bf16 (*As)[BK + PAD],
                                         bf16 (*Bs)[BK + PAD]) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
        u32 a[2][4], b[4][2];
#pragma unroll
        for (int mi = 0; mi < 2; mi++) {
            int r = wm + mi * 16 + g;
            a[mi][0] = *(const u32*)&As[r][ks + 2 * t];
            a[mi][1] = *(const u32*)&As[r + 8][ks + 2 * t];
            a[mi][2] = *(const u32*)&As[r][ks + 8 + 2 * t];
            a[mi][3] = *(const u32*)&As[r + 8][ks + 8 + 2 * t];
        }
#pragma unroll
        for (int ni = 0; ni < 4; ni++) {
            int c = wn + ni * 8 + g;
            b[ni][0] = *(const u32*)&Bs[c][ks + 2 * t];
            b[ni][1] = *(const u32*)&Bs[c][ks + 8 + 2 * t];
        }
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++) mma_bf16_16816(acc[mi][ni], a[mi], b[ni]);
    }
}

// Writes the block's tile of C [m, ncols] (row-major); accumulate != 0 adds to what is there.
__device__ __forceinline__ void store_tile(bf16* c, float acc[2][4][4], i32 m, i32 ncols, int row0,
                                           int col0, i32 accumulate) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int r = row0 + wm + mi * 16 + g + (e >> 1) * 8;
                int col = col0 + wn + ni * 8 + 2 * t + (e & 1);
                if (r < m && col < ncols) {
                    i64 idx = (i64)r * ncols + col;
                    float v = acc[mi][ni][e];
                    if (accumulate) v += __bfloat162float(c[idx]);
                    c[idx] = __float2bfloat16(v);
                }
            }
}

// Fast-path tile loads, used when the whole tile is in bounds, the host says the activation and
// packed base pointers are 16-byte aligned (`aligned`), and k % 8 == 0, blocksize % 8 == 0
// (so rows start 16-byte aligned in x and 4-byte aligned in packed, and 8 consecutive weights
// share one absmax). Activations: one 16-byte load of 8 bf16 per step.
__device__ __forceinline__ void load_act_vec(bf16 (*As)[BK + PAD], const bf16* src, i64 ld, int row0,
                                             int c0) {
    for (int e = threadIdx.x; e < BM * BK / 8; e += blockDim.x) {
        int r = e / (BK / 8), c = (e % (BK / 8)) * 8;
        *(uint4*)&As[r][c] = *(const uint4*)&src[(i64)(row0 + r) * ld + c0 + c];
    }
}
// Eight weights (4 packed bytes, one u32 load) starting at flat index idx (idx % 8 == 0).
__device__ __forceinline__ void dequant8(float* w, const u8* packed, const float* absmax,
                                         const float* code, i64 idx, i32 blocksize) {
    u32 word = *(const u32*)(packed + (idx >> 1));
    float a = absmax[idx / blocksize];
#pragma unroll
    for (int b = 0; b < 4; b++) {
        u32 byte = (word >> (8 * b)) & 255u;
        w[2 * b] = code[byte >> 4] * a;
        w[2 * b + 1] = code[byte & 15] * a;
    }
}

// Forward:  Y[m, n] (+)= X[m, k] · Wᵀ,  W[j, c] = code4[nib(j*k + c)] * absmax[(j*k + c) / blocksize]
extern "C" __global__ void __launch_bounds__(128) gemm_4bit_bf16(
    bf16* y, const bf16* x, const u8* packed, const float* absmax, const float* code4, i32 m,
    i32 n, i32 k, i32 blocksize, i32 accumulate, i32 aligned) {
    __shared__ __align__(16) bf16 As[BM][BK + PAD];
    __shared__ __align__(16) bf16 Bs[BN][BK + PAD];
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = code4[threadIdx.x];
    int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    float acc[2][4][4] = {};
    bool vec_ok = aligned && (k % 8 == 0) && (blocksize % 8 == 0) && row0 + BM <= m && col0 + BN <= n;
    for (i32 k0 = 0; k0 < k; k0 += BK) {
        __syncthreads();
        if (vec_ok && k0 + BK <= k) {
            load_act_vec(As, x, k, row0, k0);
            for (int e = threadIdx.x; e < BN * BK / 8; e += blockDim.x) {
                int r = e / (BK / 8), c = (e % (BK / 8)) * 8;
                float w[8];
                dequant8(w, packed, absmax, code, (i64)(col0 + r) * k + k0 + c, blocksize);
#pragma unroll
                for (int b = 0; b < 4; b++)
                    *(__nv_bfloat162*)&Bs[r][c + 2 * b] = __floats2bfloat162_rn(w[2 * b], w[2 * b + 1]);
            }
            __syncthreads();
            mma_tile(acc, As, Bs);
            continue;
        }
        for (int e = threadIdx.x; e < BM * BK; e += blockDim.x) {
            int r = e / BK, c = e % BK;
            int gr = row0 + r, gc = k0 + c;
            As[r][c] = (gr < m && gc < k) ? x[(i64)gr * k + gc] : __float2bfloat16(0.f);
        }
        // Weight tile: one packed byte (two adjacent reduction indices) per step.
        for (int e = threadIdx.x; e < BN * BK / 2; e += blockDim.x) {
            int r = e / (BK / 2), c = 2 * (e % (BK / 2));
            int gr = col0 + r, gc = k0 + c;
            float w0 = 0.f, w1 = 0.f;
            if (gr < n && gc < k) {
                i64 idx = (i64)gr * k + gc;
                w0 = w4(packed, absmax, code, idx, blocksize);
                w1 = gc + 1 < k ? w4(packed, absmax, code, idx + 1, blocksize) : 0.f;
            }
            Bs[r][c] = __float2bfloat16(w0);
            Bs[r][c + 1] = __float2bfloat16(w1);
        }
        __syncthreads();
        mma_tile(acc, As, Bs);
    }
    store_tile(y, acc, m, n, row0, col0, accumulate);
}

// Input gradient:  dX[m, k] (+)= dY[m, n] · W   (W as above). The reduction runs over n, so the
// weight tile is dequantized transposed into shared memory: Bs[c][j] = W[j, c].
extern "C" __global__ void __launch_bounds__(128) gemm_4bit_dx_bf16(
    bf16* dx, const bf16* dy, const u8* packed, const float* absmax, const float* code4, i32 m,
    i32 n, i32 k, i32 blocksize, i32 accumulate, i32 aligned) {
    __shared__ __align__(16) bf16 As[BM][BK + PAD];
    __shared__ __align__(16) bf16 Bs[BN][BK + PAD];
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = code4[threadIdx.x];
    int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;  // col0 indexes k (dX columns)
    float acc[2][4][4] = {};
    bool vec_ok = aligned && (k % 8 == 0) && (n % 8 == 0) && (blocksize % 8 == 0) && row0 + BM <= m &&
                  col0 + BN <= k;
    for (i32 j0 = 0; j0 < n; j0 += BK) {
        __syncthreads();
        if (vec_ok && j0 + BK <= n) {
            load_act_vec(As, dy, n, row0, j0);
            for (int e = threadIdx.x; e < BK * BN / 8; e += blockDim.x) {
                int jr = e / (BN / 8), c = (e % (BN / 8)) * 8;
                float w[8];
                dequant8(w, packed, absmax, code, (i64)(j0 + jr) * k + col0 + c, blocksize);
#pragma unroll
                for (int b = 0; b < 8; b++) Bs[c + b][jr] = __float2bfloat16(w[b]);
            }
            __syncthreads();
            mma_tile(acc, As, Bs);
            continue;
        }
        for (int e = threadIdx.x; e < BM * BK; e += blockDim.x) {
            int r = e / BK, c = e % BK;
            int gr = row0 + r, gc = j0 + c;
            As[r][c] = (gr < m && gc < n) ? dy[(i64)gr * n + gc] : __float2bfloat16(0.f);
        }
        // BK weight rows (j) x BN weight columns (c); a byte holds columns c, c+1 of row j.
        for (int e = threadIdx.x; e < BK * BN / 2; e += blockDim.x) {
            int jr = e / (BN / 2), c = 2 * (e % (BN / 2));
            int gj = j0 + jr, gc = col0 + c;
            float w0 = 0.f, w1 = 0.f;
            if (gj < n && gc < k) {
                i64 idx = (i64)gj * k + gc;
                w0 = w4(packed, absmax, code, idx, blocksize);
                w1 = gc + 1 < k ? w4(packed, absmax, code, idx + 1, blocksize) : 0.f;
            }
            Bs[c][jr] = __float2bfloat16(w0);
            Bs[c + 1][jr] = __float2bfloat16(w1);
        }
        __syncthreads();
        mma_tile(acc, As, Bs);
    }
    store_tile(dx, acc, m, k, row0, col0, accumulate);
}
