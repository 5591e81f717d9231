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
// One thread per packed byte (two outputs). n may be odd (the last low nibble is padding).
template <typename T>
__device__ void dequant_4bit(T* out, const u8* packed, const float* absmax, const float* code4,
                             i64 n, i32 blocksize) {
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = code4[threadIdx.x];
    __syncthreads();
    i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    i64 i = 2 * k;
    if (i >= n) return;
    u8 byte = packed[k];
    st(out, i, code[byte >> 4] * absmax[i / blocksize]);
    if (i + 1 < n) st(out, i + 1, code[byte & 15] * absmax[(i + 1) / blocksize]);
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
