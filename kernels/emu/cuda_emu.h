// cuda_emu.h: the emulated CUDA device's runtime (src/cuda/emu.rs force-includes it when it
// compiles kernels/*.cu for the host with g++ -DRECIPE_EMU; tests/reference/cuda_emu.py uses it
// too). Blocks run one after another on the calling host thread, so `__shared__` can be a
// function-local static (and launches must not overlap: the Rust side serializes them). Every CUDA
// thread of a block is a fiber with its own stack on that host thread; a fiber runs until it
// waits at a barrier (`__syncthreads`, or a warp's for shuffles and mma.sync) or exits, then the
// next one runs. A barrier releases when every thread still running in its block (or warp) has
// arrived; exited threads drop out of it. Waiters that can never be released (a barrier some
// threads never reach) end the launch with an error instead of hanging. mma.sync is emulated from
// the PTX ISA fragment layout (kernels/gemm4.cu, RECIPE_EMU branch). Vector types carry their
// CUDA alignment, so a misaligned 16-byte access that would fault on a GPU is a misaligned SSE
// access (and usually a crash) here too.
#pragma once
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <vector>
#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__) || defined(RECIPE_EMU_UCONTEXT)
#include <ucontext.h>
#define RECIPE_EMU_UCONTEXT 1
#endif

struct dim3 { unsigned x = 1, y = 1, z = 1; };
// Plain globals: every fiber runs on the launching host thread, and the scheduler sets
// `threadIdx` before resuming a fiber.
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

// A barrier among the fibers of one block (or one warp). `expected` counts the threads still
// running; `gen` advances each time it releases.
struct EmuBarrier { unsigned expected = 0, arrived = 0; unsigned long gen = 0; };
struct EmuWarp {
    EmuBarrier bar;
    float fbuf[2][32];
    const uint16_t* pbuf[2][32];  // ldmatrix row addresses
    unsigned abuf[32][4], bbuf[32][2];
};
// One cp.async copy: 16 bytes, or 16 zero bytes when `n` is 0.
struct EmuCopy { void* dst; const void* src; unsigned n; };

// ---- fibers --------------------------------------------------------------------------------
// x86-64: a hand-written switch (callee-saved registers and the stack pointer; the SSE/x87
// control words are left alone: nothing here changes the rounding mode or exception masks);
// elsewhere (or with -DRECIPE_EMU_UCONTEXT) swapcontext, which also saves the signal mask (a
// system call per switch, so slower).
struct EmuFiber {
#ifdef RECIPE_EMU_UCONTEXT
    ucontext_t ctx;
#else
    void* sp = nullptr;
#endif
    char* stack = nullptr;
    dim3 tid;
    unsigned warp = 0;
    EmuBarrier* on = nullptr;  // the barrier this fiber waits at, if any
    unsigned long gen = 0;     // ... and its generation then
    bool done = false;
    std::vector<EmuCopy> open;                 // cp.async copies not yet committed
    std::vector<std::vector<EmuCopy>> groups;  // committed groups, oldest first
};

#ifndef RECIPE_EMU_UCONTEXT
// void emu_fiber_switch(void** save_sp, void* new_sp): saves this context on its stack, stores
// the stack pointer in *save_sp and resumes the context saved at new_sp. Weak and hidden, so
// every library (or object) may carry its own copy.
asm(R"(
    .text
    .weak emu_fiber_switch
    .hidden emu_fiber_switch
    .type emu_fiber_switch, @function
emu_fiber_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size emu_fiber_switch, .-emu_fiber_switch
)");
extern "C" void emu_fiber_switch(void** save_sp, void* new_sp);
#endif

struct EmuSched {
    std::vector<EmuFiber> fibers;  // a pool: the launch's first `n` run, all keep their stacks
    unsigned n = 0;
    std::vector<EmuWarp> warps;
    EmuBarrier block;
    EmuFiber* cur = nullptr;
#ifdef RECIPE_EMU_UCONTEXT
    ucontext_t main;
#else
    void* main_sp = nullptr;
#endif
    const std::function<void()>* body = nullptr;
    std::exception_ptr error;
    ~EmuSched();
};
inline EmuSched emu_sched;

// Fiber stacks: 256 KiB each with an inaccessible guard page below, so an overflow faults.
// Mapped when a launch first needs that many threads, reused by every later launch (only touched
// pages use memory).
inline constexpr size_t EMU_STACK = 256 * 1024;
inline size_t emu_page() { return (size_t)sysconf(_SC_PAGESIZE); }
inline char* emu_stack_alloc() {
    size_t page = emu_page();
    void* p = mmap(nullptr, EMU_STACK + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("emulated launch: cannot map a fiber stack");
    if (mprotect(p, page, PROT_NONE) != 0) {
        munmap(p, EMU_STACK + page);
        throw std::runtime_error("emulated launch: cannot protect a fiber stack's guard page");
    }
    return (char*)p + page;
}
inline EmuSched::~EmuSched() {
    for (EmuFiber& f : fibers) munmap(f.stack - emu_page(), EMU_STACK + emu_page());
}

// Back to the scheduler (from a fiber).
inline void emu_yield() {
    EmuSched& s = emu_sched;
#ifdef RECIPE_EMU_UCONTEXT
    swapcontext(&s.cur->ctx, &s.main);
#else
    emu_fiber_switch(&s.cur->sp, s.main_sp);
#endif
}

// cp.async: a thread's copies are queued and carried out at the cp.async.wait_group that must
// see them, the latest moment the hardware may; so a kernel that reads a tile before waiting
// for it, or before the barrier after the wait (another thread's copies), reads stale data here
// as well, and the tests see it.
inline void emu_cp_async16(void* dst, const void* src, bool valid) {
    if (((uintptr_t)dst & 15) != 0 || (valid && ((uintptr_t)src & 15) != 0))
        throw std::runtime_error("emulated cp.async: address not 16-byte aligned");
    emu_sched.cur->open.push_back({dst, src, valid ? 16u : 0u});
}
inline void emu_cp_async_commit() {
    EmuFiber& f = *emu_sched.cur;
    f.groups.push_back(std::move(f.open));
    f.open.clear();
}
// Waits for all but the newest `pending` committed groups.
inline void emu_cp_async_wait(unsigned pending) {
    EmuFiber& f = *emu_sched.cur;
    while (f.groups.size() > pending) {
        for (const EmuCopy& c : f.groups.front()) {
            if (c.n) std::memcpy(c.dst, c.src, 16);
            else std::memset(c.dst, 0, 16);
        }
        f.groups.erase(f.groups.begin());
    }
}

inline void emu_fiber_main() {
    EmuSched& s = emu_sched;
    try {
        (*s.body)();
    } catch (...) {
        if (!s.error) s.error = std::current_exception();
    }
    // Exited: copies still in flight land (as they would), then the thread drops out of the
    // block's and the warp's barriers (which may release them).
    EmuFiber& f = *s.cur;
    emu_cp_async_commit();
    emu_cp_async_wait(0);
    f.done = true;
    for (EmuBarrier* b : {&s.block, &s.warps[f.warp].bar}) {
        b->expected--;
        if (b->arrived != 0 && b->arrived == b->expected) { b->arrived = 0; b->gen++; }
    }
    emu_yield();
    __builtin_unreachable();
}

// Waits until every running thread of the barrier's group has arrived.
inline void emu_wait(EmuBarrier& b) {
    if (++b.arrived == b.expected) { b.arrived = 0; b.gen++; return; }
    EmuFiber& f = *emu_sched.cur;
    f.on = &b;
    f.gen = b.gen;
    emu_yield();
}

// Sets up fiber `f` to start in emu_fiber_main.
inline void emu_fiber_start(EmuFiber& f) {
#ifdef RECIPE_EMU_UCONTEXT
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = EMU_STACK;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, emu_fiber_main, 0);
#else
    // What emu_fiber_switch pops: r15..rbp, then `ret` into emu_fiber_main with a zero return
    // address above it (the ABI's rsp % 16 == 8 at function entry).
    uint64_t* top = (uint64_t*)(f.stack + EMU_STACK);
    top[-1] = 0;
    top[-2] = (uint64_t)(uintptr_t)&emu_fiber_main;
    for (int i = 3; i <= 8; i++) top[-i] = 0;
    f.sp = &top[-8];
#endif
    f.on = nullptr;
    f.done = false;
    f.open.clear();
    f.groups.clear();
}

// Runs the current block's fibers to completion, round robin.
inline void emu_run_block() {
    EmuSched& s = emu_sched;
    unsigned live = s.n;
    while (live > 0) {
        bool progressed = false;
        for (unsigned i = 0; i < s.n; i++) {
            EmuFiber& f = s.fibers[i];
            if (f.done || (f.on && f.on->gen == f.gen)) continue;
            f.on = nullptr;
            s.cur = &f;
            threadIdx = f.tid;
#ifdef RECIPE_EMU_UCONTEXT
            swapcontext(&s.main, &f.ctx);
#else
            emu_fiber_switch(&s.main_sp, f.sp);
#endif
            progressed = true;
            if (f.done) live--;
        }
        if (!progressed)
            throw std::runtime_error("emulated launch: deadlock (threads wait at a barrier that the rest of their block or warp never reaches)");
    }
}

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__

inline void __syncthreads() { emu_wait(emu_sched.block); }
inline EmuWarp& emu_warp() { return emu_sched.warps[emu_sched.cur->warp]; }
// One barrier per shuffle: the lanes write the buffer of the barrier's current phase parity, so a
// lane that races ahead to the next shuffle writes the other buffer, and the one after that waits
// at the next phase until every lane has read this one.
inline float emu_shfl(float v, int src) {
    EmuWarp& w = emu_warp();
    float* buf = w.fbuf[w.bar.gen & 1];
    buf[threadIdx.x & 31] = v;
    emu_wait(w.bar);
    return buf[src & 31];
}
inline float __shfl_xor_sync(unsigned, float v, int o) { return emu_shfl(v, (threadIdx.x & 31) ^ o); }
inline float __shfl_sync(unsigned, float v, int src) { return emu_shfl(v, src); }

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
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
inline int max(int a, int b) { return a > b ? a : b; }
// Round-to-nearest product that the GPU compiler never fuses into an fma (g++ here, in ISO C++
// mode without -mfma, fuses nothing anyway).
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
using std::fabs; using std::sqrt; using std::tanh; using std::fmax; using std::fmin;

struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(8) float2 { float x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
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
    emu_wait(w.bar);
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
    emu_wait(w.bar);
    int g = lane >> 2, t = lane & 3;
    for (int e = 0; e < 4; e++) {
        int r = g + (e >> 1) * 8, col = 2 * t + (e & 1);
        float s = 0.f;
        for (int k = 0; k < 16; k++) s += A[r][k] * B[k][col];
        c[e] += s;
    }
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lane 8i + r passes the address of row r
// of 8x8 matrix i (16-byte aligned); lane l = 4g + t gets in r[i] the pair (row g, columns 2t,
// 2t + 1) of matrix i, or with `trans` (rows 2t, 2t + 1 of column g).
inline void emu_ldmatrix_x4(unsigned* r, const void* row, bool trans) {
    if (((uintptr_t)row & 15) != 0) throw std::runtime_error("emulated ldmatrix: row address not 16-byte aligned");
    EmuWarp& w = emu_warp();
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint16_t** rows = w.pbuf[w.bar.gen & 1];
    rows[lane] = (const uint16_t*)row;
    emu_wait(w.bar);
    for (int i = 0; i < 4; i++) {
        const uint16_t* const* m = rows + 8 * i;
        unsigned lo = trans ? m[2 * t][g] : m[g][2 * t], hi = trans ? m[2 * t + 1][g] : m[g][2 * t + 1];
        r[i] = lo | hi << 16;
    }
}

// Runs `body` for every thread of every block, blocks in order (x fastest). Dynamic shared
// memory (`extern __shared__`) is not emulated: no kernel uses it, and `shared_bytes` must be 0.
inline void emu_launch(dim3 grid, dim3 block, unsigned shared_bytes, const std::function<void()>& body) {
    if (shared_bytes != 0) throw std::runtime_error("emulated launch: dynamic shared memory is not supported");
    gridDim = grid;
    blockDim = block;
    EmuSched& s = emu_sched;
    unsigned nt = block.x * block.y * block.z;
    while (s.fibers.size() < nt) {
        s.fibers.emplace_back();
        s.fibers.back().stack = emu_stack_alloc();
    }
    s.n = nt;
    s.warps.assign((nt + 31) / 32, EmuWarp{});
    s.body = &body;
    s.error = nullptr;
    for (unsigned t = 0; t < nt; t++) {
        s.fibers[t].tid = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        s.fibers[t].warp = t / 32;
    }
    unsigned long nblocks = (unsigned long)grid.x * grid.y * grid.z;
    for (unsigned long b = 0; b < nblocks && !s.error; b++) {
        blockIdx = {(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y)};
        s.block = {nt, 0, 0};
        for (unsigned w = 0; w < s.warps.size(); w++) s.warps[w].bar = {nt - 32 * w < 32 ? nt - 32 * w : 32, 0, 0};
        for (unsigned t = 0; t < nt; t++) emu_fiber_start(s.fibers[t]);
        emu_run_block();
    }
    if (s.error) std::rethrow_exception(s.error);
}
inline void emu_launch(dim3 grid, dim3 block, const std::function<void()>& body) { emu_launch(grid, block, 0, body); }
