// optim.cu: plain AdamW with f32 state, and the global gradient norm for clipping.

// AdamW (torch.optim.AdamW), one thread per parameter, bc1 = 1-b1^t, bc2 = 1-b2^t:
//   g = grad*grad_scale ; m = b1*m + (1-b1)*g ; v = b2*v + (1-b2)*g²
//   p = p*(1 - lr*wd) - lr * (m/bc1) / (sqrt(v/bc2) + eps)
extern "C" __global__ void adamw_f32(float* p, float* m, float* v, const float* grad, float lr,
                                     float beta1, float beta2, float eps, float weight_decay,
                                     float bc1, float bc2, float grad_scale, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = grad[i] * grad_scale;
    float mi = beta1 * m[i] + (1.f - beta1) * g;
    float vi = beta2 * v[i] + (1.f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * (1.f - lr * weight_decay) - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
}

// Sum of squares (for the global grad norm):  out[0] += Σ_i x[i]²   (out zeroed by the caller;
// one atomicAdd per block after a block reduction, so the result order is not deterministic).
template <typename T>
__device__ void sumsq(float* out, const T* x, i64 n) {
    __shared__ float scratch[32];
    float s = 0.f;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float v = ld(x, i);
        s += v * v;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) atomicAdd(out, s);
}
extern "C" __global__ void sumsq_f32(float* out, const float* x, i64 n) { sumsq(out, x, n); }
extern "C" __global__ void sumsq_bf16(float* out, const bf16* x, i64 n) { sumsq(out, x, n); }
