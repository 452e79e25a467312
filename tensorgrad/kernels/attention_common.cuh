// Fused causal attention, flash style (Dao et al. 2022, FlashAttention-2's loop order).
//
//   forward:  s = q k^T * scale (causal: query i sees keys j <= i + S - T),
//             p = softmax(s), y = dropout(p) v,  lse = logsumexp(s) per query row
//   backward: D = sum(dy * y) per row (attention_row_dot),
//             p = exp(s - lse) recomputed, pd = dropout(p), dp = dy v^T,
//             ds = p * (dropout(dp) - D),  dv = pd^T dy,  dk = ds^T q * scale,  dq = ds k * scale
// Nothing of size (T, S) ever reaches memory: a block holds a 64 x 64 tile of
// scores in registers and shared memory, and keeps, per query row, a running
// max m and sum l of exp (online softmax), rescaling its output accumulator
// when m grows. Backward saves nothing but y and lse from the forward and
// redraws the dropout mask from the same Philox numbers (philox.cuh).
//
// Layout: q, k, v, y and their gradients are read/written through strides
// (batch, head, time) with the head dimension D contiguous, so the kernels
// work straight on a (B, T, 3C) qkv buffer and write y as (B, T, C): no
// permute copies. lse is (B*H, T). q, k, v, y and the gradients are floatX
// (common.cuh: float32 or bf16); tiles in shared memory and all math are float.
//
// Work split: 128 threads own a 64 x 64 tile; thread (ty, tx) = (tid / 8,
// tid % 8) owns rows 4ty..4ty+3 and columns tx, tx+8, ..., tx+56 of a score
// tile, so the 8 threads of a row sit in one warp (row max / sum by 3
// shuffles). Of a (64, D) output tile it owns rows 4ty..4ty+3 and the columns
// 4tx..4tx+3 + 32m, so it stores float4s. Shared tiles keep global memory's
// layout (rows of D floats, padded to D + 4): every inner-loop read is a
// 16-byte float4, a quarter of the load instructions of scalar reads, and the
// 8 threads of a quarter-warp read 8 different float4s of 32 distinct banks.
// The backward is two kernels, both recomputing p: one per key tile for dk,
// dv (looping over query tiles), one per query tile for dq (looping over key
// tiles). Every sum has a fixed order: results are deterministic.
//
// Dropout: the 16-bit uniform of element (row i, key j) of head bh is lane
// (j / 8) % 8 of Philox(counter = (i, (j / 64) * 8 + j % 8, bh, offset)).
//
// This header holds what both paths share: the tile geometry, strides, the
// causal and dropout rules, the entry points' signatures (ATTENTION_KERNELS)
// and the two small kernels (attention_row_dot, attention_dropout_mask).
// attention.cu is the tiled float path (CUDA-core FMAs, float32 and bf16),
// attention_mma.cu the tensor-core path (bf16 only); the loader builds one of
// them, one head size per module (TG_HEAD_DIM).
#pragma once
#include "common.cuh"
#include "philox.cuh"

#define TILE 64
#define NT 128
#define LP (TILE + 4)                      // row stride of a (64, 64) probability tile in shared memory
#define LOG2E 1.4426950408889634f

struct Strides { long long b, h, t; };   // in elements; the head dimension is contiguous

__device__ __forceinline__ long long base_of(const Strides& s, int bh, int H) {
    return (long long)(bh / H) * s.b + (long long)(bh % H) * s.h;
}

// Is key j visible to query i? (causal: j <= i + S - T; always j < S, i < T)
__device__ __forceinline__ bool visible(int i, int j, int T, int S, bool causal) {
    return i < T && j < S && (!causal || j <= i + (S - T));
}

// Is dropout on? The loader builds each attention module twice, with TG_DROPOUT 0 (p = 0, as
// in most training and all evaluation) and 1: built without it, every dropout branch below is
// dead code the compiler removes, with the registers its Philox draws would hold.
#if defined(TG_DROPOUT) && TG_DROPOUT == 0
#define DROPOUT_ON(drop16) false
#else
#define DROPOUT_ON(drop16) ((drop16) != 0)
#endif

// dropout factor of the 8 columns tx + 8c (c = 0..7) of key tile kt in query row i
__device__ __forceinline__ void drop_row(float (&z)[8], const unsigned int* rng, unsigned int drop16, float dscale,
                                         int i, int kt, int tx, int bh) {
    if (!DROPOUT_ON(drop16)) {
#pragma unroll
        for (int c = 0; c < 8; ++c) z[c] = 1.f;
        return;
    }
    const Philox4 bits = philox_draw(rng, (unsigned int)i, (unsigned int)(kt * 8 + tx), (unsigned int)bh);
#pragma unroll
    for (int c = 0; c < 8; ++c) z[c] = philox_u16(bits, c) >= drop16 ? dscale : 0.f;
}

// last key tile a query tile [q0, q0 + 64) can see, plus one
__device__ __forceinline__ int key_tiles(int q0, int T, int S, bool causal) {
    const int last = causal ? min(S - 1, q0 + TILE - 1 + (S - T)) : S - 1;
    return last / TILE + 1;
}


// ----------------------------------------------------------------- backward
// D[row] = sum_d dy[row, d] * y[row, d]; a group of 8 lanes a row. vec (rows start on 16
// bytes, D a multiple of 16 / sizeof(floatX)): each lane reads 16 bytes of both at a time.
extern "C" __global__ void attention_row_dot(const floatX* __restrict__ dy, const floatX* __restrict__ y,
                                             float* __restrict__ out, long long yb, long long yh, long long yt,
                                             int H, int T, int D, int rows, int vec) {
    constexpr int G = 8, V = 16 / sizeof(floatX);   // lanes a row; elements in 16 bytes
    const Strides ys{yb, yh, yt};   // dy has the strides of y
    const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / G;
    const int lane = threadIdx.x % G;
    float s = 0.f;
    if (r < rows) {                 // no return before the shuffles: every lane of the warp takes part
        const int bh = (int)(r / T), t = (int)(r % T);
        const floatX* a = dy + base_of(ys, bh, H) + (long long)t * ys.t;
        const floatX* b = y + base_of(ys, bh, H) + (long long)t * ys.t;
        if (vec) {
            for (int d = V * lane; d < D; d += V * G) {
                const uint4 ua = *reinterpret_cast<const uint4*>(a + d), ub = *reinterpret_cast<const uint4*>(b + d);
                const floatX* ea = reinterpret_cast<const floatX*>(&ua);
                const floatX* eb = reinterpret_cast<const floatX*>(&ub);
#pragma unroll
                for (int e = 0; e < V; ++e) s += to_f(ea[e]) * to_f(eb[e]);
            }
        } else {
            for (int d = lane; d < D; d += G) s += to_f(a[d]) * to_f(b[d]);
        }
    }
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (r < rows && lane == 0) out[r] = s;
}

// ------------------------------------------------- entry points, one per head size
// Strides come as 12 scalars (q, k, v, y: batch, head, time); a gradient has the
// strides of what it is the gradient of (dq of q, ..., dy of y).
#define STRIDE_PARAMS long long qb, long long qh, long long qt, long long kb, long long kh, long long kt,     \
                      long long vb, long long vh, long long vt, long long yb, long long yh, long long yt
#define STRIDES Strides{qb, qh, qt}, Strides{kb, kh, kt}, Strides{vb, vh, vt}, Strides{yb, yh, yt}
// One set of entry points per path and head size: PATH is empty for the float-FMA
// kernels (attention_forward_64, ...) and _mma for the tensor-core ones
// (attention_forward_mma_64, ..., bf16 only); each calls the body of its path.
#define ATTENTION_KERNELS(D, PATH)                                                                             \
extern "C" __global__ void __launch_bounds__(NT) attention_forward##PATH##_##D(                                \
        const floatX* q, const floatX* k, const floatX* v, floatX* y, float* lse, STRIDE_PARAMS, int H, int T, \
        int S, float scale, int causal, const unsigned int* rng, unsigned int drop16, float dscale, int vec) { \
    attention_forward##PATH##_body<D>(q, k, v, y, lse, STRIDES, H, T, S, scale, causal, rng, drop16, dscale,  \
                                      vec);                                                                    \
}                                                                                                              \
extern "C" __global__ void __launch_bounds__(NT) attention_backward_kv##PATH##_##D(                            \
        const floatX* q, const floatX* k, const floatX* v, const floatX* dy, const float* lse,                 \
        const float* dot, floatX* dk, floatX* dv, STRIDE_PARAMS, int H, int T, int S, float scale, int causal,  \
        const unsigned int* rng, unsigned int drop16, float dscale, int vec) {                                 \
    attention_backward_kv##PATH##_body<D>(q, k, v, dy, lse, dot, dk, dv, STRIDES, H, T, S, scale, causal, rng, \
                                          drop16, dscale, vec);                                                \
}                                                                                                              \
extern "C" __global__ void __launch_bounds__(NT) attention_backward_q##PATH##_##D(                             \
        const floatX* q, const floatX* k, const floatX* v, const floatX* dy, const float* lse,                 \
        const float* dot, floatX* dq, STRIDE_PARAMS, int H, int T, int S, float scale, int causal,             \
        const unsigned int* rng, unsigned int drop16, float dscale, int vec) {                                 \
    attention_backward_q##PATH##_body<D>(q, k, v, dy, lse, dot, dq, STRIDES, H, T, S, scale, causal, rng,      \
                                         drop16, dscale, vec);                                                 \
}

// The loader builds one head size per module (TG_HEAD_DIM; 0 for none, only the two
// small kernels below). With none set (nvcc --ptx, the compile test) every size is built.
#ifdef TG_HEAD_DIM
#define HEAD_DIM(D) (TG_HEAD_DIM == D)
#else
#define HEAD_DIM(D) 1
#endif

// The mask the kernels draw, written out (1 / (1 - p) or 0) for tests: (B*H, T, S)
extern "C" __global__ void attention_dropout_mask(float* out, int BH, int T, int S, const unsigned int* rng,
                                                  unsigned int drop16, float dscale) {
    const long long n = (long long)BH * T * ((S + TILE - 1) / TILE) * 8;   // one thread per (bh, i, kt, tx)
    for (long long w = (long long)blockIdx.x * blockDim.x + threadIdx.x; w < n; w += (long long)gridDim.x * blockDim.x) {
        const int tx = (int)(w % 8);
        const long long rest = w / 8;
        const int kt = (int)(rest % ((S + TILE - 1) / TILE));
        const int i = (int)((rest / ((S + TILE - 1) / TILE)) % T);
        const int bh = (int)(rest / ((S + TILE - 1) / TILE) / T);
        float z[8];
        drop_row(z, rng, drop16, dscale, i, kt, tx, bh);
#pragma unroll
        for (int c = 0; c < 8; ++c) {
            const int j = kt * TILE + tx + 8 * c;
            if (j < S) out[((long long)bh * T + i) * S + j] = z[c];
        }
    }
}
