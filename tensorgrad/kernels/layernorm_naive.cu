// LayerNorm over the last axis, the plain way: one thread per row.
//
// The math of layernorm.cu (its header has the derivation; docs/layernorm.md
// walks from the formula to this file), written as the first version anyone
// would write, so a reader can see what layernorm.cu's tricks buy
// (bench/kernels.py times the two):
//   - forward: one thread walks its row three times (mean, variance, write),
//     where layernorm.cu gives a row a warp or a block and sums with shuffles;
//   - backward: one thread per row for dx, and a separate kernel with one
//     thread per column for dw and db, which walks all N rows down its column;
//     layernorm.cu does both in one pass over g and x, in tiles of rows, and
//     adds the tiles' partial dw, db in a second, small kernel;
//   - scalar loads, and the row kernels' reads are uncoalesced (neighbouring
//     threads are C floats apart). The column kernel's reads are coalesced.
// The serial sums round more than a tree of partial sums does, most when
// |mean| >> std (the tests use such data).
// Launch: a 1-D grid of 1-D blocks, at least one thread per row (or column).

extern "C" __global__ void layernorm_forward_naive(const float* x, const float* w, const float* b, float* y,
                                                   float* mean, float* rstd, int N, int C, float eps) {
    const long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    const float* xr = x + row * C;
    float* yr = y + row * C;
    float s = 0.f;
    for (int j = 0; j < C; ++j) s += xr[j];
    const float mu = s / C;
    // the variance from x - mean (two passes): E[x^2] - E[x]^2 cancels badly when |mean| >> std
    float ss = 0.f;
    for (int j = 0; j < C; ++j) {
        const float d = xr[j] - mu;
        ss += d * d;
    }
    const float rs = 1.f / sqrtf(ss / C + eps);
    for (int j = 0; j < C; ++j) yr[j] = (xr[j] - mu) * rs * w[j] + b[j];
    mean[row] = mu;   // saved for the backward
    rstd[row] = rs;
}

// dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), xh = (x - mean) * rstd, dxh = g * w
extern "C" __global__ void layernorm_backward_dx_naive(const float* g, const float* x, const float* w,
                                                       const float* mean, const float* rstd, float* dx,
                                                       int N, int C) {
    const long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    const float* gr = g + row * C;
    const float* xr = x + row * C;
    float* dr = dx + row * C;
    const float mu = mean[row], rs = rstd[row];
    float a = 0.f, bsum = 0.f;            // sums of dxh and of dxh * xh
    for (int j = 0; j < C; ++j) {
        const float dxh = gr[j] * w[j];
        a += dxh;
        bsum += dxh * (xr[j] - mu) * rs;
    }
    a /= C;
    bsum /= C;
    for (int j = 0; j < C; ++j) dr[j] = rs * (gr[j] * w[j] - a - (xr[j] - mu) * rs * bsum);
}

// dw[c] = sum over rows of g * xh, db[c] = sum over rows of g: one thread per column
extern "C" __global__ void layernorm_backward_dwdb_naive(const float* g, const float* x, const float* mean,
                                                         const float* rstd, float* dw, float* db, int N, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sw = 0.f, sb = 0.f;
    for (long long r = 0; r < N; ++r) {
        const float gv = g[r * C + c];
        sw += gv * (x[r * C + c] - mean[r]) * rstd[r];
        sb += gv;
    }
    dw[c] = sw;
    db[c] = sb;
}
