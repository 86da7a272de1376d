/* Reduction kernels, one per dtype x op, in two shapes: dst = a op b with no
 * aliasing (restrict, so the compiler vectorises without run-time overlap
 * checks) and dst op= b for the in-place case dst == a. Each is compiled
 * twice, for AVX2 and for the baseline ISA, and picked at load time
 * (target_clones), so one binary runs everywhere and uses AVX2 where the CPU
 * has it. float16 and bfloat16 are widened to float32, reduced, and rounded
 * back to nearest-even; the conversions are branch-free so they vectorise.
 * Signed integer sums and products wrap (computed unsigned), as in MPI
 * implementations, instead of being undefined behaviour. */
#include <string.h>

#include "coll_internal.h"
#include "half.h"

/* not under ThreadSanitizer: the clones' resolver runs before TSan is set up
 * and crashes in its instrumentation */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(COLL_NO_CLONES) && \
    !defined(__SANITIZE_THREAD__)
#define KERNEL __attribute__((target_clones("avx2", "default")))
#else
#define KERNEL
#endif

float coll_half_to_float(uint16_t h) { return h2f(h); }
uint16_t coll_float_to_half(float f) { return f2h(f); }
float coll_bf16_to_float(uint16_t h) { return b2f(h); }
uint16_t coll_float_to_bf16(float f) { return f2b(f); }

#define SUM(x, y) ((x) + (y))
#define PROD(x, y) ((x) * (y))
#define MIN(x, y) ((x) < (y) ? (x) : (y))
#define MAX(x, y) ((x) > (y) ? (x) : (y))

typedef void (*kern3_t)(void *, const void *, const void *, size_t);
typedef void (*kern2_t)(void *, const void *, size_t);

/* Direct types: T is the element type, U the type the op is computed in. */
#define DIRECT(NAME, T, U, OP)                                                              \
    KERNEL static void NAME##_3(void *dv, const void *av, const void *bv, size_t n) {       \
        T *restrict d = dv;                                                                 \
        const T *restrict a = av, *restrict b = bv;                                         \
        for (size_t i = 0; i < n; i++) d[i] = (T)OP((U)a[i], (U)b[i]);                      \
    }                                                                                       \
    KERNEL static void NAME##_2(void *dv, const void *bv, size_t n) {                       \
        T *restrict d = dv;                                                                 \
        const T *restrict b = bv;                                                           \
        for (size_t i = 0; i < n; i++) d[i] = (T)OP((U)d[i], (U)b[i]);                      \
    }

/* 16-bit floats: widen, reduce in float32, round back. */
#define WIDENED(NAME, TOF, FROMF, OP)                                                       \
    KERNEL static void NAME##_3(void *dv, const void *av, const void *bv, size_t n) {       \
        uint16_t *restrict d = dv;                                                          \
        const uint16_t *restrict a = av, *restrict b = bv;                                  \
        for (size_t i = 0; i < n; i++) d[i] = FROMF(OP(TOF(a[i]), TOF(b[i])));              \
    }                                                                                       \
    KERNEL static void NAME##_2(void *dv, const void *bv, size_t n) {                       \
        uint16_t *restrict d = dv;                                                          \
        const uint16_t *restrict b = bv;                                                    \
        for (size_t i = 0; i < n; i++) d[i] = FROMF(OP(TOF(d[i]), TOF(b[i])));              \
    }

#define ALL_OPS(GEN, NAME, ...)                                                             \
    GEN(NAME##_sum, __VA_ARGS__, SUM)                                                       \
    GEN(NAME##_prod, __VA_ARGS__, PROD)                                                     \
    GEN(NAME##_min, __VA_ARGS__, MIN)                                                       \
    GEN(NAME##_max, __VA_ARGS__, MAX)

ALL_OPS(DIRECT, f32, float, float)
ALL_OPS(DIRECT, f64, double, double)
ALL_OPS(WIDENED, f16, h2f, f2h)
ALL_OPS(WIDENED, b16, b2f, f2b)
/* integers: sum and prod wrap in the unsigned type; min/max compare signed */
DIRECT(i32_sum, int32_t, uint32_t, SUM)
DIRECT(i32_prod, int32_t, uint32_t, PROD)
DIRECT(i32_min, int32_t, int32_t, MIN)
DIRECT(i32_max, int32_t, int32_t, MAX)
DIRECT(i64_sum, int64_t, uint64_t, SUM)
DIRECT(i64_prod, int64_t, uint64_t, PROD)
DIRECT(i64_min, int64_t, int64_t, MIN)
DIRECT(i64_max, int64_t, int64_t, MAX)
ALL_OPS(DIRECT, u8, uint8_t, unsigned)

#define ROW(NAME, S) {NAME##_sum_##S, NAME##_prod_##S, NAME##_min_##S, NAME##_max_##S, NAME##_sum_##S}
#define TABLE(S) {ROW(f32, S), ROW(f64, S), ROW(f16, S), ROW(b16, S), ROW(i32, S), ROW(i64, S), ROW(u8, S)}
static const kern3_t k3[COLL_NUM_DTYPES][COLL_NUM_OPS] = TABLE(3);
static const kern2_t k2[COLL_NUM_DTYPES][COLL_NUM_OPS] = TABLE(2);

void coll_reduce_kernel(coll_dtype_t dt, coll_op_t op, void *dst, const void *a, const void *b,
                        size_t n) {
    if (dst == a) k2[dt][op](dst, b, n);
    else k3[dt][op](dst, a, b, n);
}

#define AVG_DIRECT(NAME, T, DIV)                                                            \
    KERNEL static void NAME(void *bv, size_t n, int p) {                                    \
        T *restrict b = bv;                                                                 \
        const T q = (T)p;                                                                   \
        for (size_t i = 0; i < n; i++) b[i] = DIV(b[i], q);                                 \
    }
#define AVG_WIDENED(NAME, TOF, FROMF)                                                       \
    KERNEL static void NAME(void *bv, size_t n, int p) {                                    \
        uint16_t *restrict b = bv;                                                          \
        const float q = (float)p;                                                           \
        for (size_t i = 0; i < n; i++) b[i] = FROMF(TOF(b[i]) / q);                         \
    }
#define DIV(x, y) ((x) / (y))
AVG_DIRECT(avg_f32, float, DIV)
AVG_DIRECT(avg_f64, double, DIV)
AVG_WIDENED(avg_f16, h2f, f2h)
AVG_WIDENED(avg_b16, b2f, f2b)
AVG_DIRECT(avg_i32, int32_t, DIV)
AVG_DIRECT(avg_i64, int64_t, DIV)
/* not AVG_DIRECT: (uint8_t)p wraps at 256 ranks (a division by zero) */
KERNEL static void avg_u8(void *bv, size_t n, int p) {
    uint8_t *restrict b = bv;
    const unsigned q = (unsigned)p;
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(b[i] / q);
}

void coll_avg_finish(coll_dtype_t dt, void *buf, size_t n, int nranks) {
    static void (*const f[COLL_NUM_DTYPES])(void *, size_t, int) = {
        avg_f32, avg_f64, avg_f16, avg_b16, avg_i32, avg_i64, avg_u8};
    if (nranks > 1) f[dt](buf, n, nranks);
}

/* The last step of an AVG: d = (a + b) / p in one pass, as the sum then the
 * division would round it (float arithmetic, no contraction across the
 * division), instead of a second pass over the result: at 2 ranks that
 * pass re-read and re-wrote every rank's whole shard. */
#define SUM_DIV(NAME, T)                                                                    \
    KERNEL static void NAME##_3(void *dv, const void *av, const void *bv, size_t n, int p) { \
        T *restrict d = dv;                                                                 \
        const T *restrict a = av, *restrict b = bv;                                         \
        const T q = (T)p;                                                                   \
        for (size_t i = 0; i < n; i++) d[i] = (T)(a[i] + b[i]) / q;                         \
    }                                                                                       \
    KERNEL static void NAME##_2(void *dv, const void *bv, size_t n, int p) {                \
        T *restrict d = dv;                                                                 \
        const T *restrict b = bv;                                                           \
        const T q = (T)p;                                                                   \
        for (size_t i = 0; i < n; i++) d[i] = (T)(d[i] + b[i]) / q;                         \
    }
SUM_DIV(sumdiv_f32, float)
SUM_DIV(sumdiv_f64, double)

void coll_reduce_last(coll_dtype_t dt, coll_op_t op, void *dst, const void *a, const void *b, size_t n,
                      int nranks) {
    if (op == COLL_AVG && nranks > 1 && (dt == COLL_FLOAT32 || dt == COLL_FLOAT64)) {
        if (dst == a) (dt == COLL_FLOAT32 ? sumdiv_f32_2 : sumdiv_f64_2)(dst, b, n, nranks);
        else (dt == COLL_FLOAT32 ? sumdiv_f32_3 : sumdiv_f64_3)(dst, a, b, n, nranks);
        return;
    }
    coll_reduce_kernel(dt, op, dst, a, b, n);
    if (op == COLL_AVG) coll_avg_finish(dt, dst, n, nranks);
}
