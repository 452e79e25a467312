// Cross-entropy from logits: x (N, V) contiguous floatX (float32 or bf16), targets t (N,) int64,
// keep (N,) bool (false on ignore_index rows, whose target is already 0).
//
// Forward:  lse = logsumexp(x_row), loss = lse - x[t] on kept rows, 0 on the
//   others. One pass over the row with the online (max, sum of exp) pair (four
//   elements a step: row_maxsum); only
//   lse (N floats) is saved, never the (N, V) probabilities. A kept row whose
//   target is outside [0, V) gets loss NaN, so a bad label shows up in the loss
//   without a device-to-host check.
// Backward: dx = (softmax(x) - onehot(t)) * row_scale = (exp(x - lse) - [j == t])
//   * row_scale[n], zero on ignored rows (their x is not even read). One read
//   of x, one write of dx: softmax is recomputed from lse, not stored.
// Fused:    both in one launch, for a loss whose gradient scale is known ahead (the LM
//   head's classifier, ops/cuda.py): the row's lse and loss, then its dx, which may
//   be x itself (written in place). The _block form reads the row from global memory
//   twice, and at GPT-2's size (100 KB a row, thousands of rows in flight) the second
//   read mostly misses L2; the _smem form keeps the row in shared memory between the
//   two passes, so DRAM sees one read and one write of the logits.
// Launch: *_warp kernels: one warp per row (small vocabularies, e.g. 65
//   characters); *_block kernels: one block per row (GPT-2's 50,257);
//   cross_entropy_fused_smem: one block per row, for rows two blocks can hold in an SM's
//   shared memory (112 KiB each on an H100/H200; cross_entropy.py picks).
#include "common.cuh"

// The (max, sum of exp) pair of a row, four elements a step where the row allows vector loads:
// the four's max first, so the running max (and the rescale of the sum) moves at most once
// a step, then four exponentials without a branch each (ms_add does one a element).
template <typename T>
__device__ __forceinline__ MaxSum row_maxsum(const T* a, int n, int tid, int nthreads) {
    MaxSum st = ms_init();
    const int head = vec_head(a, n);
    for (int j = tid; j < head; j += nthreads) ms_add(st, to_f(a[j]));
    const int n4 = (n - head) >> 2;
    for (int k = tid; k < n4; k += nthreads) {
        const float4 v = ld4(a + head + 4 * k);
        const float m4 = fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w));
        if (m4 > st.m) {                       // while st.m is -inf, st.s is 0 and stays 0 here
            st.s *= __expf(st.m - m4);
            st.m = m4;
        }
        if (st.m != NEG_INF) st.s += (__expf(v.x - st.m) + __expf(v.y - st.m)) + (__expf(v.z - st.m) + __expf(v.w - st.m));
    }
    for (int j = head + 4 * n4 + tid; j < n; j += nthreads) ms_add(st, to_f(a[j]));
    return st;
}

// Copy the row a[0, n) into shared memory at buf (16-byte aligned, n elements + 16 bytes) and
// return where the copy starts: at a's offset within 16 bytes, so that the copy and the row
// reach a 16-byte boundary at the same element. Then the body moves as raw 16-byte vectors
// (bf16 too: no widening on the way through), and later reads of the copy get the same
// scalar head and vector body as reads of the row itself (vec_head, phase4 agree).
template <typename T>
__device__ __forceinline__ const T* row_stage(unsigned char* buf, const T* a, int n, int tid, int nthreads) {
    constexpr int W = 16 / sizeof(T);                             // elements in 16 bytes
    const int offset = (int)((unsigned long long)a % 16);
    T* s = reinterpret_cast<T*>(buf + offset);
    int head = (16 - offset) % 16 / (int)sizeof(T);            // elements before a 16-byte boundary
    if (head > n) head = n;
    for (int j = tid; j < head; j += nthreads) s[j] = a[j];
    const int n16 = (n - head) / W;
    const uint4* src = reinterpret_cast<const uint4*>(a + head);
    uint4* dst = reinterpret_cast<uint4*>(s + head);
    // unrolled so that each thread has several loads in flight: with only two blocks an SM
    // (the shared memory allows no more), one load at a time would leave DRAM idle
#pragma unroll 4
    for (int k = tid; k < n16; k += nthreads) dst[k] = src[k];
    for (int j = head + W * n16 + tid; j < n; j += nthreads) s[j] = a[j];
    return s;
}

template <bool BLOCK>
__device__ __forceinline__ void ce_forward_row(const floatX* __restrict__ x, const long long* __restrict__ t,
                                               const bool* __restrict__ keep, float* __restrict__ losses,
                                               float* __restrict__ lse, int N, int V) {
    int tid, nthreads;
    long long row;
    group_layout<BLOCK>(tid, nthreads, row);
    if (row >= N) return;
    const floatX* xr = x + row * V;
    MaxSum st = group_maxsum<BLOCK>(row_maxsum(xr, V, tid, nthreads));
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

// SMEM (with BLOCK): the row is copied into dynamic shared memory (row_stage) and both passes
// read it there; else both read it from global memory. A compile-time flag, so that the
// kernels without it compile to the same machine code as before it existed.
template <bool BLOCK, bool SMEM = false>
__device__ __forceinline__ void ce_fused_row(const floatX* x, const long long* __restrict__ t,
                                             const bool* __restrict__ keep, const float* __restrict__ row_scale,
                                             float* __restrict__ losses, float* __restrict__ lse, floatX* dx,
                                             int N, int V) {
    int tid, nthreads;
    long long row;
    group_layout<BLOCK>(tid, nthreads, row);
    if (row >= N) return;
    const floatX* xr = x + row * V;
    const bool k = keep[row];
    const long long tt = t[row];
    const bool in_range = tt >= 0 && tt < V;
    if constexpr (SMEM) {
        extern __shared__ __align__(16) unsigned char row_smem[];   // V elements + 16 bytes
        xr = row_stage(row_smem, xr, V, tid, nthreads);
        // row_maxsum below reads elements other threads copied (bf16: 8 a vector here, 4 there);
        // past this barrier no thread reads x again, so dx may overwrite it
        __syncthreads();
    }
    const float xt = k && in_range ? to_f(xr[tt]) : 0.f;      // read before any thread writes dx (= x)
    MaxSum st = group_maxsum<BLOCK>(row_maxsum(xr, V, tid, nthreads));   // ends in a barrier
    if (!BLOCK) __syncwarp();
    const float l = st.m + logf(st.s), rs = row_scale[row];
    if (tid == 0) {
        lse[row] = l;
        losses[row] = k ? (in_range ? l - xt : __int_as_float(0x7fc00000)) : 0.f;   // NaN: label out of range
    }
    row_map(dx + row * V, xr, (const floatX*)nullptr, V, k ? V : 0, tid, nthreads,
            [&](int j, float v, float) {
                return k ? (__expf(v - l) - (j == tt ? 1.f : 0.f)) * rs : 0.f;
            });
}

extern "C" __global__ void __launch_bounds__(256) cross_entropy_fused_warp(const floatX* x, const long long* t, const bool* keep,
                                                    const float* row_scale, float* losses, float* lse, floatX* dx,
                                                    int N, int V) {
    ce_fused_row<false>(x, t, keep, row_scale, losses, lse, dx, N, V);
}

extern "C" __global__ void __launch_bounds__(512) cross_entropy_fused_block(const floatX* x, const long long* t, const bool* keep,
                                                     const float* row_scale, float* losses, float* lse, floatX* dx,
                                                     int N, int V) {
    ce_fused_row<true>(x, t, keep, row_scale, losses, lse, dx, N, V);
}

// The row in dynamic shared memory (V elements + 16 bytes, see row_stage): read from DRAM once.
// 512 threads, as the _block form has for rows over about 2,000, so each thread folds the same
// elements in the same order and the lse and loss come out bit for bit the same. Two blocks an
// SM (up to 112 KiB of row each on an H100/H200): one block's loads overlap the other's math.
extern "C" __global__ void __launch_bounds__(512, 2) cross_entropy_fused_smem(const floatX* x, const long long* t, const bool* keep,
                                                        const float* row_scale, float* losses, float* lse, floatX* dx,
                                                        int N, int V) {
    ce_fused_row<true, true>(x, t, keep, row_scale, losses, lse, dx, N, V);
}

// Scale: y = x * g[0], g a float on the device: the loss's gradient, which the fused launch
// above cannot know (it runs in the forward, for a gradient of 1), applied to the classifier's
// dx and dw in the backward (ops/cuda.py) in one pass each, with no read of g on the host.
// Float32 math, one rounding on store. Grid-stride; four elements a step when both arrays
// start on a whole vector (vec), else one.
extern "C" __global__ void __launch_bounds__(256) cross_entropy_scale(const floatX* __restrict__ x, floatX* __restrict__ y,
                                                                      const float* __restrict__ g, long long n, int vec) {
    const float s = *g;
    const long long stride = (long long)gridDim.x * blockDim.x, first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n4 = vec ? n / 4 : 0;
    for (long long k = first; k < n4; k += stride) {
        const float4 v = ld4(x + 4 * k);
        st4(y + 4 * k, make_float4(v.x * s, v.y * s, v.z * s, v.w * s));
    }
    for (long long j = 4 * n4 + first; j < n; j += stride) st(y + j, to_f(x[j]) * s);
}
