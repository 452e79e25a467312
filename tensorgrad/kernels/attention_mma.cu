// Fused attention on tensor cores (bf16 only): attention.cu's algorithm with
// its tile products done by mma.sync (attention_common.cuh has the algorithm,
// attention.cu the float path a reader should read first).
#include "attention_common.cuh"

#ifdef TG_BF16
// ------------------------------------------- the forward on tensor cores (bf16)
// The same algorithm with the tile products S = Q K^T and O += P V done by
// the tensor cores: PTX mma.sync m16n8k16 (bf16 inputs, float32 accumulation),
// FlashAttention-2's register layout. Warp w owns query rows 16w..16w+15 of
// the tile. In an m16n8 result (C) fragment, lane (g = lane / 4, t = lane % 4)
// holds rows g and g + 8, columns 2t and 2t + 1 of each 8-column block, so a
// row's max and sum are reduced over the 4 lanes of a quad (2 shuffles), the
// online-softmax rescale of O works on registers, and S's fragments become
// P's A operand without leaving registers (C of m16n8 = half of A of m16k16).
// Key column j = 8 nb + 2t + e is drop_row's (tx = 2t + e, c = nb): the same
// dropout mask as the float kernels and the backward. P is rounded to bf16 for
// its product, as in any bf16 attention; S, O, m, l stay float32. V is stored
// transposed in shared memory, so both B operands are 32-bit loads.
// (mma.sync in inline PTX: NVRTC with the pip CUDA headers has no crt/mma.h
// for the WMMA API.)

__device__ __forceinline__ unsigned int pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);          // lo in the low half: the lower column
    return *reinterpret_cast<unsigned int*>(&v);
}

__device__ __forceinline__ unsigned int lds32(const floatX* p) { return *reinterpret_cast<const unsigned int*>(p); }

// c (16 x 8, float) += a (16 x 16, bf16, row-major fragment) b (16 x 8, bf16, column-major fragment)
__device__ __forceinline__ void mma_bf16(float (&c)[4], const unsigned int (&a)[4], unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// rows [row0, row0 + 64) of a (.., rows, D) bf16 operand -> tile[r * ld + d], or transposed
// tile[d * ld + r]; zeros past n_rows. vec: rows can be read four elements (8 bytes) at a time.
template <int D>
__device__ __forceinline__ void load_rows_bf16(floatX* tile, int ld, const floatX* g, long long base, long long st,
                                               int row0, int n_rows, bool vec, bool transpose) {
    for (int e = threadIdx.x; e < TILE * D / 4; e += NT) {
        const int r = e / (D / 4), d = e % (D / 4) * 4;
        const int row = row0 + r;
        uint2 u = make_uint2(0u, 0u);
        floatX* w = reinterpret_cast<floatX*>(&u);
        if (row < n_rows) {
            const floatX* src = g + base + (long long)row * st + d;
            if (vec) {
                u = *reinterpret_cast<const uint2*>(src);
            } else {
#pragma unroll
                for (int i = 0; i < 4; ++i) w[i] = src[i];
            }
        }
        if (transpose) {
#pragma unroll
            for (int i = 0; i < 4; ++i) tile[(d + i) * ld + r] = w[i];
        } else {
            *reinterpret_cast<uint2*>(tile + r * ld + d) = u;
        }
    }
}

// This warp's 16 rows (from row0) of a (64, D + 8) tile as the A fragments of m16n8k16, one per 16 of D
template <int D>
__device__ __forceinline__ void a_fragments(unsigned int (&a)[D / 16][4], const floatX* tile, int row0, int g, int t) {
    constexpr int LH = D + 8;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const floatX* b = tile + row0 * LH + kk * 16 + 2 * t;
        a[kk][0] = lds32(b + g * LH);
        a[kk][1] = lds32(b + (g + 8) * LH);
        a[kk][2] = lds32(b + g * LH + 8);
        a[kk][3] = lds32(b + (g + 8) * LH + 8);
    }
}

// c[nb] = A (16 x D, fragments a) times the rows of a (64, LH) tile, transposed: 8 blocks of 8 columns
template <int D>
__device__ __forceinline__ void mma_rows(float (&c)[TILE / 8][4], const unsigned int (&a)[D / 16][4], const floatX* tile,
                                         int g, int t) {
    constexpr int LH = D + 8;
#pragma unroll
    for (int nb = 0; nb < TILE / 8; ++nb) {
        c[nb][0] = c[nb][1] = c[nb][2] = c[nb][3] = 0.f;
        const floatX* b = tile + (nb * 8 + g) * LH + 2 * t;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) mma_bf16(c[nb], a[kk], lds32(b + kk * 16), lds32(b + kk * 16 + 8));
    }
}

// acc (16 x D) += P (16 x 64, C fragments p) times a transposed (D, TILE + 8) tile
template <int D>
__device__ __forceinline__ void mma_tile(float (&acc)[D / 8][4], const float (&p)[TILE / 8][4], const floatX* tileT,
                                         int g, int t) {
    constexpr int LK = TILE + 8;
#pragma unroll
    for (int kk = 0; kk < TILE / 16; ++kk) {
        const unsigned int pa[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]), pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                                    pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                                    pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const floatX* b = tileT + (n * 8 + g) * LK + kk * 16 + 2 * t;
            mma_bf16(acc[n], pa, lds32(b), lds32(b + 8));
        }
    }
}

template <int D>
__device__ void attention_forward_mma_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                           const floatX* __restrict__ v, floatX* __restrict__ y, float* __restrict__ lse,
                                           Strides qs, Strides ks, Strides vs, Strides ys, int H, int T, int S,
                                           float scale, int causal, const unsigned int* rng, unsigned int drop16,
                                           float dscale, int vec) {
    constexpr int LH = D + 8;              // row stride of the Q and K tiles (bank-staggered)
    constexpr int LK = TILE + 8;           // row stride of the transposed V tile
    extern __shared__ __align__(16) float smem[];
    floatX* Qs = reinterpret_cast<floatX*>(smem);   // (64, LH)
    floatX* Ks = Qs + TILE * LH;                     // (64, LH)
    floatX* Vt = Ks + TILE * LH;                     // (D, LK): V^T
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, q0 = blockIdx.x * TILE;
    const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};   // this lane's two query rows
    const float sl2 = scale * LOG2E;

    load_rows_bf16<D>(Qs, LH, q, base_of(qs, bh, H), qs.t, q0, T, vec, false);
    __syncthreads();
    unsigned int qa[D / 16][4];            // this warp's Q rows as A fragments, one per 16 of D
    a_fragments<D>(qa, Qs, warp * 16, g, t);
    float o[D / 8][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    const int nkt = key_tiles(q0, T, S, causal);
    for (int kt = 0; kt < nkt; ++kt) {
        const int k0 = kt * TILE;
        __syncthreads();                   // every warp is done with the previous K, V
        load_rows_bf16<D>(Ks, LH, k, base_of(ks, bh, H), ks.t, k0, S, vec, false);
        load_rows_bf16<D>(Vt, LK, v, base_of(vs, bh, H), vs.t, k0, S, vec, true);
        __syncthreads();
        float s[TILE / 8][4];              // S: 16 rows x 64 keys, as 8 C fragments
        mma_rows<D>(s, qa, Ks, g, t);
        float alpha[2];
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {   // element e of a fragment: row hr = e / 2, column 2t + e % 2
            float mx = NEG_INF;
#pragma unroll
            for (int nb = 0; nb < TILE / 8; ++nb)
#pragma unroll
                for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
                    const int j = k0 + nb * 8 + 2 * t + (e & 1);
                    s[nb][e] = visible(row[hr], j, T, S, causal) ? s[nb][e] * sl2 : NEG_INF;
                    mx = fmaxf(mx, s[nb][e]);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m[hr], mx);
            // a row that has seen only masked keys so far keeps m = -inf and all zeros
            alpha[hr] = m_new == NEG_INF ? 1.f : exp2f(m[hr] - m_new);
            m[hr] = m_new;
            l[hr] *= alpha[hr];
            float z[2][8];
            drop_row(z[0], rng, drop16, dscale, row[hr], kt, 2 * t, bh);
            drop_row(z[1], rng, drop16, dscale, row[hr], kt, 2 * t + 1, bh);
#pragma unroll
            for (int nb = 0; nb < TILE / 8; ++nb)
#pragma unroll
                for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
                    const float p = m_new == NEG_INF ? 0.f : exp2f(s[nb][e] - m_new);
                    l[hr] += p;            // the normaliser counts every p, dropped or not
                    s[nb][e] = p * z[e & 1][nb];
                }
        }
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            o[n][0] *= alpha[0]; o[n][1] *= alpha[0];
            o[n][2] *= alpha[1]; o[n][3] *= alpha[1];
        }
        mma_tile<D>(o, s, Vt, g, t);       // O += P V
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 1);
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 2);
        if (row[hr] >= T) continue;
        const float f = l[hr] > 0.f ? 1.f / l[hr] : 0.f;
        floatX* out = y + base_of(ys, bh, H) + (long long)row[hr] * ys.t + 2 * t;
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<unsigned int*>(out + n * 8) = pack_bf16(o[n][2 * hr] * f, o[n][2 * hr + 1] * f);
        if (t == 0) lse[(long long)bh * T + row[hr]] = l[hr] > 0.f ? (m[hr] + log2f(l[hr])) / LOG2E : NEG_INF;
    }
}

// ------------------------------------------ the backward on tensor cores (bf16)
// The two backward kernels with their four tile products on tensor cores, in
// the forward's register layout (see attention_forward_mma_body).
//   q kernel (warp: 16 queries): S = Q K^T, dP = dY V^T, dS = P (dP z - D),
//     dQ += dS K. Rows are queries, columns keys: the dropout columns are the
//     forward's (drop_row with tx = 2t + e, c = the 8-key block).
//   kv kernel (warp: 16 keys): the transposes, S^T = K Q^T, dP^T = V dY^T,
//     dV += (P z)^T dY, dK += dS^T Q. Rows are keys here, so a lane's (query,
//     key) pairs are not drop_row's: the block first writes the tile's keep
//     flags to shared memory (one byte each, drawn as the float kernels draw
//     them) and every lane reads its own.
// Operands read as B are stored so that each B register is one 32-bit load:
// row-major when the product contracts over D (Q, K, V, dY), transposed when
// it contracts over the tile (K^T for dQ, Q^T, dY^T for dK, dV).

// rows r (fragment row g) and r + 8 of a 16 x D result, times f, into out rows at `row` stride st
template <int D>
__device__ __forceinline__ void store_fragments(floatX* out, long long st, const float (&acc)[D / 8][4], float f,
                                                bool first_ok, bool second_ok, int t) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        if (first_ok) *reinterpret_cast<unsigned int*>(out + n * 8 + 2 * t) = pack_bf16(acc[n][0] * f, acc[n][1] * f);
        if (second_ok)
            *reinterpret_cast<unsigned int*>(out + 8 * st + n * 8 + 2 * t) = pack_bf16(acc[n][2] * f, acc[n][3] * f);
    }
}

template <int D>
__device__ void attention_backward_q_mma_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                              const floatX* __restrict__ v, const floatX* __restrict__ dy,
                                              const float* __restrict__ lse, const float* __restrict__ dot,
                                              floatX* __restrict__ dq, Strides qs, Strides ks, Strides vs, Strides ys,
                                              int H, int T, int S, float scale, int causal,
                                              const unsigned int* rng, unsigned int drop16, float dscale, int vec) {
    constexpr int LH = D + 8, LK = TILE + 8;
    extern __shared__ __align__(16) float smem[];
    floatX* Qs = reinterpret_cast<floatX*>(smem);   // (64, LH)
    floatX* dYs = Qs + TILE * LH;                    // (64, LH)
    floatX* Ks = dYs + TILE * LH;                    // (64, LH)
    floatX* Vs = Ks + TILE * LH;                     // (64, LH)
    floatX* Kt = Vs + TILE * LH;                     // (D, LK): K^T
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, q0 = blockIdx.x * TILE;
    const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    const float sl2 = scale * LOG2E;
    load_rows_bf16<D>(Qs, LH, q, base_of(qs, bh, H), qs.t, q0, T, vec, false);
    load_rows_bf16<D>(dYs, LH, dy, base_of(ys, bh, H), ys.t, q0, T, vec, false);
    __syncthreads();
    unsigned int qa[D / 16][4], ya[D / 16][4];
    a_fragments<D>(qa, Qs, warp * 16, g, t);
    a_fragments<D>(ya, dYs, warp * 16, g, t);
    float l2[2], dt[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const bool in = row[hr] < T;
        l2[hr] = in ? lse[(long long)bh * T + row[hr]] * LOG2E : 0.f;
        dt[hr] = in ? dot[(long long)bh * T + row[hr]] : 0.f;
    }
    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    const int nkt = key_tiles(q0, T, S, causal);
    for (int kt = 0; kt < nkt; ++kt) {
        const int k0 = kt * TILE;
        __syncthreads();
        load_rows_bf16<D>(Ks, LH, k, base_of(ks, bh, H), ks.t, k0, S, vec, false);
        load_rows_bf16<D>(Vs, LH, v, base_of(vs, bh, H), vs.t, k0, S, vec, false);
        load_rows_bf16<D>(Kt, LK, k, base_of(ks, bh, H), ks.t, k0, S, vec, true);
        __syncthreads();
        float sv[TILE / 8][4], dp[TILE / 8][4];
        mma_rows<D>(sv, qa, Ks, g, t);      // S
        mma_rows<D>(dp, ya, Vs, g, t);      // dP (of the dropped p)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            float z[2][8];
            drop_row(z[0], rng, drop16, dscale, row[hr], kt, 2 * t, bh);
            drop_row(z[1], rng, drop16, dscale, row[hr], kt, 2 * t + 1, bh);
#pragma unroll
            for (int nb = 0; nb < TILE / 8; ++nb)
#pragma unroll
                for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
                    const int j = k0 + nb * 8 + 2 * t + (e & 1);
                    const float p = visible(row[hr], j, T, S, causal) ? exp2f(sv[nb][e] * sl2 - l2[hr]) : 0.f;
                    sv[nb][e] = p * (dp[nb][e] * z[e & 1][nb] - dt[hr]);     // dS
                }
        }
        mma_tile<D>(acc, sv, Kt, g, t);     // dQ += dS K
    }
    floatX* out = dq + base_of(qs, bh, H) + (long long)row[0] * qs.t;
    store_fragments<D>(out, qs.t, acc, scale, row[0] < T, row[1] < T, t);
}

template <int D>
__device__ void attention_backward_kv_mma_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                               const floatX* __restrict__ v, const floatX* __restrict__ dy,
                                               const float* __restrict__ lse, const float* __restrict__ dot,
                                               floatX* __restrict__ dk, floatX* __restrict__ dv,
                                               Strides qs, Strides ks, Strides vs, Strides ys,
                                               int H, int T, int S, float scale, int causal, const unsigned int* rng,
                                               unsigned int drop16, float dscale, int vec) {
    constexpr int LH = D + 8, LK = TILE + 8;
    extern __shared__ __align__(16) float smem[];
    floatX* Ks = reinterpret_cast<floatX*>(smem);   // (64, LH): this block's keys
    floatX* Vs = Ks + TILE * LH;                     // (64, LH)
    floatX* Qs = Vs + TILE * LH;                     // (64, LH): the current query tile
    floatX* dYs = Qs + TILE * LH;                    // (64, LH)
    floatX* Qt = dYs + TILE * LH;                    // (D, LK): Q^T
    floatX* dYt = Qt + D * LK;                       // (D, LK): dY^T
    float* L = reinterpret_cast<float*>(dYt + D * LK);   // (64): lse of the query tile, in log2 units
    float* Dot = L + TILE;                           // (64)
    unsigned char* keep = reinterpret_cast<unsigned char*>(Dot + TILE);   // (64 queries, 64 keys)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, kt = blockIdx.x, k0 = kt * TILE;
    const int key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};   // this lane's two keys
    const int kr[2] = {warp * 16 + g, warp * 16 + g + 8};              // ... in the tile
    const float sl2 = scale * LOG2E;
    load_rows_bf16<D>(Ks, LH, k, base_of(ks, bh, H), ks.t, k0, S, vec, false);
    load_rows_bf16<D>(Vs, LH, v, base_of(vs, bh, H), vs.t, k0, S, vec, false);
    __syncthreads();
    unsigned int ka[D / 16][4], va[D / 16][4];
    a_fragments<D>(ka, Ks, warp * 16, g, t);
    a_fragments<D>(va, Vs, warp * 16, g, t);
    float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) { dk_acc[n][e] = 0.f; dv_acc[n][e] = 0.f; }
    const int first = causal ? max(0, k0 - (S - T)) / TILE : 0;   // the first query row that sees key k0
    const int nqt = (T + TILE - 1) / TILE;
    for (int qt = first; qt < nqt; ++qt) {
        const int q0 = qt * TILE;
        __syncthreads();
        load_rows_bf16<D>(Qs, LH, q, base_of(qs, bh, H), qs.t, q0, T, vec, false);
        load_rows_bf16<D>(dYs, LH, dy, base_of(ys, bh, H), ys.t, q0, T, vec, false);
        load_rows_bf16<D>(Qt, LK, q, base_of(qs, bh, H), qs.t, q0, T, vec, true);
        load_rows_bf16<D>(dYt, LK, dy, base_of(ys, bh, H), ys.t, q0, T, vec, true);
        for (int r = threadIdx.x; r < TILE; r += NT) {
            const bool in = q0 + r < T;
            L[r] = in ? lse[(long long)bh * T + q0 + r] * LOG2E : 0.f;
            Dot[r] = in ? dot[(long long)bh * T + q0 + r] : 0.f;
        }
        if (drop16 != 0) {                 // the float kernels' draws: thread (ty, tx) rows 4ty..4ty+3
            const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float z[8];
                drop_row(z, rng, drop16, dscale, q0 + 4 * ty + i, kt, tx, bh);
#pragma unroll
                for (int c = 0; c < 8; ++c) keep[(4 * ty + i) * TILE + tx + 8 * c] = z[c] != 0.f;
            }
        }
        __syncthreads();
        float st[TILE / 8][4], dpt[TILE / 8][4];
        mma_rows<D>(st, ka, Qs, g, t);      // S^T: keys x queries
        mma_rows<D>(dpt, va, dYs, g, t);    // dP^T
#pragma unroll
        for (int nb = 0; nb < TILE / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int hr = e >> 1, qc = nb * 8 + 2 * t + (e & 1);
                const float zv = drop16 == 0 ? 1.f : (keep[qc * TILE + kr[hr]] ? dscale : 0.f);
                const float p = visible(q0 + qc, key[hr], T, S, causal) ? exp2f(st[nb][e] * sl2 - L[qc]) : 0.f;
                st[nb][e] = p * (dpt[nb][e] * zv - Dot[qc]);   // dS^T
                dpt[nb][e] = p * zv;                           // (P z)^T
            }
        mma_tile<D>(dv_acc, dpt, dYt, g, t);   // dV += (P z)^T dY
        mma_tile<D>(dk_acc, st, Qt, g, t);     // dK += dS^T Q
    }
    store_fragments<D>(dk + base_of(ks, bh, H) + (long long)key[0] * ks.t, ks.t, dk_acc, scale,
                       key[0] < S, key[1] < S, t);
    store_fragments<D>(dv + base_of(vs, bh, H) + (long long)key[0] * vs.t, vs.t, dv_acc, 1.f,
                       key[0] < S, key[1] < S, t);
}

#if HEAD_DIM(32)
ATTENTION_KERNELS(32, _mma)
#endif
#if HEAD_DIM(64)
ATTENTION_KERNELS(64, _mma)
#endif
#if HEAD_DIM(128)
ATTENTION_KERNELS(128, _mma)
#endif
#endif
