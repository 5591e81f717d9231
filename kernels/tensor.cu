// tensor.cu: the small whole-tensor pieces of a model step that runs on the device: strided 2-D
// copies, bias add and its column-sum backward, scale, fill, the argmax hit count of evaluation
// and a deterministic sum into a device scalar (per-row losses -> one number per step).
// f32 storage (copies also bf16). One thread per element unless stated.

// 2-D strided copy:  dst[dst_off + r*dst_ld + c] = src[src_off + r*src_ld + c],  r < rows, c < cols
template <typename T>
__device__ void copy2d(T* dst, const T* src, i32 rows, i32 cols, i64 dst_ld, i64 dst_off,
                       i64 src_ld, i64 src_off) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)rows * cols) return;
    i64 r = idx / cols, c = idx % cols;
    dst[dst_off + r * dst_ld + c] = src[src_off + r * src_ld + c];
}
extern "C" __global__ void copy2d_f32(float* dst, const float* src, i32 rows, i32 cols, i64 dst_ld,
                                      i64 dst_off, i64 src_ld, i64 src_off) {
    copy2d(dst, src, rows, cols, dst_ld, dst_off, src_ld, src_off);
}
extern "C" __global__ void copy2d_bf16(bf16* dst, const bf16* src, i32 rows, i32 cols, i64 dst_ld,
                                       i64 dst_off, i64 src_ld, i64 src_off) {
    copy2d(dst, src, rows, cols, dst_ld, dst_off, src_ld, src_off);
}

// Bias:  y[r, c] += b[c]
extern "C" __global__ void bias_add_f32(float* y, const float* b, i32 rows, i32 cols) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)rows * cols) return;
    y[idx] += b[idx % cols];
}

// Bias backward, one thread per column, rows in order (deterministic, and the same additions as
// the CPU's row loop):  acc = gb[c]; acc += dy[r, c] for r = 0..rows; gb[c] = acc
extern "C" __global__ void col_sum_f32(float* gb, const float* dy, i32 rows, i32 cols) {
    i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float acc = gb[c];
    for (i64 r = 0; r < rows; r++) acc += dy[r * cols + c];
    gb[c] = acc;
}

// y *= s
extern "C" __global__ void scale_f32(float* y, float s, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] *= s;
}

// y *= s[0]  (s a device scalar: the clipping coefficient, read without a host round trip)
extern "C" __global__ void scale_by_f32(float* y, const float* s, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] *= s[0];
}

// (float)b for a 16-bit value: bf16 (kind 0: the high half of an f32) or IEEE f16 (kind 1,
// subnormals included). Exact: every 16-bit value is an f32.
__device__ __forceinline__ float widen16_one(unsigned b, i32 kind) {
    unsigned bits;
    if (kind == 0) {
        bits = b << 16;
    } else {
        unsigned sign = (b & 0x8000u) << 16, e = (b >> 10) & 0x1fu, m = b & 0x3ffu;
        if (e == 0x1fu) {
            bits = sign | 0x7f800000u | (m << 13);  // inf, NaN
        } else if (e != 0) {
            bits = sign | ((e + 112u) << 23) | (m << 13);
        } else if (m == 0) {
            bits = sign;  // ±0
        } else {
            // subnormal: m·2^-24, normalised
            int s = 0;
            while (!(m & 0x400u)) { m <<= 1; s++; }
            bits = sign | ((unsigned)(113 - s) << 23) | ((m & 0x3ffu) << 13);
        }
    }
    return __uint_as_float(bits);
}

// out = (float)w for 16-bit values (see widen16_one).
extern "C" __global__ void widen16_f32(float* out, const u16* w, i32 kind, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = widen16_one(w[i], kind);
}

// out = bf16(w) for 16-bit values: bf16 bits copied, f16 rounded to nearest even (the
// tensor-core operand of a 16-bit frozen weight).
extern "C" __global__ void widen16_bf16(bf16* out, const u16* w, i32 kind, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) st(out, i, widen16_one(w[i], kind));
}

// Small-batch decode GEMV against a 16-bit weight W [n_out, k] (kind as widen16_one):
//   y[r, o] = sum_c x[r, c] * w[o, c],  r < m <= 8
// One warp per output row o; each lane takes 16-byte chunks (8 weights) GEMV16_UNROLL at a time,
// every load issued before the math; the 8 weights are widened once for all m rows of x, whose
// values come in 16-byte loads when x is 16-byte aligned (k % 8 == 0 keeps every row so). Reads
// each weight byte once: 2 bytes per weight, where widening to a bf16 copy and a GEMM read 6.
// Needs k % 8 == 0 and a 16-byte aligned w.
#define GEMV16_MMAX 8
#define GEMV16_UNROLL 4
extern "C" __global__ void gemv16_f32(float* y, const float* x, const u16* w, i32 kind, i32 m,
                                      i32 n_out, i32 k) {
    int lane = threadIdx.x & 31;
    i64 o = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (o >= n_out) return;
    bool vec = ((u64)x & 15) == 0;
    const uint4* row = (const uint4*)(w + o * (i64)k);
    i32 nch = k / 8;
    float acc[GEMV16_MMAX] = {};
    for (i32 ch0 = lane; ch0 < nch; ch0 += 32 * GEMV16_UNROLL) {
        uint4 wv[GEMV16_UNROLL];
#pragma unroll
        for (int g = 0; g < GEMV16_UNROLL; g++)
            if (ch0 + 32 * g < nch) wv[g] = row[ch0 + 32 * g];
#pragma unroll
        for (int g = 0; g < GEMV16_UNROLL; g++) {
            i32 ch = ch0 + 32 * g;
            if (ch >= nch) break;
            u32 words[4] = {wv[g].x, wv[g].y, wv[g].z, wv[g].w};
            float wf[8];
#pragma unroll
            for (int q = 0; q < 4; q++) {
                wf[2 * q] = widen16_one(words[q] & 0xffffu, kind);
                wf[2 * q + 1] = widen16_one(words[q] >> 16, kind);
            }
#pragma unroll
            for (int r = 0; r < GEMV16_MMAX; r++) {
                if (r >= m) break;
                const float* xr = x + (i64)r * k + 8 * (i64)ch;
                float xs[8];
                if (vec) {
                    float4 a = ((const float4*)xr)[0], b = ((const float4*)xr)[1];
                    xs[0] = a.x, xs[1] = a.y, xs[2] = a.z, xs[3] = a.w;
                    xs[4] = b.x, xs[5] = b.y, xs[6] = b.z, xs[7] = b.w;
                } else {
#pragma unroll
                    for (int c = 0; c < 8; c++) xs[c] = xr[c];
                }
                float dot = 0.f;
#pragma unroll
                for (int c = 0; c < 8; c++) dot += xs[c] * wf[c];
                acc[r] += dot;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < GEMV16_MMAX; r++) {
        if (r >= m) break;
        float v = warp_sum(acc[r]);
        if (lane == 0) y[(i64)r * n_out + o] = v;
    }
}

// out = bf16(x), round to nearest even (tensor-core operands of the bf16 compute mode).
extern "C" __global__ void narrow_bf16(bf16* out, const float* x, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) st(out, i, x[i]);
}

// y = v
extern "C" __global__ void fill_f32(float* y, float v, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = v;
}

// Greedy accuracy: hits[0] += #{ r : targets[r] >= 0 and argmax(logits[r, :]) == targets[r] },
// argmax = first index of the maximum (a strict `>` scan from -inf, as util::argmax: NaNs never
// win, an all -inf/NaN row gives 0). One block of 256 threads per row: each thread scans its
// strided columns (first max of its own), then a tree reduction keeps the larger value, ties to
// the smaller index. The count is added as a float (exact below 2^24).
#define ARGMAX_THREADS 256
extern "C" __global__ void argmax_hits_f32(float* hits, const float* logits, const i32* targets,
                                           i32 rows, i32 v) {
    __shared__ float sv[ARGMAX_THREADS];
    __shared__ i32 si[ARGMAX_THREADS];
    i64 row = blockIdx.x;
    const float* x = logits + row * (i64)v;
    float best = -RECIPE_INF;
    i32 bi = 0x7fffffff;
    for (i32 c = threadIdx.x; c < v; c += blockDim.x) {
        float e = x[c];
        if (e > best) {
            best = e;
            bi = c;
        }
    }
    sv[threadIdx.x] = best;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int s = ARGMAX_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            float ov = sv[threadIdx.x + s];
            i32 oi = si[threadIdx.x + s];
            if (ov > sv[threadIdx.x] || (ov == sv[threadIdx.x] && oi < si[threadIdx.x])) {
                sv[threadIdx.x] = ov;
                si[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        i32 am = si[0] == 0x7fffffff ? 0 : si[0];
        i32 t = targets[row];
        if (t >= 0 && am == t) atomicAdd(hits, 1.f);
    }
}

// Deterministic sum into a scalar:  acc[0] += Σ_i x[i].  ONE block (1024 threads): thread k sums
// x[k], x[k+1024], ... in order, then a fixed-order block reduction, then one add. The same
// inputs give the same bits on every run.
extern "C" __global__ void sum_acc_f32(float* acc, const float* x, i64 n) {
    __shared__ float scratch[32];
    float s = 0.f;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) acc[0] += s;
}
