/* Unit tests of the reduction kernels and the 16-bit float conversions,
 * against scalar references written independently here (and, for float16,
 * the compiler's own _Float16 conversions where it has them). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../collectives/coll_internal.h"
#include "../common/testvals.h"

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint64_t rng = 88172645463325252ull;
static uint32_t next_u32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static void half_known_values(void **state) {
    (void)state;
    assert_int_equal(coll_float_to_half(1.0f), 0x3c00);
    assert_int_equal(coll_float_to_half(-2.0f), 0xc000);
    assert_int_equal(coll_float_to_half(65504.0f), 0x7bff);    /* largest finite */
    assert_int_equal(coll_float_to_half(65520.0f), 0x7c00);    /* rounds to Inf */
    assert_int_equal(coll_float_to_half(1e9f), 0x7c00);        /* overflow */
    assert_int_equal(coll_float_to_half(5.960464477539063e-08f), 0x0001); /* smallest subnormal */
    assert_int_equal(coll_float_to_half(2.98e-08f), 0x0000);   /* below half of it */
    assert_int_equal(coll_float_to_half(1.0f + 1.0f / 2048), 0x3c00); /* tie: to even */
    assert_int_equal(coll_float_to_half(1.0f + 3.0f / 2048), 0x3c02); /* tie: to even (up) */
    assert_true((coll_float_to_half(NAN) & 0x7c00) == 0x7c00 && (coll_float_to_half(NAN) & 0x3ff));
    assert_true(coll_half_to_float(0x3555) > 0.3332f && coll_half_to_float(0x3555) < 0.3334f);
    assert_true(isinf(coll_half_to_float(0xfc00)) && coll_half_to_float(0xfc00) < 0);
    assert_true(isnan(coll_half_to_float(0x7e00)));
    assert_true(coll_half_to_float(0x0001) == 5.960464477539063e-08f);
}

/* every half survives half -> float -> half */
static void half_roundtrip_all(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = coll_half_to_float((uint16_t)h);
        if (isnan(f)) {
            assert_true((h & 0x7c00) == 0x7c00 && (h & 0x3ff));
            continue;
        }
        assert_int_equal(coll_float_to_half(f), h);
    }
}

#ifdef __FLT16_MAX__
/* against the compiler's _Float16, on all halves and a million floats */
static void half_matches_compiler(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t b = (uint16_t)h;
        _Float16 x;
        memcpy(&x, &b, 2);
        float want = (float)x, got = coll_half_to_float(b);
        if (isnan(want)) assert_true(isnan(got));
        else assert_int_equal(f2u(got), f2u(want));
    }
    for (int i = 0; i < 1000000; i++) {
        float f = u2f(next_u32() ^ ((uint32_t)next_u32() << 16));
        if (i % 2) f = ldexpf(f, -(int)(next_u32() % 20)); /* more values near the half range */
        _Float16 x = (_Float16)f;
        uint16_t want;
        memcpy(&want, &x, 2);
        uint16_t got = coll_float_to_half(f);
        if (isnan(f)) assert_true(isnan(coll_half_to_float(got)));
        else if (got != want) fail_msg("float %a (0x%08x): got 0x%04x, want 0x%04x", (double)f, f2u(f), got, want);
    }
}
#endif

/* bfloat16 reference: the top half of the float, rounded to nearest even */
static uint16_t bf16_ref(float f) {
    uint32_t u = f2u(f);
    if (isnan(f)) return (uint16_t)((u >> 16) | 0x40);
    uint32_t hi = u >> 16, lo = u & 0xffff;
    if (lo > 0x8000 || (lo == 0x8000 && (hi & 1))) hi++;
    return (uint16_t)hi;
}

static void bf16_conversions(void **state) {
    (void)state;
    assert_int_equal(coll_float_to_bf16(1.0f), 0x3f80);
    assert_int_equal(coll_float_to_bf16(3.14159265f), 0x4049);
    assert_int_equal(coll_float_to_bf16(1.0f + 1.0f / 256), 0x3f80); /* tie to even */
    assert_int_equal(coll_float_to_bf16(1.0f + 3.0f / 256), 0x3f82);
    for (int i = 0; i < 1000000; i++) {
        float f = u2f(next_u32() ^ ((uint32_t)next_u32() << 16));
        uint16_t got = coll_float_to_bf16(f), want = bf16_ref(f);
        if (isnan(f)) assert_true(isnan(coll_bf16_to_float(got)));
        else assert_int_equal(got, want);
    }
    for (uint32_t h = 0; h < 65536; h++) {
        float f = coll_bf16_to_float((uint16_t)h);
        assert_int_equal(f2u(f), h << 16);
    }
}

/* ---- kernels against a scalar reference, every dtype x op ---- */
#define ld tv_load
#define st tv_store

static double ref_op(coll_dtype_t dt, coll_op_t op, double x, double y) {
    double r;
    switch (op) {
    case COLL_PROD: r = x * y; break;
    case COLL_MIN: r = x < y ? x : y; break;
    case COLL_MAX: r = x > y ? x : y; break;
    default: r = x + y; break;
    }
    if (dt == COLL_FLOAT32 || dt == COLL_FLOAT16 || dt == COLL_BFLOAT16) r = (float)r;
    if (dt == COLL_UINT8) r = (double)(uint8_t)(int)r; /* wraps */
    return r;
}

static void kernels_all(void **state) {
    (void)state;
    static const size_t ns[] = {0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 1000, 1027};
    for (int dt = 0; dt < COLL_NUM_DTYPES; dt++)
        for (int op = 0; op < COLL_NUM_OPS; op++)
            for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++)
                for (int misalign = 0; misalign < 2; misalign++) {
                    const size_t n = ns[t], es = coll_dtype_size((coll_dtype_t)dt);
                    char *a = malloc((n + 1) * es), *b = malloc((n + 1) * es), *d = malloc((n + 1) * es);
                    char *a1 = a + misalign * es, *b1 = b + misalign * es, *d1 = d + misalign * es;
                    for (size_t i = 0; i < n; i++) {
                        /* small integers and simple fractions: exact in every type */
                        double x = (double)((int)(next_u32() % 21) - (dt == COLL_UINT8 ? 0 : 10));
                        double y = (double)((int)(next_u32() % 21) - (dt == COLL_UINT8 ? 0 : 10));
                        if (dt <= COLL_BFLOAT16 && op != COLL_PROD) x += 0.5, y -= 0.25;
                        st((coll_dtype_t)dt, a1, i, x);
                        st((coll_dtype_t)dt, b1, i, y);
                    }
                    coll_reduce_kernel((coll_dtype_t)dt, (coll_op_t)op, d1, a1, b1, n);
                    for (size_t i = 0; i < n; i++) {
                        double w = ref_op((coll_dtype_t)dt, (coll_op_t)op, ld((coll_dtype_t)dt, a1, i),
                                          ld((coll_dtype_t)dt, b1, i));
                        if (ld((coll_dtype_t)dt, d1, i) != w)
                            fail_msg("%s %s n=%zu [%zu]: got %g want %g", coll_dtype_name((coll_dtype_t)dt),
                                     coll_op_name((coll_op_t)op), n, i, ld((coll_dtype_t)dt, d1, i), w);
                    }
                    /* in-place shape gives the same */
                    coll_reduce_kernel((coll_dtype_t)dt, (coll_op_t)op, a1, a1, b1, n);
                    assert_memory_equal(a1, d1, n * es);
                    free(a), free(b), free(d);
                }
}

static void int_sum_wraps(void **state) {
    (void)state;
    int32_t a = INT32_MAX, b = 1, d;
    coll_reduce_kernel(COLL_INT32, COLL_SUM, &d, &a, &b, 1);
    assert_int_equal(d, INT32_MIN);
    uint8_t x = 250, y = 10, z;
    coll_reduce_kernel(COLL_UINT8, COLL_SUM, &z, &x, &y, 1);
    assert_int_equal(z, 4);
}

static void avg_divides_once(void **state) {
    (void)state;
    float f[3] = {10, -7, 1};
    coll_avg_finish(COLL_FLOAT32, f, 3, 4);
    assert_true(f[0] == 2.5f && f[1] == -1.75f && f[2] == 0.25f);
    int32_t i[2] = {10, -7};
    coll_avg_finish(COLL_INT32, i, 2, 4);
    assert_int_equal(i[0], 2);
    assert_int_equal(i[1], -1); /* truncates toward zero */
    uint16_t h = coll_float_to_half(3.0f);
    coll_avg_finish(COLL_FLOAT16, &h, 1, 2);
    assert_true(coll_half_to_float(h) == 1.5f);
    double dd = 7;
    coll_avg_finish(COLL_FLOAT64, &dd, 1, 1); /* one rank: unchanged */
    assert_true(dd == 7);
    /* uint8 at 256 ranks and more: the (wrapped) sum divided by the true rank
     * count, not by the count cast to uint8 (0 at 256, 44 at 300) */
    uint8_t u[3] = {255, 200, 7};
    coll_avg_finish(COLL_UINT8, u, 3, 3);
    assert_true(u[0] == 85 && u[1] == 66 && u[2] == 2);
    uint8_t w[2] = {255, 100};
    coll_avg_finish(COLL_UINT8, w, 2, 256);
    assert_true(w[0] == 0 && w[1] == 0);
    w[0] = 255;
    coll_avg_finish(COLL_UINT8, w, 1, 300);
    assert_int_equal(w[0], 0);
    w[0] = 250;
    coll_avg_finish(COLL_UINT8, w, 1, 255);
    assert_int_equal(w[0], 0);
    w[0] = 255;
    coll_avg_finish(COLL_UINT8, w, 1, 255);
    assert_int_equal(w[0], 1);
}

/* coll_reduce_last (the fused sum-and-divide of an AVG's last step) is
 * bitwise the kernel followed by coll_avg_finish, for every dtype and op,
 * in place and not, at several rank counts, on random values (float32 and
 * float64 from random bits: signs, exponents, infinities and NaNs
 * included). */
static void reduce_last_as_two_passes(void **state) {
    (void)state;
    enum { N = 1027 };
    static unsigned char a[N * 8], b[N * 8], want[N * 8], got[N * 8];
    for (int dt = 0; dt < COLL_NUM_DTYPES; dt++)
        for (int op = 0; op < COLL_NUM_OPS; op++)
            for (int p = 1; p <= 7; p++)
                for (int inplace = 0; inplace < 2; inplace++) {
                    const size_t bytes = N * coll_dtype_size((coll_dtype_t)dt);
                    for (size_t i = 0; i < bytes; i++) a[i] = (unsigned char)next_u32(), b[i] = (unsigned char)next_u32();
                    memcpy(want, a, bytes);
                    coll_reduce_kernel((coll_dtype_t)dt, (coll_op_t)op, want, want, b, N);
                    if (op == COLL_AVG) coll_avg_finish((coll_dtype_t)dt, want, N, p);
                    if (inplace) {
                        memcpy(got, a, bytes);
                        coll_reduce_last((coll_dtype_t)dt, (coll_op_t)op, got, got, b, N, p);
                    } else {
                        memset(got, 0xA5, bytes);
                        coll_reduce_last((coll_dtype_t)dt, (coll_op_t)op, got, a, b, N, p);
                    }
                    if (memcmp(want, got, bytes))
                        fail_msg("coll_reduce_last differs from kernel + avg: dtype %d op %d ranks %d in place %d", dt,
                                 op, p, inplace);
                }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reduce_last_as_two_passes),
        cmocka_unit_test(half_known_values),
        cmocka_unit_test(half_roundtrip_all),
#ifdef __FLT16_MAX__
        cmocka_unit_test(half_matches_compiler),
#endif
        cmocka_unit_test(bf16_conversions),
        cmocka_unit_test(kernels_all),
        cmocka_unit_test(int_sum_wraps),
        cmocka_unit_test(avg_divides_once),
    };
    return cmocka_run_group_tests_name("reduce", tests, NULL, NULL);
}
