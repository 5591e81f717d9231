// adamw8bit.cu: AdamW step with 8-bit blockwise optimizer state (bitsandbytes AdamW8bit style).
//
// State: m as u8 codes of the SIGNED dynamic map, v as u8 codes of the UNSIGNED dynamic map, each
// with one f32 absmax per 256 elements. Both maps are sorted ascending (256 entries). One CUDA
// block of 256 threads per QPB (4) state blocks, thread t updating element t of each:
//   m = code_m[qm]*absmax_m ; v = code_v[qv]*absmax_v           (dequantize)
//   g = grad * grad_scale
//   m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g²
//   p = p*(1 - lr*wd) - lr * (m/bc1) / (sqrt(v/bc2) + eps)        (bc1 = 1-b1^t, bc2 = 1-b2^t)
//   absmax_m = max|m| over the block ; qm = nearest(code_m, m/absmax_m)   (ties to the lower code)
//   absmax_v = max v  over the block ; qv = nearest(code_v, v/absmax_v)
// "Paged" state is a host-side driver concern (src/cuda/ops/adamw8bit.rs): this kernel only sees
// the chunk that is resident. Its rounding is not bnb's (only the self-test and bench use it);
// the training path (CudaBackend) uses the bnb-exact kernels at the end of this file.

#define QBLOCK 256

__device__ __forceinline__ u8 quantize_nearest(const float* code, float x) {
    // Largest index lo with code[lo] <= x (clamped), then compare with the neighbour above.
    int lo = 0, hi = 255;
    if (x <= code[0]) return 0;
    if (x >= code[255]) return 255;
    while (hi - lo > 1) {
        int mid = (lo + hi) >> 1;
        if (code[mid] <= x) lo = mid; else hi = mid;
    }
    return (x - code[lo] <= code[hi] - x) ? (u8)lo : (u8)hi;
}

// State blocks per CUDA block: each thread updates element tid of QPB consecutive state blocks,
// with every load issued before any math (memory-level parallelism), and one barrier reduces
// all 2·QPB absmaxes.
#define QPB 4

// am[j] = max over the CUDA block of m[j], av[j] likewise (j < QPB), for every thread; one
// barrier; scratch holds 2·QPB·(QBLOCK/32) floats and is not reused after.
__device__ __forceinline__ void block_max_qpb(float* am, float* av, const float* m, const float* v,
                                              float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = QBLOCK / 32;
#pragma unroll
    for (int j = 0; j < QPB; j++) {
        float a = warp_max(m[j]), b = warp_max(v[j]);
        if (lane == 0) {
            scratch[j * nw + warp] = a;
            scratch[(QPB + j) * nw + warp] = b;
        }
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < QPB; j++) {
        float a = -RECIPE_INF, b = -RECIPE_INF;
        for (int w = 0; w < nw; w++) {
            a = fmaxf(a, scratch[j * nw + w]);
            b = fmaxf(b, scratch[(QPB + j) * nw + w]);
        }
        am[j] = a;
        av[j] = b;
    }
}

// What one thread reads for element threadIdx.x of each of its CUDA block's QPB state blocks
// (zeros past n and past the last state block): gradient, parameter, the two codes and their
// blocks' absmax. load_qpb also stages the two code tables in shared memory; all loads are
// issued before the barrier it ends with.
struct Qpb {
    float g[QPB], w[QPB], sm[QPB], sv[QPB];
    u8 qm[QPB], qv[QPB];
};
__device__ __forceinline__ void load_qpb(Qpb& in, float* cm, float* cv, const float* code_m,
                                         const float* code_v, const float* p, const float* grad,
                                         const u8* qm, const u8* qv, const float* absmax_m,
                                         const float* absmax_v, i64 n) {
    cm[threadIdx.x] = code_m[threadIdx.x];
    cv[threadIdx.x] = code_v[threadIdx.x];
    const i64 nb = (n + QBLOCK - 1) / QBLOCK;
#pragma unroll
    for (int j = 0; j < QPB; j++) {
        const i64 blk = (i64)blockIdx.x * QPB + j, i = blk * QBLOCK + threadIdx.x;
        const bool live = i < n;
        in.g[j] = live ? grad[i] : 0.f;
        in.w[j] = live ? p[i] : 0.f;
        in.qm[j] = live ? qm[i] : (u8)0;
        in.qv[j] = live ? qv[i] : (u8)0;
        in.sm[j] = blk < nb ? absmax_m[blk] : 0.f;
        in.sv[j] = blk < nb ? absmax_v[blk] : 0.f;
    }
    __syncthreads();
}

extern "C" __global__ void __launch_bounds__(QBLOCK) adamw8bit_f32(
    float* p, const float* grad, u8* qm, float* absmax_m, u8* qv, float* absmax_v,
    const float* code_m, const float* code_v, float lr, float beta1, float beta2, float eps,
    float weight_decay, float bc1, float bc2, float grad_scale, i64 n) {
    __shared__ float cm[256], cv[256], scratch[2 * QPB * (QBLOCK / 32)];
    const i64 nb = (n + QBLOCK - 1) / QBLOCK;
    Qpb in;
    load_qpb(in, cm, cv, code_m, code_v, p, grad, qm, qv, absmax_m, absmax_v, n);
    float m[QPB], v[QPB];
#pragma unroll
    for (int j = 0; j < QPB; j++) {
        const i64 i = ((i64)blockIdx.x * QPB + j) * QBLOCK + threadIdx.x;
        m[j] = v[j] = 0.f;
        if (i < n) {
            float gj = in.g[j] * grad_scale;
            m[j] = beta1 * (cm[in.qm[j]] * in.sm[j]) + (1.f - beta1) * gj;
            v[j] = beta2 * (cv[in.qv[j]] * in.sv[j]) + (1.f - beta2) * gj * gj;
            float wd = in.w[j] * (1.f - lr * weight_decay);
            p[i] = wd - lr * (m[j] / bc1) / (sqrtf(v[j] / bc2) + eps);
        }
        in.g[j] = fabsf(m[j]);
    }
    float am[QPB], av[QPB];
    block_max_qpb(am, av, in.g, v, scratch);
#pragma unroll
    for (int j = 0; j < QPB; j++) {
        const i64 blk = (i64)blockIdx.x * QPB + j, i = blk * QBLOCK + threadIdx.x;
        if (i < n) {
            qm[i] = quantize_nearest(cm, am[j] > 0.f ? m[j] / am[j] : 0.f);
            qv[i] = quantize_nearest(cv, av[j] > 0.f ? v[j] / av[j] : 0.f);
        }
        if (threadIdx.x == 0 && blk < nb) {
            absmax_m[blk] = am[j];
            absmax_v[blk] = av[j];
        }
    }
}

// ---- bitsandbytes AdamW8bit as its CPU backend runs it: bit for bit the CPU's
// optim::adamw8bit::adamw8bit_step (QPB state blocks of 256 per CUDA block) and bnb_adam32_step
// (one thread per element). Scalars come from optim::adamw8bit::BnbScalars. Products feeding an
// add are __fmul_rn (never contracted into an fma), fmaf where the CPU calls mul_add, division
// and sqrt are IEEE (NVRTC's default -prec-div/-prec-sqrt), so every result has the CPU's bits.

// quant::Blockwise8's table lookup: v clamped to [-1, 1] (NaN gives -1 here, and index 0 on the
// CPU's saturating cast: the same entry), grid index floor(((v+1)*0.5)*65535 + 0.5).
__device__ __forceinline__ u8 lut_code(const u8* lut, float v) {
    v = fminf(fmaxf(v, -1.f), 1.f);
    float g = __fmul_rn((v + 1.f) * 0.5f, 65535.f) + 0.5f;
    return lut[(u32)g];
}

// Per block: m = code_m[qm]*absmax_m, v = code_v[qv]*absmax_v (dequantize), then
//   m = fma(g, 1-b1, m*b1) ; v = fma((1-b2)*g, g, v*b2)
//   p = apply_decay ? p*decay : p ;  p = p + (neg_lr_over_c1*m) / (sqrt(v)/correction2 + eps)
// and requantize as Blockwise8::quantize: absmax = max |x| over the block (NaN lanes count as 0),
// an all-zero block gets absmax 0 and codes 0, else code = lut[index(x * (1/absmax))].
extern "C" __global__ void __launch_bounds__(QBLOCK) adamw8bit_bnb_f32(
    float* p, const float* grad, u8* qm, u8* qv, float* absmax_m, float* absmax_v,
    const float* code_m, const float* code_v, const u8* lut_m, const u8* lut_v, float beta1,
    float one_minus_beta1, float beta2, float one_minus_beta2, float correction2,
    float neg_lr_over_c1, float eps, float decay, i32 apply_decay, i64 n) {
    __shared__ float cm[256], cv[256], scratch[2 * QPB * (QBLOCK / 32)];
    const i64 nb = (n + QBLOCK - 1) / QBLOCK;
    Qpb in;
    load_qpb(in, cm, cv, code_m, code_v, p, grad, qm, qv, absmax_m, absmax_v, n);
    float m[QPB], v[QPB];
    float am_in[QPB], av_in[QPB];
#pragma unroll
    for (int j = 0; j < QPB; j++) {
        const i64 i = ((i64)blockIdx.x * QPB + j) * QBLOCK + threadIdx.x;
        m[j] = v[j] = 0.f;
        if (i < n) {
            float mj = __fmul_rn(cm[in.qm[j]], in.sm[j]);
            float vj = __fmul_rn(cv[in.qv[j]], in.sv[j]);
            mj = fmaf(in.g[j], one_minus_beta1, __fmul_rn(mj, beta1));
            vj = fmaf(__fmul_rn(one_minus_beta2, in.g[j]), in.g[j], __fmul_rn(vj, beta2));
            float denom = sqrtf(vj) / correction2 + eps;
            float pi = in.w[j];
            if (apply_decay) pi = __fmul_rn(pi, decay);
            p[i] = pi + __fmul_rn(neg_lr_over_c1, mj) / denom;
            m[j] = mj;
            v[j] = vj;
        }
        // fmaxf(NaN, 0) = 0: NaN lanes drop out of the max, as on the CPU.
        am_in[j] = fmaxf(fabsf(m[j]), 0.f);
        av_in[j] = fmaxf(fabsf(v[j]), 0.f);
    }
    float am[QPB], av[QPB];
    block_max_qpb(am, av, am_in, av_in, scratch);
#pragma unroll
    for (int j = 0; j < QPB; j++) {
        const i64 blk = (i64)blockIdx.x * QPB + j, i = blk * QBLOCK + threadIdx.x;
        if (i < n) {
            qm[i] = am[j] == 0.f ? (u8)0 : lut_code(lut_m, __fmul_rn(m[j], 1.f / am[j]));
            qv[i] = av[j] == 0.f ? (u8)0 : lut_code(lut_v, __fmul_rn(v[j], 1.f / av[j]));
        }
        if (threadIdx.x == 0 && blk < nb) {
            absmax_m[blk] = am[j];
            absmax_v[blk] = av[j];
        }
    }
}

// bnb's 32-bit update (tensors below min_8bit_size), one thread per element:
//   m = fma(g, 1-b1, m*b1) ; v = fma((1-b2)*g, g, v*b2) ; p = apply_decay ? p*decay : p
//   p = fma(m / (sqrt(v) + eps_c2), step_size32, p)
extern "C" __global__ void bnb_adam32_f32(float* p, float* m, float* v, const float* grad,
                                          float beta1, float one_minus_beta1, float beta2,
                                          float one_minus_beta2, float eps_c2, float step_size32,
                                          float decay, i32 apply_decay, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = grad[i];
    float mi = fmaf(g, one_minus_beta1, __fmul_rn(m[i], beta1));
    float vi = fmaf(__fmul_rn(one_minus_beta2, g), g, __fmul_rn(v[i], beta2));
    float pi = p[i];
    if (apply_decay) pi = __fmul_rn(pi, decay);
    p[i] = fmaf(mi / (sqrtf(vi) + eps_c2), step_size32, pi);
    m[i] = mi;
    v[i] = vi;
}
