// Softmax over the last axis of a contiguous (N, L) matrix of floatX (float32 or bf16; math in float).
//
// Forward:  y = exp(v - max(v)) / sum(exp(v - max(v))), v = x * scale, with an
//   optional causal mask: the rows come in slabs of T (one (T, L) attention
//   score matrix each) and row i of a slab keeps columns j <= i + (L - T), so a
//   kv-cache (L > T) sees its whole past. Masked columns are written as 0 and
//   never read. A row with nothing left (or only -inf) is written as zeros, not
//   NaN.
//   One pass over the row keeps a running (max, sum of exp) pair per thread
//   (online softmax), the group merges the pairs, and a second pass writes y;
//   that pass re-reads x from L1/L2 (short rows), or, for vocab-sized rows,
//   partly from L2: it walks the row backwards to start where L2 is warm.
// Backward: dx = scale * y * (g - sum(g * y)), the softmax Jacobian-vector
//   product: one pass for the dot product, one to write dx. Masked entries have
//   y = 0, so they get dx = 0 with no mask needed.
// Launch: *_warp kernels give each row one warp (rows of up to ~1k elements,
//   blockDim/32 rows per block); *_block kernels give each row a whole block
//   (long rows: vocab-sized). grid = rows / rows-per-block, rounded up.
#include "common.cuh"

template <bool BLOCK>
__device__ __forceinline__ void softmax_forward_row(const floatX* __restrict__ x, floatX* __restrict__ y,
                                                    int N, int L, int T, float scale) {
    int tid, nthreads;
    long long row;
    group_layout<BLOCK>(tid, nthreads, row);
    if (row >= N) return;              // whole warps only (warp mode); never in block mode
    const floatX* xr = x + row * L;
    floatX* yr = y + row * L;
    // columns kept: all, or j <= i + (L - T) for slab row i
    int valid = L;
    if (T > 0) {
        const long long keep = (long long)(row % T) + (L - T) + 1;
        valid = keep < 0 ? 0 : (keep < L ? (int)keep : L);
    }
    MaxSum st = ms_init();
    row_read(xr, valid, tid, nthreads, [&](int, float v) { ms_add(st, v * scale); });
    st = group_maxsum<BLOCK>(st);
    const float m = st.m == NEG_INF ? 0.f : st.m;   // all -inf: exp(-inf - 0) = 0 below
    const float inv = st.s > 0.f ? 1.f / st.s : 0.f;
    row_map(yr, xr, (const floatX*)nullptr, L, valid, tid, nthreads,
            [&](int j, float v, float) { return j < valid ? __expf(v * scale - m) * inv : 0.f; });
}

template <bool BLOCK>
__device__ __forceinline__ void softmax_backward_row(const floatX* __restrict__ g, const floatX* __restrict__ y,
                                                     floatX* __restrict__ dx, int N, int L, float scale) {
    int tid, nthreads;
    long long row;
    group_layout<BLOCK>(tid, nthreads, row);
    if (row >= N) return;
    const floatX* gr = g + row * L;
    const floatX* yr = y + row * L;
    floatX* dr = dx + row * L;
    // dot = sum(g * y): read both rows (four elements at a time when aligned alike)
    float dot = 0.f;
    if (phase4(gr) == phase4(yr)) {
        const int head = vec_head(yr, L);
        for (int j = tid; j < head; j += nthreads) dot += to_f(gr[j]) * to_f(yr[j]);
        const int n4 = (L - head) >> 2;
        for (int k = tid; k < n4; k += nthreads) {
            const float4 a = ld4(gr + head + 4 * k), b = ld4(yr + head + 4 * k);
            dot += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
        }
        for (int j = head + 4 * n4 + tid; j < L; j += nthreads) dot += to_f(gr[j]) * to_f(yr[j]);
    } else {
        for (int j = tid; j < L; j += nthreads) dot += to_f(gr[j]) * to_f(yr[j]);
    }
    dot = group_sum<BLOCK>(dot);
    row_map(dr, gr, yr, L, L, tid, nthreads,
            [&](int, float gv, float yv) { return scale * yv * (gv - dot); });
}

extern "C" __global__ void __launch_bounds__(256) softmax_forward_warp(const floatX* x, floatX* y, int N, int L, int T, float scale) {
    softmax_forward_row<false>(x, y, N, L, T, scale);
}

extern "C" __global__ void __launch_bounds__(512) softmax_forward_block(const floatX* x, floatX* y, int N, int L, int T, float scale) {
    softmax_forward_row<true>(x, y, N, L, T, scale);
}

extern "C" __global__ void __launch_bounds__(256) softmax_backward_warp(const floatX* g, const floatX* y, floatX* dx, int N, int L, float scale) {
    softmax_backward_row<false>(g, y, dx, N, L, scale);
}

extern "C" __global__ void __launch_bounds__(512) softmax_backward_block(const floatX* g, const floatX* y, floatX* dx, int N, int L, float scale) {
    softmax_backward_row<true>(g, y, dx, N, L, scale);
}
