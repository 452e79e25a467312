// Fused attention on Hopper's warpgroup tensor cores (wgmma, sm_90a), bf16, head size 64: the
// forward, the kv backward that stores dS^T, and dQ from it.
//
// attention_mma.cu's warp16 kernels with their tile products moved from mma.sync to wgmma:
// four warps (a warpgroup) issue one asynchronous product over 64 rows together, its B operand
// (K for S = Q K^T, V for O += P V, ...) read by the tensor cores straight from shared memory,
// so no warp spends instructions on ldmatrix for it. The online softmax, the causal
// and dropout rules and the register layout of S, P and O are the mma.sync kernels': the
// accumulator of wgmma m64nNk16 gives warp w of the warpgroup rows 16w..16w+15 in the m16n8
// C-fragment layout, N / 8 fragments side by side, and P goes back in as the A operand from
// registers in the m16k16 A layout, exactly as c_to_a builds it for mma.sync.
//
// Shared memory: tiles of 64 bf16 a row (128 bytes) in the 128-byte swizzle the tensor cores
// read: the 16-byte chunk c of row r sits at chunk c ^ (r % 8), so the eight rows of a group
// spread over all banks. A matrix descriptor (wgmma_desc) tells wgmma where a tile starts, the
// 1024 bytes between groups of eight rows, and the swizzle. Q and K are K-major operands (the
// 64 values a product sums over are a row); V is read MN-major (transposed), since O = P V
// sums over V's rows.
//
// Only the GPU of compute capability 9.0 runs this: the loader builds it for sm_90a alone
// (wgmma is an sm_90a instruction), and attention.py falls back to attention_mma.cu's kernels
// on any other GPU, head size, dtype, or rows not on 16 bytes.
#include "attention_mma.cuh"

#ifdef TG_BF16
// -------------------------------------------------------------- wgmma building blocks
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// shared memory written by threads (cp.async, st.shared) made visible to the tensor cores' reads
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// An accumulator is written by the tensor cores between a wgmma and its wait: this empty asm
// "reads and writes" each register, so the compiler moves no use of it across the wait.
template <int N>
__device__ __forceinline__ void hold(float (&c)[N][4]) {
#pragma unroll
    for (int n = 0; n < N; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(c[n][e])::"memory");
}
// An A operand in registers is read by the tensor cores until the wait too: the compiler, which
// sees the wgmma take it at issue, could reuse its registers for other values before then. This
// empty asm after the wait keeps the operand alive, and its registers untouched, until there.
__device__ __forceinline__ void hold(unsigned int (&a)[4][4]) {
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[n][e])::"memory");
}

// The descriptor of a tile at shared address `addr` (1024-byte aligned, or that plus a step along
// a row): 128-byte swizzle (bits 62-63 = 1), 1024 bytes between groups of eight rows (stride,
// bits 32-45, in 16-byte units). The leading offset (bits 16-29) is unused for these tiles (a
// K-major row holds the 16 values of a step; an MN-major tile is one 64-wide block): 1024 too.
__device__ __forceinline__ unsigned long long wgmma_desc(unsigned int addr) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)(1024 >> 4) << 16) |
           ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

#define WG_C32(c)                                                                                              \
    "+f"(c[0][0]), "+f"(c[0][1]), "+f"(c[0][2]), "+f"(c[0][3]), "+f"(c[1][0]), "+f"(c[1][1]), "+f"(c[1][2]),    \
    "+f"(c[1][3]), "+f"(c[2][0]), "+f"(c[2][1]), "+f"(c[2][2]), "+f"(c[2][3]), "+f"(c[3][0]), "+f"(c[3][1]),    \
    "+f"(c[3][2]), "+f"(c[3][3]), "+f"(c[4][0]), "+f"(c[4][1]), "+f"(c[4][2]), "+f"(c[4][3]), "+f"(c[5][0]),    \
    "+f"(c[5][1]), "+f"(c[5][2]), "+f"(c[5][3]), "+f"(c[6][0]), "+f"(c[6][1]), "+f"(c[6][2]), "+f"(c[6][3]),    \
    "+f"(c[7][0]), "+f"(c[7][1]), "+f"(c[7][2]), "+f"(c[7][3])
#define WG_D32                                                                                                 \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                  \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"

// c (64 x 64 over the warpgroup; this warp's 16 rows as 8 C fragments) (+)= A B, A (64 x 16) and
// B (16 x 64) both from shared memory, K-major (TA, TB = 0) or MN-major (1: the tile's rows are
// the 16 values summed over). acc = 0: c = A B (the first step of a product).
template <int TA = 0, int TB = 0>
__device__ __forceinline__ void wgmma_ss(float (&c)[8][4], unsigned long long a, unsigned long long b, int acc) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_D32 ", %32, %33, p, 1, 1, %35, %36;\n}\n"
                 : WG_C32(c)
                 : "l"(a), "l"(b), "r"(acc), "n"(TA), "n"(TB));
}

// c += A B, A (64 x 16) from registers (this warp's 16 rows, the m16k16 A fragment), B (16 x 64)
// from shared memory, MN-major (its rows are the 16 values summed over: transposed, trans-b = 1).
__device__ __forceinline__ void wgmma_rs(float (&c)[8][4], const unsigned int (&a)[4], unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_D32 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : WG_C32(c)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

// rows [row0, row0 + 64) of a (.., rows, 64) bf16 operand into a swizzled (64, 64) tile, by cp.async
// (rows start on 16 bytes: the host's condition); zeros past n_rows.
__device__ __forceinline__ void load_tile_sw128(unsigned char* tile, const floatX* g, long long base, long long st,
                                                int row0, int n_rows) {
    for (int e = threadIdx.x; e < TILE * 8; e += NT) {
        const int r = e >> 3, c = e & 7;
        const bool in = row0 + r < n_rows;
        cp_async16(reinterpret_cast<floatX*>(tile + r * 128 + ((c ^ (r & 7)) << 4)),
                   in ? g + base + (long long)(row0 + r) * st + c * 8 : g, in);
    }
}

// ------------------------------------------------------------------------ forward
// One key tile (64 keys) for a warpgroup's 64 query rows; a lane holds rows row[0] = 16 w + g and
// row[1] = row[0] + 8 of them (w: the warp in the warpgroup), as the warp16 kernel. MASKED: the
// tile crosses the causal diagonal or the end of the keys (last[]: last_key of each row).
template <bool MASKED>
__device__ __forceinline__ void forward_tile_wgmma(float (&o)[8][4], float (&m)[2], float (&l)[2],
                                                   unsigned int q_addr, unsigned int k_addr, unsigned int v_addr,
                                                   const int (&row)[2], const int (&last)[2], int kt, float sl2,
                                                   const unsigned int* rng, unsigned int drop16, float dscale,
                                                   int bh, int t) {
    float s[8][4];                         // S: this warp's 16 rows x 64 keys
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)         // 16 of the head's 64 values a step: 32 bytes along each row
        wgmma_ss(s, wgmma_desc(q_addr + 32 * kk), wgmma_desc(k_addr + 32 * kk), kk);
    wgmma_commit();
    wgmma_wait_all();
    hold(s);
    float alpha[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr)         // element e of a fragment: row hr = e / 2, key 2t + e % 2
        alpha[hr] = softmax_row<MASKED>(s, hr, m[hr], l[hr], row[hr], last[hr], kt, sl2, rng, drop16, dscale, bh, t);
    rescale<64>(o, alpha);
    unsigned int pa[4][4];                 // P (bf16) as the A operand, 16 keys a step
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) c_to_a(pa[kk], s[2 * kk], s[2 * kk + 1]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)         // O += P V: keys 16 kk.. are V's rows 16 kk..: 2048 bytes a step
        wgmma_rs(o, pa[kk], wgmma_desc(v_addr + 2048 * kk));
    wgmma_commit();
    wgmma_wait_all();
    hold(o);
    hold(pa);
}

// A block is one warpgroup: 64 query rows.
__device__ void attention_forward_wgmma_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                             const floatX* __restrict__ v, floatX* __restrict__ y,
                                             float* __restrict__ lse, Strides qs, Strides ks, Strides vs, Strides ys,
                                             int H, int T, int S, float scale, int causal, const unsigned int* rng,
                                             unsigned int drop16, float dscale) {
    constexpr int TB = TILE * 128;         // bytes a tile
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    // the swizzle pattern repeats every 1024 bytes: tiles start on 1024 (the host adds 1 KiB of room)
    unsigned char* smem = smem_raw + ((1024 - (smem_address(smem_raw) & 1023)) & 1023);
    unsigned char* Qs = smem;              // (64, 64)
    unsigned char* KV = smem + TB;         // two buffers of (K, V): (2, 2, 64, 64)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    // causal: the last query blocks see the most keys; they start first so the short ones fill the tail
    const int bh = blockIdx.y, q0 = (gridDim.x - 1 - blockIdx.x) * TILE;
    const int row[2] = {q0 + 16 * warp + g, q0 + 16 * warp + g + 8};
    const int last[2] = {last_key(row[0], T, S, causal), last_key(row[1], T, S, causal)};
    const float sl2 = scale * LOG2E;
    // key tiles [0, full) are visible to all the block's rows, [full, nkt) partly
    const int nkt = key_tiles(q0, T, S, causal);
    const int full = min(nkt, (causal ? min(S, q0 + 1 + (S - T)) : S) / TILE);

    load_tile_sw128(Qs, q, base_of(qs, bh, H), qs.t, q0, T);
    load_tile_sw128(KV, k, base_of(ks, bh, H), ks.t, 0, S);
    load_tile_sw128(KV + TB, v, base_of(vs, bh, H), vs.t, 0, S);
    cp_async_commit();
    const unsigned int q_addr = smem_address(Qs), kv_addr = smem_address(KV);
    float o[8][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    for (int kt = 0; kt < nkt; ++kt) {
        if (kt + 1 < nkt) {                // the next K, V into the other buffer, read two steps ago
            unsigned char* next = KV + ((kt + 1) & 1) * 2 * TB;
            load_tile_sw128(next, k, base_of(ks, bh, H), ks.t, (kt + 1) * TILE, S);
            load_tile_sw128(next + TB, v, base_of(vs, bh, H), vs.t, (kt + 1) * TILE, S);
        }
        cp_async_commit();
        cp_async_wait_one();               // this tile's K, V (and at first Q) have landed
        fence_async_shared();
        __syncthreads();
        const unsigned int k_addr = kv_addr + (kt & 1) * 2 * TB, v_addr = k_addr + TB;
        if (kt < full)
            forward_tile_wgmma<false>(o, m, l, q_addr, k_addr, v_addr, row, last, kt, sl2, rng, drop16, dscale, bh, t);
        else
            forward_tile_wgmma<true>(o, m, l, q_addr, k_addr, v_addr, row, last, kt, sl2, rng, drop16, dscale, bh, t);
        __syncthreads();                   // every warp is done with this buffer before it is refilled
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr)
        store_output_row<64>(y + base_of(ys, bh, H) + (long long)row[hr] * ys.t + 2 * t, lse + (long long)bh * T + row[hr],
                             o, hr, m[hr], l[hr], row[hr] < T, t);
}

// ----------------------------------------------------------------------- backward
// attention_mma.cu's kv kernel writing dS^T (attention_backward_kvs_*), its four products on
// wgmma: a warpgroup owns 64 keys (warp w: keys 16w..16w+15, the rows of its fragments) and
// steps through the query tiles that see them, 64 queries a step:
//   S^T = K Q^T, dP^T = V dY^T        (A: K or V, B: Q or dY, all K-major from shared memory)
//   dS^T = P^T (dP^T z - D), (P z)^T  (registers; dS^T also to ds for the dQ kernel)
//   dV += (P z)^T dY, dK += dS^T Q    (A: registers, B: dY or Q read MN-major)
// Dropout: the block first writes the query tile's keep flags to shared memory, drawn as the
// float kernels draw them, and each lane reads its own (its rows are keys, not drop_row's queries).

// One query tile for a warpgroup's 64 keys. key[]: the lane's two keys (rows g, g + 8 of its warp);
// kr: the first of them in the block's keep columns. MASKED: the tile crosses the causal diagonal
// or the end of the keys or queries.
template <bool MASKED>
__device__ __forceinline__ void kvs_step_wgmma(float (&dk)[8][4], float (&dv)[8][4], unsigned int k_addr,
                                               unsigned int v_addr, unsigned int q_addr, unsigned int y_addr,
                                               const float* L, const float* Dot, const unsigned char* keep,
                                               int kr, int q0, const int (&key)[2], int T, int S, bool causal,
                                               float sl2, unsigned int drop16, float dscale, floatX* ds, int bh,
                                               int t) {
    float st[8][4], dpt[8][4];             // S^T, dP^T: this warp's 16 keys x 64 queries
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_ss(st, wgmma_desc(k_addr + 32 * kk), wgmma_desc(q_addr + 32 * kk), kk);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_ss(dpt, wgmma_desc(v_addr + 32 * kk), wgmma_desc(y_addr + 32 * kk), kk);
    wgmma_commit();
    wgmma_wait_all();
    hold(st);
    hold(dpt);
#pragma unroll
    for (int nb = 0; nb < 8; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int hr = e >> 1, qc = nb * 8 + 2 * t + (e & 1);
            const float zv = !DROPOUT_ON(drop16) ? 1.f : (keep[qc * TILE + kr + 8 * hr] ? dscale : 0.f);
            const float p = MASKED && !visible(q0 + qc, key[hr], T, S, causal) ? 0.f
                                                                             : exp2_ftz(st[nb][e] * sl2 - L[qc]);
            st[nb][e] = p * (dpt[nb][e] * zv - Dot[qc]);   // dS^T
            dpt[nb][e] = p * zv;                           // (P z)^T
        }
    unsigned int pa[4][4], sa[4][4];       // (P z)^T and dS^T (bf16) as A operands, 16 queries a step
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        c_to_a(pa[kk], dpt[2 * kk], dpt[2 * kk + 1]);
        c_to_a(sa[kk], st[2 * kk], st[2 * kk + 1]);
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs(dv, pa[kk], wgmma_desc(y_addr + 2048 * kk));   // dV += (P z)^T dY
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs(dk, sa[kk], wgmma_desc(q_addr + 2048 * kk));   // dK += dS^T Q
    wgmma_commit();
#pragma unroll
    for (int hr = 0; hr < 2; ++hr)         // dS^T to memory while the tensor cores work (from sa: st is free)
        if (key[hr] < S) store_ds_row(ds + ((long long)bh * S + key[hr]) * T + q0 + 2 * t, sa, hr, q0 + 2 * t, T);
    wgmma_wait_all();
    hold(dk);
    hold(dv);
    hold(pa);
    hold(sa);
}

// A block is one warpgroup: 64 keys.
__device__ void attention_backward_kvs_wgmma_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                                  const floatX* __restrict__ v, const floatX* __restrict__ dy,
                                                  const float* __restrict__ lse, const float* __restrict__ dot,
                                                  floatX* __restrict__ dk, floatX* __restrict__ dv, Strides qs,
                                                  Strides ks, Strides vs, Strides ys, int H, int T, int S,
                                                  float scale, int causal, const unsigned int* rng,
                                                  unsigned int drop16, float dscale, floatX* __restrict__ ds) {
    constexpr int TB = TILE * 128;         // bytes a tile
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char* smem = smem_raw + ((1024 - (smem_address(smem_raw) & 1023)) & 1023);
    unsigned char* Ks = smem;              // (64, 64): this block's keys
    unsigned char* Vs = Ks + TB;           // (64, 64)
    unsigned char* QY = Vs + TB;           // two buffers of the query tile's (Q, dY): (2, 2, 64, 64)
    float* L = reinterpret_cast<float*>(QY + 4 * TB);   // (64): lse of the query tile, in log2 units
    float* Dot = L + TILE;                 // (64)
    unsigned char* keep = reinterpret_cast<unsigned char*>(Dot + TILE);   // (64 queries, 64 keys)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int kr = 16 * warp + g;          // the lane's first key in the tile
    const int bh = blockIdx.y, k0 = blockIdx.x * TILE;
    const int key[2] = {k0 + kr, k0 + kr + 8};
    const float sl2 = scale * LOG2E;
    const int first = causal ? max(0, k0 - (S - T)) / TILE : 0;     // the first query tile that sees key k0
    const int nqt = (T + TILE - 1) / TILE;
    load_tile_sw128(Ks, k, base_of(ks, bh, H), ks.t, k0, S);
    load_tile_sw128(Vs, v, base_of(vs, bh, H), vs.t, k0, S);
    cp_async_commit();
    load_tile_sw128(QY, q, base_of(qs, bh, H), qs.t, first * TILE, T);
    load_tile_sw128(QY + TB, dy, base_of(ys, bh, H), ys.t, first * TILE, T);
    cp_async_commit();
    const unsigned int k_addr = smem_address(Ks), v_addr = smem_address(Vs);
    const unsigned int qy_addr = smem_address(QY);
    float dk_acc[8][4], dv_acc[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) { dk_acc[n][e] = 0.f; dv_acc[n][e] = 0.f; }
    for (int qt = first; qt < nqt; ++qt) {
        const int q0 = qt * TILE, buf = (qt - first) & 1;
        if (qt + 1 < nqt) {                // the next Q, dY into the other buffer, read two steps ago
            unsigned char* next = QY + (buf ^ 1) * 2 * TB;
            load_tile_sw128(next, q, base_of(qs, bh, H), qs.t, q0 + TILE, T);
            load_tile_sw128(next + TB, dy, base_of(ys, bh, H), ys.t, q0 + TILE, T);
        }
        cp_async_commit();
        for (int r = threadIdx.x; r < TILE; r += NT) {
            const bool in = q0 + r < T;
            L[r] = in ? lse[(long long)bh * T + q0 + r] * LOG2E : 0.f;
            Dot[r] = in ? dot[(long long)bh * T + q0 + r] : 0.f;
        }
        if (DROPOUT_ON(drop16)) {          // the float kernels' draws: thread (ty, tx) rows 4ty..4ty+3
            const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float z[8];
                drop_row(z, rng, drop16, dscale, q0 + 4 * ty + i, blockIdx.x, tx, bh);
#pragma unroll
                for (int c = 0; c < 8; ++c) keep[(4 * ty + i) * TILE + tx + 8 * c] = z[c] != 0.f;
            }
        }
        cp_async_wait_one();               // this query tile's Q, dY (and at first K, V) have landed
        fence_async_shared();
        __syncthreads();
        const unsigned int q_addr = qy_addr + buf * 2 * TB, y_addr = q_addr + TB;
        const bool full = (!causal || k0 + 63 <= q0 + (S - T)) && k0 + 63 < S && q0 + 63 < T;
        if (full)
            kvs_step_wgmma<false>(dk_acc, dv_acc, k_addr, v_addr, q_addr, y_addr, L, Dot, keep, kr, q0, key, T, S,
                                  causal, sl2, drop16, dscale, ds, bh, t);
        else
            kvs_step_wgmma<true>(dk_acc, dv_acc, k_addr, v_addr, q_addr, y_addr, L, Dot, keep, kr, q0, key, T, S,
                                 causal, sl2, drop16, dscale, ds, bh, t);
        __syncthreads();                   // L, Dot, keep and this buffer are refilled next
    }
    store_fragments<64>(dk + base_of(ks, bh, H) + (long long)key[0] * ks.t, ks.t, dk_acc, scale, key[0] < S,
                        key[1] < S, t);
    store_fragments<64>(dv + base_of(vs, bh, H) + (long long)key[0] * vs.t, vs.t, dv_acc, 1.f, key[0] < S,
                        key[1] < S, t);
}

// dQ from the stored dS^T (attention_mma.cu's dq kernel on wgmma): dQ = dS K * scale, a block's 64
// queries against each key tile they see. A = dS: the dS^T tile (keys x queries) is dS read
// MN-major; B = K, MN-major too. Both tiles double-buffered with cp.async.

// keys [k0, k0 + 64) x queries [q0, q0 + 64) of ds (rows of T; T % 8 == 0, the host's condition,
// so a 16-byte chunk never straddles T) into a swizzled (64, 64) tile; zeros past S or T.
__device__ __forceinline__ void load_ds_tile_sw128(unsigned char* tile, const floatX* ds, long long base, int k0,
                                                   int q0, int S, int T) {
    for (int e = threadIdx.x; e < TILE * 8; e += NT) {
        const int r = e >> 3, c = e & 7;
        const bool in = k0 + r < S && q0 + 8 * c < T;
        cp_async16(reinterpret_cast<floatX*>(tile + r * 128 + ((c ^ (r & 7)) << 4)),
                   in ? ds + base + (long long)(k0 + r) * T + q0 + 8 * c : ds, in);
    }
}

__device__ void attention_backward_dq_wgmma_body(const floatX* __restrict__ k, const floatX* __restrict__ ds,
                                                 floatX* __restrict__ dq, Strides qs, Strides ks, int H, int T,
                                                 int S, float scale, int causal) {
    constexpr int TB = TILE * 128;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char* buf = smem_raw + ((1024 - (smem_address(smem_raw) & 1023)) & 1023);   // two of (K, dS^T)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, q0 = (gridDim.x - 1 - blockIdx.x) * TILE;   // heaviest first, as the forward
    const int row0 = q0 + 16 * warp + g;
    const long long dbase = (long long)bh * S * T;
    const int nkt = key_tiles(q0, T, S, causal);
    load_tile_sw128(buf, k, base_of(ks, bh, H), ks.t, 0, S);
    load_ds_tile_sw128(buf + TB, ds, dbase, 0, q0, S, T);
    cp_async_commit();
    const unsigned int buf_addr = smem_address(buf);
    float acc[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    for (int kt = 0; kt < nkt; ++kt) {
        if (kt + 1 < nkt) {
            unsigned char* next = buf + ((kt + 1) & 1) * 2 * TB;
            load_tile_sw128(next, k, base_of(ks, bh, H), ks.t, (kt + 1) * TILE, S);
            load_ds_tile_sw128(next + TB, ds, dbase, (kt + 1) * TILE, q0, S, T);
        }
        cp_async_commit();
        cp_async_wait_one();
        fence_async_shared();
        __syncthreads();
        const unsigned int k_addr = buf_addr + (kt & 1) * 2 * TB, d_addr = k_addr + TB;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)     // 16 keys a step: 16 rows of both tiles, 2048 bytes
            wgmma_ss<1, 1>(acc, wgmma_desc(d_addr + 2048 * kk), wgmma_desc(k_addr + 2048 * kk), 1);
        wgmma_commit();
        wgmma_wait_all();
        hold(acc);
        __syncthreads();
    }
    store_fragments<64>(dq + base_of(qs, bh, H) + (long long)row0 * qs.t, qs.t, acc, scale, row0 < T, row0 + 8 < T, t);
}

// ----------------------------------------------------------------- entry points (head size 64)
// The second __launch_bounds__ number is how many blocks an SM must hold, which caps the
// registers a thread may take. A block is one warpgroup that waits for its own products, so
// the other blocks on the SM are what keeps the tensor cores busy meanwhile: the forward is
// held to four (128 registers), the kv kernel to three (168; left alone it takes over 200 and
// fits two, and the few values it now spills cost less than the third block gains).
#if HEAD_DIM(64)
extern "C" __global__ void __launch_bounds__(NT, 4) attention_forward_wgmma_64(
        const floatX* q, const floatX* k, const floatX* v, floatX* y, float* lse, STRIDE_PARAMS, int H, int T,
        int S, float scale, int causal, const unsigned int* rng, unsigned int drop16, float dscale, int vec) {
    attention_forward_wgmma_body(q, k, v, y, lse, STRIDES, H, T, S, scale, causal, rng, drop16, dscale);
}
extern "C" __global__ void __launch_bounds__(NT, 3) attention_backward_kvs_wgmma_64(
        const floatX* q, const floatX* k, const floatX* v, const floatX* dy, const float* lse, const float* dot,
        floatX* dk, floatX* dv, STRIDE_PARAMS, int H, int T, int S, float scale, int causal,
        const unsigned int* rng, unsigned int drop16, float dscale, int vec, floatX* ds) {
    attention_backward_kvs_wgmma_body(q, k, v, dy, lse, dot, dk, dv, STRIDES, H, T, S, scale, causal, rng, drop16,
                                      dscale, ds);
}
extern "C" __global__ void __launch_bounds__(NT) attention_backward_dq_wgmma_64(
        const floatX* k, const floatX* ds, floatX* dq, long long qb, long long qh, long long qt, long long kb,
        long long kh, long long kt, int H, int T, int S, float scale, int causal) {
    attention_backward_dq_wgmma_body(k, ds, dq, Strides{qb, qh, qt}, Strides{kb, kh, kt}, H, T, S, scale, causal);
}
#endif
#endif
