// embedding.cu: token embedding lookup and its scatter backward.
// out, dout: [n, d]; ids: [n] (i32); table: [vocab, d]; dtable: [vocab, d] f32 (zeroed by caller).

// Forward:  out[i, :] = table[ids[i], :]   (ids outside [0, vocab) give a zero row)
template <typename T>
__device__ void embedding_fwd(T* out, const i32* ids, const T* table, i32 n, i32 d, i32 vocab) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)n * d) return;
    i64 i = idx / d, c = idx % d;
    i32 id = ids[i];
    st(out, idx, (id >= 0 && id < vocab) ? ld(table, (i64)id * d + c) : 0.f);
}
// Backward:  dtable[ids[i], :] += dout[i, :]   (atomicAdd: repeated ids collide)
template <typename T>
__device__ void embedding_bwd(float* dtable, const i32* ids, const T* dout, i32 n, i32 d,
                              i32 vocab) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)n * d) return;
    i64 i = idx / d, c = idx % d;
    i32 id = ids[i];
    if (id >= 0 && id < vocab) atomicAdd(dtable + (i64)id * d + c, ld(dout, idx));
}

#define EMB_KERNELS(T, S)                                                                          \
    extern "C" __global__ void embedding_fwd_##S(T* out, const i32* ids, const T* table, i32 n,    \
                                                 i32 d, i32 vocab) {                               \
        embedding_fwd(out, ids, table, n, d, vocab);                                               \
    }                                                                                              \
    extern "C" __global__ void embedding_bwd_##S(float* dtable, const i32* ids, const T* dout,     \
                                                 i32 n, i32 d, i32 vocab) {                        \
        embedding_bwd(dtable, ids, dout, n, d, vocab);                                             \
    }
EMB_KERNELS(float, f32)
EMB_KERNELS(bf16, bf16)
