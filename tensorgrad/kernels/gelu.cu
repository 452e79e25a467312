// GELU in PyTorch's two forms, forward and backward in one pass each.
//
// Exact (approximate='none', PyTorch's default), with Phi the normal CDF:
//   y  = x Phi(x) = x/2 (1 + erf(x / sqrt 2))
//   dx = g (Phi(x) + x phi(x)),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
// Tanh approximation (approximate='tanh', GPT-2's):
//   y  = x/2 (1 + t),  t = tanh(c (x + 0.044715 x^3)),  c = sqrt(2/pi)
//   dx = g (1/2 (1 + t) + x/2 (1 - t^2) c (1 + 3 * 0.044715 x^2))
// One template body serves both (the form is the EXACT parameter, fixed at
// compile time, so neither kernel pays a branch). Composed from array ops, the
// forward takes 8 passes over memory and the backward about 12; here each reads
// its inputs once and writes once. The backward recomputes the CDF (or t) from
// x rather than saving it (one array less to keep).
//
// x, y, g, dx are floatX (common.cuh); the math is float.
// Launch: 1-D grid-stride loop, 256 threads a block, four elements a thread
// and iteration (vec = 1: every pointer starts on a vector boundary, so the four
// are one load) and a scalar tail; n may exceed 2^31.
#include "common.cuh"

#define GELU_C 0.7978845608028654f      // sqrt(2 / pi)
#define GELU_K 0.044715f
#define INV_SQRT2 0.7071067811865476f   // 1 / sqrt(2)
#define INV_SQRT_2PI 0.3989422804014327f  // 1 / sqrt(2 pi)

template <bool EXACT>
__device__ __forceinline__ float gelu_value(float a) {
    if constexpr (EXACT) return 0.5f * a * (1.0f + erff(a * INV_SQRT2));
    const float t = tanhf(GELU_C * (a + GELU_K * a * a * a));
    return 0.5f * a * (1.0f + t);
}

template <bool EXACT>
__device__ __forceinline__ float gelu_slope(float a) {
    if constexpr (EXACT) return 0.5f * (1.0f + erff(a * INV_SQRT2)) + a * INV_SQRT_2PI * expf(-0.5f * a * a);
    const float t = tanhf(GELU_C * (a + GELU_K * a * a * a));
    return 0.5f * (1.0f + t) + 0.5f * a * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_K * a * a);
}

template <bool EXACT>
__device__ __forceinline__ void gelu_forward_loop(const floatX* __restrict__ x, floatX* __restrict__ y, long long n,
                                                  int vec) {
    const long long stride = (long long)gridDim.x * blockDim.x, first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n4 = vec ? n >> 2 : 0;
    for (long long k = first; k < n4; k += stride) {
        const float4 a = ld4(x + 4 * k);
        st4(y + 4 * k, make_float4(gelu_value<EXACT>(a.x), gelu_value<EXACT>(a.y), gelu_value<EXACT>(a.z),
                                   gelu_value<EXACT>(a.w)));
    }
    for (long long i = 4 * n4 + first; i < n; i += stride) st(y + i, gelu_value<EXACT>(to_f(x[i])));
}

template <bool EXACT>
__device__ __forceinline__ void gelu_backward_loop(const floatX* __restrict__ g, const floatX* __restrict__ x,
                                                   floatX* __restrict__ dx, long long n, int vec) {
    const long long stride = (long long)gridDim.x * blockDim.x, first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n4 = vec ? n >> 2 : 0;
    for (long long k = first; k < n4; k += stride) {
        const float4 a = ld4(x + 4 * k), b = ld4(g + 4 * k);
        st4(dx + 4 * k, make_float4(b.x * gelu_slope<EXACT>(a.x), b.y * gelu_slope<EXACT>(a.y),
                                    b.z * gelu_slope<EXACT>(a.z), b.w * gelu_slope<EXACT>(a.w)));
    }
    for (long long i = 4 * n4 + first; i < n; i += stride) st(dx + i, to_f(g[i]) * gelu_slope<EXACT>(to_f(x[i])));
}

extern "C" __global__ void gelu_forward_erf(const floatX* x, floatX* y, long long n, int vec) {
    gelu_forward_loop<true>(x, y, n, vec);
}

extern "C" __global__ void gelu_forward_tanh(const floatX* x, floatX* y, long long n, int vec) {
    gelu_forward_loop<false>(x, y, n, vec);
}

extern "C" __global__ void gelu_backward_erf(const floatX* g, const floatX* x, floatX* dx, long long n, int vec) {
    gelu_backward_loop<true>(g, x, dx, n, vec);
}

extern "C" __global__ void gelu_backward_tanh(const floatX* g, const floatX* x, floatX* dx, long long n, int vec) {
    gelu_backward_loop<false>(g, x, dx, n, vec);
}

// GELU's backward with the column sums of its result: in the MLP, dh = g gelu'(h) is what the
// first product's weight and bias gradients read, and db1 is dh summed over its rows. Summed
// here as dh is written, no other kernel reads dh for it. The layout is colsum.cu's
// (colsum_partial): block (32, 8) covers 128 columns (four a thread) of one slice of rows;
// its 8 row groups walk the slice and add up through shared memory -> part[slice, c], then
// colsum_final_float sums the slices. Columns % 4 == 0 and every pointer on a vector boundary
// (the host checks). The sums are of dh as stored (rounded to floatX): db1 = sum of dh.
// v rounded to floatX and widened again: the value a store of v keeps
__device__ __forceinline__ float as_stored(float v) {
    floatX t;
    st(&t, v);
    return to_f(t);
}

// one row's four columns: d = g gelu'(x) stored, and added to the running sums s as stored
template <bool EXACT>
__device__ __forceinline__ void gelu_colsum_row(float4 a, float4 b, floatX* __restrict__ out, float* s) {
    const float4 d = make_float4(as_stored(b.x * gelu_slope<EXACT>(a.x)), as_stored(b.y * gelu_slope<EXACT>(a.y)),
                                 as_stored(b.z * gelu_slope<EXACT>(a.z)), as_stored(b.w * gelu_slope<EXACT>(a.w)));
    st4(out, d);
    s[0] += d.x; s[1] += d.y; s[2] += d.z; s[3] += d.w;
}

template <bool EXACT>
__device__ __forceinline__ void gelu_backward_colsum_body(const floatX* __restrict__ g, const floatX* __restrict__ x,
                                                          floatX* __restrict__ dx, float* __restrict__ part, int R,
                                                          int N, int rows_per_slice) {
    const int c0 = (blockIdx.x * 32 + threadIdx.x) * 4;
    const int r_begin = blockIdx.y * rows_per_slice, r_end = min(R, r_begin + rows_per_slice);
    float s[4] = {0.f, 0.f, 0.f, 0.f};
    if (c0 < N) {
        // UNROLL rows a step (8 apart), all their loads issued before the math: one row's 8-byte
        // loads at a time leave too few bytes in flight to keep HBM busy. Rows still add up in order.
        constexpr int UNROLL = 4;
        int r = r_begin + threadIdx.y;
        for (; r + 8 * (UNROLL - 1) < r_end; r += 8 * UNROLL) {
            float4 a[UNROLL], b[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const long long i = (long long)(r + 8 * u) * N + c0;
                a[u] = ld4(x + i);
                b[u] = ld4(g + i);
            }
#pragma unroll
            for (int u = 0; u < UNROLL; ++u)
                gelu_colsum_row<EXACT>(a[u], b[u], dx + (long long)(r + 8 * u) * N + c0, s);
        }
        for (; r < r_end; r += 8) {
            const long long i = (long long)r * N + c0;
            gelu_colsum_row<EXACT>(ld4(x + i), ld4(g + i), dx + i, s);
        }
    }
    slice_sums_store<4>(s, part, N, c0);
}

extern "C" __global__ void __launch_bounds__(256) gelu_backward_colsum_erf(const floatX* g, const floatX* x, floatX* dx,
                                                                           float* part, int R, int N, int rows_per_slice) {
    gelu_backward_colsum_body<true>(g, x, dx, part, R, N, rows_per_slice);
}

extern "C" __global__ void __launch_bounds__(256) gelu_backward_colsum_tanh(const floatX* g, const floatX* x, floatX* dx,
                                                                            float* part, int R, int N, int rows_per_slice) {
    gelu_backward_colsum_body<false>(g, x, dx, part, R, N, rows_per_slice);
}
