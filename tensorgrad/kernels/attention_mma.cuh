// The tensor-core building blocks of attention_mma.cu (bf16): mma.sync m16n8k16,
// fragments read from shared memory with ldmatrix, tiles copied in with cp.async,
// and results stored from fragments. Register layout (FlashAttention-2's): in an
// m16n8 C fragment lane (g = lane / 4, t = lane % 4) holds rows g and g + 8,
// columns 2t and 2t + 1; attention_mma.cu's header says how the kernels use it.
#pragma once
#include "attention_common.cuh"

#ifdef TG_BF16
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
__device__ __forceinline__ void ldsm4(unsigned int (&r)[4], const floatX* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldsm4_trans(unsigned int (&r)[4], const floatX* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
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
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
        ldsm4(a[kk], tile + (row0 + lane % 16) * LH + kk * 16 + 8 * (lane / 16));
}

// c[nb] = A (16 x D, fragments a) times the rows of a (64, D + 8) tile, transposed: 8 blocks of 8
// columns. One ldmatrix gives the B fragments of two 16-deep steps (blocks: columns +0, +8, +16, +24).
template <int D>
__device__ __forceinline__ void mma_rows(float (&c)[TILE / 8][4], const unsigned int (&a)[D / 16][4], const floatX* tile,
                                         int lane) {
    constexpr int LH = D + 8;
#pragma unroll
    for (int nb = 0; nb < TILE / 8; ++nb) {
        c[nb][0] = c[nb][1] = c[nb][2] = c[nb][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk += 2) {
            unsigned int b[4];
            ldsm4(b, tile + (nb * 8 + lane % 8) * LH + kk * 16 + 8 * (lane / 8));
            mma_bf16(c[nb], a[kk], b[0], b[1]);
            mma_bf16(c[nb], a[kk + 1], b[2], b[3]);
        }
    }
}

// acc (16 x D) += a (16 x 16, A fragments) times rows 16kk..16kk+15 of a (64, D + 8) tile M:
// B fragments through ldmatrix.trans, two 8-column blocks of D a call (blocks: rows +0 / +8,
// columns +0 / +8).
template <int D>
__device__ __forceinline__ void mma_step(float (&acc)[D / 8][4], const unsigned int (&a)[4], const floatX* tile, int kk,
                                         int lane) {
    constexpr int LH = D + 8;
#pragma unroll
    for (int n = 0; n < D / 8; n += 2) {
        unsigned int b[4];
        ldsm4_trans(b, tile + (kk * 16 + lane % 16) * LH + n * 8 + 8 * (lane / 16));
        mma_bf16(acc[n], a, b[0], b[1]);
        mma_bf16(acc[n + 1], a, b[2], b[3]);
    }
}

// acc (16 x D) += P (16 x 64, C fragments p) times a (64, D + 8) tile M (rows: the 64 keys or
// queries P's columns run over): P's C fragments become A fragments in registers (rounded to
// bf16), 16 of its columns a step.
template <int D>
__device__ __forceinline__ void mma_tile(float (&acc)[D / 8][4], const float (&p)[TILE / 8][4], const floatX* tile,
                                         int lane) {
#pragma unroll
    for (int kk = 0; kk < TILE / 16; ++kk) {
        const unsigned int pa[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]), pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                                    pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                                    pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
        mma_step<D>(acc, pa, tile, kk, lane);
    }
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

#endif
