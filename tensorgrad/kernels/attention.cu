// Fused attention, the tiled float path: every tile product on CUDA-core FMAs,
// float32 or bf16 storage (attention_common.cuh has the algorithm).
//
// Work split: 128 threads own a 64 x 64 tile; thread (ty, tx) = (tid / 8,
// tid % 8) owns rows 4ty..4ty+3 and columns tx, tx+8, ..., tx+56 of a score
// tile, so the 8 threads of a row sit in one warp (row max / sum by 3
// shuffles). Of a (64, D) output tile it owns rows 4ty..4ty+3 and the columns
// 4tx..4tx+3 + 32m, so it stores float4s. Shared tiles keep global memory's
// layout (rows of D floats, padded to D + 4): every inner-loop read is a
// 16-byte float4, a quarter of the load instructions of scalar reads, and the
// 8 threads of a quarter-warp read 8 different float4s of 32 distinct banks.
// The backward is two kernels, both recomputing p: one per key tile for dk,
// dv (looping over query tiles), one per query tile for dq (looping over key
// tiles). Every sum has a fixed order: results are deterministic.
#include "attention_common.cuh"

__device__ __forceinline__ float at(const float4& v, int u) { return u == 0 ? v.x : u == 1 ? v.y : u == 2 ? v.z : v.w; }

// rows [row0, row0 + 64) of a (.., rows, D) operand -> shared tile (64, D + 4), zeros past n_rows.
// vec: the operand's base and row stride are vector-aligned, so rows can be read four elements at a time.
template <int D>
__device__ __forceinline__ void load_tile(float* tile, const floatX* g, long long base, long long st, int row0,
                                          int n_rows, bool vec) {
    if (vec) {
        for (int e = threadIdx.x; e < TILE * D / 4; e += NT) {
            const int r = e / (D / 4), d = e % (D / 4) * 4;
            const int row = row0 + r;
            *reinterpret_cast<float4*>(tile + r * (D + 4) + d) =
                row < n_rows ? ld4(g + base + (long long)row * st + d) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        return;
    }
    for (int e = threadIdx.x; e < TILE * D; e += NT) {
        const int r = e / D, d = e % D;
        const int row = row0 + r;
        tile[r * (D + 4) + d] = row < n_rows ? to_f(g[base + (long long)row * st + d]) : 0.f;
    }
}

// acc[i][j] += sum_d A[4ty + i][d] * B[tx + 8j][d] for a 64 x 64 tile of A B^T (A, B: (64, D + 4))
template <int D>
__device__ __forceinline__ void tile_abt(float (&acc)[4][8], const float* A, const float* B, int ty, int tx) {
#pragma unroll 2
    for (int d = 0; d < D; d += 4) {
        float4 a[4], b[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = ld4(A + (4 * ty + i) * (D + 4) + d);
#pragma unroll
        for (int j = 0; j < 8; ++j) b[j] = ld4(B + (tx + 8 * j) * (D + 4) + d);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                acc[i][j] += a[i].x * b[j].x; acc[i][j] += a[i].y * b[j].y;
                acc[i][j] += a[i].z * b[j].z; acc[i][j] += a[i].w * b[j].w;
            }
    }
}

// acc[i][4m + u] += sum_c P[4ty + i][c] * M[c][4tx + 32m + u]   (P: (64, LP), M: (64, D + 4))
template <int D>
__device__ __forceinline__ void tile_pm(float (&acc)[4][D / 8], const float* P, const float* M, int ty, int tx) {
#pragma unroll 2
    for (int c = 0; c < TILE; c += 4) {
        float4 p[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) p[i] = ld4(P + (4 * ty + i) * LP + c);
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
            for (int m = 0; m < D / 32; ++m) {
                const float4 x = ld4(M + (c + u) * (D + 4) + 4 * tx + 32 * m);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float pi = at(p[i], u);
                    acc[i][4 * m] += pi * x.x; acc[i][4 * m + 1] += pi * x.y;
                    acc[i][4 * m + 2] += pi * x.z; acc[i][4 * m + 3] += pi * x.w;
                }
            }
    }
}

// acc[i][4m + u] += sum_r P[r][4ty + i] * M[r][4tx + 32m + u]   (the transpose of P; P: (64, LP))
template <int D>
__device__ __forceinline__ void tile_ptm(float (&acc)[4][D / 8], const float* P, const float* M, int ty, int tx) {
#pragma unroll 4
    for (int r = 0; r < TILE; ++r) {
        const float4 p = ld4(P + r * LP + 4 * ty);
#pragma unroll
        for (int m = 0; m < D / 32; ++m) {
            const float4 x = ld4(M + r * (D + 4) + 4 * tx + 32 * m);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float pi = at(p, i);
                acc[i][4 * m] += pi * x.x; acc[i][4 * m + 1] += pi * x.y;
                acc[i][4 * m + 2] += pi * x.z; acc[i][4 * m + 3] += pi * x.w;
            }
        }
    }
}

// row `row` of a (.., rows, D) output <- acc[i] (the columns tile_pm / tile_ptm give a thread), times f
template <int D>
__device__ __forceinline__ void store_row(floatX* out, const float (&acc)[D / 8], float f, int tx) {
#pragma unroll
    for (int m = 0; m < D / 32; ++m)
        st4(out + 4 * tx + 32 * m, make_float4(acc[4 * m] * f, acc[4 * m + 1] * f, acc[4 * m + 2] * f, acc[4 * m + 3] * f));
}

// ------------------------------------------------------------------ forward
template <int D>
__device__ void attention_forward_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                       const floatX* __restrict__ v, floatX* __restrict__ y, float* __restrict__ lse,
                                       Strides qs, Strides ks, Strides vs, Strides ys, int H, int T, int S,
                                       float scale, int causal, const unsigned int* rng, unsigned int drop16,
                                       float dscale, int vec) {
    extern __shared__ __align__(16) float smem[];
    float* Q = smem;                       // (64, D + 4)
    float* K = Q + TILE * (D + 4);         // (64, D + 4)
    float* V = K + TILE * (D + 4);         // (64, D + 4)
    float* P = V + TILE * (D + 4);         // (64, LP): probabilities after dropout
    const int bh = blockIdx.y, q0 = blockIdx.x * TILE;
    const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
    const float sl2 = scale * LOG2E;       // scores in log2 units: exp2 is one instruction

    load_tile<D>(Q, q, base_of(qs, bh, H), qs.t, q0, T, vec);
    float m[4], l[4], acc[4][D / 8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        m[i] = NEG_INF; l[i] = 0.f;
#pragma unroll
        for (int e = 0; e < D / 8; ++e) acc[i][e] = 0.f;
    }
    const int nkt = key_tiles(q0, T, S, causal);
    for (int kt = 0; kt < nkt; ++kt) {
        const int k0 = kt * TILE;
        __syncthreads();                   // the previous tile's K, V, P are no longer read
        load_tile<D>(K, k, base_of(ks, bh, H), ks.t, k0, S, vec);
        load_tile<D>(V, v, base_of(vs, bh, H), vs.t, k0, S, vec);
        __syncthreads();
        float s[4][8];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) s[i][j] = 0.f;
        tile_abt<D>(s, Q, K, ty, tx);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = q0 + 4 * ty + i;
            float mx = NEG_INF;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                s[i][j] = visible(row, k0 + tx + 8 * j, T, S, causal) ? s[i][j] * sl2 : NEG_INF;
                mx = fmaxf(mx, s[i][j]);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
            const float m_new = fmaxf(m[i], mx);
            // a row that has seen only masked keys so far keeps m = -inf and all zeros
            const float alpha = m_new == NEG_INF ? 1.f : exp2f(m[i] - m_new);
            float sum = 0.f, z[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                s[i][j] = m_new == NEG_INF ? 0.f : exp2f(s[i][j] - m_new);
                sum += s[i][j];
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            sum += __shfl_xor_sync(0xffffffffu, sum, 4);
            l[i] = l[i] * alpha + sum;     // the normaliser counts every p, dropped or not
            m[i] = m_new;
#pragma unroll
            for (int e = 0; e < D / 8; ++e) acc[i][e] *= alpha;
            drop_row(z, rng, drop16, dscale, row, kt, tx, bh);
#pragma unroll
            for (int j = 0; j < 8; ++j) P[(4 * ty + i) * LP + tx + 8 * j] = s[i][j] * z[j];
        }
        __syncthreads();
        tile_pm<D>(acc, P, V, ty, tx);     // acc += P V
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = q0 + 4 * ty + i;
        if (row >= T) continue;
        store_row<D>(y + base_of(ys, bh, H) + (long long)row * ys.t, acc[i], l[i] > 0.f ? 1.f / l[i] : 0.f, tx);
        if (tx == 0) lse[(long long)bh * T + row] = l[i] > 0.f ? (m[i] + log2f(l[i])) / LOG2E : NEG_INF;
    }
}

// ----------------------------------------------------------------- backward
// p (after dropout) and ds of one 64 x 64 tile, from Q, dY tiles (rows) and K, V tiles (columns)
template <int D>
__device__ __forceinline__ void tile_p_ds(float (&pd)[4][8], float (&ds)[4][8], const float* Qt, const float* dYt,
                                          const float* Kt, const float* Vt, const float* lse_t, const float* dot_t,
                                          int q0, int k0, int kt, int ty, int tx, int bh, int T, int S, float sl2,
                                          int causal, const unsigned int* rng, unsigned int drop16, float dscale) {
    float dp[4][8];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) { pd[i][j] = 0.f; dp[i][j] = 0.f; }
    tile_abt<D>(pd, Qt, Kt, ty, tx);      // scores
    tile_abt<D>(dp, dYt, Vt, ty, tx);     // d(dropped p)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = 4 * ty + i, row = q0 + r;
        const float l2 = lse_t[r] * LOG2E, dot = dot_t[r];
        float z[8];
        drop_row(z, rng, drop16, dscale, row, kt, tx, bh);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float p = visible(row, k0 + tx + 8 * j, T, S, causal) ? exp2f(pd[i][j] * sl2 - l2) : 0.f;
            pd[i][j] = p * z[j];
            ds[i][j] = p * (dp[i][j] * z[j] - dot);
        }
    }
}

template <int D>
__device__ void attention_backward_kv_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                           const floatX* __restrict__ v, const floatX* __restrict__ dy,
                                           const float* __restrict__ lse, const float* __restrict__ dot,
                                           floatX* __restrict__ dk, floatX* __restrict__ dv,
                                           Strides qs, Strides ks, Strides vs, Strides ys,
                                           int H, int T, int S, float scale, int causal, const unsigned int* rng,
                                           unsigned int drop16, float dscale, int vec) {
    extern __shared__ __align__(16) float smem[];
    float* K = smem;                       // (64, D + 4): this block's keys
    float* V = K + TILE * (D + 4);
    float* Q = V + TILE * (D + 4);         // (64, D + 4): the current query tile
    float* dY = Q + TILE * (D + 4);
    float* Pd = dY + TILE * (D + 4);       // (64, LP): [query][key]
    float* dS = Pd + TILE * LP;            // (64, LP): [query][key]
    float* L = dS + TILE * LP;             // (64): lse of the query tile
    float* Dot = L + TILE;                 // (64)
    const int bh = blockIdx.y, kt = blockIdx.x, k0 = kt * TILE;
    const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
    const float sl2 = scale * LOG2E;
    load_tile<D>(K, k, base_of(ks, bh, H), ks.t, k0, S, vec);
    load_tile<D>(V, v, base_of(vs, bh, H), vs.t, k0, S, vec);
    float dk_acc[4][D / 8], dv_acc[4][D / 8];   // rows: keys 4ty + i
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < D / 8; ++e) { dk_acc[i][e] = 0.f; dv_acc[i][e] = 0.f; }
    // the first query row that sees key k0: i + S - T >= k0
    const int first = causal ? max(0, k0 - (S - T)) / TILE : 0;
    const int nqt = (T + TILE - 1) / TILE;
    for (int qt = first; qt < nqt; ++qt) {
        const int q0 = qt * TILE;
        __syncthreads();
        load_tile<D>(Q, q, base_of(qs, bh, H), qs.t, q0, T, vec);
        load_tile<D>(dY, dy, base_of(ys, bh, H), ys.t, q0, T, vec);
        for (int r = threadIdx.x; r < TILE; r += NT) {
            const bool in = q0 + r < T;
            L[r] = in ? lse[(long long)bh * T + q0 + r] : 0.f;
            Dot[r] = in ? dot[(long long)bh * T + q0 + r] : 0.f;
        }
        __syncthreads();
        float pd[4][8], ds[4][8];
        tile_p_ds<D>(pd, ds, Q, dY, K, V, L, Dot, q0, k0, kt, ty, tx, bh, T, S, sl2, causal, rng, drop16, dscale);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                Pd[(4 * ty + i) * LP + tx + 8 * j] = pd[i][j];
                dS[(4 * ty + i) * LP + tx + 8 * j] = ds[i][j];
            }
        __syncthreads();
        tile_ptm<D>(dv_acc, Pd, dY, ty, tx);   // dv += Pd^T dY
        tile_ptm<D>(dk_acc, dS, Q, ty, tx);    // dk += dS^T Q (times scale at the end)
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int key = k0 + 4 * ty + i;
        if (key >= S) continue;
        store_row<D>(dk + base_of(ks, bh, H) + (long long)key * ks.t, dk_acc[i], scale, tx);
        store_row<D>(dv + base_of(vs, bh, H) + (long long)key * vs.t, dv_acc[i], 1.f, tx);
    }
}

template <int D>
__device__ void attention_backward_q_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                          const floatX* __restrict__ v, const floatX* __restrict__ dy,
                                          const float* __restrict__ lse, const float* __restrict__ dot,
                                          floatX* __restrict__ dq, Strides qs, Strides ks, Strides vs, Strides ys,
                                          int H, int T, int S, float scale, int causal,
                                          const unsigned int* rng, unsigned int drop16, float dscale, int vec) {
    extern __shared__ __align__(16) float smem[];
    float* Q = smem;                       // (64, D + 4): this block's queries
    float* dY = Q + TILE * (D + 4);
    float* K = dY + TILE * (D + 4);        // (64, D + 4): the current key tile
    float* V = K + TILE * (D + 4);
    float* dS = V + TILE * (D + 4);        // (64, LP)
    float* L = dS + TILE * LP;             // (64)
    float* Dot = L + TILE;                 // (64)
    const int bh = blockIdx.y, q0 = blockIdx.x * TILE;
    const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
    const float sl2 = scale * LOG2E;
    load_tile<D>(Q, q, base_of(qs, bh, H), qs.t, q0, T, vec);
    load_tile<D>(dY, dy, base_of(ys, bh, H), ys.t, q0, T, vec);
    for (int r = threadIdx.x; r < TILE; r += NT) {
        const bool in = q0 + r < T;
        L[r] = in ? lse[(long long)bh * T + q0 + r] : 0.f;
        Dot[r] = in ? dot[(long long)bh * T + q0 + r] : 0.f;
    }
    float dq_acc[4][D / 8];                // rows: queries 4ty + i
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < D / 8; ++e) dq_acc[i][e] = 0.f;
    const int nkt = key_tiles(q0, T, S, causal);
    for (int kt = 0; kt < nkt; ++kt) {
        const int k0 = kt * TILE;
        __syncthreads();
        load_tile<D>(K, k, base_of(ks, bh, H), ks.t, k0, S, vec);
        load_tile<D>(V, v, base_of(vs, bh, H), vs.t, k0, S, vec);
        __syncthreads();
        float pd[4][8], ds[4][8];
        tile_p_ds<D>(pd, ds, Q, dY, K, V, L, Dot, q0, k0, kt, ty, tx, bh, T, S, sl2, causal, rng, drop16, dscale);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) dS[(4 * ty + i) * LP + tx + 8 * j] = ds[i][j];
        __syncthreads();
        tile_pm<D>(dq_acc, dS, K, ty, tx);     // dq += dS K (times scale at the end)
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = q0 + 4 * ty + i;
        if (row < T) store_row<D>(dq + base_of(qs, bh, H) + (long long)row * qs.t, dq_acc[i], scale, tx);
    }
}

#if HEAD_DIM(32)
ATTENTION_KERNELS(32, )
#endif
#if HEAD_DIM(64)
ATTENTION_KERNELS(64, )
#endif
#if HEAD_DIM(128)
ATTENTION_KERNELS(128, )
#endif
