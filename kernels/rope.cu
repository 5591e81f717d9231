// rope.cu: rotary position embeddings (two layouts) and the ALiBi per-key bias.
// x, y: [tokens, heads, head_dim]; pos: [tokens] (i32 position ids); cos/sin: [max_pos, rot/2]
// tables (host-computed, theta_i = base^(-2i/rot)). Dims at and past `rot` pass through.
// The backward of a rotation is the rotation by -theta: same kernel with sin negated (sgn = -1).
// One thread per (token, head, pair).

// rotate_half (LLaMA/Qwen2/Mistral), half = rot/2, i < half:
//   y[i]      = x[i]*c - x[i+half]*s
//   y[i+half] = x[i+half]*c + x[i]*s
template <typename T>
__device__ void rope_half(T* y, const T* x, const float* cos_t, const float* sin_t, const i32* pos,
                          i32 tokens, i32 heads, i32 hd, i32 rot, float sgn) {
    i32 half = rot / 2;
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    i64 per_tok = (i64)heads * (hd - half);  // threads per token: pairs + pass-through dims
    if (idx >= per_tok * tokens) return;
    i64 t = idx / per_tok;
    i32 r = idx % per_tok;
    i32 h = r / (hd - half), i = r % (hd - half);
    i64 base = (t * heads + h) * (i64)hd;
    if (i < half) {
        i64 p = pos[t];
        float c = cos_t[p * half + i], s = sgn * sin_t[p * half + i];
        float a = ld(x, base + i), b = ld(x, base + i + half);
        st(y, base + i, a * c - b * s);
        st(y, base + i + half, b * c + a * s);
    } else {
        i32 dcol = i + half;  // rot .. hd-1
        st(y, base + dcol, ld(x, base + dcol));
    }
}

// GLM (ChatGLM2/3): adjacent interleaved pairs over the first `rot` dims, i < rot/2:
//   y[2i]   = x[2i]*c - x[2i+1]*s
//   y[2i+1] = x[2i+1]*c + x[2i]*s
template <typename T>
__device__ void rope_glm(T* y, const T* x, const float* cos_t, const float* sin_t, const i32* pos,
                         i32 tokens, i32 heads, i32 hd, i32 rot, float sgn) {
    i32 half = rot / 2;
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    i64 per_tok = (i64)heads * (hd - half);
    if (idx >= per_tok * tokens) return;
    i64 t = idx / per_tok;
    i32 r = idx % per_tok;
    i32 h = r / (hd - half), i = r % (hd - half);
    i64 base = (t * heads + h) * (i64)hd;
    if (i < half) {
        i64 p = pos[t];
        float c = cos_t[p * half + i], s = sgn * sin_t[p * half + i];
        float a = ld(x, base + 2 * i), b = ld(x, base + 2 * i + 1);
        st(y, base + 2 * i, a * c - b * s);
        st(y, base + 2 * i + 1, b * c + a * s);
    } else {
        i32 dcol = i + half;
        st(y, base + dcol, ld(x, base + dcol));
    }
}

#define ROPE_KERNELS(T, S)                                                                          \
    extern "C" __global__ void rope_half_fwd_##S(T* y, const T* x, const float* c, const float* s, \
                                                 const i32* pos, i32 tokens, i32 heads, i32 hd,    \
                                                 i32 rot) {                                        \
        rope_half(y, x, c, s, pos, tokens, heads, hd, rot, 1.f);                                   \
    }                                                                                               \
    extern "C" __global__ void rope_half_bwd_##S(T* dx, const T* dy, const float* c,               \
                                                 const float* s, const i32* pos, i32 tokens,       \
                                                 i32 heads, i32 hd, i32 rot) {                     \
        rope_half(dx, dy, c, s, pos, tokens, heads, hd, rot, -1.f);                                \
    }                                                                                               \
    extern "C" __global__ void rope_glm_fwd_##S(T* y, const T* x, const float* c, const float* s,  \
                                                const i32* pos, i32 tokens, i32 heads, i32 hd,     \
                                                i32 rot) {                                         \
        rope_glm(y, x, c, s, pos, tokens, heads, hd, rot, 1.f);                                    \
    }                                                                                               \
    extern "C" __global__ void rope_glm_bwd_##S(T* dx, const T* dy, const float* c, const float* s,\
                                                const i32* pos, i32 tokens, i32 heads, i32 hd,     \
                                                i32 rot) {                                         \
        rope_glm(dx, dy, c, s, pos, tokens, heads, hd, rot, -1.f);                                 \
    }
ROPE_KERNELS(float, f32)
ROPE_KERNELS(bf16, bf16)

// ALiBi per-key bias (BLOOM):  bias[b, h, j] = slopes[h] * kpos[b, j]
// kpos counts non-padding keys (cumsum(mask)-1, 0 on padding). Adding it to row i of the scores
// equals HF's alibi up to a per-row constant, which softmax ignores. The attention kernels apply
// the same bias inline as slope*(j-i); this kernel serves the non-flash paths.
extern "C" __global__ void alibi_bias_f32(float* bias, const float* slopes, const i32* kpos,
                                          i32 batch, i32 heads, i32 t) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)batch * heads * t) return;
    i32 j = idx % t;
    i32 h = (idx / t) % heads;
    i32 b = idx / ((i64)t * heads);
    bias[idx] = slopes[h] * (float)kpos[(i64)b * t + j];
}

// Per-token rotation tables (the CPU backend's `rope` angles, f32 product then cosf/sinf):
//   cos[t, i] = cos(pos[t]*inv[i]) * scale ;  sin[t, i] = sin(pos[t]*inv[i]) * scale
// pos: [n] f32, inv: [half] inverse frequencies, scale: attention_scaling. cos/sin: [n, half],
// usable by rope_*_fwd/bwd with pos = 0..n.
extern "C" __global__ void rope_table_f32(float* cos_t, float* sin_t, const float* pos,
                                          const float* inv, float scale, i32 n, i32 half) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)n * half) return;
    float ang = pos[idx / half] * inv[idx % half];
    cos_t[idx] = cosf(ang) * scale;
    sin_t[idx] = sinf(ang) * scale;
}
