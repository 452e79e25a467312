// Casts between float32 and bf16, elementwise: out[i] = in[i] in the other type (to bf16:
// round to nearest even, as CuPy's astype). Under autocast every use of a float32 weight
// is one such pass (ops/linear.py, Narrowing), so it runs at memory speed: eight elements
// a thread, the float32 side in two 16-byte accesses and the bf16 side in one, when both
// arrays start on 16 bytes (vec); else one element at a time. Grid-stride loop.
#include "common.cuh"

#ifdef TG_BF16
__device__ __forceinline__ void convert8(const float* in, floatX* out) {
    const uint2 a = pack_bf16x4(ld4(in)), b = pack_bf16x4(ld4(in + 4));
    *reinterpret_cast<uint4*>(out) = make_uint4(a.x, a.y, b.x, b.y);     // 8 bf16 in one 16-byte store
}
__device__ __forceinline__ void convert8(const floatX* in, float* out) {
    const uint4 u = *reinterpret_cast<const uint4*>(in);
    const floatX* e = reinterpret_cast<const floatX*>(&u);
    st4(out, make_float4(to_f(e[0]), to_f(e[1]), to_f(e[2]), to_f(e[3])));
    st4(out + 4, make_float4(to_f(e[4]), to_f(e[5]), to_f(e[6]), to_f(e[7])));
}

template <typename TI, typename TO>
__device__ __forceinline__ void cast_body(const TI* __restrict__ in, TO* __restrict__ out, long long n, int vec) {
    const long long stride = (long long)gridDim.x * blockDim.x, first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n8 = vec ? n / 8 : 0;
    for (long long k = first; k < n8; k += stride) convert8(in + 8 * k, out + 8 * k);
    for (long long j = 8 * n8 + first; j < n; j += stride) st(out + j, to_f(in[j]));
}

extern "C" __global__ void __launch_bounds__(256) cast_to_bf16(const float* in, floatX* out, long long n, int vec) {
    cast_body(in, out, n, vec);
}

extern "C" __global__ void __launch_bounds__(256) cast_to_float32(const floatX* in, float* out, long long n, int vec) {
    cast_body(in, out, n, vec);
}

// cast_to_bf16_colsum: a float32 (R, N) gradient g to bf16, and its columns summed as stored
// (rounded to bf16), in one pass: g is a residual stream's gradient on its way into a branch's
// last product, and its column sums are that product's bias gradient, so no other kernel
// (cuBLASLt's BGRADB) reads g again for them. The layout is colsum.cu's: block (32, 8) covers
// 128 columns (four a thread) of one slice of rows, four rows' loads in flight a step; the
// slices' sums go to part[slice, c] for colsum_final_float. N % 4 == 0, vector-aligned pointers.
extern "C" __global__ void __launch_bounds__(256) cast_to_bf16_colsum(const float* __restrict__ g, floatX* __restrict__ out,
                                                                      float* __restrict__ part, int R, int N,
                                                                      int rows_per_slice) {
    const int c0 = (blockIdx.x * 32 + threadIdx.x) * 4;
    const int r_begin = blockIdx.y * rows_per_slice, r_end = min(R, r_begin + rows_per_slice);
    float s[4] = {0.f, 0.f, 0.f, 0.f};
    auto row = [&](float4 v, long long i) {       // one row's four columns: stored, then summed as stored
        const uint2 u = pack_bf16x4(v);
        *reinterpret_cast<uint2*>(out + i) = u;
        const float4 r = unpack_bf16x4(u);
        s[0] += r.x; s[1] += r.y; s[2] += r.z; s[3] += r.w;
    };
    if (c0 < N) {
        constexpr int UNROLL = 4;
        int r = r_begin + threadIdx.y;
        for (; r + 8 * (UNROLL - 1) < r_end; r += 8 * UNROLL) {
            float4 v[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) v[u] = ld4(g + (long long)(r + 8 * u) * N + c0);
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) row(v[u], (long long)(r + 8 * u) * N + c0);
        }
        for (; r < r_end; r += 8) row(ld4(g + (long long)r * N + c0), (long long)r * N + c0);
    }
    slice_sums_store<4>(s, part, N, c0);
}
#endif
