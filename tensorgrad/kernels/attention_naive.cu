// Causal attention, the plain way: one thread per (batch, head, query row).
//
// The math of attention.cu (its header has the forward and backward formulas),
// written as the first version anyone would write, so a reader can see what
// the flash-style kernel buys (bench/kernels.py times the two):
//   forward: a thread computes its row's scores against every visible key
//     twice: once for the max, once for exp(s - max), the normaliser l and
//     y += p v, accumulated straight in y's row in global memory. attention.cu
//     instead has 128 threads share a 64 x 64 tile of q and k in shared
//     memory, computes each score once and rescales as the max grows (online
//     softmax);
//   backward: three kernels, each thread redoing the dot products it needs:
//     one per query row for dq (and D = sum(dy * y)), one per key row for dk
//     and dv (walking the queries that see that key). No dropout: p = 0 only.
// No (T, S) matrix reaches memory here either: what the naive version pays
// for is recomputation and reads that every thread repeats on its own.
// Layout: contiguous q, y, dq (B*H, T, D) and k, v, dk, dv (B*H, S, D);
// lse, dot (B*H, T). Causal: query i sees keys j <= i + (S - T).
// Launch: a 1-D grid of 1-D blocks, one thread per row (of queries or keys).

#define NEG_INF __int_as_float(0xff800000)   // no <math.h> under NVRTC: -inf from its bits

__device__ __forceinline__ float dot_row(const float* a, const float* b, int D) {
    float s = 0.f;
    for (int d = 0; d < D; ++d) s += a[d] * b[d];
    return s;
}

// keys visible to query i: j < n_keys(i)
__device__ __forceinline__ int n_keys(int i, int T, int S, int causal) {
    if (!causal) return S;
    const int n = i + (S - T) + 1;
    return n < 0 ? 0 : (n < S ? n : S);
}

extern "C" __global__ void attention_forward_naive(const float* q, const float* k, const float* v, float* y,
                                                   float* lse, int BH, int T, int S, int D, float scale,
                                                   int causal) {
    const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;   // = bh * T + i
    if (r >= (long long)BH * T) return;
    const int bh = (int)(r / T), i = (int)(r % T);
    const float* qi = q + r * D;
    const float* kb = k + (long long)bh * S * D;
    const float* vb = v + (long long)bh * S * D;
    float* yi = y + r * D;
    const int n = n_keys(i, T, S, causal);
    // pass 1: the max score
    float m = NEG_INF;
    for (int j = 0; j < n; ++j) m = fmaxf(m, dot_row(qi, kb + (long long)j * D, D) * scale);
    // pass 2: p = exp(s - m), l = sum(p), y = sum(p v) / l
    for (int d = 0; d < D; ++d) yi[d] = 0.f;
    float l = 0.f;
    for (int j = 0; j < n; ++j) {
        const float p = expf(dot_row(qi, kb + (long long)j * D, D) * scale - m);
        l += p;
        for (int d = 0; d < D; ++d) yi[d] += p * vb[(long long)j * D + d];
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;   // a row with no visible key is written as zeros
    for (int d = 0; d < D; ++d) yi[d] *= inv;
    lse[r] = l > 0.f ? m + logf(l) : NEG_INF;  // the backward recomputes p = exp(s - lse)
}

// per query row: dot = sum(dy * y), then ds_j = p_j (dy . v_j - dot), dq = scale * sum_j ds_j k_j
extern "C" __global__ void attention_backward_q_naive(const float* q, const float* k, const float* v,
                                                      const float* dy, const float* y, const float* lse,
                                                      float* dot, float* dq, int BH, int T, int S, int D,
                                                      float scale, int causal) {
    const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= (long long)BH * T) return;
    const int bh = (int)(r / T), i = (int)(r % T);
    const float* qi = q + r * D;
    const float* dyi = dy + r * D;
    const float* kb = k + (long long)bh * S * D;
    const float* vb = v + (long long)bh * S * D;
    float* dqi = dq + r * D;
    const float di = dot_row(dyi, y + r * D, D);
    dot[r] = di;                              // the dk, dv kernel needs it for every query
    const float li = lse[r];
    for (int d = 0; d < D; ++d) dqi[d] = 0.f;
    const int n = n_keys(i, T, S, causal);
    for (int j = 0; j < n; ++j) {
        const float* kj = kb + (long long)j * D;
        const float p = expf(dot_row(qi, kj, D) * scale - li);
        const float ds = p * (dot_row(dyi, vb + (long long)j * D, D) - di);
        for (int d = 0; d < D; ++d) dqi[d] += ds * kj[d] * scale;
    }
}

// per key row j, over the queries i that see it: dv_j = sum_i p_ij dy_i, dk_j = scale * sum_i ds_ij q_i.
// Needs dot from attention_backward_q_naive (launched first, on the same stream).
extern "C" __global__ void attention_backward_kv_naive(const float* q, const float* k, const float* v,
                                                       const float* dy, const float* lse, const float* dot,
                                                       float* dk, float* dv, int BH, int T, int S, int D,
                                                       float scale, int causal) {
    const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;   // = bh * S + j
    if (r >= (long long)BH * S) return;
    const int bh = (int)(r / S), j = (int)(r % S);
    const float* kj = k + r * D;
    const float* vj = v + r * D;
    float* dkj = dk + r * D;
    float* dvj = dv + r * D;
    for (int d = 0; d < D; ++d) {
        dkj[d] = 0.f;
        dvj[d] = 0.f;
    }
    // causal: key j is seen by the queries i >= j - (S - T)
    int i0 = causal ? j - (S - T) : 0;
    if (i0 < 0) i0 = 0;
    for (int i = i0; i < T; ++i) {
        const long long qr = (long long)bh * T + i;
        const float* qi = q + qr * D;
        const float* dyi = dy + qr * D;
        const float p = expf(dot_row(qi, kj, D) * scale - lse[qr]);
        const float ds = p * (dot_row(dyi, vj, D) - dot[qr]);
        for (int d = 0; d < D; ++d) {
            dvj[d] += p * dyi[d];
            dkj[d] += ds * qi[d] * scale;
        }
    }
}
