// norm.cu: RMSNorm and LayerNorm forward/backward over rows of length d. One block per row,
// f32 statistics; x/y/dy/dx in T (f32 or bf16), weights in T, weight grads f32 (atomicAdd, so the
// caller zeroes them first). rstd/mean are saved per row for the backward.

// RMSNorm:  rstd = 1/sqrt(mean(x²) + eps) ;  y = x * rstd * w
template <typename T>
__device__ void rmsnorm_fwd(T* y, float* rstd_out, const T* x, const T* w, i32 d, float eps) {
    __shared__ float scratch[32];
    i64 row = blockIdx.x;
    const T* xr = x + row * d;
    float ss = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) { float v = ld(xr, c); ss += v * v; }
    ss = block_sum(ss, scratch);
    float rstd = rsqrtf(ss / d + eps);
    for (int c = threadIdx.x; c < d; c += blockDim.x) st(y + row * d, c, ld(xr, c) * rstd * ld(w, c));
    if (threadIdx.x == 0) rstd_out[row] = rstd;
}
// RMSNorm backward, with xh = x*rstd and gw = dy*w:
//   dx = rstd * (gw - xh * mean(gw * xh)) ;  dw += dy * xh  (summed over rows)
template <typename T>
__device__ void rmsnorm_bwd(T* dx, float* dw, const T* dy, const T* x, const T* w,
                            const float* rstd_in, i32 d) {
    __shared__ float scratch[32];
    i64 row = blockIdx.x;
    float rstd = rstd_in[row];
    const T* xr = x + row * d;
    const T* dyr = dy + row * d;
    float dot = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) dot += ld(dyr, c) * ld(w, c) * ld(xr, c) * rstd;
    dot = block_sum(dot, scratch) / d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float xh = ld(xr, c) * rstd, g = ld(dyr, c);
        st(dx + row * d, c, rstd * (g * ld(w, c) - xh * dot));
        atomicAdd(dw + c, g * xh);
    }
}

// LayerNorm:  mean = avg(x) ; rstd = 1/sqrt(avg((x-mean)²) + eps) ; y = (x-mean)*rstd*w + b
template <typename T>
__device__ void layernorm_fwd(T* y, float* mean_out, float* rstd_out, const T* x, const T* w,
                              const T* b, i32 d, float eps) {
    __shared__ float scratch[32];
    i64 row = blockIdx.x;
    const T* xr = x + row * d;
    float s = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) s += ld(xr, c);
    float mean = block_sum(s, scratch) / d;
    float ss = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) { float v = ld(xr, c) - mean; ss += v * v; }
    float rstd = rsqrtf(block_sum(ss, scratch) / d + eps);
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        st(y + row * d, c, (ld(xr, c) - mean) * rstd * ld(w, c) + ld(b, c));
    if (threadIdx.x == 0) { mean_out[row] = mean; rstd_out[row] = rstd; }
}
// LayerNorm backward, xh = (x-mean)*rstd, gw = dy*w:
//   dx = rstd * (gw - mean(gw) - xh * mean(gw*xh)) ; dw += dy*xh ; db += dy
template <typename T>
__device__ void layernorm_bwd(T* dx, float* dw, float* db, const T* dy, const T* x, const T* w,
                              const float* mean_in, const float* rstd_in, i32 d) {
    __shared__ float scratch[32];
    i64 row = blockIdx.x;
    float mean = mean_in[row], rstd = rstd_in[row];
    const T* xr = x + row * d;
    const T* dyr = dy + row * d;
    float s1 = 0.f, s2 = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float gw = ld(dyr, c) * ld(w, c), xh = (ld(xr, c) - mean) * rstd;
        s1 += gw;
        s2 += gw * xh;
    }
    s1 = block_sum(s1, scratch) / d;
    s2 = block_sum(s2, scratch) / d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float g = ld(dyr, c), xh = (ld(xr, c) - mean) * rstd;
        st(dx + row * d, c, rstd * (g * ld(w, c) - s1 - xh * s2));
        atomicAdd(dw + c, g * xh);
        atomicAdd(db + c, g);
    }
}

#define NORM_KERNELS(T, S)                                                                         \
    extern "C" __global__ void rmsnorm_fwd_##S(T* y, float* rstd, const T* x, const T* w, i32 d,   \
                                               float eps) {                                        \
        rmsnorm_fwd(y, rstd, x, w, d, eps);                                                        \
    }                                                                                              \
    extern "C" __global__ void rmsnorm_bwd_##S(T* dx, float* dw, const T* dy, const T* x,          \
                                               const T* w, const float* rstd, i32 d) {             \
        rmsnorm_bwd(dx, dw, dy, x, w, rstd, d);                                                    \
    }                                                                                              \
    extern "C" __global__ void layernorm_fwd_##S(T* y, float* mean, float* rstd, const T* x,       \
                                                 const T* w, const T* b, i32 d, float eps) {       \
        layernorm_fwd(y, mean, rstd, x, w, b, d, eps);                                             \
    }                                                                                              \
    extern "C" __global__ void layernorm_bwd_##S(T* dx, float* dw, float* db, const T* dy,         \
                                                 const T* x, const T* w, const float* mean,        \
                                                 const float* rstd, i32 d) {                       \
        layernorm_bwd(dx, dw, db, dy, x, w, mean, rstd, d);                                        \
    }
NORM_KERNELS(float, f32)
NORM_KERNELS(bf16, bf16)
