// Column sums of a contiguous float32 (R, N) matrix: out[c] = sum over r of a[r, c].
//
// This is the bias gradient of a linear layer (sum of the output gradient over
// all rows) and, generally, undoing a broadcast over leading axes. R is long
// (batch x time = 16k rows) and N short (a few hundred to a few thousand), a
// shape that a generic reduction handles badly: few outputs, each a long
// strided sum. Two stages, deterministic (fixed summation order):
//   colsum_partial: block (32, 8) covers 32 columns (x 4 with float4 loads) and
//     one slice of the rows; its 8 row-groups walk the slice, then add up
//     through shared memory -> part[slice, c]. grid = (column blocks, slices),
//     with enough slices to fill the GPU.
//   colsum_final: out[c] = sum over slices of part[slice, c] (one thread a column).
// Each warp reads 32 consecutive columns (128 with float4) of one row at a
// time: coalesced. a and out are floatX (common.cuh), the partial sums float.
#include "common.cuh"

template <int W>   // W = 4: vector loads (N % 4 == 0 and an aligned base), W = 1: scalar
__device__ __forceinline__ void colsum_partial_body(const floatX* __restrict__ a, float* __restrict__ part,
                                                    int R, int N, int rows_per_slice) {
    const int c0 = (blockIdx.x * 32 + threadIdx.x) * W;
    const int r_begin = blockIdx.y * rows_per_slice;
    const int r_end = min(R, r_begin + rows_per_slice);
    float s[W];
#pragma unroll
    for (int w = 0; w < W; ++w) s[w] = 0.f;
    if (c0 < N) {
        for (int r = r_begin + threadIdx.y; r < r_end; r += 8) {
            const floatX* row = a + (long long)r * N + c0;
            if constexpr (W == 4) {
                const float4 v = ld4(row);
                s[0] += v.x; s[1] += v.y; s[2] += v.z; s[3] += v.w;
            } else {
                s[0] += to_f(row[0]);
            }
        }
    }
    slice_sums_store<W>(s, part, N, c0);
}

extern "C" __global__ void __launch_bounds__(256) colsum_partial4(const floatX* a, float* part, int R, int N, int rows_per_slice) {
    colsum_partial_body<4>(a, part, R, N, rows_per_slice);
}

extern "C" __global__ void __launch_bounds__(256) colsum_partial1(const floatX* a, float* part, int R, int N, int rows_per_slice) {
    colsum_partial_body<1>(a, part, R, N, rows_per_slice);
}

extern "C" __global__ void colsum_final(const float* __restrict__ part, floatX* __restrict__ out, int slices, int N) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= N) return;
    float t = 0.f;
    for (int s = 0; s < slices; ++s) t += part[(long long)s * N + c];
    st(out + c, t);
}

// The same, written as float32 whatever floatX is (a bf16 product's bias gradient for float32
// master weights); part may come from another kernel that summed as it wrote (gelu.cu).
extern "C" __global__ void colsum_final_float(const float* __restrict__ part, float* __restrict__ out, int slices, int N) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= N) return;
    float t = 0.f;
    for (int s = 0; s < slices; ++s) t += part[(long long)s * N + c];
    out[c] = t;
}
