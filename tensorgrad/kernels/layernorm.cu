// LayerNorm over the last axis of a contiguous (N, C) matrix of floatX (see common.cuh).
//
// Forward:  mean = sum(x) / C, var = sum((x - mean)^2) / C (two passes: the
//   one-pass E[x^2] - E[x]^2 cancels badly when |mean| >> std),
//   rstd = 1 / sqrt(var + eps), y = (x - mean) * rstd * w + b.
//   mean and rstd are saved per row for the backward. The three passes over a
//   row re-read it from L1/L2; DRAM sees x once and y once.
// Backward: with xh = (x - mean) * rstd and dxh = g * w,
//   dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh))   (per row)
//   dw = sum over rows of g * xh,  db = sum over rows of g  (per column).
//   layernorm_backward gives each block a tile of `rows` rows: warps first get
//   the two row means, then each thread owns columns and walks the tile's
//   rows, writing dx and summing its columns' dw/db in registers into one
//   partial per (tile, column). layernorm_dwdb_reduce adds the partials of the
//   tiles in a fixed order: deterministic, no atomics, and g and x are read
//   from DRAM once (the column pass re-reads the tile from L2).
//   With accumulate = 1, dx = acc + (the above): the gradient x already has
//   from its other uses (a residual stream's skip connection) is added here,
//   instead of by a separate pass over both arrays.
// Types: x, w, b, dx, dw, db are TX; y and its gradient g are TY. Both are
//   floatX, except in the *_narrow kernels of a bf16 build: there x, the
//   weights and their gradients are float32 and y, g are bf16, so under
//   autocast a float32 residual stream is normalised straight into the bf16
//   input of the next matrix product (no cast pass either way).
// Launch: layernorm_forward_{warp,block} like the softmax kernels (one warp or
//   one block per row); layernorm_backward: grid = ceil(N / rows), blockDim a
//   multiple of 32 (~C, at most 1024); layernorm_dwdb_reduce: grid =
//   ceil(C / 32), blockDim = (32, 32).
#include "common.cuh"

#define MAX_ROWS 32   // most rows per backward tile (the launch passes rows <= MAX_ROWS)

template <bool BLOCK, typename TX, typename TY>
__device__ __forceinline__ void layernorm_forward_row(const TX* __restrict__ x, const TX* __restrict__ w,
                                                      const TX* __restrict__ b, TY* __restrict__ y,
                                                      float* __restrict__ mean, float* __restrict__ rstd,
                                                      int N, int C, float eps) {
    int tid, nthreads;
    long long row;
    group_layout<BLOCK>(tid, nthreads, row);
    if (row >= N) return;
    const TX* xr = x + row * C;
    float s = 0.f;
    row_read(xr, C, tid, nthreads, [&](int, float v) { s += v; });
    const float mu = group_sum<BLOCK>(s) / C;
    float ss = 0.f;
    row_read(xr, C, tid, nthreads, [&](int, float v) { const float d = v - mu; ss += d * d; });
    const float rs = rsqrtf(group_sum<BLOCK>(ss) / C + eps);
    row_map(y + row * C, xr, (const TX*)nullptr, C, C, tid, nthreads,
            [&](int j, float v, float) { return (v - mu) * rs * to_f(w[j]) + to_f(b[j]); });
    if (tid == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

extern "C" __global__ void __launch_bounds__(256) layernorm_forward_warp(
        const floatX* x, const floatX* w, const floatX* b, floatX* y, float* mean, float* rstd, int N, int C, float eps) {
    layernorm_forward_row<false, floatX, floatX>(x, w, b, y, mean, rstd, N, C, eps);
}

extern "C" __global__ void __launch_bounds__(512) layernorm_forward_block(
        const floatX* x, const floatX* w, const floatX* b, floatX* y, float* mean, float* rstd, int N, int C, float eps) {
    layernorm_forward_row<true, floatX, floatX>(x, w, b, y, mean, rstd, N, C, eps);
}

#ifdef TG_BF16
extern "C" __global__ void __launch_bounds__(256) layernorm_forward_narrow_warp(
        const float* x, const float* w, const float* b, floatX* y, float* mean, float* rstd, int N, int C, float eps) {
    layernorm_forward_row<false, float, floatX>(x, w, b, y, mean, rstd, N, C, eps);
}

extern "C" __global__ void __launch_bounds__(512) layernorm_forward_narrow_block(
        const float* x, const float* w, const float* b, floatX* y, float* mean, float* rstd, int N, int C, float eps) {
    layernorm_forward_row<true, float, floatX>(x, w, b, y, mean, rstd, N, C, eps);
}
#endif

// ---- rows held in registers (C % 4 == 0, C <= 4 * 32 * LN_VECS, rows on vector boundaries)
// The kernels above re-read a row from L1/L2 for each pass over it. These keep it in
// registers: lane l holds the float4s l, l + 32, ... of its warp's row, so DRAM and the
// caches see each input once. The sums run in the same order as row_read's (a lane's
// vectors in turn, then the warp butterfly): the forward's numbers are the other kernel's.
#define LN_VECS 8                 // float4s a lane holds: rows up to 1024 long

template <typename TX, typename TY>
__device__ __forceinline__ void layernorm_forward_regs_body(const TX* __restrict__ x, const TX* __restrict__ w,
                                                            const TX* __restrict__ b, TY* __restrict__ y,
                                                            float* __restrict__ mean, float* __restrict__ rstd,
                                                            int N, int C, float eps) {
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= N) return;                      // the whole warp: no barrier below
    const TX* xr = x + row * C;
    float4 v[LN_VECS];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < LN_VECS; ++k) {
        const int j = 4 * (lane + 32 * k);
        v[k] = j < C ? ld4(xr + j) : make_float4(0.f, 0.f, 0.f, 0.f);
        if (j < C) { s += v[k].x; s += v[k].y; s += v[k].z; s += v[k].w; }
    }
    const float mu = warp_sum(s) / C;
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < LN_VECS; ++k) {
        if (4 * (lane + 32 * k) >= C) continue;
        float d;
        d = v[k].x - mu; ss += d * d; d = v[k].y - mu; ss += d * d;
        d = v[k].z - mu; ss += d * d; d = v[k].w - mu; ss += d * d;
    }
    const float rs = rsqrtf(warp_sum(ss) / C + eps);
#pragma unroll
    for (int k = 0; k < LN_VECS; ++k) {
        const int j = 4 * (lane + 32 * k);
        if (j >= C) continue;
        const float4 wv = ld4(w + j), bv = ld4(b + j);
        st4(y + row * C + j, make_float4((v[k].x - mu) * rs * wv.x + bv.x, (v[k].y - mu) * rs * wv.y + bv.y,
                                         (v[k].z - mu) * rs * wv.z + bv.z, (v[k].w - mu) * rs * wv.w + bv.w));
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

extern "C" __global__ void __launch_bounds__(256) layernorm_forward_regs(
        const floatX* x, const floatX* w, const floatX* b, floatX* y, float* mean, float* rstd, int N, int C, float eps) {
    layernorm_forward_regs_body<floatX, floatX>(x, w, b, y, mean, rstd, N, C, eps);
}
#ifdef TG_BF16
extern "C" __global__ void __launch_bounds__(256) layernorm_forward_narrow_regs(
        const float* x, const float* w, const float* b, floatX* y, float* mean, float* rstd, int N, int C, float eps) {
    layernorm_forward_regs_body<float, floatX>(x, w, b, y, mean, rstd, N, C, eps);
}
#endif

// Backward, a warp a row, `rows` rows a warp, 8 warps a block: the row's g and x in registers
// (K float4s a lane: the smallest K with C <= 128 K, a template argument so that no register
// is spent on columns the row does not have), the two row means by two butterflies, dx (+ acc)
// written, and dw, db summed in registers over the warp's rows, then over the block's warps in
// shared memory (a fixed order), written as the block's partial (dw_part row = block) for
// layernorm_dwdb_reduce. Every input is read from DRAM once; acc (the residual's gradient) goes
// straight to shared memory with cp.async as the row's g and x load, so it is there when the sums are.
#define LN_WARPS 8

template <int K>
__device__ __forceinline__ void block_partial(const float4 (&v)[K], float* red, float* __restrict__ out, int C,
                                              int warp, int lane) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
        const int j = 4 * (lane + 32 * k);
        if (j < C) *reinterpret_cast<float4*>(red + warp * C + j) = v[k];
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float t = 0.f;
#pragma unroll
        for (int w = 0; w < LN_WARPS; ++w) t += red[w * C + c];
        out[c] = t;
    }
    __syncthreads();                           // red is reused by the next call
}

// acc's four elements at j of a row start their way into shared memory (dst) without a register:
// cp.async (sm_80 on), so they travel while the row's sums are made; stage_wait before reading them.
template <typename TX>
__device__ __forceinline__ void stage4(TX* dst, const TX* src) {
#if __CUDA_ARCH__ >= 800
    const unsigned int to = static_cast<unsigned int>(__cvta_generic_to_shared(dst));
    if constexpr (sizeof(TX) == 4)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(to), "l"(src) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(to), "l"(src) : "memory");
#else
    if constexpr (sizeof(TX) == 4) *reinterpret_cast<float4*>(dst) = *reinterpret_cast<const float4*>(src);
    else *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(src);
#endif
}

__device__ __forceinline__ void stage_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::: "memory");   // and no read of the staged row moves above it
#endif
}

template <int K, typename TX, typename TY>
__device__ __forceinline__ void layernorm_backward_regs_body(const TY* __restrict__ g, const TX* __restrict__ x,
                                                             const TX* __restrict__ w, const float* __restrict__ mean,
                                                             const float* __restrict__ rstd, TX* __restrict__ dx,
                                                             const TX* __restrict__ acc, int accumulate,
                                                             float* __restrict__ dw_part, float* __restrict__ db_part,
                                                             int N, int C, int rows) {
    __shared__ __align__(16) float red[LN_WARPS * 4 * 32 * LN_VECS];   // a row of C per warp: 32 KB
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long long r0 = ((long long)blockIdx.x * LN_WARPS + warp) * rows;
    float4 dw[K], db[K];
#pragma unroll
    for (int k = 0; k < K; ++k) dw[k] = db[k] = make_float4(0.f, 0.f, 0.f, 0.f);
    TX* staged = reinterpret_cast<TX*>(red + warp * C);          // the warp's row of acc (red is free until the end)
    for (long long row = r0; row < r0 + rows && row < N; ++row) {   // no return: every warp meets the barriers
        const float mu = mean[row], rs = rstd[row];
        float4 gv[K], xh[K];
        float a = 0.f, bsum = 0.f;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const int j = 4 * (lane + 32 * k);
            if (j >= C) continue;
            if (accumulate) stage4(staged + j, acc + row * C + j);  // in flight with g and x
            gv[k] = ld4(g + row * C + j);
            const float4 xv = ld4(x + row * C + j), wk = ld4(w + j);
            xh[k] = make_float4((xv.x - mu) * rs, (xv.y - mu) * rs, (xv.z - mu) * rs, (xv.w - mu) * rs);
            float d;
            d = gv[k].x * wk.x; a += d; bsum += d * xh[k].x;
            d = gv[k].y * wk.y; a += d; bsum += d * xh[k].y;
            d = gv[k].z * wk.z; a += d; bsum += d * xh[k].z;
            d = gv[k].w * wk.w; a += d; bsum += d * xh[k].w;
        }
        const float ar = warp_sum(a) / C, br = warp_sum(bsum) / C;
        if (accumulate) stage_wait();                              // each lane reads back only what it staged
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const int j = 4 * (lane + 32 * k);
            if (j >= C) continue;
            const float4 gk = gv[k], hk = xh[k], wk = ld4(w + j);   // w again from L1: registers stay free
            float4 d = make_float4(rs * (gk.x * wk.x - ar - hk.x * br), rs * (gk.y * wk.y - ar - hk.y * br),
                                   rs * (gk.z * wk.z - ar - hk.z * br), rs * (gk.w * wk.w - ar - hk.w * br));
            if (accumulate) {
                const float4 av = ld4(staged + j);
                d = make_float4(__fadd_rn(av.x, d.x), __fadd_rn(av.y, d.y), __fadd_rn(av.z, d.z), __fadd_rn(av.w, d.w));
            }
            st4(dx + row * C + j, d);
            dw[k].x += gk.x * hk.x; dw[k].y += gk.y * hk.y; dw[k].z += gk.z * hk.z; dw[k].w += gk.w * hk.w;
            db[k].x += gk.x; db[k].y += gk.y; db[k].z += gk.z; db[k].w += gk.w;
        }
    }
    block_partial<K>(dw, red, dw_part + (long long)blockIdx.x * C, C, warp, lane);
    block_partial<K>(db, red, db_part + (long long)blockIdx.x * C, C, warp, lane);
}

// One entry point per K (1..LN_VECS): layernorm_backward_regs_K, and the narrow form
#define LN_BACKWARD_REGS(K)                                                                                    \
extern "C" __global__ void __launch_bounds__(32 * LN_WARPS, K <= 6 ? 2 : 1) layernorm_backward_regs_##K(                       \
        const floatX* g, const floatX* x, const floatX* w, const float* mean, const float* rstd, floatX* dx,   \
        const floatX* acc, int accumulate, float* dw_part, float* db_part, int N, int C, int rows) {           \
    layernorm_backward_regs_body<K, floatX, floatX>(g, x, w, mean, rstd, dx, acc, accumulate, dw_part,         \
                                                    db_part, N, C, rows);                                      \
}
#define LN_BACKWARD_NARROW_REGS(K)                                                                             \
extern "C" __global__ void __launch_bounds__(32 * LN_WARPS, K <= 6 ? 2 : 1) layernorm_backward_narrow_regs_##K(                \
        const floatX* g, const float* x, const float* w, const float* mean, const float* rstd, float* dx,      \
        const float* acc, int accumulate, float* dw_part, float* db_part, int N, int C, int rows) {            \
    layernorm_backward_regs_body<K, float, floatX>(g, x, w, mean, rstd, dx, acc, accumulate, dw_part,          \
                                                   db_part, N, C, rows);                                       \
}
LN_BACKWARD_REGS(1)
LN_BACKWARD_REGS(2)
LN_BACKWARD_REGS(3)
LN_BACKWARD_REGS(4)
LN_BACKWARD_REGS(5)
LN_BACKWARD_REGS(6)
LN_BACKWARD_REGS(7)
LN_BACKWARD_REGS(8)
#ifdef TG_BF16
LN_BACKWARD_NARROW_REGS(1)
LN_BACKWARD_NARROW_REGS(2)
LN_BACKWARD_NARROW_REGS(3)
LN_BACKWARD_NARROW_REGS(4)
LN_BACKWARD_NARROW_REGS(5)
LN_BACKWARD_NARROW_REGS(6)
LN_BACKWARD_NARROW_REGS(7)
LN_BACKWARD_NARROW_REGS(8)
#endif

template <typename TX, typename TY>
__device__ __forceinline__ void layernorm_backward_body(const TY* __restrict__ g, const TX* __restrict__ x,
                                              const TX* __restrict__ w, const float* __restrict__ mean,
                                              const float* __restrict__ rstd, TX* __restrict__ dx,
                                              const TX* __restrict__ acc, int accumulate,
                                              float* __restrict__ dw_part, float* __restrict__ db_part,
                                              int N, int C, int rows) {
    __shared__ float s_mu[MAX_ROWS], s_rs[MAX_ROWS], s_a[MAX_ROWS], s_b[MAX_ROWS];
    const long long r0 = (long long)blockIdx.x * rows;
    const int nr = (int)(N - r0 < rows ? N - r0 : rows);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;

    // 1. per row: a = mean(dxh), b = mean(dxh * xh), one warp per row
    for (int r = warp; r < nr; r += nwarps) {
        const long long row = r0 + r;
        const float mu = mean[row], rs = rstd[row];
        const TY* gr = g + row * C;
        const TX* xr = x + row * C;
        float a = 0.f, bsum = 0.f;
        if (phase4(gr) == phase4(xr) && phase4(w) == phase4(gr)) {
            const int head = vec_head(gr, C);
            for (int j = lane; j < head; j += 32) {
                const float d = to_f(gr[j]) * to_f(w[j]), xh = (to_f(xr[j]) - mu) * rs;
                a += d; bsum += d * xh;
            }
            const int n4 = (C - head) >> 2;
            for (int k = lane; k < n4; k += 32) {
                const int j = head + 4 * k;
                const float4 gv = ld4(gr + j), xv = ld4(xr + j), wv = ld4(w + j);
                float d, xh;
                d = gv.x * wv.x; xh = (xv.x - mu) * rs; a += d; bsum += d * xh;
                d = gv.y * wv.y; xh = (xv.y - mu) * rs; a += d; bsum += d * xh;
                d = gv.z * wv.z; xh = (xv.z - mu) * rs; a += d; bsum += d * xh;
                d = gv.w * wv.w; xh = (xv.w - mu) * rs; a += d; bsum += d * xh;
            }
            for (int j = head + 4 * n4 + lane; j < C; j += 32) {
                const float d = to_f(gr[j]) * to_f(w[j]), xh = (to_f(xr[j]) - mu) * rs;
                a += d; bsum += d * xh;
            }
        } else {
            for (int j = lane; j < C; j += 32) {
                const float d = to_f(gr[j]) * to_f(w[j]), xh = (to_f(xr[j]) - mu) * rs;
                a += d; bsum += d * xh;
            }
        }
        a = warp_sum(a);
        bsum = warp_sum(bsum);
        if (lane == 0) {
            s_mu[r] = mu; s_rs[r] = rs;
            s_a[r] = a / C; s_b[r] = bsum / C;
        }
    }
    __syncthreads();

    // 2. per column: dx for the tile's rows, and this tile's share of dw, db.
    //    Consecutive threads take consecutive columns: every row access is coalesced.
    //    Rows of whole, aligned vectors: four columns a thread, 16-byte (float) or 8-byte
    //    (bf16) loads and stores instead of four times as many scalar ones.
    const bool vec = (C & 3) == 0 && phase4(g) == 0 && phase4(x) == 0 && phase4(w) == 0 && phase4(dx) == 0 &&
                     phase4(acc) == 0;
    for (int c = 4 * threadIdx.x; vec && c < C; c += 4 * blockDim.x) {
        const float4 wc = ld4(w + c);
        float4 dwc = make_float4(0.f, 0.f, 0.f, 0.f), dbc = dwc;
#pragma unroll 2
        for (int r = 0; r < nr; ++r) {
            const long long i = (r0 + r) * C + c;
            const float4 gv = ld4(g + i), xv = ld4(x + i);
            const float mu = s_mu[r], rs = s_rs[r], ar = s_a[r], br = s_b[r];
            float4 d;
            float xh;
            xh = (xv.x - mu) * rs; d.x = rs * (gv.x * wc.x - ar - xh * br); dwc.x += gv.x * xh; dbc.x += gv.x;
            xh = (xv.y - mu) * rs; d.y = rs * (gv.y * wc.y - ar - xh * br); dwc.y += gv.y * xh; dbc.y += gv.y;
            xh = (xv.z - mu) * rs; d.z = rs * (gv.z * wc.z - ar - xh * br); dwc.z += gv.z * xh; dbc.z += gv.z;
            xh = (xv.w - mu) * rs; d.w = rs * (gv.w * wc.w - ar - xh * br); dwc.w += gv.w * xh; dbc.w += gv.w;
            if (accumulate) {
                const float4 av = ld4(acc + i);
                d = make_float4(__fadd_rn(av.x, d.x), __fadd_rn(av.y, d.y), __fadd_rn(av.z, d.z), __fadd_rn(av.w, d.w));
            }
            st4(dx + i, d);
        }
        *reinterpret_cast<float4*>(dw_part + (long long)blockIdx.x * C + c) = dwc;
        *reinterpret_cast<float4*>(db_part + (long long)blockIdx.x * C + c) = dbc;
    }
    for (int c = threadIdx.x; !vec && c < C; c += blockDim.x) {
        const float wc = to_f(w[c]);
        float dwc = 0.f, dbc = 0.f;
#pragma unroll 2
        for (int r = 0; r < nr; ++r) {
            const long long i = (r0 + r) * C + c;
            const float gv = to_f(g[i]);
            const float xh = (to_f(x[i]) - s_mu[r]) * s_rs[r];
            const float d = s_rs[r] * (gv * wc - s_a[r] - xh * s_b[r]);
            st(dx + i, accumulate ? __fadd_rn(to_f(acc[i]), d) : d);   // _rn: no FMA contraction, the bits of a separate add
            dwc += gv * xh;
            dbc += gv;
        }
        dw_part[(long long)blockIdx.x * C + c] = dwc;
        db_part[(long long)blockIdx.x * C + c] = dbc;
    }
}

// dw[c] = sum over tiles of dw_part[tile, c] (same for db). Block (32, 32):
// threadIdx.x picks the column, threadIdx.y strides over tiles; the 32 partial
// sums per column are then added in a fixed order in shared memory.
extern "C" __global__ void __launch_bounds__(1024) layernorm_backward(
        const floatX* g, const floatX* x, const floatX* w, const float* mean, const float* rstd, floatX* dx,
        const floatX* acc, int accumulate, float* dw_part, float* db_part, int N, int C, int rows) {
    layernorm_backward_body<floatX, floatX>(g, x, w, mean, rstd, dx, acc, accumulate, dw_part, db_part, N, C, rows);
}
#ifdef TG_BF16
extern "C" __global__ void __launch_bounds__(1024) layernorm_backward_narrow(
        const floatX* g, const float* x, const float* w, const float* mean, const float* rstd, float* dx,
        const float* acc, int accumulate, float* dw_part, float* db_part, int N, int C, int rows) {
    layernorm_backward_body<float, floatX>(g, x, w, mean, rstd, dx, acc, accumulate, dw_part, db_part, N, C, rows);
}
#endif

extern "C" __global__ void __launch_bounds__(1024) layernorm_dwdb_reduce(const float* __restrict__ dw_part, const float* __restrict__ db_part,
                                                 floatX* __restrict__ dw, floatX* __restrict__ db, int ntiles, int C) {
    __shared__ float sw[32][32], sb[32][32];
    const int c = blockIdx.x * 32 + threadIdx.x;
    float aw = 0.f, ab = 0.f;
    if (c < C) {
        for (int t = threadIdx.y; t < ntiles; t += 32) {
            aw += dw_part[(long long)t * C + c];
            ab += db_part[(long long)t * C + c];
        }
    }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float tw = 0.f, tb = 0.f;
        for (int k = 0; k < 32; ++k) { tw += sw[k][threadIdx.x]; tb += sb[k][threadIdx.x]; }
        st(dw + c, tw);
        st(db + c, tb);
    }
}
