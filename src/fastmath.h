/* expf and tanhf in a form the compiler vectorises (libm's are calls, one
 * element at a time: a GPT's GELU spent 40% of the step in tanhf). Cephes'
 * polynomials: expf within a few ulp over [-87, 88] (clamped outside),
 * tanhf within 2e-7 absolute; tests/unit/test_graph.c checks both against
 * libm over a sweep. */
#ifndef DDP_FASTMATH_H
#define DDP_FASTMATH_H

#include <stdint.h>
#include <string.h>

/* c ? a : b as bit operations: GCC (without -fno-signed-zeros) leaves a
 * float select or clamp as a branch, and a branch stops the vectoriser */
static inline float fsel(int c, float a, float b) {
    uint32_t ua, ub;
    memcpy(&ua, &a, sizeof ua);
    memcpy(&ub, &b, sizeof ub);
    const uint32_t m = -(uint32_t)(c != 0), u = (ua & m) | (ub & ~m);
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}

static inline float fast_expf(float x) {
    x = fsel(x < -87.0f, -87.0f, x);
    x = fsel(x > 88.0f, 88.0f, x);
    /* x = n ln2 + r, |r| <= ln2 / 2; e^x = 2^n e^r */
    const float t = x * 1.44269504088896341f;
    const int32_t k = (int32_t)(t + __builtin_copysignf(0.5f, t)); /* round to nearest (floorf may be a call) */
    const float n = (float)k;
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (k + 127) * (1 << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float fast_tanhf(float x) {
    const float a = __builtin_fabsf(x);
    /* small |x|: an odd polynomial (no cancellation); else 1 - 2 / (e^2|x| + 1) */
    const float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    const float small = p * z * x + x;
    const float big = 1.0f - 2.0f / (fast_expf(2.0f * fsel(a > 10.0f, 10.0f, a)) + 1.0f);
    return fsel(a < 0.625f, small, __builtin_copysignf(big, x));
}

#endif
