// Casts between float32 and bf16, elementwise: out[i] = in[i] in the other type (to bf16:
// round to nearest even, as CuPy's astype). Under autocast every use of a float32 weight
// is one such pass (ops/linear.py, Narrowing), so it runs at memory speed: eight elements
// a thread, the float32 side in two 16-byte accesses and the bf16 side in one, when both
// arrays start on 16 bytes (vec); else one element at a time. Grid-stride loop.
#include "common.cuh"

#ifdef TG_BF16
__device__ __forceinline__ void convert8(const float* in, floatX* out) {
    const float4 a = ld4(in), b = ld4(in + 4);
    uint4 u;
    __nv_bfloat162 h;
    h = __floats2bfloat162_rn(a.x, a.y); u.x = *reinterpret_cast<unsigned int*>(&h);
    h = __floats2bfloat162_rn(a.z, a.w); u.y = *reinterpret_cast<unsigned int*>(&h);
    h = __floats2bfloat162_rn(b.x, b.y); u.z = *reinterpret_cast<unsigned int*>(&h);
    h = __floats2bfloat162_rn(b.z, b.w); u.w = *reinterpret_cast<unsigned int*>(&h);
    *reinterpret_cast<uint4*>(out) = u;
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
#endif
