// Gradient clipping by the global L2 norm, over many gradients in three launches:
//
//   norm = sqrt(sum over every gradient g of sum(g^2)),  coef = min(max_norm / (norm + eps), 1)
//   g <- g * coef for every g
//
// (nn.utils.clip_grad_norm_; a GPT has dozens of gradients, and one reduction and
// one scaling per gradient would be a hundred launches.) One block per chunk
// (kernels/many.py): row r of `table` (int64) holds a gradient's address and the
// chunk's first and last+1 element.
//   sumsq_partials:   part[r] = the chunk's sum of squares
//   clip_coefficient: one block adds the partial sums in a fixed order
//                     (deterministic) -> out = {norm, coef}
//   scale_many:       g *= coef
// float32 gradients (master gradients stay float32 in bf16 training too).
#include "common.cuh"

// The chunk of row `r`: its base pointer and [start, vector end, end); float4s up to vector end.
__device__ __forceinline__ float* chunk_of(const long long* table, long long& start, long long& vend, long long& end) {
    const long long* row = table + 3 * (long long)blockIdx.x;
    start = row[1];
    end = row[2];
    vend = (row[0] & 15) == 0 ? start + (end - start) / 4 * 4 : start;
    return (float*)row[0];
}

extern "C" __global__ void sumsq_partials(const long long* __restrict__ table, float* __restrict__ part) {
    long long start, vend, end;
    const float* g = chunk_of(table, start, vend, end);
    float s = 0.f;
    for (long long i = start + 4 * threadIdx.x; i < vend; i += 4 * blockDim.x) {
        const float4 a = *reinterpret_cast<const float4*>(g + i);
        s += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
    }
    for (long long i = vend + threadIdx.x; i < end; i += blockDim.x) s += g[i] * g[i];
    s = group_sum<true>(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

extern "C" __global__ void clip_coefficient(const float* __restrict__ part, int count, float max_norm, float eps,
                                            float* __restrict__ out) {
    float s = 0.f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += part[i];
    s = group_sum<true>(s);
    if (threadIdx.x == 0) {
        const float norm = sqrtf(s);
        out[0] = norm;
        out[1] = fminf(max_norm / (norm + eps), 1.f);
    }
}

extern "C" __global__ void scale_many(const long long* __restrict__ table, const float* __restrict__ out) {
    const float coef = out[1];
    if (coef == 1.f) return;         // under the limit: nothing to scale (most steps of a run)
    long long start, vend, end;
    float* g = chunk_of(table, start, vend, end);
    for (long long i = start + 4 * threadIdx.x; i < vend; i += 4 * blockDim.x) {
        float4 a = *reinterpret_cast<float4*>(g + i);
        a.x *= coef; a.y *= coef; a.z *= coef; a.w *= coef;
        *reinterpret_cast<float4*>(g + i) = a;
    }
    for (long long i = vend + threadIdx.x; i < end; i += blockDim.x) g[i] *= coef;
}
