// Softmax over the last axis, the plain way: one thread per row.
//
// The same math, mask and zero-row rule as softmax.cu (read that file's header
// for them), written as the first version anyone would write, so that a reader
// can see what softmax.cu's tricks buy (bench/kernels.py times the two):
//   - one thread walks its whole row three times (max, sum of exp, write),
//     where softmax.cu gives a row a warp or a block and walks it once for
//     (max, sum) with the online-softmax merge;
//   - scalar loads, no float4;
//   - neighbouring threads read rows L floats apart, so a warp's 32 loads touch
//     32 different cache lines (uncoalesced) where softmax.cu's warp reads 128
//     consecutive bytes at a time.
// The serial sum also rounds more than a tree of partial sums: fine for the
// row lengths of attention, visibly worse for vocab-sized rows.
// Launch: a 1-D grid of 1-D blocks, at least one thread per row.

#define NEG_INF __int_as_float(0xff800000)   // no <math.h> under NVRTC: -inf from its bits

extern "C" __global__ void softmax_forward_naive(const float* x, float* y, int N, int L, int T, float scale) {
    const long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    const float* xr = x + row * L;
    float* yr = y + row * L;
    // causal (T > 0): row i of a (T, L) slab keeps columns j <= i + (L - T)
    long long valid = L;
    if (T > 0) {
        valid = (long long)(row % T) + (L - T) + 1;
        if (valid < 0) valid = 0;
        if (valid > L) valid = L;
    }
    // pass 1: the max, so that exp never overflows
    float m = NEG_INF;
    for (long long j = 0; j < valid; ++j) m = fmaxf(m, xr[j] * scale);
    if (m == NEG_INF) m = 0.f;      // nothing kept, or only -inf: exp(-inf - 0) = 0 below
    // pass 2: the normaliser
    float s = 0.f;
    for (long long j = 0; j < valid; ++j) s += expf(xr[j] * scale - m);
    const float inv = s > 0.f ? 1.f / s : 0.f;   // an empty row is written as zeros, not NaN
    // pass 3: write every column, masked ones as 0
    for (long long j = 0; j < L; ++j) yr[j] = j < valid ? expf(xr[j] * scale - m) * inv : 0.f;
}

// dx = scale * y * (g - sum(g * y)); masked entries have y = 0, so dx = 0 there
extern "C" __global__ void softmax_backward_naive(const float* g, const float* y, float* dx, int N, int L,
                                                  float scale) {
    const long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    const float* gr = g + row * L;
    const float* yr = y + row * L;
    float* dr = dx + row * L;
    float dot = 0.f;
    for (int j = 0; j < L; ++j) dot += gr[j] * yr[j];
    for (int j = 0; j < L; ++j) dr[j] = scale * yr[j] * (gr[j] - dot);
}
