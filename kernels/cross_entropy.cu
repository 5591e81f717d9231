// cross_entropy.cu: softmax cross-entropy over the vocabulary for one CHUNK of token rows at a
// time (the caller computes logits chunk by chunk, so full f32 logits for the batch never exist).
// logits, dlogits: [n, v]; targets: [n] (already shifted; -100 = ignored); loss, lse: [n] f32.
// One block per row.

// Forward:  lse = log Σ_c exp(z_c) ;  loss = lse - z[target]  (0 for ignored rows)
template <typename T>
__device__ void ce_fwd(float* loss, float* lse_out, const T* logits, const i32* targets, i32 v) {
    __shared__ float scratch[32];
    i64 row = blockIdx.x;
    const T* z = logits + row * v;
    // Online max/sum per thread, then combined across the block.
    float m = -RECIPE_INF, s = 0.f;
    for (int c = threadIdx.x; c < v; c += blockDim.x) {
        float x = ld(z, c);
        if (x > m) { s = s * __expf(m - x) + 1.f; m = x; } else s += __expf(x - m);
    }
    float gm = block_max(m, scratch);
    float part = (m == -RECIPE_INF) ? 0.f : s * __expf(m - gm);
    float tot = block_sum(part, scratch);
    if (threadIdx.x == 0) {
        float lse = gm + __logf(tot);
        i32 t = targets[row];
        lse_out[row] = lse;
        loss[row] = (t < 0 || t >= v) ? 0.f : lse - ld(z, t);
    }
}
// Backward:  dz_c = grad_scale * (exp(z_c - lse) - [c == target])  (0 for ignored rows)
// grad_scale is typically 1/(number of trained tokens in the whole batch). dlogits may alias
// logits (each element is read before it is overwritten by the same thread).
template <typename T>
__device__ void ce_bwd(T* dlogits, const T* logits, const float* lse_in, const i32* targets, i32 v,
                       float grad_scale) {
    i64 row = blockIdx.x;
    i32 t = targets[row];
    bool ignored = t < 0 || t >= v;
    float lse = lse_in[row];
    for (int c = threadIdx.x; c < v; c += blockDim.x) {
        float g = ignored ? 0.f : grad_scale * (__expf(ld(logits, row * v + c) - lse) - (c == t ? 1.f : 0.f));
        st(dlogits, row * v + c, g);
    }
}

#define CE_KERNELS(T, S)                                                                           \
    extern "C" __global__ void cross_entropy_fwd_##S(float* loss, float* lse, const T* logits,     \
                                                     const i32* targets, i32 v) {                  \
        ce_fwd(loss, lse, logits, targets, v);                                                     \
    }                                                                                              \
    extern "C" __global__ void cross_entropy_bwd_##S(T* dlogits, const T* logits,                  \
                                                     const float* lse, const i32* targets, i32 v,  \
                                                     float grad_scale) {                           \
        ce_bwd(dlogits, logits, lse, targets, v, grad_scale);                                      \
    }
CE_KERNELS(float, f32)
CE_KERNELS(bf16, bf16)
