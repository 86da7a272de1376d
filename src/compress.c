#include "compress.h"

#include <math.h>
#include <string.h>

#include "../collectives/half.h"
#include "rng.h"
#include "simd.h"

const char *compress_name(compress_t c) {
    static const char *n[] = {"none", "bf16", "fp16", "powersgd"};
    return (unsigned)c < 4 ? n[c] : "?";
}

HOT_LOOP static void to_bf16(uint16_t *restrict d, const float *restrict s, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) d[i] = f2b(s[i] * scale);
}
HOT_LOOP static void to_fp16(uint16_t *restrict d, const float *restrict s, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) d[i] = f2h(s[i] * scale);
}
HOT_LOOP static void from_bf16(float *restrict d, const uint16_t *restrict s, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = b2f(s[i]);
}
HOT_LOOP static void from_fp16(float *restrict d, const uint16_t *restrict s, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = h2f(s[i]);
}

void compress_to16(compress_t kind, uint16_t *dst, const float *src, size_t n, float scale) {
    (kind == COMPRESS_FP16 ? to_fp16 : to_bf16)(dst, src, n, scale);
}

void compress_from16(compress_t kind, float *dst, const uint16_t *src, size_t n) {
    (kind == COMPRESS_FP16 ? from_fp16 : from_bf16)(dst, src, n);
}

int psgd_worth_it(size_t n, size_t m, int r) {
    return n > 1 && m > 1 && n * m >= 2 * (n + m) * (size_t)r;
}

/* Eight independent partial sums, so the loop vectorises without
 * reassociating (no -ffast-math), combined in a fixed order: the result is
 * the same on every rank and every run. */
HOT_LOOP static float dot(const float *restrict a, const float *restrict b, size_t n) {
    float acc[8] = {0};
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[j + l] * b[j + l];
    for (int l = 0; j < n; j++, l++) acc[l] += a[j] * b[j];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

HOT_LOOP static void add_into(float *restrict g, const float *restrict e, size_t n) {
    for (size_t j = 0; j < n; j++) g[j] += e[j];
}

HOT_LOOP static void axpy(float *restrict y, float a, const float *restrict x, size_t n) {
    for (size_t j = 0; j < n; j++) y[j] += a * x[j];
}

HOT_LOOP static void scale_to(float *restrict y, float a, const float *restrict x, size_t n) {
    for (size_t j = 0; j < n; j++) y[j] = a * x[j];
}

HOT_LOOP static void split(float *restrict g, float *restrict e, size_t n) {
    for (size_t j = 0; j < n; j++) {
        const float a = e[j];
        e[j] = g[j] - a;
        g[j] = a;
    }
}

/* Row by row, so each row of M is read from memory once and then from L1
 * for the r products (qt, r x m floats, stays in L1/L2). */
void psgd_feedback_project(float *g, const float *e, size_t n, size_t m, const float *qt, int r, float *p) {
    for (size_t i = 0; i < n; i++) {
        float *gi = g + i * m;
        if (e) add_into(gi, e + i * m, m);
        for (int k = 0; k < r; k++) p[i * (size_t)r + (size_t)k] = dot(gi, qt + (size_t)k * m, m);
    }
}

void psgd_project_back(const float *g, size_t n, size_t m, const float *p, int r, float *qt) {
    memset(qt, 0, (size_t)r * m * sizeof *qt);
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < r; k++) axpy(qt + (size_t)k * m, p[i * (size_t)r + (size_t)k], g + i * m, m);
}

/* The row's approximation is built in e's row (or g's, without e), which
 * stays in L1, then split into approximation and residual in one pass. */
void psgd_reconstruct(float *g, float *e, size_t n, size_t m, const float *p, const float *qt, int r) {
    for (size_t i = 0; i < n; i++) {
        float *gi = g + i * m, *row = e ? e + i * m : gi;
        const float *pi = p + i * (size_t)r;
        scale_to(row, pi[0], qt, m);
        for (int k = 1; k < r; k++) axpy(row, pi[k], qt + (size_t)k * m, m);
        if (e) split(gi, row, m);
    }
}

static double col_dot(const float *p, size_t n, int r, int a, int b) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)p[i * (size_t)r + (size_t)a] * p[i * (size_t)r + (size_t)b];
    return s;
}

void psgd_orthogonalise(float *p, size_t n, int r, float eps) {
    for (int k = 0; k < r; k++) {
        const double before = sqrt(col_dot(p, n, r, k, k));
        for (int pass = 0; pass < 2; pass++)
            for (int l = 0; l < k; l++) {
                const float c = (float)col_dot(p, n, r, l, k);
                for (size_t i = 0; i < n; i++) p[i * (size_t)r + (size_t)k] -= c * p[i * (size_t)r + (size_t)l];
            }
        const double after = sqrt(col_dot(p, n, r, k, k));
        const float s = after > 0 && after > eps * before ? (float)(1.0 / after) : 0.0f;
        for (size_t i = 0; i < n; i++) p[i * (size_t)r + (size_t)k] *= s;
    }
}

void psgd_init_q(float *qt, size_t m, int r, uint64_t seed, int matrix) {
    rng_t g;
    rng_seed(&g, seed, 0x70736764 /* "psgd" */, (uint64_t)matrix);
    for (size_t i = 0; i < (size_t)r * m; i += 2) { /* Box-Muller */
        const double u1 = ((double)(rng_next(&g) >> 11) + 1.0) * 0x1p-53, u2 = (double)(rng_next(&g) >> 11) * 0x1p-53;
        const double rad = sqrt(-2.0 * log(u1));
        qt[i] = (float)(rad * cos(2 * M_PI * u2));
        if (i + 1 < (size_t)r * m) qt[i + 1] = (float)(rad * sin(2 * M_PI * u2));
    }
}
