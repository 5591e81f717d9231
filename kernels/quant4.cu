// quant4.cu: bitsandbytes-compatible 4-bit (NF4 / FP4) dequantization and batch-1 GEMV.
//
// Layout (bnb): the flattened tensor is split in blocks of `blocksize` elements, each with an f32
// absmax; element i is code4[nibble(i)] * absmax[i / blocksize]; byte k packs elements 2k (HIGH
// nibble) and 2k+1 (low nibble). The 16-entry code table (NF4 or FP4) is an input, so one kernel
// serves both formats. Double quantization stores absmax as u8 codes of the signed dynamic map.

// Double-quant absmax:  absmax[b] = code8[q[b]] * absmax2[b / nested_blocksize] + offset
extern "C" __global__ void dequant_absmax_f32(float* absmax, const u8* q, const float* code8,
                                              const float* absmax2, float offset, i64 nblocks,
                                              i32 nested_blocksize) {
    i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (b < nblocks) absmax[b] = code8[q[b]] * absmax2[b / nested_blocksize] + offset;
}

// Dequant:  out[i] = code4[(packed[i/2] >> (i even ? 4 : 0)) & 15] * absmax[i / blocksize]
// One thread per 16 outputs: when blocksize % 16 == 0 (every bnb blocksize) the 16 share one
// absmax, the 8 packed bytes come in one 8-byte load and the outputs go out in 16-byte stores
// (out and packed are allocation-aligned; element 16t sits at byte 32t / 64t and 8t). A partial
// last group, or another blocksize, takes the scalar path. n may be odd (the last low nibble is
// padding).
template <typename T>
__device__ void dequant_4bit(T* out, const u8* packed, const float* absmax, const float* code4,
                             i64 n, i32 blocksize) {
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = code4[threadIdx.x];
    __syncthreads();
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    i64 i0 = 16 * t;
    if (i0 >= n) return;
    if (i0 + 16 <= n && blocksize % 16 == 0) {
        uint2 p = *reinterpret_cast<const uint2*>(packed + 8 * t);
        float a = absmax[i0 / blocksize];
        __align__(16) T v[16];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            unsigned byte = ((j < 4 ? p.x : p.y) >> (8 * (j & 3))) & 255u;
            st(v, 2 * j, code[byte >> 4] * a);
            st(v, 2 * j + 1, code[byte & 15] * a);
        }
        uint4* o = reinterpret_cast<uint4*>(out + i0);
        const uint4* vv = reinterpret_cast<const uint4*>(v);
#pragma unroll
        for (int q = 0; q < (int)(16 * sizeof(T) / 16); q++) o[q] = vv[q];
        return;
    }
    i64 end = i0 + 16 < n ? i0 + 16 : n;
    for (i64 i = i0; i < end; i++) {
        u8 byte = packed[i / 2];
        st(out, i, code[(i & 1) ? byte & 15 : byte >> 4] * absmax[i / blocksize]);
    }
}
extern "C" __global__ void dequant_4bit_f32(float* out, const u8* packed, const float* absmax,
                                            const float* code4, i64 n, i32 blocksize) {
    dequant_4bit(out, packed, absmax, code4, n, blocksize);
}
extern "C" __global__ void dequant_4bit_bf16(bf16* out, const u8* packed, const float* absmax,
                                             const float* code4, i64 n, i32 blocksize) {
    dequant_4bit(out, packed, absmax, code4, n, blocksize);
}

// Small-batch decode GEMV against a 4-bit weight W [n_out, k] (nn.Linear layout, quantized flat):
//   y[r, o] = sum_c x[r, c] * code4[nib(o*k + c)] * absmax[(o*k + c) / blocksize],  r < m <= 8
// One warp per output row o; each lane takes 16-byte chunks (32 weights, one absmax since
// blocksize % 32 == 0) GEMV_UNROLL at a time, all loads issued before any math so a warp keeps
// that many bytes in flight. A byte decodes through a 256-entry (hi, lo) code-pair table in shared
// memory; the 32 weights are decoded once and used for all m rows of x, whose 32 values come in
// 16-byte loads when x is 16-byte aligned (k % 32 == 0 keeps every row so). Memory-bound: each
// weight byte is read once for the whole batch. Needs k % 32 == 0, blocksize % 32 == 0 and a
// 16-byte aligned `packed`.
#define GEMV_MMAX 8
#define GEMV_UNROLL 4

// xs[0..32) = x[0..32) as f32: 16-byte loads when `vec`, else scalar.
__device__ __forceinline__ void load_x32(float* xs, const float* x, bool vec) {
    if (vec) {
#pragma unroll
        for (int q = 0; q < 8; q++) {
            float4 v = ((const float4*)x)[q];
            xs[4 * q] = v.x, xs[4 * q + 1] = v.y, xs[4 * q + 2] = v.z, xs[4 * q + 3] = v.w;
        }
    } else {
#pragma unroll
        for (int c = 0; c < 32; c++) xs[c] = x[c];
    }
}
__device__ __forceinline__ void load_x32(float* xs, const bf16* x, bool vec) {
    if (vec) {
#pragma unroll
        for (int q = 0; q < 4; q++) {
            uint4 v = ((const uint4*)x)[q];
            u32 words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                xs[8 * q + 2 * e] = __uint_as_float(words[e] << 16);
                xs[8 * q + 2 * e + 1] = __uint_as_float(words[e] & 0xffff0000u);
            }
        }
    } else {
#pragma unroll
        for (int c = 0; c < 32; c++) xs[c] = ld(x, c);
    }
}

template <typename T>
__device__ void gemv_4bit(T* y, const T* x, const u8* packed, const float* absmax,
                          const float* code4, i32 m, i32 n_out, i32 k, i32 blocksize) {
    __shared__ float2 pair[256];
    for (int e = threadIdx.x; e < 256; e += blockDim.x)
        pair[e] = make_float2(code4[e >> 4], code4[e & 15]);
    __syncthreads();
    int lane = threadIdx.x & 31;
    i64 o = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (o >= n_out) return;
    bool vec = ((u64)x & 15) == 0;
    const uint4* row = (const uint4*)(packed + o * (i64)k / 2);
    i32 nch = k / 32;
    float acc[GEMV_MMAX] = {};
    for (i32 ch0 = lane; ch0 < nch; ch0 += 32 * GEMV_UNROLL) {
        uint4 w[GEMV_UNROLL];
        float a[GEMV_UNROLL];
#pragma unroll
        for (int g = 0; g < GEMV_UNROLL; g++) {
            i32 ch = ch0 + 32 * g;
            if (ch < nch) {
                w[g] = row[ch];
                a[g] = absmax[(o * (i64)k + 32 * (i64)ch) / blocksize];
            }
        }
#pragma unroll
        for (int g = 0; g < GEMV_UNROLL; g++) {
            i32 ch = ch0 + 32 * g;
            if (ch >= nch) break;
            float wf[32];
            u32 words[4] = {w[g].x, w[g].y, w[g].z, w[g].w};
#pragma unroll
            for (int q = 0; q < 4; q++)
#pragma unroll
                for (int b = 0; b < 4; b++) {
                    float2 cw = pair[(words[q] >> (8 * b)) & 255u];
                    wf[8 * q + 2 * b] = cw.x;
                    wf[8 * q + 2 * b + 1] = cw.y;
                }
#pragma unroll
            for (int r = 0; r < GEMV_MMAX; r++) {
                if (r >= m) break;
                float xs[32];
                load_x32(xs, x + (i64)r * k + 32 * (i64)ch, vec);
                float dot = 0.f;
#pragma unroll
                for (int c = 0; c < 32; c++) dot += xs[c] * wf[c];
                acc[r] += a[g] * dot;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < GEMV_MMAX; r++) {
        if (r >= m) break;
        float v = warp_sum(acc[r]);
        if (lane == 0) st(y, (i64)r * n_out + o, v);
    }
}
extern "C" __global__ void gemv_4bit_f32(float* y, const float* x, const u8* packed,
                                         const float* absmax, const float* code4, i32 m,
                                         i32 n_out, i32 k, i32 blocksize) {
    gemv_4bit(y, x, packed, absmax, code4, m, n_out, k, blocksize);
}
extern "C" __global__ void gemv_4bit_bf16(bf16* y, const bf16* x, const u8* packed,
                                          const float* absmax, const float* code4, i32 m,
                                          i32 n_out, i32 k, i32 blocksize) {
    gemv_4bit(y, x, packed, absmax, code4, m, n_out, k, blocksize);
}
