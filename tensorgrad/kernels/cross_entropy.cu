// Cross-entropy from logits: x (N, V) contiguous floatX (float32 or bf16), targets t (N,) int64,
// keep (N,) bool (false on ignore_index rows, whose target is already 0).
//
// Forward:  lse = logsumexp(x_row), loss = lse - x[t] on kept rows, 0 on the
//   others. One pass over the row with the online (max, sum of exp) pair; only
//   lse (N floats) is saved, never the (N, V) probabilities. A kept row whose
//   target is outside [0, V) gets loss NaN, so a bad label shows up in the loss
//   without a device-to-host check.
// Backward: dx = (softmax(x) - onehot(t)) * row_scale = (exp(x - lse) - [j == t])
//   * row_scale[n], zero on ignored rows (their x is not even read). One read
//   of x, one write of dx: softmax is recomputed from lse, not stored.
// Launch: *_warp kernels: one warp per row (small vocabularies, e.g. 65
//   characters); *_block kernels: one block per row (GPT-2's 50,257).
#include "common.cuh"

template <bool BLOCK>
__device__ __forceinline__ void ce_forward_row(const floatX* __restrict__ x, const long long* __restrict__ t,
                                               const bool* __restrict__ keep, float* __restrict__ losses,
                                               float* __restrict__ lse, int N, int V) {
    int tid, nthreads;
    long long row;
    group_layout<BLOCK>(tid, nthreads, row);
    if (row >= N) return;
    const floatX* xr = x + row * V;
    MaxSum st = ms_init();
    row_read(xr, V, tid, nthreads, [&](int, float v) { ms_add(st, v); });
    st = group_maxsum<BLOCK>(st);
    if (tid == 0) {
        const float l = st.m + logf(st.s);
        lse[row] = l;
        float loss = 0.f;
        if (keep[row]) {
            const long long tt = t[row];
            loss = (tt >= 0 && tt < V) ? l - to_f(xr[tt]) : __int_as_float(0x7fc00000);  // NaN: label out of range
        }
        losses[row] = loss;
    }
}

template <bool BLOCK>
__device__ __forceinline__ void ce_backward_row(const floatX* __restrict__ x, const long long* __restrict__ t,
                                                const bool* __restrict__ keep, const float* __restrict__ lse,
                                                const float* __restrict__ row_scale, floatX* __restrict__ dx,
                                                int N, int V) {
    int tid, nthreads;
    long long row;
    group_layout<BLOCK>(tid, nthreads, row);
    if (row >= N) return;
    const bool k = keep[row];
    const float l = lse[row], rs = row_scale[row];
    const long long tt = t[row];
    row_map(dx + row * V, x + row * V, (const floatX*)nullptr, V, k ? V : 0, tid, nthreads,
            [&](int j, float v, float) {
                return k ? (__expf(v - l) - (j == tt ? 1.f : 0.f)) * rs : 0.f;
            });
}

extern "C" __global__ void __launch_bounds__(256) cross_entropy_forward_warp(const floatX* x, const long long* t, const bool* keep,
                                                      float* losses, float* lse, int N, int V) {
    ce_forward_row<false>(x, t, keep, losses, lse, N, V);
}

extern "C" __global__ void __launch_bounds__(512) cross_entropy_forward_block(const floatX* x, const long long* t, const bool* keep,
                                                       float* losses, float* lse, int N, int V) {
    ce_forward_row<true>(x, t, keep, losses, lse, N, V);
}

extern "C" __global__ void __launch_bounds__(256) cross_entropy_backward_warp(const floatX* x, const long long* t, const bool* keep,
                                                       const float* lse, const float* row_scale, floatX* dx,
                                                       int N, int V) {
    ce_backward_row<false>(x, t, keep, lse, row_scale, dx, N, V);
}

extern "C" __global__ void __launch_bounds__(512) cross_entropy_backward_block(const floatX* x, const long long* t, const bool* keep,
                                                        const float* lse, const float* row_scale, floatX* dx,
                                                        int N, int V) {
    ce_backward_row<true>(x, t, keep, lse, row_scale, dx, N, V);
}
