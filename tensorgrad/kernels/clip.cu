// Gradient clipping by the global L2 norm, over many gradients in three launches:
//
//   norm = sqrt(sum over every gradient g of sum(g^2)),  coef = min(max_norm / (norm + eps), 1)
//   g <- g * coef for every g
//
// (nn.utils.clip_grad_norm_; a GPT has dozens of gradients, and one reduction and
// one scaling per gradient would be a hundred launches.) Row t of `table` (int64,
// kernels.device_table) holds gradient t's address and size; block (x, t) of a
// (X, n) grid walks its share of gradient t.
//   sumsq_partials:   part[t * X + x] = the block's sum of squares
//   clip_coefficient: one block adds the n * X partial sums in a fixed order
//                     (deterministic) -> out = {norm, coef}
//   scale_many:       g *= coef
// float32 gradients (master gradients stay float32 in bf16 training too).
#include "common.cuh"

extern "C" __global__ void sumsq_partials(const long long* __restrict__ table, float* __restrict__ part) {
    const float* g = (const float*)table[2 * (long long)blockIdx.y];
    const long long n = table[2 * (long long)blockIdx.y + 1];
    float s = 0.f;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        s += g[i] * g[i];
    s = group_sum<true>(s);
    if (threadIdx.x == 0) part[(long long)blockIdx.y * gridDim.x + blockIdx.x] = s;
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
    float* g = (float*)table[2 * (long long)blockIdx.y];
    const long long n = table[2 * (long long)blockIdx.y + 1];
    const float coef = out[1];
    if (coef == 1.f) return;         // under the limit: nothing to scale (most steps of a run)
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        g[i] *= coef;
}
