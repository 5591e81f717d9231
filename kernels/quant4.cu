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

// Batch-1 decode GEMV against a 4-bit weight W [n_out, k] (nn.Linear layout, quantized flat):
//   y[o] = sum_c x[c] * code4[nib(o*k + c)] * absmax[(o*k + c) / blocksize]
// One warp per output row. Each lane reads 16 bytes (32 weights) per step with one uint4 load;
// needs k % 32 == 0 and blocksize % 32 == 0 (so 32 weights share one absmax) and a 16-byte
// aligned `packed`. Memory-bound: the weight bytes are read exactly once.
template <typename T>
__device__ void gemv_4bit(T* y, const T* x, const u8* packed, const float* absmax,
                          const float* code4, i32 n_out, i32 k, i32 blocksize) {
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = code4[threadIdx.x];
    __syncthreads();
    int lane = threadIdx.x & 31;
    i64 o = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (o >= n_out) return;
    const uint4* row = (const uint4*)(packed + o * (i64)k / 2);
    float acc = 0.f;
    for (i32 c0 = lane * 32; c0 < k; c0 += 32 * 32) {
        uint4 w = row[c0 / 32];
        float a = absmax[(o * (i64)k + c0) / blocksize];
        u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int q = 0; q < 4; q++) {
#pragma unroll
            for (int b = 0; b < 4; b++) {
                u32 byte = (words[q] >> (8 * b)) & 255u;
                int c = c0 + q * 8 + b * 2;
                acc += ld(x, c) * code[byte >> 4] * a;
                acc += ld(x, c + 1) * code[byte & 15] * a;
            }
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) st(y, o, acc);
}
extern "C" __global__ void gemv_4bit_f32(float* y, const float* x, const u8* packed,
                                         const float* absmax, const float* code4, i32 n_out, i32 k,
                                         i32 blocksize) {
    gemv_4bit(y, x, packed, absmax, code4, n_out, k, blocksize);
}
extern "C" __global__ void gemv_4bit_bf16(bf16* y, const bf16* x, const u8* packed,
                                          const float* absmax, const float* code4, i32 n_out,
                                          i32 k, i32 blocksize) {
    gemv_4bit(y, x, packed, absmax, code4, n_out, k, blocksize);
}
