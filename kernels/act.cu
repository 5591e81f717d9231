// act.cu: activations (SwiGLU, GELU-tanh, GeGLU) forward/backward and the small element-wise pieces of
// the fused LoRA path (scaled accumulate, LoRA dropout). One thread per element; rows/cols with
// input row stride `ld_in` so ChatGLM's packed [gate | up] (ld_in = 2*cols) needs no copy.

// SwiGLU:  a = silu(e) * g = e*σ(e)*g
template <typename T>
__device__ void swiglu_fwd(T* a, const T* e, const T* g, i32 rows, i32 cols, i32 ld_in) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)rows * cols) return;
    i64 r = idx / cols, c = idx % cols, src = r * ld_in + c;
    float ev = ld(e, src), sg = 1.f / (1.f + __expf(-ev));
    st(a, idx, ev * sg * ld(g, src));
}
// SwiGLU backward (DESIGN.md §1), σ = σ(e):
//   dg = da * e*σ ;  de = da * g * σ * (1 + e*(1-σ))
template <typename T>
__device__ void swiglu_bwd(T* de, T* dg, const T* da, const T* e, const T* g, i32 rows, i32 cols,
                           i32 ld_in) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)rows * cols) return;
    i64 r = idx / cols, c = idx % cols, src = r * ld_in + c;
    float ev = ld(e, src), gv = ld(g, src), d = ld(da, idx);
    float sg = 1.f / (1.f + __expf(-ev));
    st(dg, src, d * ev * sg);
    st(de, src, d * gv * sg * (1.f + ev * (1.f - sg)));
}

// GELU (tanh approximation):  u = k0*(x + 0.044715 x³), k0 = sqrt(2/π) ;  y = 0.5 x (1 + tanh u)
//   dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh² u) k0 (1 + 3*0.044715 x²)
__device__ __forceinline__ float gelu_tanh(float v) {
    float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    return 0.5f * v * (1.f + tanhf(u));
}
__device__ __forceinline__ float gelu_tanh_grad(float v) {
    float u = 0.7978845608028654f * (v + 0.044715f * v * v * v), th = tanhf(u);
    return 0.5f * (1.f + th) +
           0.5f * v * (1.f - th * th) * 0.7978845608028654f * (1.f + 3.f * 0.044715f * v * v);
}
template <typename T>
__device__ void gelu_fwd(T* y, const T* x, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    st(y, i, gelu_tanh(ld(x, i)));
}
template <typename T>
__device__ void gelu_bwd(T* dx, const T* dy, const T* x, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    st(dx, i, ld(dy, i) * gelu_tanh_grad(ld(x, i)));
}

// GeGLU (Gemma):  a = gelu_tanh(e) * g ;  dg = da * gelu_tanh(e) ;  de = da * g * gelu_tanh'(e)
template <typename T>
__device__ void geglu_fwd(T* a, const T* e, const T* g, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    st(a, i, gelu_tanh(ld(e, i)) * ld(g, i));
}
template <typename T>
__device__ void geglu_bwd(T* de, T* dg, const T* da, const T* e, const T* g, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float ev = ld(e, i), d = ld(da, i);
    st(dg, i, d * gelu_tanh(ev));
    st(de, i, d * ld(g, i) * gelu_tanh_grad(ev));
}

// LoRA accumulate:  y += s * t   (the s·(xAᵀ)Bᵀ term when it is computed apart from y)
template <typename T>
__device__ void scale_add(T* y, const T* t, float s, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) st(y, i, ld(y, i) + s * ld(t, i));
}

// LoRA dropout, the CPU's mask exactly (rng::dropout_keep): element i of a call with `key` is kept
// iff u_i >= p, u_i = (mix64(key + (i+1)·GOLDEN) >> 40) / 2^24 (the (i+1)-th SplitMix64 draw from
// state `key`, 24 bits); a kept value is scaled by keep = 1/(1-p) (f32, multiplied: same bits as
// the CPU). The backward re-derives the mask from the key instead of storing it.
//   dropout:      y  = kept ? x*keep : 0
//   dropout_acc:  y += kept ? x*keep : 0   (dropped elements untouched; the product is rounded
//                 before the add, never fused)
__device__ __forceinline__ bool dropout_keep(u64 key, u64 i, float p) {
    u64 z = key + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z = z ^ (z >> 31);
    return (float)(z >> 40) / 16777216.f >= p;
}
template <typename T>
__device__ void dropout(T* y, const T* x, float p, u64 key, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float keep = 1.f / (1.f - p);
    st(y, i, dropout_keep(key, (u64)i, p) ? __fmul_rn(ld(x, i), keep) : 0.f);
}
template <typename T>
__device__ void dropout_acc(T* y, const T* x, float p, u64 key, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || !dropout_keep(key, (u64)i, p)) return;
    float keep = 1.f / (1.f - p);
    st(y, i, ld(y, i) + __fmul_rn(ld(x, i), keep));
}

#define ACT_KERNELS(T, S)                                                                          \
    extern "C" __global__ void swiglu_fwd_##S(T* a, const T* e, const T* g, i32 rows, i32 cols,    \
                                              i32 ld_in) {                                         \
        swiglu_fwd(a, e, g, rows, cols, ld_in);                                                    \
    }                                                                                              \
    extern "C" __global__ void swiglu_bwd_##S(T* de, T* dg, const T* da, const T* e, const T* g,   \
                                              i32 rows, i32 cols, i32 ld_in) {                     \
        swiglu_bwd(de, dg, da, e, g, rows, cols, ld_in);                                           \
    }                                                                                              \
    extern "C" __global__ void gelu_tanh_fwd_##S(T* y, const T* x, i64 n) { gelu_fwd(y, x, n); }   \
    extern "C" __global__ void gelu_tanh_bwd_##S(T* dx, const T* dy, const T* x, i64 n) {          \
        gelu_bwd(dx, dy, x, n);                                                                    \
    }                                                                                              \
    extern "C" __global__ void geglu_fwd_##S(T* a, const T* e, const T* g, i64 n) {               \
        geglu_fwd(a, e, g, n);                                                                     \
    }                                                                                              \
    extern "C" __global__ void geglu_bwd_##S(T* de, T* dg, const T* da, const T* e, const T* g,    \
                                             i64 n) {                                              \
        geglu_bwd(de, dg, da, e, g, n);                                                            \
    }                                                                                              \
    extern "C" __global__ void scale_add_##S(T* y, const T* t, float s, i64 n) {                   \
        scale_add(y, t, s, n);                                                                     \
    }                                                                                              \
    extern "C" __global__ void dropout_##S(T* y, const T* x, float p, u64 key, i64 n) {            \
        dropout(y, x, p, key, n);                                                                  \
    }                                                                                              \
    extern "C" __global__ void dropout_acc_##S(T* y, const T* x, float p, u64 key, i64 n) {        \
        dropout_acc(y, x, p, key, n);                                                              \
    }
ACT_KERNELS(float, f32)
ACT_KERNELS(bf16, bf16)
