/* Test values shared by the multi-rank tests and coll-bench's check: small
 * integers, so every float sum, product and average is exact in every dtype
 * (bfloat16 holds integers up to 256 exactly), and a reference computed in
 * int64, independently of the library's algorithms. */
#ifndef TESTVALS_H
#define TESTVALS_H
#include <math.h>
#include <stdint.h>

#include "coll.h"

/* the library's conversions, checked on their own in tests/unit/test_reduce.c */
float coll_half_to_float(uint16_t h);
uint16_t coll_float_to_half(float f);
float coll_bf16_to_float(uint16_t h);
uint16_t coll_float_to_bf16(float f);

static inline int64_t tv_value(coll_op_t op, coll_dtype_t dt, int r, size_t i) {
    int u = dt == COLL_UINT8;
    switch (op) {
    case COLL_PROD: {
        int v = (int)((i + (size_t)r * 3) % 3);
        return v == 0 ? 1 : v == 1 ? 2 : (u ? 3 : -1);
    }
    case COLL_MIN:
    case COLL_MAX: return (int64_t)((i * 31 + (size_t)r * 17) % 201) - (u ? 0 : 100);
    default: return (int64_t)((i * 7 + (size_t)r * 13) % 9) - (u ? 0 : 4);
    }
}

static inline void tv_store(coll_dtype_t dt, void *buf, size_t i, double v) {
    switch (dt) {
    case COLL_FLOAT32: ((float *)buf)[i] = (float)v; break;
    case COLL_FLOAT64: ((double *)buf)[i] = v; break;
    case COLL_FLOAT16: ((uint16_t *)buf)[i] = coll_float_to_half((float)v); break;
    case COLL_BFLOAT16: ((uint16_t *)buf)[i] = coll_float_to_bf16((float)v); break;
    case COLL_INT32: ((int32_t *)buf)[i] = (int32_t)v; break;
    case COLL_INT64: ((int64_t *)buf)[i] = (int64_t)v; break;
    case COLL_UINT8: ((uint8_t *)buf)[i] = (uint8_t)v; break;
    default: break;
    }
}

static inline double tv_load(coll_dtype_t dt, const void *buf, size_t i) {
    switch (dt) {
    case COLL_FLOAT32: return ((const float *)buf)[i];
    case COLL_FLOAT64: return ((const double *)buf)[i];
    case COLL_FLOAT16: return coll_half_to_float(((const uint16_t *)buf)[i]);
    case COLL_BFLOAT16: return coll_bf16_to_float(((const uint16_t *)buf)[i]);
    case COLL_INT32: return ((const int32_t *)buf)[i];
    case COLL_INT64: return (double)((const int64_t *)buf)[i];
    case COLL_UINT8: return ((const uint8_t *)buf)[i];
    default: return NAN;
    }
}

/* The reduction of all ranks' values at index i, as the dtype holds it. */
static inline double tv_expected(coll_op_t op, coll_dtype_t dt, size_t i, int nranks) {
    int64_t acc = tv_value(op, dt, 0, i);
    for (int r = 1; r < nranks; r++) {
        int64_t v = tv_value(op, dt, r, i);
        switch (op) {
        case COLL_PROD: acc *= v; break;
        case COLL_MIN: acc = v < acc ? v : acc; break;
        case COLL_MAX: acc = v > acc ? v : acc; break;
        default: acc += v; break;
        }
    }
    if (op != COLL_AVG) return (double)acc;
    switch (dt) {
    case COLL_FLOAT32: return (float)acc / (float)nranks;
    case COLL_FLOAT64: return (double)acc / nranks;
    case COLL_FLOAT16: return coll_half_to_float(coll_float_to_half((float)acc / (float)nranks));
    case COLL_BFLOAT16: return coll_bf16_to_float(coll_float_to_bf16((float)acc / (float)nranks));
    case COLL_UINT8: return (double)(uint8_t)(acc / nranks);
    default: return (double)(acc / nranks);
    }
}

#endif
