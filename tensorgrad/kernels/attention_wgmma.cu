// Fused attention forward on Hopper's warpgroup tensor cores (wgmma, sm_90a), bf16, head size 64.
//
// attention_mma.cu's warp16 forward with its two tile products moved from mma.sync to wgmma:
// four warps (a warpgroup) issue one asynchronous product over 64 query rows together, its
// B operand (K for S = Q K^T, V for O += P V) read by the tensor cores straight from shared
// memory, so no warp spends instructions on ldmatrix for it. The online softmax, the causal
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
// B (16 x 64) both from shared memory, both K-major. acc = 0: c = A B (the first step of a product).
__device__ __forceinline__ void wgmma_ss(float (&c)[8][4], unsigned long long a, unsigned long long b, int acc) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : WG_C32(c)
                 : "l"(a), "l"(b), "r"(acc));
}

// c += A B, A (64 x 16) from registers (this warp's 16 rows, the m16k16 A fragment), B (16 x 64)
// from shared memory, MN-major (its rows are the 16 values summed over: transposed, trans-b = 1).
__device__ __forceinline__ void wgmma_rs(float (&c)[8][4], const unsigned int (&a)[4], unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_D32 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : WG_C32(c)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

// rows [row0, row0 + ROWS) of a (.., rows, 64) bf16 operand into a swizzled (ROWS, 64) tile, by cp.async
// (rows start on 16 bytes: the host's condition); zeros past n_rows. NTH threads take part.
template <int ROWS, int NTH>
__device__ __forceinline__ void load_tile_sw128(unsigned char* tile, const floatX* g, long long base, long long st,
                                                int row0, int n_rows) {
    for (int e = threadIdx.x; e < ROWS * 8; e += NTH) {
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
    for (int hr = 0; hr < 2; ++hr) {       // element e of a fragment: row hr = e / 2, key 2t + e % 2
        const int lim = last[hr] - kt * TILE - 2 * t;
        float mx = NEG_INF;
#pragma unroll
        for (int nb = 0; nb < 8; ++nb)
#pragma unroll
            for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
                float& x = s[nb][e];
                if (MASKED && nb * 8 + (e & 1) > lim) x = NEG_INF;
                mx = fmaxf(mx, x);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[hr], mx * sl2);   // sl2 > 0: the raw max, scaled once (as warp32)
        const bool none = MASKED && m_new == NEG_INF;
        alpha[hr] = none ? 1.f : exp2_ftz(m[hr] - m_new);
        m[hr] = m_new;
        l[hr] *= alpha[hr];
        float z[2][8];
        drop_row(z[0], rng, drop16, dscale, row[hr], kt, 2 * t, bh);
        drop_row(z[1], rng, drop16, dscale, row[hr], kt, 2 * t + 1, bh);
#pragma unroll
        for (int nb = 0; nb < 8; ++nb)
#pragma unroll
            for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
                const float p = none ? 0.f : exp2_ftz(fmaf(s[nb][e], sl2, -m_new));
                l[hr] += p;                // the normaliser counts every p, dropped or not
                s[nb][e] = p * z[e & 1][nb];
            }
    }
#pragma unroll
    for (int n = 0; n < 8; ++n) {
        o[n][0] *= alpha[0]; o[n][1] *= alpha[0];
        o[n][2] *= alpha[1]; o[n][3] *= alpha[1];
    }
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
}

// WG warpgroups a block, 64 query rows each; every warpgroup reads the same K, V tiles.
template <int WG>
__device__ void attention_forward_wgmma_body(const floatX* __restrict__ q, const floatX* __restrict__ k,
                                             const floatX* __restrict__ v, floatX* __restrict__ y,
                                             float* __restrict__ lse, Strides qs, Strides ks, Strides vs, Strides ys,
                                             int H, int T, int S, float scale, int causal, const unsigned int* rng,
                                             unsigned int drop16, float dscale) {
    constexpr int NTH = 128 * WG, BQ = 64 * WG, TB = TILE * 128;   // threads, query rows, bytes a tile
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    // the swizzle pattern repeats every 1024 bytes: tiles start on 1024 (the host adds 1 KiB of room)
    unsigned char* smem = smem_raw + ((1024 - (smem_address(smem_raw) & 1023)) & 1023);
    unsigned char* Qs = smem;              // (BQ, 64)
    unsigned char* KV = smem + WG * TB;    // two buffers of (K, V): (2, 2, 64, 64)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wg = warp >> 2;
    // causal: the last query blocks see the most keys; they start first so the short ones fill the tail
    const int bh = blockIdx.y, q0 = (gridDim.x - 1 - blockIdx.x) * BQ;
    const int w0 = q0 + 64 * wg;           // this warpgroup's first query row
    const int row[2] = {w0 + 16 * (warp & 3) + g, w0 + 16 * (warp & 3) + g + 8};
    const int last[2] = {last_key(row[0], T, S, causal), last_key(row[1], T, S, causal)};
    const float sl2 = scale * LOG2E;
    const int nkt = key_tiles(q0 + BQ - TILE, T, S, causal);   // the block's last row is q0 + BQ - 1
    // this warpgroup's key tiles: [0, full) visible to all its rows, [full, mine) partly, none past mine
    const int mine = w0 < T ? key_tiles(w0, T, S, causal) : 0;
    const int full = min(mine, (causal ? min(S, w0 + 1 + (S - T)) : S) / TILE);

    load_tile_sw128<BQ, NTH>(Qs, q, base_of(qs, bh, H), qs.t, q0, T);
    load_tile_sw128<TILE, NTH>(KV, k, base_of(ks, bh, H), ks.t, 0, S);
    load_tile_sw128<TILE, NTH>(KV + TB, v, base_of(vs, bh, H), vs.t, 0, S);
    cp_async_commit();
    const unsigned int q_addr = smem_address(Qs + wg * TB), kv_addr = smem_address(KV);
    float o[8][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    for (int kt = 0; kt < nkt; ++kt) {
        if (kt + 1 < nkt) {                // the next K, V into the other buffer, read two steps ago
            unsigned char* next = KV + ((kt + 1) & 1) * 2 * TB;
            load_tile_sw128<TILE, NTH>(next, k, base_of(ks, bh, H), ks.t, (kt + 1) * TILE, S);
            load_tile_sw128<TILE, NTH>(next + TB, v, base_of(vs, bh, H), vs.t, (kt + 1) * TILE, S);
        }
        cp_async_commit();
        cp_async_wait_one();               // this tile's K, V (and at first Q) have landed
        fence_async_shared();
        __syncthreads();
        const unsigned int k_addr = kv_addr + (kt & 1) * 2 * TB, v_addr = k_addr + TB;
        if (kt < full)
            forward_tile_wgmma<false>(o, m, l, q_addr, k_addr, v_addr, row, last, kt, sl2, rng, drop16, dscale, bh, t);
        else if (kt < mine)
            forward_tile_wgmma<true>(o, m, l, q_addr, k_addr, v_addr, row, last, kt, sl2, rng, drop16, dscale, bh, t);
        __syncthreads();                   // every warp is done with this buffer before it is refilled
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 1);
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 2);
        if (row[hr] >= T) continue;
        const float f = l[hr] > 0.f ? 1.f / l[hr] : 0.f;
        floatX* out = y + base_of(ys, bh, H) + (long long)row[hr] * ys.t + 2 * t;
#pragma unroll
        for (int n = 0; n < 8; ++n)
            *reinterpret_cast<unsigned int*>(out + n * 8) = pack_bf16(o[n][2 * hr] * f, o[n][2 * hr + 1] * f);
        if (t == 0) lse[(long long)bh * T + row[hr]] = l[hr] > 0.f ? (m[hr] + log2f(l[hr])) / LOG2E : NEG_INF;
    }
}

// attention_forward_wgmma_64: one warpgroup (64 query rows) a block; attention_forward_wgmma2_64:
// two (128 rows) sharing each K, V tile.
#define ATTENTION_WGMMA_FORWARD(WG, NAMED)                                                                     \
extern "C" __global__ void __launch_bounds__(128 * WG) attention_forward_wgmma##NAMED##_64(                    \
        const floatX* q, const floatX* k, const floatX* v, floatX* y, float* lse, STRIDE_PARAMS, int H, int T, \
        int S, float scale, int causal, const unsigned int* rng, unsigned int drop16, float dscale, int vec) { \
    attention_forward_wgmma_body<WG>(q, k, v, y, lse, STRIDES, H, T, S, scale, causal, rng, drop16, dscale);  \
}

#if HEAD_DIM(64)
ATTENTION_WGMMA_FORWARD(1, )
ATTENTION_WGMMA_FORWARD(2, 2)
#endif
#endif
