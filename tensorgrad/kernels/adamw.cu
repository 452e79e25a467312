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
// Launch: all parameters in one launch. Row t of `table` (int64, kernels.device_table)
// holds parameter t's addresses of p, g, m, v, its size and its row of hyper; block
// (x, t) of an (X, n) grid walks its share of parameter t (grid-stride; a size may
// exceed 2^31). A GPT has dozens of parameters: one launch each would cost more
// than the update itself.
__device__ __forceinline__ void adamw_range(float* __restrict__ p, const float* __restrict__ g,
                                            float* __restrict__ m, float* __restrict__ v, long long n,
                                            const float* __restrict__ hyper, long long first, long long stride) {
    const float decay = hyper[0], one_minus_b1 = hyper[1], b2 = hyper[2], one_minus_b2 = hyper[3];
    const float inv_sqrt_bc2 = hyper[4], eps = hyper[5], step_size = hyper[6];
    for (long long i = first; i < n; i += stride) {
        float gi = g[i];
        float mi = m[i] + one_minus_b1 * (gi - m[i]);
        float vi = b2 * v[i] + one_minus_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) * inv_sqrt_bc2 + eps;
        p[i] = p[i] * decay - step_size * mi / denom;
    }
}

extern "C" __global__ void adamw_many(const long long* __restrict__ table, const float* __restrict__ hyper,
                                      int n_hyper) {
    const long long* row = table + 6 * (long long)blockIdx.y;    // p, g, m, v, size, hyper row
    adamw_range((float*)row[0], (const float*)row[1], (float*)row[2], (float*)row[3], row[4],
                hyper + row[5] * n_hyper, (long long)blockIdx.x * blockDim.x + threadIdx.x,
                (long long)gridDim.x * blockDim.x);
}
