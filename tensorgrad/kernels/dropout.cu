// Dropout with a counter-based generator: no mask is ever stored.
//
//   forward:  y  = x * keep / (1 - p)
//   backward: dx = g * keep / (1 - p)      (the same kernel, the same keep)
// keep of element i is drawn from Philox (philox.cuh) with counter
// (i / 8 low, i / 8 high, tag) and the call's (seed, offset) slot: one Philox
// call gives eight 16-bit uniforms, one for each of 8 consecutive elements.
// Backward passes the slot forward used, so it sees the same mask.
//
// dropout_add fuses the residual add that follows dropout in a transformer:
//   y = r + x * keep / (1 - p).
// Types: x, r, y are floatX; a bf16 build adds the mixed pair autocast needs,
// dropout_add_wide (bf16 branch x onto a float32 residual r, y float32) and its
// backward dropout_narrow (float32 gradient in, bf16 gradient of x out).
//
// Launch: 1-D grid-stride loop over groups of 8 elements, 256 threads a block;
// vec = 1 when every pointer is 16-byte aligned (vector loads and stores).
// x, r, y are floatX (common.cuh); the math is float.
#include "common.cuh"
#include "philox.cuh"

#define DROPOUT_TAG 0x0D0F0A11u

// One thread: copy the generator's (seed, offset) into this call's slot and
// bump the generator's offset, so the next call (or the next replay of a
// CUDA graph holding this launch) gets a fresh stream.
extern "C" __global__ void rng_advance(unsigned int* state, unsigned int* slot) {
    slot[0] = state[0];
    slot[1] = state[1];
    slot[2] = state[2];
    slot[3] = 0;
    state[2] += 1;
}

template <bool ADD, typename TX, typename TR, typename TY>
__device__ __forceinline__ void dropout_body(const TX* __restrict__ x, const TR* __restrict__ r,
                                             TY* __restrict__ y, long long n, const unsigned int* rng,
                                             unsigned int drop16, float scale, int vec) {
    const long long groups = (n + 7) >> 3;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long gi = (long long)blockIdx.x * blockDim.x + threadIdx.x; gi < groups; gi += stride) {
        const long long i0 = gi << 3;
        float z[8];
        if (drop16 == 0) {      // p = 0 (evaluation): every element kept, no numbers to draw
#pragma unroll
            for (int u = 0; u < 8; ++u) z[u] = scale;
        } else {
            const Philox4 bits = philox_draw(rng, (unsigned int)gi, (unsigned int)(gi >> 32), DROPOUT_TAG);
#pragma unroll
            for (int u = 0; u < 8; ++u) z[u] = philox_u16(bits, u) >= drop16 ? scale : 0.f;
        }
        if (vec && i0 + 8 <= n) {
            // a thread's 8 elements as two vector loads: a warp reads one contiguous
            // sweep (8 scalar loads at a stride of 8 elements would each touch 32 sectors)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float4 a = ld4(x + i0 + 4 * h);
                const float4 b = ADD ? ld4(r + i0 + 4 * h) : make_float4(0.f, 0.f, 0.f, 0.f);
                st4(y + i0 + 4 * h, make_float4(b.x + a.x * z[4 * h], b.y + a.y * z[4 * h + 1],
                                                b.z + a.z * z[4 * h + 2], b.w + a.w * z[4 * h + 3]));
            }
            continue;
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            const long long i = i0 + u;
            if (i < n) st(y + i, (ADD ? to_f(r[i]) : 0.f) + to_f(x[i]) * z[u]);
        }
    }
}

extern "C" __global__ void dropout_apply(const floatX* x, floatX* y, long long n, const unsigned int* rng,
                                         unsigned int drop16, float scale, int vec) {
    dropout_body<false>(x, (const floatX*)nullptr, y, n, rng, drop16, scale, vec);
}

extern "C" __global__ void dropout_add(const floatX* x, const floatX* r, floatX* y, long long n,
                                       const unsigned int* rng, unsigned int drop16, float scale, int vec) {
    dropout_body<true>(x, r, y, n, rng, drop16, scale, vec);
}

#ifdef TG_BF16
extern "C" __global__ void dropout_add_wide(const floatX* x, const float* r, float* y, long long n,
                                            const unsigned int* rng, unsigned int drop16, float scale, int vec) {
    dropout_body<true>(x, r, y, n, rng, drop16, scale, vec);
}

extern "C" __global__ void dropout_narrow(const float* x, floatX* y, long long n, const unsigned int* rng,
                                          unsigned int drop16, float scale, int vec) {
    dropout_body<false>(x, (const float*)nullptr, y, n, rng, drop16, scale, vec);
}
#endif
