// GELU, GPT-2's tanh approximation, forward and backward in one pass each.
//
//   y  = x/2 (1 + t),  t = tanh(c (x + 0.044715 x^3)),  c = sqrt(2/pi)
//   dx = g (1/2 (1 + t) + x/2 (1 - t^2) c (1 + 3 * 0.044715 x^2))
// Composed from array ops, the forward takes 8 passes over memory and the
// backward about 12; here each reads its inputs once and writes once. The
// backward recomputes t from x rather than saving it (one array less to keep).
//
// Launch: 1-D grid-stride loop, 256 threads a block; n may exceed 2^31.
#define GELU_C 0.7978845608028654f
#define GELU_K 0.044715f

extern "C" __global__ void gelu_forward(const float* __restrict__ x, float* __restrict__ y, long long n) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float a = x[i];
        float t = tanhf(GELU_C * (a + GELU_K * a * a * a));
        y[i] = 0.5f * a * (1.0f + t);
    }
}

extern "C" __global__ void gelu_backward(const float* __restrict__ g, const float* __restrict__ x,
                                         float* __restrict__ dx, long long n) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float a = x[i];
        float t = tanhf(GELU_C * (a + GELU_K * a * a * a));
        float d = 0.5f * (1.0f + t) + 0.5f * a * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_K * a * a);
        dx[i] = g[i] * d;
    }
}
