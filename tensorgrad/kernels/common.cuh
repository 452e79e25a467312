// Shared helpers for the kernels: the element type, and the row reductions of
// softmax, layernorm and cross-entropy.
//
// Element type: every kernel source is compiled once per dtype it serves. The
// loader (kernels/__init__.py) puts `#define TG_BF16 1` before the source for
// bfloat16 arrays; `floatX` is then __nv_bfloat16, else float. Arrays of the
// op's dtype are floatX*, statistics (mean, rstd, logsumexp, losses, partial
// sums) stay float*, and all arithmetic is float: a bf16 value is widened on
// load (to_f, ld4) and rounded once on store (st, st4). One source, no copy
// of a kernel per dtype.
//
// Row kernels work on rows of a contiguous matrix, one row per "group" of
// threads: a warp for short rows (no shared memory, no barriers) or a whole
// block for long ones. The template flag BLOCK picks the group; the Python
// loader picks the launch. The loader pastes this file in place of the
// #include (NVRTC gets one string).
#pragma once

#include <cuda_bf16.h>
#ifdef TG_BF16
typedef __nv_bfloat16 floatX;
#else
typedef float floatX;
#endif

// Four floats as four bf16 (round to nearest even, as CuPy's astype) in 8 bytes, and back:
// the one packing of st4/ld4 below, the casts (cast.cu) and the optimizer's bf16 weight
// copy (adamw.cu, a float32 build: these two do not depend on TG_BF16).
__device__ __forceinline__ uint2 pack_bf16x4(float4 v) {
    const __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
    return make_uint2(*reinterpret_cast<const unsigned int*>(&a), *reinterpret_cast<const unsigned int*>(&b));
}
__device__ __forceinline__ float4 unpack_bf16x4(uint2 u) {
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
}

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void st4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
#ifdef TG_BF16
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ float4 ld4(const __nv_bfloat16* p) {    // 4 bf16 in one 8-byte load
    return unpack_bf16x4(*reinterpret_cast<const uint2*>(p));
}
__device__ __forceinline__ void st4(__nv_bfloat16* p, float4 v) { *reinterpret_cast<uint2*>(p) = pack_bf16x4(v); }
#endif

#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_sum(float v) {
    // xor butterfly: every lane ends with the same total, in the same order
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float2 warp_sum(float2 v) { return make_float2(warp_sum(v.x), warp_sum(v.y)); }

// Sum over the group: the one block reduction of the kernels (V: float, or float2
// for two sums in one barrier round). BLOCK: all threads of the block must call it
// (it has barriers); the trailing barrier lets callers run it again on the next row.
template <bool BLOCK, typename V>
__device__ __forceinline__ V group_sum(V v) {
    v = warp_sum(v);
    if (!BLOCK) return v;
    __shared__ V part[32];
    __shared__ V total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? part[lane] : V{};
        v = warp_sum(v);
        if (lane == 0) total = v;
    }
    __syncthreads();
    v = total;
    __syncthreads();
    return v;
}

// Online softmax state: running max m and s = sum(exp(v - m)) over the values
// seen so far. Merging rescales the smaller side, so one pass over a row gives
// a numerically stable logsumexp = m + log(s) (Milakov & Gimelshein, 2018).
struct MaxSum { float m, s; };

__device__ __forceinline__ MaxSum ms_init() { MaxSum r; r.m = NEG_INF; r.s = 0.f; return r; }

__device__ __forceinline__ void ms_add(MaxSum& st, float v) {
    if (v > st.m) {
        st.s = st.s * __expf(st.m - v) + 1.f;   // exp(-inf) = 0 covers the first value
        st.m = v;
    } else if (st.m != NEG_INF) {              // v == m == -inf would give exp(nan)
        st.s += __expf(v - st.m);
    }
}

__device__ __forceinline__ MaxSum ms_merge(MaxSum a, MaxSum b) {
    MaxSum r;
    r.m = fmaxf(a.m, b.m);
    if (r.m == NEG_INF) { r.s = 0.f; return r; }   // both empty or all -inf
    r.s = a.s * __expf(a.m - r.m) + b.s * __expf(b.m - r.m);
    return r;
}

template <bool BLOCK>
__device__ __forceinline__ MaxSum group_maxsum(MaxSum st) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum other;
        other.m = __shfl_xor_sync(FULL_MASK, st.m, o);
        other.s = __shfl_xor_sync(FULL_MASK, st.s, o);
        st = ms_merge(st, other);   // commutative, so all lanes agree bit for bit
    }
    if (!BLOCK) return st;
    __shared__ MaxSum part[32];
    __shared__ MaxSum total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = st;
    __syncthreads();
    if (warp == 0) {
        st = lane < (int)(blockDim.x >> 5) ? part[lane] : ms_init();
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            MaxSum other;
            other.m = __shfl_xor_sync(FULL_MASK, st.m, o);
            other.s = __shfl_xor_sync(FULL_MASK, st.s, o);
            st = ms_merge(st, other);
        }
        if (lane == 0) total = st;
    }
    __syncthreads();
    st = total;
    __syncthreads();
    return st;
}

// Which thread of the group am I, how many are there, which row is ours.
template <bool BLOCK>
__device__ __forceinline__ void group_layout(int& tid, int& nthreads, long long& row) {
    if (BLOCK) {
        tid = threadIdx.x;
        nthreads = blockDim.x;
        row = blockIdx.x;
    } else {
        tid = threadIdx.x & 31;
        nthreads = 32;
        row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    }
}

// Where p sits in its group of four elements (0..3): four elements are one vector
// load (16 bytes of float, 8 of bf16), so a row is read four at a time from the
// first element of phase 0 on.
template <typename T>
__device__ __forceinline__ int phase4(const T* p) {
    return (int)(((unsigned long long)p / sizeof(T)) & 3ull);
}

// elements of a row starting at p before its first vector boundary (at most n)
template <typename T>
__device__ __forceinline__ int vec_head(const T* p, int n) {
    const int head = (4 - phase4(p)) & 3;
    return head < n ? head : n;
}

// Visit a[j] for j < n, reading four elements at a time where the row allows
// it: a scalar head up to the first vector boundary, ld4 body, scalar tail.
// f(j, v) is called once per element (v widened to float), by exactly one
// thread of the group.
template <typename T, typename F>
__device__ __forceinline__ void row_read(const T* a, int n, int tid, int nthreads, F f) {
    const int head = vec_head(a, n);
    for (int j = tid; j < head; j += nthreads) f(j, to_f(a[j]));
    const int n4 = (n - head) >> 2;
    for (int k = tid; k < n4; k += nthreads) {
        const int j = head + 4 * k;
        const float4 v = ld4(a + j);
        f(j, v.x); f(j + 1, v.y); f(j + 2, v.z); f(j + 3, v.w);
    }
    for (int j = head + 4 * n4 + tid; j < n; j += nthreads) f(j, to_f(a[j]));
}

// out[j] = f(j, a[j], b[j]) for j < n (b may be null: f gets 0). Inputs are
// read only below n_in (a causal row's masked tail need not be read: f must
// produce its value from j alone there). out may have another element type
// than a and b (a float32 layernorm writing bf16). Vector loads and stores
// when out, a and b sit at the same phase4, else scalar.
template <typename TO, typename T, typename F>
__device__ __forceinline__ void row_map(TO* out, const T* a, const T* b, int n, int n_in,
                                        int tid, int nthreads, F f) {
    int head = vec_head(out, n);
    if (phase4(a) != phase4(out) || (b != nullptr && phase4(b) != phase4(out))) head = n;  // all scalar
    for (int j = tid; j < head; j += nthreads)
        st(out + j, f(j, j < n_in ? to_f(a[j]) : 0.f, (b != nullptr && j < n_in) ? to_f(b[j]) : 0.f));
    const int n4 = (n - head) >> 2;
    // Backwards: the pass before this one read the row forwards, so its end is
    // what L2 still holds when rows are too long (vocab-sized) for all the rows
    // in flight to stay cached; starting there turns part of the re-read into hits.
    for (int k = n4 - 1 - tid; k >= 0; k -= nthreads) {
        const int j = head + 4 * k;
        float4 av = make_float4(0.f, 0.f, 0.f, 0.f), bv = av, o;
        if (j < n_in) {
            av = ld4(a + j);
            if (b != nullptr) bv = ld4(b + j);
        }
        o.x = f(j, av.x, bv.x); o.y = f(j + 1, av.y, bv.y);
        o.z = f(j + 2, av.z, bv.z); o.w = f(j + 3, av.w, bv.w);
        st4(out + j, o);
    }
    for (int j = head + 4 * n4 + tid; j < n; j += nthreads)
        st(out + j, f(j, j < n_in ? to_f(a[j]) : 0.f, (b != nullptr && j < n_in) ? to_f(b[j]) : 0.f));
}

// The end of a column-sum block (colsum.cu's layout; gelu.cu and cast.cu sum columns the same way
// as they write): block (32, 8), W columns a thread from c0, one slice of rows a block row
// (blockIdx.y). The 8 row groups' running sums s add up through shared memory in a fixed order
// and go to part[slice, c], for colsum_final / colsum_final_float to add over the slices.
template <int W>
__device__ __forceinline__ void slice_sums_store(const float (&s)[W], float* __restrict__ part, int N, int c0) {
    __shared__ float acc[8][32 * W];
#pragma unroll
    for (int w = 0; w < W; ++w) acc[threadIdx.y][threadIdx.x * W + w] = s[w];
    __syncthreads();
    if (threadIdx.y == 0 && c0 < N) {
#pragma unroll
        for (int w = 0; w < W; ++w) {
            float t = 0.f;
#pragma unroll
            for (int y = 0; y < 8; ++y) t += acc[y][threadIdx.x * W + w];
            part[(long long)blockIdx.y * N + c0 + w] = t;
        }
    }
}
