// common.cuh: prelude prepended (src/cuda/kernels.rs) to every kernels/*.cu file before NVRTC, or
// g++ for the emulated device, compiles it. NVRTC has no libc: the integer typedefs live here. Storage dtypes are f32 and bf16;
// all arithmetic is f32 (`ld` widens, `st` rounds to nearest even).
#ifndef RECIPE_EMU  // the emulated device (kernels/emu/cuda_emu.h) defines bf16 itself
#include <cuda_bf16.h>
#endif

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef long long i64;
typedef unsigned long long u64;
typedef __nv_bfloat16 bf16;

#define RECIPE_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float ld(const float* p, i64 i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16* p, i64 i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float* p, i64 i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16* p, i64 i, float v) { p[i] = __float2bfloat16(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Sum over the whole block (blockDim.x a multiple of 32, at most 1024). Every thread gets the sum.
// `scratch` holds 32 floats of shared memory; the call ends with a barrier so it can be reused.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : 0.f;
    t = warp_sum(t);
    __syncthreads();
    return t;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : -RECIPE_INF;
    t = warp_max(t);
    __syncthreads();
    return t;
}

// D = A·B + D on tensor cores: one m16n8k16 bf16 product with f32 accumulate, fragments spread
// over the warp as in the PTX ISA (lane = 4·g + t): a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..],
// A[g+8][2t+8..]}, b = {B[2t..][g], B[2t+8..][g]}, c = {C[g][2t], C[g][2t+1], C[g+8][2t],
// C[g+8][2t+1]} (pairs packed low half first).
__device__ __forceinline__ void mma_bf16_16816(float* c, const u32* a, const u32* b) {
#ifdef RECIPE_EMU  // the emulated device (kernels/emu/cuda_emu.h); never set under NVRTC
    emu_mma_bf16_16816(c, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Two floats as a bf16 pair (lo in the low half), the packing of an mma operand register.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    bf16 a = __float2bfloat16(lo), b = __float2bfloat16(hi);
    return (u32)(*(const u16*)&a) | ((u32)(*(const u16*)&b) << 16);
}

// Shared-memory operand loads (ldmatrix) and asynchronous global -> shared copies (cp.async),
// sm_80 and up; the emulated device implements both (kernels/emu/cuda_emu.h).
// ldsm_x4: lane 8i + r passes the address of row r of 8x8 bf16 matrix i (16-byte aligned); lane
// 4g + t gets in r[i] matrix i's (row g, columns 2t, 2t + 1) pair: an mma A or B register. TRANS:
// the transposed matrices' pairs (rows 2t, 2t + 1 of column g): B registers from a tile stored
// [k][n].
template <bool TRANS>
__device__ __forceinline__ void ldsm_x4(u32* r, const bf16* row) {
#ifdef RECIPE_EMU
    emu_ldmatrix_x4(r, row, TRANS);
#else
    u32 a = (u32)__cvta_generic_to_shared(row);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
#endif
}
// 16 bytes from global src to shared dst (both 16-byte aligned), or 16 zero bytes when !valid
// (src is then not read). Visible after cp_async_wait and, to other threads, a barrier.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#ifdef RECIPE_EMU
    emu_cp_async16(dst, src, valid);
#else
    u32 a = (u32)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src),
                 "r"(valid ? 16 : 0));
#endif
}
// Closes the group of this thread's copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef RECIPE_EMU
    emu_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most `PENDING` of this thread's committed groups (the newest) are in flight.
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
#ifdef RECIPE_EMU
    emu_cp_async_wait(PENDING);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
#endif
}
