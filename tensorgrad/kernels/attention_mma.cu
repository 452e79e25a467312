// Fused attention on tensor cores (bf16 only): attention.cu's algorithm with
// its tile products done by mma.sync (attention_common.cuh has the algorithm,
// attention.cu the float path a reader should read first).
#include "attention_mma.cuh"

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
// its product, as in any bf16 attention; S, O, m, l stay float32. Every tile
// sits in shared memory as it is in global memory (rows of D), and fragments
// are read with ldmatrix: four 8 x 8 blocks in one instruction, transposed on
// the way (.trans) where a product contracts over the tile's rows (P V, dS K,
// P^T dY, dS^T Q), so no tile is ever stored transposed.
// (mma.sync and ldmatrix in inline PTX: NVRTC with the pip CUDA headers has no
// crt/mma.h for the WMMA API.)

template <int D>
__device__ void attention_forward_mma_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                           const floatX* __restrict__ v, floatX* __restrict__ y, float* __restrict__ lse,
                                           Strides qs, Strides ks, Strides vs, Strides ys, int H, int T, int S,
                                           float scale, int causal, const unsigned int* rng, unsigned int drop16,
                                           float dscale, int vec) {
    constexpr int LH = D + 8;              // row stride of the tiles (bank-staggered: ldmatrix rows hit all banks)
    extern __shared__ __align__(16) float smem[];
    floatX* Qs = reinterpret_cast<floatX*>(smem);   // (64, LH)
    floatX* KV = Qs + TILE * LH;                     // two buffers of (K, V): (2, 2, 64, LH)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, q0 = blockIdx.x * TILE;
    const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};   // this lane's two query rows
    const float sl2 = scale * LOG2E;
    const int nkt = key_tiles(q0, T, S, causal);

    load_tile_async<D>(Qs, q, base_of(qs, bh, H), qs.t, q0, T, vec);
    cp_async_commit();
    load_tile_async<D>(KV, k, base_of(ks, bh, H), ks.t, 0, S, vec);          // key tile 0 into buffer 0
    load_tile_async<D>(KV + TILE * LH, v, base_of(vs, bh, H), vs.t, 0, S, vec);
    cp_async_commit();
    cp_async_wait_one();                   // Q has landed (the first K, V may still fly)
    __syncthreads();
    unsigned int qa[D / 16][4];            // this warp's Q rows as A fragments, one per 16 of D
    a_fragments<D>(qa, Qs, warp * 16, lane);
    float o[D / 8][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    for (int kt = 0; kt < nkt; ++kt) {
        const int k0 = kt * TILE;
        const floatX* Ks = KV + (kt & 1) * 2 * TILE * LH;
        const floatX* Vs = Ks + TILE * LH;
        if (kt + 1 < nkt) {                // the next K, V into the other buffer, read two steps ago
            floatX* next = KV + ((kt + 1) & 1) * 2 * TILE * LH;
            load_tile_async<D>(next, k, base_of(ks, bh, H), ks.t, k0 + TILE, S, vec);
            load_tile_async<D>(next + TILE * LH, v, base_of(vs, bh, H), vs.t, k0 + TILE, S, vec);
        }
        cp_async_commit();
        cp_async_wait_one();               // this tile's K, V have landed
        __syncthreads();
        float s[TILE / 8][4];              // S: 16 rows x 64 keys, as 8 C fragments
        mma_rows<D>(s, qa, Ks, lane);
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
            alpha[hr] = m_new == NEG_INF ? 1.f : exp2_ftz(m[hr] - m_new);
            m[hr] = m_new;
            l[hr] *= alpha[hr];
            float z[2][8];
            drop_row(z[0], rng, drop16, dscale, row[hr], kt, 2 * t, bh);
            drop_row(z[1], rng, drop16, dscale, row[hr], kt, 2 * t + 1, bh);
#pragma unroll
            for (int nb = 0; nb < TILE / 8; ++nb)
#pragma unroll
                for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
                    const float p = m_new == NEG_INF ? 0.f : exp2_ftz(s[nb][e] - m_new);
                    l[hr] += p;            // the normaliser counts every p, dropped or not
                    s[nb][e] = p * z[e & 1][nb];
                }
        }
        rescale<D>(o, alpha);
        mma_tile<D>(o, s, Vs, lane);       // O += P V
        __syncthreads();                   // every warp is done with this buffer before it is refilled
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr)
        store_output_row<D>(y + base_of(ys, bh, H) + (long long)row[hr] * ys.t + 2 * t, lse + (long long)bh * T + row[hr],
                            o, hr, m[hr], l[hr], row[hr] < T, t);
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
// Every tile is stored row-major once; the products that contract over the
// tile (dQ = dS K, dK = dS^T Q, dV = (P z)^T dY) read it with ldmatrix.trans.

template <int D>
__device__ void attention_backward_q_mma_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                              const floatX* __restrict__ v, const floatX* __restrict__ dy,
                                              const float* __restrict__ lse, const float* __restrict__ dot,
                                              floatX* __restrict__ dq, Strides qs, Strides ks, Strides vs, Strides ys,
                                              int H, int T, int S, float scale, int causal,
                                              const unsigned int* rng, unsigned int drop16, float dscale, int vec) {
    constexpr int LH = D + 8;
    extern __shared__ __align__(16) float smem[];
    floatX* Qs = reinterpret_cast<floatX*>(smem);   // (64, LH)
    floatX* dYs = Qs + TILE * LH;                    // (64, LH)
    floatX* KV = dYs + TILE * LH;                    // two buffers of (K, V): (2, 2, 64, LH)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, q0 = blockIdx.x * TILE;
    const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    const float sl2 = scale * LOG2E;
    const int nkt = key_tiles(q0, T, S, causal);
    load_tile_async<D>(Qs, q, base_of(qs, bh, H), qs.t, q0, T, vec);
    load_tile_async<D>(dYs, dy, base_of(ys, bh, H), ys.t, q0, T, vec);
    cp_async_commit();
    load_tile_async<D>(KV, k, base_of(ks, bh, H), ks.t, 0, S, vec);
    load_tile_async<D>(KV + TILE * LH, v, base_of(vs, bh, H), vs.t, 0, S, vec);
    cp_async_commit();
    cp_async_wait_one();
    __syncthreads();
    unsigned int qa[D / 16][4], ya[D / 16][4];
    a_fragments<D>(qa, Qs, warp * 16, lane);
    a_fragments<D>(ya, dYs, warp * 16, lane);
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
    for (int kt = 0; kt < nkt; ++kt) {
        const int k0 = kt * TILE;
        const floatX* Ks = KV + (kt & 1) * 2 * TILE * LH;
        const floatX* Vs = Ks + TILE * LH;
        if (kt + 1 < nkt) {
            floatX* next = KV + ((kt + 1) & 1) * 2 * TILE * LH;
            load_tile_async<D>(next, k, base_of(ks, bh, H), ks.t, k0 + TILE, S, vec);
            load_tile_async<D>(next + TILE * LH, v, base_of(vs, bh, H), vs.t, k0 + TILE, S, vec);
        }
        cp_async_commit();
        cp_async_wait_one();
        __syncthreads();
        float sv[TILE / 8][4], dp[TILE / 8][4];
        mma_rows<D>(sv, qa, Ks, lane);      // S
        mma_rows<D>(dp, ya, Vs, lane);      // dP (of the dropped p)
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
                    const float p = visible(row[hr], j, T, S, causal) ? exp2_ftz(sv[nb][e] * sl2 - l2[hr]) : 0.f;
                    sv[nb][e] = p * (dp[nb][e] * z[e & 1][nb] - dt[hr]);     // dS
                }
        }
        mma_tile<D>(acc, sv, Ks, lane);     // dQ += dS K
        __syncthreads();
    }
    floatX* out = dq + base_of(qs, bh, H) + (long long)row[0] * qs.t;
    store_fragments<D>(out, qs.t, acc, scale, row[0] < T, row[1] < T, t);
}

// The kv kernels' step to query tile qt (counted in QY's two buffers from `first`): start copying
// the next tile's Q and dY into the other buffer, and stage this tile's lse (in log2 units) and
// dot rows in shared memory (L, Dot). Returns this tile's Q buffer; its dY follows it.
template <int D>
__device__ __forceinline__ const floatX* query_tile_step(floatX* QY, float* L, float* Dot, const floatX* q,
                                                         const floatX* dy, const float* lse, const float* dot,
                                                         Strides qs, Strides ys, int bh, int H, int T, int first,
                                                         int qt, int nqt, int vec) {
    constexpr int LH = D + 8;
    const int q0 = qt * TILE;
    if (qt + 1 < nqt) {
        floatX* next = QY + ((qt + 1 - first) & 1) * 2 * TILE * LH;
        load_tile_async<D>(next, q, base_of(qs, bh, H), qs.t, q0 + TILE, T, vec);
        load_tile_async<D>(next + TILE * LH, dy, base_of(ys, bh, H), ys.t, q0 + TILE, T, vec);
    }
    cp_async_commit();
    for (int r = threadIdx.x; r < TILE; r += NT) {
        const bool in = q0 + r < T;
        L[r] = in ? lse[(long long)bh * T + q0 + r] * LOG2E : 0.f;
        Dot[r] = in ? dot[(long long)bh * T + q0 + r] : 0.f;
    }
    return QY + ((qt - first) & 1) * 2 * TILE * LH;
}

// WRITE_DS: also write dS^T (before the scale) to ds, (B*H, S, T) bf16, for the dQ kernel below.
template <int D, bool WRITE_DS = false>
__device__ void attention_backward_kv_mma_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                               const floatX* __restrict__ v, const floatX* __restrict__ dy,
                                               const float* __restrict__ lse, const float* __restrict__ dot,
                                               floatX* __restrict__ dk, floatX* __restrict__ dv,
                                               Strides qs, Strides ks, Strides vs, Strides ys,
                                               int H, int T, int S, float scale, int causal, const unsigned int* rng,
                                               unsigned int drop16, float dscale, int vec, floatX* __restrict__ ds = nullptr) {
    constexpr int LH = D + 8;
    extern __shared__ __align__(16) float smem[];
    floatX* Ks = reinterpret_cast<floatX*>(smem);   // (64, LH): this block's keys
    floatX* Vs = Ks + TILE * LH;                     // (64, LH)
    floatX* QY = Vs + TILE * LH;                     // two buffers of the query tile's (Q, dY): (2, 2, 64, LH)
    float* L = reinterpret_cast<float*>(QY + 4 * TILE * LH);   // (64): lse of the query tile, in log2 units
    float* Dot = L + TILE;                           // (64)
    unsigned char* keep = reinterpret_cast<unsigned char*>(Dot + TILE);   // (64 queries, 64 keys)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, kt = blockIdx.x, k0 = kt * TILE;
    const int key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};   // this lane's two keys
    const int kr[2] = {warp * 16 + g, warp * 16 + g + 8};              // ... in the tile
    const float sl2 = scale * LOG2E;
    const int first = causal ? max(0, k0 - (S - T)) / TILE : 0;   // the first query row that sees key k0
    const int nqt = (T + TILE - 1) / TILE;
    load_tile_async<D>(Ks, k, base_of(ks, bh, H), ks.t, k0, S, vec);
    load_tile_async<D>(Vs, v, base_of(vs, bh, H), vs.t, k0, S, vec);
    cp_async_commit();
    load_tile_async<D>(QY, q, base_of(qs, bh, H), qs.t, first * TILE, T, vec);
    load_tile_async<D>(QY + TILE * LH, dy, base_of(ys, bh, H), ys.t, first * TILE, T, vec);
    cp_async_commit();
    cp_async_wait_one();
    __syncthreads();
    unsigned int ka[D / 16][4], va[D / 16][4];
    a_fragments<D>(ka, Ks, warp * 16, lane);
    a_fragments<D>(va, Vs, warp * 16, lane);
    float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) { dk_acc[n][e] = 0.f; dv_acc[n][e] = 0.f; }
    for (int qt = first; qt < nqt; ++qt) {
        const int q0 = qt * TILE;
        const floatX* Qs = query_tile_step<D>(QY, L, Dot, q, dy, lse, dot, qs, ys, bh, H, T, first, qt, nqt, vec);
        const floatX* dYs = Qs + TILE * LH;
        if (DROPOUT_ON(drop16)) {                 // the float kernels' draws: thread (ty, tx) rows 4ty..4ty+3
            const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float z[8];
                drop_row(z, rng, drop16, dscale, q0 + 4 * ty + i, kt, tx, bh);
#pragma unroll
                for (int c = 0; c < 8; ++c) keep[(4 * ty + i) * TILE + tx + 8 * c] = z[c] != 0.f;
            }
        }
        cp_async_wait_one();               // this query tile's Q, dY have landed
        __syncthreads();
        float st[TILE / 8][4], dpt[TILE / 8][4];
        mma_rows<D>(st, ka, Qs, lane);      // S^T: keys x queries
        mma_rows<D>(dpt, va, dYs, lane);    // dP^T
#pragma unroll
        for (int nb = 0; nb < TILE / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int hr = e >> 1, qc = nb * 8 + 2 * t + (e & 1);
                const float zv = !DROPOUT_ON(drop16) ? 1.f : (keep[qc * TILE + kr[hr]] ? dscale : 0.f);
                const float p = visible(q0 + qc, key[hr], T, S, causal) ? exp2_ftz(st[nb][e] * sl2 - L[qc]) : 0.f;
                st[nb][e] = p * (dpt[nb][e] * zv - Dot[qc]);   // dS^T
                dpt[nb][e] = p * zv;                           // (P z)^T
            }
        if (WRITE_DS) {                        // this lane's two keys, queries 2t, 2t + 1 of each 8-block
#pragma unroll
            for (int hr = 0; hr < 2; ++hr)
                if (key[hr] < S)
                    store_ds_row(ds + ((long long)bh * S + key[hr]) * T + q0 + 2 * t, st, hr, q0 + 2 * t, T);
        }
        mma_tile<D>(dv_acc, dpt, dYs, lane);   // dV += (P z)^T dY
        mma_tile<D>(dk_acc, st, Qs, lane);     // dK += dS^T Q
        __syncthreads();                       // L, Dot, keep and this buffer are refilled next
    }
    store_fragments<D>(dk + base_of(ks, bh, H) + (long long)key[0] * ks.t, ks.t, dk_acc, scale,
                       key[0] < S, key[1] < S, t);
    store_fragments<D>(dv + base_of(vs, bh, H) + (long long)key[0] * vs.t, vs.t, dv_acc, 1.f,
                       key[0] < S, key[1] < S, t);
}

// ------------------------------------------ dQ from a stored dS (bf16, when it fits)
// The q kernel above recomputes S, P and dP to get dS: three tile products for one.
// When (B*H, S, T) bf16 fits in memory, the kv kernel writes dS^T as it goes
// (attention_backward_kvs_mma) and this kernel does only dQ = dS K * scale: per key
// tile, the stored dS^T tile (keys x queries) read with ldmatrix.trans as the A
// operand, K as in the q kernel. Both tiles double-buffered with cp.async.

// a (64, 64 + 8) dS^T tile: keys [k0, k0 + 64) x queries [q0, q0 + 64) of ds (rows of T);
// zeros past S or T. vec: T % 8 == 0, so 16-byte chunks never straddle T.
__device__ __forceinline__ void load_ds_tile(floatX* tile, const floatX* ds, long long base, int k0, int q0, int S,
                                             int T, bool vec) {
    constexpr int LD = TILE + 8;
    if (vec) {
        for (int e = threadIdx.x; e < TILE * TILE / 8; e += NT) {
            const int r = e / (TILE / 8), c = e % (TILE / 8) * 8;
            const bool in = k0 + r < S && q0 + c < T;
            cp_async16(tile + r * LD + c, in ? ds + base + (long long)(k0 + r) * T + q0 + c : ds, in);
        }
    } else {
        for (int e = threadIdx.x; e < TILE * TILE; e += NT) {
            const int r = e / TILE, c = e % TILE;
            const bool in = k0 + r < S && q0 + c < T;
            tile[r * LD + c] = in ? ds[base + (long long)(k0 + r) * T + q0 + c] : __float2bfloat16_rn(0.f);
        }
    }
}

template <int D>
__device__ void attention_backward_dq_mma_body(const floatX* __restrict__ k, const floatX* __restrict__ ds,
                                               floatX* __restrict__ dq, Strides qs, Strides ks, int H, int T, int S,
                                               float scale, int causal, int vec) {
    constexpr int LH = D + 8, LD = TILE + 8;
    extern __shared__ __align__(16) float smem[];
    floatX* buf = reinterpret_cast<floatX*>(smem);  // two buffers of (K (64, LH), dS^T (64, LD))
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, q0 = blockIdx.x * TILE;
    const int row0 = q0 + warp * 16 + g;
    const long long dbase = (long long)bh * S * T;
    const bool dvec = (T & 7) == 0;
    const int nkt = key_tiles(q0, T, S, causal);
    constexpr int STEP = TILE * LH + TILE * LD;
    load_tile_async<D>(buf, k, base_of(ks, bh, H), ks.t, 0, S, vec);
    load_ds_tile(buf + TILE * LH, ds, dbase, 0, q0, S, T, dvec);
    cp_async_commit();
    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    for (int kt = 0; kt < nkt; ++kt) {
        const floatX* Ks = buf + (kt & 1) * STEP;
        const floatX* dSt = Ks + TILE * LH;
        if (kt + 1 < nkt) {
            floatX* next = buf + ((kt + 1) & 1) * STEP;
            load_tile_async<D>(next, k, base_of(ks, bh, H), ks.t, (kt + 1) * TILE, S, vec);
            load_ds_tile(next + TILE * LH, ds, dbase, (kt + 1) * TILE, q0, S, T, dvec);
        }
        cp_async_commit();
        cp_async_wait_one();
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE / 16; ++kk) {
            // A = dS rows (this warp's 16 queries) x keys kk*16.. : the transpose of dS^T's blocks
            // (blocks: keys +0 / queries +0, keys +0 / queries +8, keys +8 / queries +0, keys +8 / queries +8)
            unsigned int a[4];
            const int blk = lane / 8;
            ldsm4_trans(a, dSt + (kk * 16 + lane % 8 + 8 * (blk / 2)) * LD + warp * 16 + 8 * (blk % 2));
            mma_step<D>(acc, a, Ks, kk, lane);    // dQ += dS K
        }
        __syncthreads();
    }
    store_fragments<D>(dq + base_of(qs, bh, H) + (long long)row0 * qs.t, qs.t, acc, scale, row0 < T, row0 + 8 < T, t);
}

// ------------------------------------- 32 rows a warp: the "warp32" kernels (bf16)
// The kernels above give each warp 16 rows, so every B fragment ldmatrix reads from
// shared memory feeds two mma.sync: on an H100/H200, shared-memory bandwidth, not the
// tensor cores, then bounds them (about 100 TFLOP/s). These give each warp 32 rows,
// two m16 row tiles that share every B fragment (mma_rows / mma_step with R = 2), so
// ldmatrix per mma.sync halves; a block of 4 warps owns 128 rows. The algorithm, the
// dropout draws and every sum's order are the 16-row kernels': only which warp computes
// what changes. Head sizes 32 and 64 (D = 128 would need more than 255 registers a thread:
// it keeps the 16-row kernels).
//
// Causal blocks skip what they cannot see and test only what crosses the diagonal: a warp
// sorts each tile into nothing visible (skipped), everything visible (the step without a
// per-element test) or mixed (the step with the test), one template (MASKED) called from
// two places, so the loop body is compiled twice, not unrolled into more copies.

// Forward, one key tile for a warp's 32 query rows. Row r = 0..3 of a lane is row g + 8 (r % 2)
// of row tile r / 2 (fragment elements 2 (r % 2) and 2 (r % 2) + 1); m, l as in the 16-row kernel.
template <int D, bool MASKED>
__device__ __forceinline__ void forward_tile_warp32(float (&o)[2][D / 8][4], float (&m)[4], float (&l)[4],
                                                    const unsigned int (&qa)[2][D / 16][4], const floatX* Ks,
                                                    const floatX* Vs, const int (&row)[4], const int (&last)[4],
                                                    int kt, float sl2, const unsigned int* rng, unsigned int drop16,
                                                    float dscale, int bh, int lane) {
    const int t = lane & 3;
    float s[2][TILE / 8][4];               // S: two row tiles x 64 keys
    mma_rows<D, 2, TILE / 8>(s, qa, Ks, 0, lane);
    float alpha[2][2];                     // row tile mi, row hr
#pragma unroll
    for (int r = 0; r < 4; ++r)
        alpha[r >> 1][r & 1] = softmax_row<MASKED>(s[r >> 1], r & 1, m[r], l[r], row[r], last[r], kt, sl2, rng, drop16,
                                                   dscale, bh, t);
    rescale<D>(o[0], alpha[0]);
    rescale<D>(o[1], alpha[1]);
    mma_tile<D, 2>(o, s, Vs, lane);        // O += P V
}

template <int D>
__device__ void attention_forward_warp32_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                              const floatX* __restrict__ v, floatX* __restrict__ y,
                                              float* __restrict__ lse, Strides qs, Strides ks, Strides vs, Strides ys,
                                              int H, int T, int S, float scale, int causal, const unsigned int* rng,
                                              unsigned int drop16, float dscale, int vec) {
    constexpr int LH = D + 8, BQ = 2 * TILE;   // a block's 128 queries
    extern __shared__ __align__(16) float smem[];
    floatX* Qs = reinterpret_cast<floatX*>(smem);   // (128, LH)
    floatX* KV = Qs + BQ * LH;                       // two buffers of (K, V): (2, 2, 64, LH)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    // causal: the last query blocks see the most keys; they start first so the short ones fill the tail
    const int bh = blockIdx.y, q0 = (gridDim.x - 1 - blockIdx.x) * BQ;
    const int w0 = q0 + 32 * warp;                  // this warp's first query row
    const int row[4] = {w0 + g, w0 + g + 8, w0 + 16 + g, w0 + 24 + g};
    const int last[4] = {last_key(row[0], T, S, causal), last_key(row[1], T, S, causal),
                         last_key(row[2], T, S, causal), last_key(row[3], T, S, causal)};
    const float sl2 = scale * LOG2E;
    // key_tiles(x, ..) counts the key tiles row x + 63 sees: the block's last row is q0 + 127, the warp's w0 + 31
    const int nkt = key_tiles(q0 + TILE, T, S, causal);
    // this warp's key tiles: [0, full) visible to all its rows, [full, mine) partly, none past mine
    const int mine = w0 < T ? key_tiles(w0 - 32, T, S, causal) : 0;
    const int full = min(mine, (causal ? min(S, w0 + 1 + (S - T)) : S) / TILE);

    load_tile_async<D>(Qs, q, base_of(qs, bh, H), qs.t, q0, T, vec);
    load_tile_async<D>(Qs + TILE * LH, q, base_of(qs, bh, H), qs.t, q0 + TILE, T, vec);
    cp_async_commit();
    load_tile_async<D>(KV, k, base_of(ks, bh, H), ks.t, 0, S, vec);
    load_tile_async<D>(KV + TILE * LH, v, base_of(vs, bh, H), vs.t, 0, S, vec);
    cp_async_commit();
    cp_async_wait_one();
    __syncthreads();
    unsigned int qa[2][D / 16][4];         // this warp's two row tiles of Q as A fragments
    a_fragments<D>(qa[0], Qs, 32 * warp, lane);
    a_fragments<D>(qa[1], Qs, 32 * warp + 16, lane);
    float o[2][D / 8][4], m[4] = {NEG_INF, NEG_INF, NEG_INF, NEG_INF}, l[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int n = 0; n < D / 8; ++n) o[mi][n][0] = o[mi][n][1] = o[mi][n][2] = o[mi][n][3] = 0.f;
    for (int kt = 0; kt < nkt; ++kt) {
        const floatX* Ks = KV + (kt & 1) * 2 * TILE * LH;
        const floatX* Vs = Ks + TILE * LH;
        if (kt + 1 < nkt) {
            floatX* next = KV + ((kt + 1) & 1) * 2 * TILE * LH;
            load_tile_async<D>(next, k, base_of(ks, bh, H), ks.t, (kt + 1) * TILE, S, vec);
            load_tile_async<D>(next + TILE * LH, v, base_of(vs, bh, H), vs.t, (kt + 1) * TILE, S, vec);
        }
        cp_async_commit();
        cp_async_wait_one();
        __syncthreads();
        if (kt < full)
            forward_tile_warp32<D, false>(o, m, l, qa, Ks, Vs, row, last, kt, sl2, rng, drop16, dscale, bh, lane);
        else if (kt < mine)
            forward_tile_warp32<D, true>(o, m, l, qa, Ks, Vs, row, last, kt, sl2, rng, drop16, dscale, bh, lane);
        __syncthreads();                   // every warp is done with this buffer before it is refilled
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
        store_output_row<D>(y + base_of(ys, bh, H) + (long long)row[r] * ys.t + 2 * t, lse + (long long)bh * T + row[r],
                            o[r >> 1], r & 1, m[r], l[r], row[r] < T, t);
}

// Backward (kv, writing dS^T), one step: a warp's 32 keys against 16 queries [qr, qr + 16) of the
// query tile: S^T and dP^T (32 x 16, each Q / dY fragment shared by the two key row tiles), dS^T
// and (P z)^T in place, dS^T to ds, then dV += (P z)^T dY, dK += dS^T Q (each dY / Q fragment
// again shared). Registers (D = 64): dK and dV take 128, K's fragments 32; V's are read again
// each step (8 ldmatrix beside the step's 16), since keeping them too spills: 24 ldmatrix for 64
// mma.sync, where the 16-key kernel needs 32. Key row r = 0..3 of a lane as in the forward.
template <int D, bool MASKED>
__device__ __forceinline__ void kvs_step_warp32(float (&dk)[2][D / 8][4], float (&dv)[2][D / 8][4],
                                                const unsigned int (&ka)[2][D / 16][4], const floatX* Vs,
                                                const floatX* Qs, const floatX* dYs, const float* L,
                                                const float* Dot, const unsigned char* keep, int qr, int q0,
                                                const int (&key)[4], int kw, int T, int S, bool causal, float sl2,
                                                unsigned int drop16, float dscale, floatX* __restrict__ ds, int bh,
                                                int lane) {
    const int g = lane >> 2, t = lane & 3;
    float st[2][2][4], dpt[2][2][4];       // S^T, dP^T: two key row tiles x 16 queries
    mma_rows<D, 2, 2>(st, ka, Qs, qr, lane);
    unsigned int va[2][D / 16][4];
    a_fragments<D>(va[0], Vs, kw, lane);
    a_fragments<D>(va[1], Vs, kw + 16, lane);
    mma_rows<D, 2, 2>(dpt, va, dYs, qr, lane);
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int nb = 0; nb < 2; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = 2 * mi + (e >> 1), qc = qr + nb * 8 + 2 * t + (e & 1);
                const int kr = kw + 16 * mi + 8 * (e >> 1) + g;   // the key's column of keep
                const float zv = !DROPOUT_ON(drop16) ? 1.f : (keep[qc * 2 * TILE + kr] ? dscale : 0.f);
                const float p = MASKED && !visible(q0 + qc, key[r], T, S, causal) ? 0.f
                                                                                  : exp2_ftz(st[mi][nb][e] * sl2 - L[qc]);
                st[mi][nb][e] = p * (dpt[mi][nb][e] * zv - Dot[qc]);   // dS^T
                dpt[mi][nb][e] = p * zv;                                // (P z)^T
            }
#pragma unroll
    for (int r = 0; r < 4; ++r)
        if (key[r] < S)
            store_ds_row(ds + ((long long)bh * S + key[r]) * T + q0 + qr + 2 * t, st[r >> 1], r & 1,
                         q0 + qr + 2 * t, T);
    unsigned int pa[2][4];
    c_to_a(pa[0], dpt[0][0], dpt[0][1]);
    c_to_a(pa[1], dpt[1][0], dpt[1][1]);
    mma_step<D, 2>(dv, pa, dYs, qr / 16, lane);   // dV += (P z)^T dY
    c_to_a(pa[0], st[0][0], st[0][1]);
    c_to_a(pa[1], st[1][0], st[1][1]);
    mma_step<D, 2>(dk, pa, Qs, qr / 16, lane);    // dK += dS^T Q
}

template <int D>
__device__ void attention_backward_kvs_warp32_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                                   const floatX* __restrict__ v, const floatX* __restrict__ dy,
                                                   const float* __restrict__ lse, const float* __restrict__ dot,
                                                   floatX* __restrict__ dk, floatX* __restrict__ dv, Strides qs,
                                                   Strides ks, Strides vs, Strides ys, int H, int T, int S,
                                                   float scale, int causal, const unsigned int* rng,
                                                   unsigned int drop16, float dscale, int vec,
                                                   floatX* __restrict__ ds) {
    constexpr int LH = D + 8, BK = 2 * TILE;   // a block's 128 keys: key tiles 2 blockIdx.x and 2 blockIdx.x + 1
    extern __shared__ __align__(16) float smem[];
    floatX* Ks = reinterpret_cast<floatX*>(smem);   // (128, LH): this block's keys
    floatX* Vs = Ks + BK * LH;                       // (128, LH)
    floatX* QY = Vs + BK * LH;                       // two buffers of the query tile's (Q, dY): (2, 2, 64, LH)
    float* L = reinterpret_cast<float*>(QY + 4 * TILE * LH);   // (64): lse of the query tile, in log2 units
    float* Dot = L + TILE;                           // (64)
    unsigned char* keep = reinterpret_cast<unsigned char*>(Dot + TILE);   // (64 queries, 128 keys)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, k0 = blockIdx.x * BK;
    const int kw = 32 * warp;                       // this warp's first key, in the block
    const int key[4] = {k0 + kw + g, k0 + kw + g + 8, k0 + kw + 16 + g, k0 + kw + 24 + g};
    const float sl2 = scale * LOG2E;
    const int first = causal ? max(0, k0 - (S - T)) / TILE : 0;   // the first query tile that sees key k0
    const int nqt = (T + TILE - 1) / TILE;
    load_tile_async<D>(Ks, k, base_of(ks, bh, H), ks.t, k0, S, vec);
    load_tile_async<D>(Ks + TILE * LH, k, base_of(ks, bh, H), ks.t, k0 + TILE, S, vec);
    load_tile_async<D>(Vs, v, base_of(vs, bh, H), vs.t, k0, S, vec);
    load_tile_async<D>(Vs + TILE * LH, v, base_of(vs, bh, H), vs.t, k0 + TILE, S, vec);
    cp_async_commit();
    load_tile_async<D>(QY, q, base_of(qs, bh, H), qs.t, first * TILE, T, vec);
    load_tile_async<D>(QY + TILE * LH, dy, base_of(ys, bh, H), ys.t, first * TILE, T, vec);
    cp_async_commit();
    cp_async_wait_one();
    __syncthreads();
    unsigned int ka[2][D / 16][4];         // this warp's two key row tiles of K as A fragments
    a_fragments<D>(ka[0], Ks, kw, lane);
    a_fragments<D>(ka[1], Ks, kw + 16, lane);
    float dk_acc[2][D / 8][4], dv_acc[2][D / 8][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) { dk_acc[mi][n][e] = 0.f; dv_acc[mi][n][e] = 0.f; }
    const int wk0 = k0 + kw, wk1 = min(S, wk0 + 32) - 1;   // this warp's keys (wk1 < wk0: none)
    for (int qt = first; qt < nqt; ++qt) {
        const int q0 = qt * TILE;
        const floatX* Qs = query_tile_step<D>(QY, L, Dot, q, dy, lse, dot, qs, ys, bh, H, T, first, qt, nqt, vec);
        const floatX* dYs = Qs + TILE * LH;
        if (DROPOUT_ON(drop16)) {                 // the float kernels' draws, for both key tiles of the block
            const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    float z[8];
                    drop_row(z, rng, drop16, dscale, q0 + 4 * ty + i, 2 * blockIdx.x + h, tx, bh);
#pragma unroll
                    for (int c = 0; c < 8; ++c) keep[(4 * ty + i) * BK + h * TILE + tx + 8 * c] = z[c] != 0.f;
                }
        }
        cp_async_wait_one();
        __syncthreads();
#pragma unroll 1
        for (int qr = 0; qr < TILE; qr += 16) {
            const int qa = q0 + qr;        // queries [qa, qa + 16) against keys [wk0, wk1]
            if (wk1 < wk0 || (causal && wk0 > qa + 15 + (S - T))) {
                // nothing visible; the dQ kernel may still read these dS^T entries: zeros
                const float zero[2][4] = {};
#pragma unroll
                for (int r = 0; r < 4; ++r)
                    if (key[r] < S)
                        store_ds_row(ds + ((long long)bh * S + key[r]) * T + qa + 2 * t, zero, r & 1, qa + 2 * t, T);
            } else if (wk1 == wk0 + 31 && qa + 15 < T && (!causal || wk1 <= qa + (S - T))) {
                kvs_step_warp32<D, false>(dk_acc, dv_acc, ka, Vs, Qs, dYs, L, Dot, keep, qr, q0, key, kw, T, S,
                                          causal, sl2, drop16, dscale, ds, bh, lane);
            } else {
                kvs_step_warp32<D, true>(dk_acc, dv_acc, ka, Vs, Qs, dYs, L, Dot, keep, qr, q0, key, kw, T, S,
                                         causal, sl2, drop16, dscale, ds, bh, lane);
            }
        }
        __syncthreads();                   // L, Dot, keep and this buffer are refilled next
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
        const int r = 2 * mi;
        store_fragments<D>(dk + base_of(ks, bh, H) + (long long)key[r] * ks.t, ks.t, dk_acc[mi], scale,
                           key[r] < S, key[r + 1] < S, t);
        store_fragments<D>(dv + base_of(vs, bh, H) + (long long)key[r] * vs.t, vs.t, dv_acc[mi], 1.f,
                           key[r] < S, key[r + 1] < S, t);
    }
}

#define ATTENTION_WARP32_KERNELS(D)                                                                            \
extern "C" __global__ void __launch_bounds__(NT) attention_forward_warp32_##D(                                 \
        const floatX* q, const floatX* k, const floatX* v, floatX* y, float* lse, STRIDE_PARAMS, int H, int T, \
        int S, float scale, int causal, const unsigned int* rng, unsigned int drop16, float dscale, int vec) { \
    attention_forward_warp32_body<D>(q, k, v, y, lse, STRIDES, H, T, S, scale, causal, rng, drop16, dscale,   \
                                     vec);                                                                     \
}                                                                                                              \
extern "C" __global__ void __launch_bounds__(NT) attention_backward_kvs_warp32_##D(                            \
        const floatX* q, const floatX* k, const floatX* v, const floatX* dy, const float* lse,                 \
        const float* dot, floatX* dk, floatX* dv, STRIDE_PARAMS, int H, int T, int S, float scale, int causal,  \
        const unsigned int* rng, unsigned int drop16, float dscale, int vec, floatX* ds) {                     \
    attention_backward_kvs_warp32_body<D>(q, k, v, dy, lse, dot, dk, dv, STRIDES, H, T, S, scale, causal, rng, \
                                          drop16, dscale, vec, ds);                                            \
}

#if HEAD_DIM(32)
ATTENTION_WARP32_KERNELS(32)
#endif
#if HEAD_DIM(64)
ATTENTION_WARP32_KERNELS(64)
#endif

#define ATTENTION_DS_KERNELS(D)                                                                                \
extern "C" __global__ void __launch_bounds__(NT) attention_backward_kvs_mma_##D(                               \
        const floatX* q, const floatX* k, const floatX* v, const floatX* dy, const float* lse,                 \
        const float* dot, floatX* dk, floatX* dv, STRIDE_PARAMS, int H, int T, int S, float scale, int causal,  \
        const unsigned int* rng, unsigned int drop16, float dscale, int vec, floatX* ds) {                     \
    attention_backward_kv_mma_body<D, true>(q, k, v, dy, lse, dot, dk, dv, STRIDES, H, T, S, scale, causal,   \
                                            rng, drop16, dscale, vec, ds);                                     \
}                                                                                                              \
extern "C" __global__ void __launch_bounds__(NT) attention_backward_dq_mma_##D(                                \
        const floatX* k, const floatX* ds, floatX* dq, long long qb, long long qh, long long qt, long long kb,  \
        long long kh, long long kt, int H, int T, int S, float scale, int causal, int vec) {                    \
    attention_backward_dq_mma_body<D>(k, ds, dq, Strides{qb, qh, qt}, Strides{kb, kh, kt}, H, T, S, scale,    \
                                      causal, vec);                                                            \
}

#if HEAD_DIM(32)
ATTENTION_DS_KERNELS(32)
#endif
#if HEAD_DIM(64)
ATTENTION_DS_KERNELS(64)
#endif
#if HEAD_DIM(128)
ATTENTION_DS_KERNELS(128)
#endif

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
