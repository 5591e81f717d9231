// cuda_emu.h: the emulated CUDA device's runtime (src/cuda/emu.rs force-includes it when it
// compiles kernels/*.cu for the host with g++ -DRECIPE_EMU; tests/reference/cuda_emu.py uses it
// too). Every CUDA thread of a block is a std::thread; blocks run one after another, so
// `__shared__` can be a function-local static (and launches must not overlap: the Rust side
// serializes them). __syncthreads and warp shuffles are std::barrier rendezvous; exited threads
// drop out of them. mma.sync is emulated from the PTX ISA fragment layout (kernels/gemm4.cu,
// RECIPE_EMU branch). Vector types carry their CUDA alignment, so a misaligned 16-byte access
// that would fault on a GPU is a misaligned SSE access (and usually a crash) here too.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

struct EmuWarp {
    explicit EmuWarp(unsigned lanes) : bar(lanes) {}
    std::barrier<> bar;
    float fbuf[32];
    unsigned abuf[32][4], bbuf[32][2];
};
inline std::barrier<>* emu_block_bar = nullptr;
inline std::vector<std::unique_ptr<EmuWarp>> emu_warps;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__

inline void __syncthreads() { emu_block_bar->arrive_and_wait(); }
inline EmuWarp& emu_warp() { return *emu_warps[threadIdx.x / 32]; }
inline float emu_shfl(float v, int src) {
    EmuWarp& w = emu_warp();
    w.fbuf[threadIdx.x & 31] = v;
    w.bar.arrive_and_wait();
    float r = w.fbuf[src & 31];
    w.bar.arrive_and_wait();
    return r;
}
inline float __shfl_xor_sync(unsigned, float v, int o) { return emu_shfl(v, (threadIdx.x & 31) ^ o); }
inline float __shfl_sync(unsigned, float v, int src) { return emu_shfl(v, src); }

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __shfl_down_sync(unsigned, float v, unsigned d) {
    unsigned l = threadIdx.x & 31;
    return emu_shfl(v, l + d < 32 ? l + d : l);
}
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
inline float atomicMax(float* p, float v) {
    std::atomic_ref<float> a(*p);
    float old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {}
    return old;
}
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline int min(int a, int b) { return a < b ? a : b; }
// Round-to-nearest product that the GPU compiler never fuses into an fma (g++ here, in ISO C++
// mode without -mfma, fuses nothing anyway).
inline float __fmul_rn(float a, float b) { return a * b; }
using std::fabs; using std::sqrt; using std::tanh; using std::fmax; using std::fmin;

struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct __nv_bfloat16 { uint16_t bits; };
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.bits << 16; float f; std::memcpy(&f, &u, 4); return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u; std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fc0};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(uint16_t)(u >> 16)};
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16(a), __float2bfloat16(b)}; }

// D = A·B + C for m16n8k16 bf16 (row.col), fragments distributed over the warp as in the PTX ISA.
inline void emu_mma_bf16_16816(float* c, const unsigned* a, const unsigned* b) {
    EmuWarp& w = emu_warp();
    int lane = threadIdx.x & 31;
    for (int i = 0; i < 4; i++) w.abuf[lane][i] = a[i];
    for (int i = 0; i < 2; i++) w.bbuf[lane][i] = b[i];
    w.bar.arrive_and_wait();
    auto half = [](unsigned v, int hi) { __nv_bfloat16 h{(uint16_t)(hi ? v >> 16 : v & 0xffff)}; return __bfloat162float(h); };
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; l++) {
        int g = l >> 2, t = l & 3;
        for (int e = 0; e < 2; e++) {
            A[g][2 * t + e] = half(w.abuf[l][0], e);
            A[g + 8][2 * t + e] = half(w.abuf[l][1], e);
            A[g][2 * t + 8 + e] = half(w.abuf[l][2], e);
            A[g + 8][2 * t + 8 + e] = half(w.abuf[l][3], e);
            B[2 * t + e][g] = half(w.bbuf[l][0], e);
            B[2 * t + 8 + e][g] = half(w.bbuf[l][1], e);
        }
    }
    w.bar.arrive_and_wait();
    int g = lane >> 2, t = lane & 3;
    for (int e = 0; e < 4; e++) {
        int r = g + (e >> 1) * 8, col = 2 * t + (e & 1);
        float s = 0.f;
        for (int k = 0; k < 16; k++) s += A[r][k] * B[k][col];
        c[e] += s;
    }
}

// Runs `body` for every thread of every block, blocks in order. Dynamic shared memory
// (`extern __shared__`) is not emulated: no kernel uses it, and `shared_bytes` must be 0.
inline void emu_launch(dim3 grid, dim3 block, unsigned shared_bytes, const std::function<void()>& body) {
    if (shared_bytes != 0) throw std::runtime_error("emulated launch: dynamic shared memory is not supported");
    gridDim = grid;
    blockDim = block;
    unsigned nt = block.x * block.y * block.z;
    unsigned long nblocks = (unsigned long)grid.x * grid.y * grid.z, cur = 0;
    // One host thread per CUDA thread for the whole launch; they run the blocks in order (x
    // fastest), meeting at `step` between blocks, whose completion sets up the next block's
    // barriers (a thread that returns early drops out of its block's barriers only).
    std::unique_ptr<std::barrier<>> bar;
    auto setup = [&] {
        bar.reset(new std::barrier<>(nt));
        emu_block_bar = bar.get();
        emu_warps.clear();
        for (unsigned i = 0; i < (nt + 31) / 32; i++)
            emu_warps.emplace_back(new EmuWarp(nt - 32 * i < 32 ? nt - 32 * i : 32));
    };
    setup();
    auto next = [&]() noexcept {
        if (++cur < nblocks) setup();
    };
    std::barrier<decltype(next)> step(nt, next);
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < nt; t++)
        ts.emplace_back([&, t] {
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            while (cur < nblocks) {
                unsigned long b = cur;
                blockIdx = {(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y)};
                body();
                emu_warps[t / 32]->bar.arrive_and_drop();
                bar->arrive_and_drop();
                step.arrive_and_wait();
            }
        });
    for (auto& th : ts) th.join();
}
inline void emu_launch(dim3 grid, dim3 block, const std::function<void()>& body) { emu_launch(grid, block, 0, body); }
