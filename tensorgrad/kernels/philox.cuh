// Counter-based random numbers (Philox4x32-10, Salmon et al., SC 2011).
//
// A counter-based generator has no state to carry from thread to thread:
// the random bits of element (i, j) are a pure function philox(key, counter)
// of a key (the seed) and a counter built from the element's coordinates.
// That is what lets dropout live inside a fused kernel: the forward pass
// draws the mask from (seed, offset, coordinates) and the backward pass draws
// the same mask again from the same numbers, so no mask is ever stored.
//
// The (seed, offset) pair of one dropout call sits in device memory (4 uint32:
// seed lo, seed hi, offset, unused), written by rng_advance (dropout.cu), so a CUDA
// graph that replays the step draws new masks every replay.
#pragma once

struct Philox4 { unsigned int x, y, z, w; };

__device__ __forceinline__ Philox4 philox4x32_10(Philox4 c, unsigned int k0, unsigned int k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        const unsigned int hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        const unsigned int hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        c = Philox4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
        k0 += 0x9E3779B9u;   // Weyl sequence key schedule
        k1 += 0xBB67AE85u;
    }
    return c;
}

// Eight 16-bit uniforms from one Philox call: lane u in 0..7 of the counter c.
__device__ __forceinline__ unsigned int philox_u16(const Philox4& r, int u) {
    const unsigned int w = (u >> 1) == 0 ? r.x : (u >> 1) == 1 ? r.y : (u >> 1) == 2 ? r.z : r.w;
    return (u & 1) ? (w >> 16) : (w & 0xFFFFu);
}

// Keep an element when its 16-bit uniform is >= drop16 = round(p * 65536):
// the keep probability is 1 - drop16 / 65536.
__device__ __forceinline__ Philox4 philox_draw(const unsigned int* rng, unsigned int c0, unsigned int c1,
                                               unsigned int c2) {
    return philox4x32_10(Philox4{c0, c1, c2, rng[2]}, rng[0], rng[1]);
}
