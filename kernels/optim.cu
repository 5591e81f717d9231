// optim.cu: torch AdamW with f32 state (bit for bit the CPU's optim::adamw::adamw_step), and the
// sums of squares and the coefficient of global gradient clipping.

// AdamW (torch.optim.AdamW single-tensor path), one thread per parameter. Scalars come from
// optim::adamw::AdamwScalars (computed in f64 on the host); grad_scale is the clipping coefficient
// (1 = none), applied as the CPU applies it: g*coef rounded first.
//   g = grad*grad_scale ; p = apply_decay ? p*decay : p
//   m = fma(1-b1, g - m, m) ; v = fma((1-b2)*g, g, v*b2)
//   p = p + (neg_step_size*m) / (sqrt(v)/bc2_sqrt + eps)
// Products feeding an add are __fmul_rn (never contracted into an fma), division and sqrt are
// IEEE (NVRTC's default -prec-div/-prec-sqrt; no fast-math intrinsics here), so every result has
// the CPU's bits.
extern "C" __global__ void adamw_torch_f32(float* p, float* m, float* v, const float* grad,
                                           float decay, float one_minus_beta1, float beta2,
                                           float one_minus_beta2, float neg_step_size,
                                           float bc2_sqrt, float eps, float grad_scale,
                                           i32 apply_decay, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float pi = p[i];
    if (apply_decay) pi = __fmul_rn(pi, decay);
    float g = __fmul_rn(grad[i], grad_scale);
    float mi = fmaf(one_minus_beta1, g - m[i], m[i]);
    float vi = fmaf(__fmul_rn(one_minus_beta2, g), g, __fmul_rn(v[i], beta2));
    float denom = sqrtf(vi) / bc2_sqrt + eps;
    p[i] = pi + __fmul_rn(neg_step_size, mi) / denom;
    m[i] = mi;
    v[i] = vi;
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

// Deterministic sum of squares, pass 1 of 2:  part[b] = Σ_{i in chunk b} x[i]²,  chunk b =
// [b·chunk, min((b+1)·chunk, n)). One block (1024 threads) per chunk: thread k sums the chunk's
// elements k, k+1024, ... in order (each square rounded, then added), then the fixed-order block
// reduction. Pass 2 is tensor.cu's `sum_acc_f32` over the parts (acc[0] += Σ part). The split
// depends on n alone (ops::optim::sumsq_chunk), so the same x gives the same bits every run.
extern "C" __global__ void sumsq_part_f32(float* part, const float* x, i64 n, i64 chunk) {
    __shared__ float scratch[32];
    i64 lo = (i64)blockIdx.x * chunk, hi = lo + chunk < n ? lo + chunk : n;
    float s = 0.f;
    for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) s += __fmul_rn(x[i], x[i]);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// Per-tensor norms from their sums of squares, in place: x[i] = (float)sqrt((double)x[i]), the
// CPU backend's rounding (norms in f64, rounded to f32 per tensor). One thread per tensor.
extern "C" __global__ void norms_sqrt_f32(float* x, i64 k) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < k) x[i] = (float)sqrt((double)x[i]);
}

// torch clip_grad_norm_'s coefficient on the device (train::optimizer::clip_grad_norm), so
// clipping needs no host round trip. From the per-tensor norms n[0..k]:
//   total = (float)sqrt(Σ (double)n_i²)        (f64 sum in index order, as the CPU)
//   coef  = clip ? min(max_norm / (total + 1e-6f), 1) : 1     (NaN stays NaN)
// out[0] = coef, out[1] = total. One thread.
extern "C" __global__ void clip_coef_f32(float* out, const float* norms, i64 k, float max_norm,
                                         i32 clip) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = 0.0;
    for (i64 i = 0; i < k; i++) {
        double n = (double)norms[i];
        s = s + __dmul_rn(n, n);
    }
    float total = (float)sqrt(s);
    float coef = 1.f;
    if (clip) {
        coef = max_norm / (total + 1e-6f);
        if (coef > 1.f) coef = 1.f;
    }
    out[0] = coef;
    out[1] = total;
}
