/* Unit tests of the gradient compression kernels (src/compress.c): the
 * 16-bit casts against libcoll's conversions, and PowerSGD's steps against
 * double-precision references written here. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../collectives/coll_internal.h"
#include "compress.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double uniform(void) { /* [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-52 - 1.0;
}
static float *randv(size_t n) {
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = (float)uniform();
    return v;
}

static void casts_match_libcoll(void **state) {
    (void)state;
    const size_t n = 1003;
    float *x = randv(n), *back = malloc(n * sizeof *back);
    uint16_t *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) x[i] *= (float)(i % 7 == 0 ? 7e4 : i % 5 == 0 ? 1e-6 : 3.0);
    x[0] = NAN, x[1] = INFINITY, x[2] = -0.0f;
    for (int kind = COMPRESS_BF16; kind <= COMPRESS_FP16; kind++) {
        compress_to16((compress_t)kind, h, x, n, 0.25f);
        compress_from16((compress_t)kind, back, h, n);
        for (size_t i = 0; i < n; i++) {
            const uint16_t want = kind == COMPRESS_FP16 ? coll_float_to_half(x[i] * 0.25f) : coll_float_to_bf16(x[i] * 0.25f);
            assert_int_equal(h[i], want);
            const float wb = kind == COMPRESS_FP16 ? coll_half_to_float(want) : coll_bf16_to_float(want);
            assert_true(memcmp(&back[i], &wb, 4) == 0);
        }
    }
    free(x), free(back), free(h);
}

static void worth_it(void **state) {
    (void)state;
    assert_true(psgd_worth_it(1024, 784, 4));
    assert_false(psgd_worth_it(1024, 1, 4)); /* a bias */
    assert_false(psgd_worth_it(8, 8, 4));    /* 64 floats against 64 sent */
    assert_true(psgd_worth_it(16, 16, 4));   /* 256 against 128 */
}

/* Gram-Schmidt in double on a copy: the reference. */
static void ortho_ref(double *p, size_t n, int r) {
    for (int k = 0; k < r; k++) {
        for (int l = 0; l < k; l++) {
            double c = 0;
            for (size_t i = 0; i < n; i++) c += p[i * r + l] * p[i * r + k];
            for (size_t i = 0; i < n; i++) p[i * r + k] -= c * p[i * r + l];
        }
        double s = 0;
        for (size_t i = 0; i < n; i++) s += p[i * r + k] * p[i * r + k];
        for (size_t i = 0; i < n; i++) p[i * r + k] /= sqrt(s);
    }
}

static void orthogonalise_matches_double(void **state) {
    (void)state;
    const size_t n = 301;
    const int r = 5;
    float *p = randv(n * r);
    double *ref = malloc(n * r * sizeof *ref);
    for (size_t i = 0; i < n * r; i++) ref[i] = p[i];
    ortho_ref(ref, n, r);
    psgd_orthogonalise(p, n, r, 1e-4f);
    for (size_t i = 0; i < n * r; i++) assert_true(fabs(p[i] - ref[i]) < 1e-5);
    for (int a = 0; a < r; a++)
        for (int b = 0; b < r; b++) {
            double d = 0;
            for (size_t i = 0; i < n; i++) d += (double)p[i * r + a] * p[i * r + b];
            assert_true(fabs(d - (a == b)) < 1e-5);
        }
    free(p), free(ref);
}

static void orthogonalise_rank_deficient(void **state) {
    (void)state;
    const size_t n = 64;
    const int r = 4;
    float *p = randv(n * r);
    for (size_t i = 0; i < n; i++) p[i * r + 2] = p[i * r + 0] - 2 * p[i * r + 1]; /* column 2 depends on 0 and 1 */
    for (size_t i = 0; i < n; i++) p[i * r + 3] = 0; /* an all-zero column */
    psgd_orthogonalise(p, n, r, 1e-4f);
    for (size_t i = 0; i < n; i++) {
        assert_true(isfinite(p[i * r + 0]) && isfinite(p[i * r + 1]));
        assert_true(p[i * r + 2] == 0 && p[i * r + 3] == 0);
    }
    free(p);
}

/* One whole PowerSGD step of `R` simulated ranks on an n x m matrix: g[k]
 * the gradients (replaced by the approximation), st[k] the states, p the
 * shared P (n x r, zero before the first step), qt the shared Q; the
 * averages as an all-reduce takes them (float, in rank order). */
static void psgd_step(float **g, float **st, int R, size_t n, size_t m, int r, float *p, float *qt) {
    float *pavg = calloc(n * r, sizeof *pavg), *pi = malloc(n * r * sizeof *pi);
    float *q = calloc(m * r, sizeof *q), *qi = malloc(m * r * sizeof *qi);
    for (int k = 0; k < R; k++) {
        memcpy(pi, p, n * r * sizeof *pi);
        psgd_feedback_project(g[k], st[k], pi, n, m, qt, r, pi); /* in place, as the engine calls it */
        for (size_t i = 0; i < n * r; i++) pavg[i] += pi[i] / (float)R;
    }
    psgd_orthogonalise(pavg, n, r, 1e-4f);
    for (int k = 0; k < R; k++) {
        psgd_project_back(st[k], n, m, pavg, r, qi);
        for (size_t i = 0; i < m * r; i++) q[i] += qi[i] / (float)R;
    }
    for (int k = 0; k < R; k++) psgd_reconstruct(g[k], n, m, pavg, q, r);
    memcpy(qt, q, m * r * sizeof *q);
    memcpy(p, pavg, n * r * sizeof *p);
    free(pavg), free(pi), free(q), free(qi);
}

static void exact_when_rank_suffices(void **state) {
    (void)state;
    const size_t n = 40, m = 30;
    const int r = 4;
    float *a = randv(n * 2), *b = randv(m * 2), *g = malloc(n * m * sizeof *g), *st = calloc(n * m, sizeof *st);
    float *want = malloc(n * m * sizeof *want), *qt = malloc(m * r * sizeof *qt), *p = calloc(n * r, sizeof *p);
    float *e = malloc(n * m * sizeof *e);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < m; j++) want[i * m + j] = g[i * m + j] = a[i * 2] * b[j * 2] + a[i * 2 + 1] * b[j * 2 + 1];
    psgd_init_q(qt, m, r, 7, 0);
    psgd_step(&g, &st, 1, n, m, r, p, qt);
    psgd_residual(st, n, m, p, qt, r, e);
    for (size_t i = 0; i < n * m; i++) {
        assert_true(fabsf(g[i] - want[i]) < 1e-5f);
        assert_true(fabsf(e[i]) < 1e-5f);
    }
    free(a), free(b), free(g), free(st), free(want), free(qt), free(p), free(e);
}

/* sum_i (G_i + E_i) = R * approx + sum_i E_i': nothing is lost. Over several
 * steps with warm start, with R = 3 ranks and r = 2 and 6 (two blocks). */
static void error_feedback_invariant(void **state) {
    (void)state;
    const int R = 3;
    const size_t n = 33, m = 19;
    for (int r = 2; r <= 6; r += 4) {
        float *g[3], *st[3], *e[3], *qt = malloc(m * r * sizeof *qt), *p = calloc(n * r, sizeof *p);
        for (int k = 0; k < R; k++)
            g[k] = malloc(n * m * sizeof(float)), st[k] = calloc(n * m, sizeof(float)), e[k] = calloc(n * m, sizeof(float));
        psgd_init_q(qt, m, r, 1, 3);
        for (int step = 0; step < 4; step++) {
            double *before = calloc(n * m, sizeof *before);
            for (int k = 0; k < R; k++) {
                float *fresh = randv(n * m);
                memcpy(g[k], fresh, n * m * sizeof(float));
                free(fresh);
                psgd_residual(st[k], n, m, p, qt, r, e[k]); /* what pass 1 will add */
                for (size_t i = 0; i < n * m; i++) before[i] += (double)g[k][i] + e[k][i];
            }
            psgd_step(g, st, R, n, m, r, p, qt);
            for (int k = 0; k < R; k++) psgd_residual(st[k], n, m, p, qt, r, e[k]);
            for (size_t i = 0; i < n * m; i++) {
                for (int k = 1; k < R; k++) assert_true(g[k][i] == g[0][i]); /* every rank applies the same */
                double after = (double)R * g[0][i];
                for (int k = 0; k < R; k++) after += e[k][i];
                assert_true(fabs(after - before[i]) < 1e-4 * (1 + fabs(before[i])));
            }
            free(before);
        }
        for (int k = 0; k < R; k++) free(g[k]), free(st[k]), free(e[k]);
        free(qt), free(p);
    }
}

/* Resuming from a checkpoint stores the residual as the state with P = 0:
 * the next step must then be bitwise the same as without the interruption. */
static void residual_restart_is_exact(void **state) {
    (void)state;
    const size_t n = 21, m = 37;
    for (int r = 3; r <= 7; r += 4) {
        float *g = randv(n * m), *g2 = malloc(n * m * sizeof *g2), *st = calloc(n * m, sizeof *st);
        float *p = calloc(n * r, sizeof *p), *qt = malloc(m * r * sizeof *qt);
        psgd_init_q(qt, m, r, 3, 0);
        psgd_step(&g, &st, 1, n, m, r, p, qt); /* a first step leaves a residual */
        float *st2 = malloc(n * m * sizeof *st2), *p2 = calloc(n * r, sizeof *p2), *qt2 = malloc(m * r * sizeof *qt2);
        psgd_residual(st, n, m, p, qt, r, st2); /* the checkpoint */
        memcpy(qt2, qt, m * r * sizeof *qt2);
        float *fresh = randv(n * m);
        memcpy(g, fresh, n * m * sizeof *g);
        memcpy(g2, fresh, n * m * sizeof *g2);
        psgd_step(&g, &st, 1, n, m, r, p, qt);
        psgd_step(&g2, &st2, 1, n, m, r, p2, qt2);
        assert_memory_equal(g, g2, n * m * sizeof *g);
        assert_memory_equal(st, st2, n * m * sizeof *st);
        free(g), free(g2), free(st), free(st2), free(p), free(p2), free(qt), free(qt2), free(fresh);
    }
}

/* The fused kernels against plain double loops, at sizes that are not
 * multiples of the vector width, with one block of Q rows and with two. */
static void kernels_match_naive(void **state) {
    (void)state;
    const size_t n = 7, m = 13;
    for (int r = 3; r <= 6; r += 3) {
        float *g = randv(n * m), *st = randv(n * m), *qt = randv(m * r), *pold = randv(n * r), *p = malloc(n * r * sizeof *p);
        float *st0 = malloc(n * m * sizeof *st0), *q2 = malloc(m * r * sizeof *q2), *e = malloc(n * m * sizeof *e);
        memcpy(st0, st, n * m * sizeof *st0);
        psgd_feedback_project(g, st, pold, n, m, qt, r, p);
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < m; j++) {
                double a = 0;
                for (int k = 0; k < r; k++) a += (double)pold[i * r + k] * qt[k * m + j];
                assert_true(fabs(st[i * m + j] - (g[i * m + j] + st0[i * m + j] - a)) < 1e-5);
            }
            for (int k = 0; k < r; k++) {
                double s = 0;
                for (size_t j = 0; j < m; j++) s += (double)st[i * m + j] * qt[k * m + j];
                assert_true(fabs(p[i * r + k] - s) < 1e-4);
            }
        }
        psgd_project_back(st, n, m, p, r, q2);
        for (int k = 0; k < r; k++)
            for (size_t j = 0; j < m; j++) {
                double s = 0;
                for (size_t i = 0; i < n; i++) s += (double)st[i * m + j] * p[i * r + k];
                assert_true(fabs(q2[k * m + j] - s) < 1e-4);
            }
        psgd_reconstruct(g, n, m, p, q2, r);
        psgd_residual(st, n, m, p, q2, r, e);
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < m; j++) {
                double a = 0;
                for (int k = 0; k < r; k++) a += (double)p[i * r + k] * q2[k * m + j];
                assert_true(fabs(g[i * m + j] - a) < 1e-4);
                assert_true(fabs(e[i * m + j] - (st[i * m + j] - a)) < 1e-4);
            }
        free(g), free(st), free(qt), free(pold), free(p), free(st0), free(q2), free(e);
    }
}

static void init_q_is_deterministic(void **state) {
    (void)state;
    float a[30], b[30], c[30];
    psgd_init_q(a, 10, 3, 5, 1);
    psgd_init_q(b, 10, 3, 5, 1);
    psgd_init_q(c, 10, 3, 5, 2);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    double s = 0;
    for (int i = 0; i < 30; i++) assert_true(isfinite(a[i])), s += a[i] * a[i];
    assert_true(s > 5 && s < 90); /* about 30 for standard normals */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(casts_match_libcoll),
        cmocka_unit_test(worth_it),
        cmocka_unit_test(orthogonalise_matches_double),
        cmocka_unit_test(orthogonalise_rank_deficient),
        cmocka_unit_test(exact_when_rank_suffices),
        cmocka_unit_test(error_feedback_invariant),
        cmocka_unit_test(residual_restart_is_exact),
        cmocka_unit_test(kernels_match_naive),
        cmocka_unit_test(init_q_is_deterministic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
