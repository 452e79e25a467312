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
// Launch: 1-D grid-stride loop, 256 threads a block; n may exceed 2^31.
extern "C" __global__ void adamw_step(float* __restrict__ p, const float* __restrict__ g,
                                      float* __restrict__ m, float* __restrict__ v, long long n,
                                      const float* __restrict__ hyper) {
    const float decay = hyper[0], one_minus_b1 = hyper[1], b2 = hyper[2], one_minus_b2 = hyper[3];
    const float inv_sqrt_bc2 = hyper[4], eps = hyper[5], step_size = hyper[6];
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float gi = g[i];
        float mi = m[i] + one_minus_b1 * (gi - m[i]);
        float vi = b2 * v[i] + one_minus_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) * inv_sqrt_bc2 + eps;
        p[i] = p[i] * decay - step_size * mi / denom;
    }
}
