// adamw8bit.cu: AdamW step with 8-bit blockwise optimizer state (bitsandbytes AdamW8bit style).
//
// State: m as u8 codes of the SIGNED dynamic map, v as u8 codes of the UNSIGNED dynamic map, each
// with one f32 absmax per 256 elements. Both maps are sorted ascending (256 entries). One CUDA
// block of 256 threads per state block:
//   m = code_m[qm]*absmax_m ; v = code_v[qv]*absmax_v           (dequantize)
//   g = grad * grad_scale
//   m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g²
//   p = p*(1 - lr*wd) - lr * (m/bc1) / (sqrt(v/bc2) + eps)        (bc1 = 1-b1^t, bc2 = 1-b2^t)
//   absmax_m = max|m| over the block ; qm = nearest(code_m, m/absmax_m)   (ties to the lower code)
//   absmax_v = max v  over the block ; qv = nearest(code_v, v/absmax_v)
// "Paged" state is a host-side driver concern (src/cuda/ops/adamw8bit.rs): this kernel only sees
// the chunk that is resident.

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

extern "C" __global__ void __launch_bounds__(QBLOCK) adamw8bit_f32(
    float* p, const float* grad, u8* qm, float* absmax_m, u8* qv, float* absmax_v,
    const float* code_m, const float* code_v, float lr, float beta1, float beta2, float eps,
    float weight_decay, float bc1, float bc2, float grad_scale, i64 n) {
    __shared__ float cm[256], cv[256], scratch[32];
    cm[threadIdx.x] = code_m[threadIdx.x];
    cv[threadIdx.x] = code_v[threadIdx.x];
    __syncthreads();
    i64 blk = blockIdx.x;
    i64 i = blk * QBLOCK + threadIdx.x;
    bool live = i < n;
    float m = 0.f, v = 0.f;
    if (live) {
        float g = grad[i] * grad_scale;
        m = cm[qm[i]] * absmax_m[blk];
        v = cv[qv[i]] * absmax_v[blk];
        m = beta1 * m + (1.f - beta1) * g;
        v = beta2 * v + (1.f - beta2) * g * g;
        float w = p[i] * (1.f - lr * weight_decay);
        p[i] = w - lr * (m / bc1) / (sqrtf(v / bc2) + eps);
    }
    float am = block_max(fabsf(m), scratch);
    float av = block_max(v, scratch);
    if (live) {
        qm[i] = quantize_nearest(cm, am > 0.f ? m / am : 0.f);
        qv[i] = quantize_nearest(cv, av > 0.f ? v / av : 0.f);
    }
    if (threadIdx.x == 0) {
        absmax_m[blk] = am;
        absmax_v[blk] = av;
    }
}
