/* float16 and bfloat16 <-> float32, branch-free so loops over them
 * vectorise; shared by libcoll's reductions and the runtime's gradient
 * compression (src/compress.c), so both round identically. Header-only. */
#ifndef COLL_HALF_H
#define COLL_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* binary16 -> binary32: shift the exponent/mantissa into place and rescale
 * by 2^112 with a float multiply, which also normalises subnormals; Inf/NaN
 * get the all-ones exponent back. */
static inline float h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    float v = u2f((uint32_t)(h & 0x7fffu) << 13) * u2f((254u - 15u) << 23);
    uint32_t o = f2u(v);
    o |= (255u << 23) & -(uint32_t)(v >= u2f((127u + 16u) << 23));
    return u2f(o | sign);
}

/* binary32 -> binary16, round to nearest even; overflow gives Inf, NaN stays
 * NaN (quiet), subnormal results are rounded by a float add. */
static inline uint16_t f2h(float f) {
    uint32_t x = f2u(f);
    uint32_t sign = (x & 0x80000000u) >> 16;
    x &= 0x7fffffffu;
    uint32_t big = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
    uint32_t sub = f2u(u2f(x) + u2f(((127u - 15u) + (23u - 10u) + 1u) << 23)) -
                   (((127u - 15u) + (23u - 10u) + 1u) << 23);
    uint32_t nrm = (x + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((x >> 13) & 1u)) >> 13;
    /* selects as masks: the compiler vectorises them without branches */
    uint32_t is_big = -(uint32_t)(x >= ((127u + 16u) << 23)), is_sub = -(uint32_t)(x < (113u << 23));
    uint32_t o = (big & is_big) | (~is_big & ((sub & is_sub) | (nrm & ~is_sub)));
    return (uint16_t)(o | sign);
}

static inline float b2f(uint16_t h) { return u2f((uint32_t)h << 16); }

static inline uint16_t f2b(float f) {
    uint32_t x = f2u(f);
    uint32_t r = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    uint32_t is_nan = -(uint32_t)((x & 0x7fffffffu) > 0x7f800000u);
    return (uint16_t)((((x >> 16) | 0x40u) & is_nan) | (r & ~is_nan));
}

#endif
