// The tensor-core building blocks of attention_mma.cu (bf16): mma.sync m16n8k16,
// fragments read from shared memory with ldmatrix, tiles copied in with cp.async,
// and results stored from fragments. Register layout (FlashAttention-2's): in an
// m16n8 C fragment lane (g = lane / 4, t = lane % 4) holds rows g and g + 8,
// columns 2t and 2t + 1; attention_mma.cu's header says how the kernels use it.
#pragma once
#include "attention_common.cuh"

#ifdef TG_BF16
// 2^x on the special-function unit, subnormal results flushed to zero (ex2.approx.ftz). exp2f
// compiled without -ftz wraps the same instruction in a fix-up for subnormals (a p below 2^-126,
// which rounds to zero in bf16 anyway): three more instructions on each of the T x S exponentials.
__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ unsigned int pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);          // lo in the low half: the lower column
    return *reinterpret_cast<unsigned int*>(&v);
}

// ldmatrix: lane L gives the address of row L % 8 of 8 x 8 block L / 8 (16 bytes each);
// register i of lane (g, t) receives block i's row g, columns 2t and 2t + 1 (.trans:
// column g, rows 2t and 2t + 1 of block i).
__device__ __forceinline__ unsigned int smem_address(const void* p) {
    unsigned int a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
// The *_at forms take the 32-bit shared-memory byte address itself: a caller converts a lane's
// address in a tile once (smem_address, opaque to the compiler) and adds constant byte offsets
// after it, which ptxas folds into the instruction ([R + imm]); converting each address would
// cost a 64-bit add, the conversion and a register per ldmatrix.
__device__ __forceinline__ void ldsm4_at(unsigned int (&r)[4], unsigned int addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm4_trans_at(unsigned int (&r)[4], unsigned int addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm4(unsigned int (&r)[4], const floatX* p) { ldsm4_at(r, smem_address(p)); }
__device__ __forceinline__ void ldsm4_trans(unsigned int (&r)[4], const floatX* p) { ldsm4_trans_at(r, smem_address(p)); }
constexpr unsigned int EB = sizeof(floatX);   // bytes an element, for the constant offsets

// The last key query row i sees (visible(i, j) <=> j <= last_key(i)); -1 for rows past T.
// The masked steps compare it with each element's key: one test of a lane's column offset
// (a constant once unrolled) against a per-row limit, instead of visible()'s four tests, which
// ptxas hoists above the tile products into a register each.
__device__ __forceinline__ int last_key(int i, int T, int S, bool causal) {
    return i >= T ? -1 : causal ? min(S - 1, i + (S - T)) : S - 1;
}

// c (16 x 8, float) += a (16 x 16, bf16, row-major fragment) b (16 x 8, bf16, column-major fragment)
__device__ __forceinline__ void mma_bf16(float (&c)[4], const unsigned int (&a)[4], unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// rows [row0, row0 + 64) of a (.., rows, D) bf16 operand -> tile[r * ld + d]; zeros past
// n_rows. vec: rows can be read four elements (8 bytes) at a time.
template <int D>
__device__ __forceinline__ void load_rows_bf16(floatX* tile, int ld, const floatX* g, long long base, long long st,
                                               int row0, int n_rows, bool vec) {
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
        *reinterpret_cast<uint2*>(tile + r * ld + d) = u;
    }
}

// cp.async: global -> shared without passing through registers, so the next tile's loads
// fly while the warps compute on the current one (double buffering). src_size 0 fills zeros.
__device__ __forceinline__ void cp_async16(floatX* dst, const floatX* src, bool full) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src),
                 "r"(full ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_one() { asm volatile("cp.async.wait_group 1;\n" ::); }

// load_rows_bf16 into a (64, D + 8) tile, asynchronously when rows start on 16 bytes (vec == 2);
// the caller commits the group and waits for it (cp_async_wait_one + __syncthreads) before reading.
template <int D>
__device__ __forceinline__ void load_tile_async(floatX* tile, const floatX* g, long long base, long long st, int row0,
                                                int n_rows, int vec) {
    constexpr int LH = D + 8;
    if (vec != 2) {
        load_rows_bf16<D>(tile, LH, g, base, st, row0, n_rows, vec != 0);
        return;
    }
    for (int e = threadIdx.x; e < TILE * D / 8; e += NT) {
        const int r = e / (D / 8), d = e % (D / 8) * 8;
        const bool in = row0 + r < n_rows;
        cp_async16(tile + r * LH + d, in ? g + base + (long long)(row0 + r) * st + d : g, in);
    }
}

// This warp's 16 rows (from row0) of a (64, D + 8) tile as the A fragments of m16n8k16, one per 16 of D
// (blocks: rows +0 / +8, columns +0 / +8)
template <int D>
__device__ __forceinline__ void a_fragments(unsigned int (&a)[D / 16][4], const floatX* tile, int row0, int lane) {
    constexpr int LH = D + 8;
    const unsigned int base = smem_address(tile + (row0 + lane % 16) * LH + 8 * (lane / 16));
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) ldsm4_at(a[kk], base + EB * kk * 16);
}

// The products below take R row tiles of 16 at once (R = 2: a warp owning 32 rows): each B
// fragment ldmatrix reads feeds R mma.sync instead of one, and shared-memory bandwidth
// (ldmatrix), not the tensor cores, is what bounds these kernels on an H100/H200. The
// R = 1 forms, with today's signatures, are the 16-row kernels' calls.

// c[r] (16 x 8 NB) = A_r (16 x D, fragments a[r]) times rows row0..row0 + 8 NB - 1 of a (.., D + 8)
// tile, transposed. One ldmatrix gives the B fragments of two 16-deep steps of an 8-row block
// (blocks: columns +0, +8, +16, +24).
template <int D, int R, int NB>
__device__ __forceinline__ void mma_rows(float (&c)[R][NB][4], const unsigned int (&a)[R][D / 16][4],
                                         const floatX* tile, int row0, int lane) {
    constexpr int LH = D + 8;
    const unsigned int base = smem_address(tile + (row0 + lane % 8) * LH + 8 * (lane / 8));
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int r = 0; r < R; ++r) c[r][nb][0] = c[r][nb][1] = c[r][nb][2] = c[r][nb][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk += 2) {
            unsigned int b[4];
            ldsm4_at(b, base + EB * (nb * 8 * LH + kk * 16));
#pragma unroll
            for (int r = 0; r < R; ++r) {
                mma_bf16(c[r][nb], a[r][kk], b[0], b[1]);
                mma_bf16(c[r][nb], a[r][kk + 1], b[2], b[3]);
            }
        }
    }
}
template <int D>
__device__ __forceinline__ void mma_rows(float (&c)[TILE / 8][4], const unsigned int (&a)[D / 16][4],
                                         const floatX* tile, int lane) {
    mma_rows<D, 1, TILE / 8>(reinterpret_cast<float(&)[1][TILE / 8][4]>(c),
                             reinterpret_cast<const unsigned int(&)[1][D / 16][4]>(a), tile, 0, lane);
}

// acc[r] (16 x D) += a[r] (16 x 16, A fragments) times rows 16kk..16kk+15 of a (.., D + 8) tile M:
// B fragments through ldmatrix.trans, two 8-column blocks of D a call (blocks: rows +0 / +8,
// columns +0 / +8).
template <int D, int R>
__device__ __forceinline__ void mma_step(float (&acc)[R][D / 8][4], const unsigned int (&a)[R][4], const floatX* tile,
                                         int kk, int lane) {
    constexpr int LH = D + 8;
    const unsigned int base = smem_address(tile + (lane % 16) * LH + 8 * (lane / 16));
#pragma unroll
    for (int n = 0; n < D / 8; n += 2) {
        unsigned int b[4];
        ldsm4_trans_at(b, base + EB * (kk * 16 * LH + n * 8));
#pragma unroll
        for (int r = 0; r < R; ++r) {
            mma_bf16(acc[r][n], a[r], b[0], b[1]);
            mma_bf16(acc[r][n + 1], a[r], b[2], b[3]);
        }
    }
}
template <int D>
__device__ __forceinline__ void mma_step(float (&acc)[D / 8][4], const unsigned int (&a)[4], const floatX* tile, int kk,
                                         int lane) {
    mma_step<D, 1>(reinterpret_cast<float(&)[1][D / 8][4]>(acc), reinterpret_cast<const unsigned int(&)[1][4]>(a),
                   tile, kk, lane);
}

// P's C fragments (16 x 16: columns 16kk..16kk+15) as an A fragment, rounded to bf16
// (C of m16n8 = half of A of m16k16: the scores never leave registers)
__device__ __forceinline__ void c_to_a(unsigned int (&pa)[4], const float (&lo)[4], const float (&hi)[4]) {
    pa[0] = pack_bf16(lo[0], lo[1]);
    pa[1] = pack_bf16(lo[2], lo[3]);
    pa[2] = pack_bf16(hi[0], hi[1]);
    pa[3] = pack_bf16(hi[2], hi[3]);
}

// acc[r] (16 x D) += P_r (16 x 64, C fragments p[r]) times a (64, D + 8) tile M (rows: the 64 keys
// or queries P's columns run over), 16 of P's columns a step.
template <int D, int R>
__device__ __forceinline__ void mma_tile(float (&acc)[R][D / 8][4], const float (&p)[R][TILE / 8][4],
                                         const floatX* tile, int lane) {
#pragma unroll
    for (int kk = 0; kk < TILE / 16; ++kk) {
        unsigned int pa[R][4];
#pragma unroll
        for (int r = 0; r < R; ++r) c_to_a(pa[r], p[r][2 * kk], p[r][2 * kk + 1]);
        mma_step<D, R>(acc, pa, tile, kk, lane);
    }
}
template <int D>
__device__ __forceinline__ void mma_tile(float (&acc)[D / 8][4], const float (&p)[TILE / 8][4], const floatX* tile,
                                         int lane) {
    mma_tile<D, 1>(reinterpret_cast<float(&)[1][D / 8][4]>(acc), reinterpret_cast<const float(&)[1][TILE / 8][4]>(p),
                   tile, lane);
}

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

// The kv kernels that write dS^T (before the scale) to ds, (B*H, S, T) bf16, for the dQ kernel
// (attention_mma.cu) store it a key's row at a time. Row hr (fragment row g or g + 8) of NB C fragments of dS^T into one key's row of ds: queries
// q + 8 nb and q + 8 nb + 1 (q = the fragments' first query + 2t, out = that query's place in
// the key's row), as pairs when T is even.
template <int NB>
__device__ __forceinline__ void store_ds_row(floatX* out, const float (&c)[NB][4], int hr, int q, int T) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
        const int qc = q + nb * 8;
        if (qc + 1 < T && (T & 1) == 0) {
            *reinterpret_cast<unsigned int*>(out + nb * 8) = pack_bf16(c[nb][2 * hr], c[nb][2 * hr + 1]);
        } else {
            if (qc < T) out[nb * 8] = __float2bfloat16_rn(c[nb][2 * hr]);
            if (qc + 1 < T) out[nb * 8 + 1] = __float2bfloat16_rn(c[nb][2 * hr + 1]);
        }
    }
}

// The same row from A fragments (c_to_a's packing: a[kk][2j + hr] holds columns 8(2kk + j) + 2t,
// + 1 of row hr), so a kernel that has packed dS^T for a product stores those registers.
template <int KK>
__device__ __forceinline__ void store_ds_row(floatX* out, const unsigned int (&a)[KK][4], int hr, int q, int T) {
#pragma unroll
    for (int nb = 0; nb < 2 * KK; ++nb) {
        const int qc = q + nb * 8;
        const unsigned int v = a[nb >> 1][2 * (nb & 1) + hr];
        if (qc + 1 < T && (T & 1) == 0) {
            *reinterpret_cast<unsigned int*>(out + nb * 8) = v;
        } else {
            if (qc < T) out[nb * 8] = __ushort_as_bfloat16((unsigned short)(v & 0xffffu));
            if (qc + 1 < T) out[nb * 8 + 1] = __ushort_as_bfloat16((unsigned short)(v >> 16));
        }
    }
}

// ------------------------------------------------ what the forwards share (mma.sync and wgmma)
// The online softmax of one row of a key tile, in place, for the forwards that take the max of
// the raw scores (warp32, wgmma; sl2 > 0, the host's condition, keeps it the max): row hr
// (fragment elements 2 hr, 2 hr + 1) of S's 8 C fragments, query row i, becomes P with its
// dropout; m and l take the tile in. Returns alpha, what the row of O must be rescaled by.
// MASKED: the tile crosses the causal diagonal or the end of the keys (last: last_key(i)).
template <bool MASKED>
__device__ __forceinline__ float softmax_row(float (&s)[TILE / 8][4], int hr, float& m, float& l, int i, int last,
                                             int kt, float sl2, const unsigned int* rng, unsigned int drop16,
                                             float dscale, int bh, int t) {
    const int lim = last - kt * TILE - 2 * t;   // element (nb, e) is key kt * 64 + 2t + 8 nb + e % 2
    float mx = NEG_INF;
#pragma unroll
    for (int nb = 0; nb < TILE / 8; ++nb)
#pragma unroll
        for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
            float& x = s[nb][e];
            if (MASKED && nb * 8 + (e & 1) > lim) x = NEG_INF;
            mx = fmaxf(mx, x);
        }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    // the max of the raw scores, scaled once: each p below is one fused multiply-add and one exponential
    const float m_new = fmaxf(m, mx * sl2);
    // only a masked tile can leave a row with nothing seen yet (m = -inf: all zeros)
    const bool none = MASKED && m_new == NEG_INF;
    const float alpha = none ? 1.f : exp2_ftz(m - m_new);
    m = m_new;
    l *= alpha;
    float z[2][8];
    drop_row(z[0], rng, drop16, dscale, i, kt, 2 * t, bh);
    drop_row(z[1], rng, drop16, dscale, i, kt, 2 * t + 1, bh);
#pragma unroll
    for (int nb = 0; nb < TILE / 8; ++nb)
#pragma unroll
        for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
            const float p = none ? 0.f : exp2_ftz(fmaf(s[nb][e], sl2, -m_new));
            l += p;                        // the normaliser counts every p, dropped or not
            s[nb][e] = p * z[e & 1][nb];
        }
    return alpha;
}

// O's 16 rows (D / 8 C fragments) times the rescale of each of the lane's two rows
template <int D>
__device__ __forceinline__ void rescale(float (&o)[D / 8][4], const float (&alpha)[2]) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        o[n][0] *= alpha[0]; o[n][1] *= alpha[0];
        o[n][2] *= alpha[1]; o[n][3] *= alpha[1];
    }
}

// The end of a forward for row hr of a lane's O fragments, query row i: the row's sum l over the
// quad's lanes (every lane takes part), then for a row inside T, O / l rounded to bf16 into y's
// row (y_row: its first element plus 2t) and, from lane t == 0, the row's logsumexp to lse_at.
template <int D>
__device__ __forceinline__ void store_output_row(floatX* y_row, float* lse_at, const float (&o)[D / 8][4], int hr,
                                                 float m, float l, bool inside, int t) {
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (!inside) return;
    const float f = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
        *reinterpret_cast<unsigned int*>(y_row + n * 8) = pack_bf16(o[n][2 * hr] * f, o[n][2 * hr + 1] * f);
    if (t == 0) *lse_at = l > 0.f ? (m + log2f(l)) / LOG2E : NEG_INF;
}

#endif
