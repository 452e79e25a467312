// AdamW parameter update, fused: one pass over p, g, m, v instead of ~12 array ops.
//
// For each element (PyTorch's AdamW, decoupled weight decay):
//   p <- p * (1 - lr * wd)
//   m <- m + (1 - b1) (g - m)            v <- b2 v + (1 - b2) g^2
//   p <- p - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)
// with step_size = lr / (1 - b1^t) and inv_sqrt_bc2 = 1 / sqrt(1 - b2^t).
// No backward: this is the optimizer.
//
// The seven scalars are read from device memory (hyper), written by the host
// before each step, so a step captured in a CUDA graph picks up the current
// learning rate and step count on every replay:
//   hyper = {1 - lr*wd, 1 - b1, b2, 1 - b2, 1/sqrt(1 - b2^t), eps, lr/(1 - b1^t)}
//
// Launch: all parameters in one launch, one block per chunk (kernels/many.py).
// Row r of `table` (int64) holds the addresses of p, g, m, v, the parameter's
// row of hyper, the address of p's bf16 copy (0: none), and the chunk's first and
// last+1 element. The copy is what the products under autocast read next step
// (autocast.WeightCopies): written here, 2 bytes more an element, instead of a
// cast pass over p before each use. The update is bandwidth-bound (7 floats moved
// per element): float4 loads and stores when the arrays allow them.
// pack_bf16x4 (common.cuh) writes the bf16 copy
#include "common.cuh"

__device__ __forceinline__ float adamw_one(float& p, float g, float& m, float& v, const float* h) {
    m = m + h[1] * (g - m);
    v = h[2] * v + h[3] * g * g;
    p = p * h[0] - h[6] * m / (sqrtf(v) * h[4] + h[5]);
    return p;
}

extern "C" __global__ void adamw_many(const long long* __restrict__ table, const float* __restrict__ hyper,
                                      int n_hyper) {
    const long long* row = table + 8 * (long long)blockIdx.x;    // p, g, m, v, hyper row, copy, start, end
    float* p = (float*)row[0];
    const float* g = (const float*)row[1];
    float* m = (float*)row[2];
    float* v = (float*)row[3];
    __nv_bfloat16* c = (__nv_bfloat16*)row[5];
    float h[7];
#pragma unroll
    for (int j = 0; j < 7; ++j) h[j] = hyper[row[4] * n_hyper + j];
    long long i = row[6];
    const long long end = row[7];
    const bool vec = ((row[0] | row[1] | row[2] | row[3]) & 15) == 0 && (row[5] & 7) == 0;   // chunks start on multiples of 4
    if (vec) {
        for (long long j = i + 4 * threadIdx.x; j + 3 < end; j += 4 * blockDim.x) {
            float4 p4 = *reinterpret_cast<float4*>(p + j), m4 = *reinterpret_cast<float4*>(m + j);
            float4 v4 = *reinterpret_cast<float4*>(v + j);
            const float4 g4 = *reinterpret_cast<const float4*>(g + j);
            adamw_one(p4.x, g4.x, m4.x, v4.x, h);
            adamw_one(p4.y, g4.y, m4.y, v4.y, h);
            adamw_one(p4.z, g4.z, m4.z, v4.z, h);
            adamw_one(p4.w, g4.w, m4.w, v4.w, h);
            *reinterpret_cast<float4*>(p + j) = p4;
            *reinterpret_cast<float4*>(m + j) = m4;
            *reinterpret_cast<float4*>(v + j) = v4;
            if (c) *reinterpret_cast<uint2*>(c + j) = pack_bf16x4(p4);
        }
        i += (end - i) / 4 * 4;                  // the last (end - i) % 4 elements, one a thread below
    }
    for (long long j = i + threadIdx.x; j < end; j += blockDim.x) {
        adamw_one(p[j], g[j], m[j], v[j], h);
        if (c) c[j] = __float2bfloat16_rn(p[j]);
    }
}
