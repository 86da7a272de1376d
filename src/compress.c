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

/* The kernels work on four columns of P and Q at a time (r is usually 1-8):
 * one pass over a row of M serves all four. A block with fewer than four
 * columns repeats its last Q row with a zero coefficient, or drops the
 * extra sums. Partial sums are kept in eight independent lanes, so the
 * loops vectorise without reassociating (no -ffast-math), and combined in
 * a fixed order: the same result on every rank and every run. */
typedef struct { const float *q[4]; } qrows_t;

static qrows_t qrows(const float *qt, size_t m, int k0, int r) {
    qrows_t b;
    for (int l = 0; l < 4; l++) b.q[l] = qt + (size_t)(k0 + l < r ? k0 + l : r - 1) * m;
    return b;
}

static float lanes(const float a[8]) { return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])); }

/* a[j] = sum_l c[l] q_l[j], in one fixed order (also in the checkpoints'
 * residuals, psgd_residual, so a resumed run rebuilds the same bits). */
#define APPROX4(j) (((c0 * q0[j] + c1 * q1[j]) + c2 * q2[j]) + c3 * q3[j])
#define BLOCK_VARS(b, c)                                                                                         \
    const float *restrict q0 = (b).q[0], *restrict q1 = (b).q[1], *restrict q2 = (b).q[2], *restrict q3 = (b).q[3]; \
    const float c0 = (c)[0], c1 = (c)[1], c2 = (c)[2], c3 = (c)[3]

/* s[j] -= sum_l c[l] q_l[j]: one block of the last step's approximation. */
HOT_LOOP static void row_sub4(float *restrict s, const float c[4], qrows_t b, size_t m) {
    BLOCK_VARS(b, c);
    for (size_t j = 0; j < m; j++) s[j] = s[j] - APPROX4(j);
}

/* Pass 1 on one row: x = g + (s - approx) (approx: the block c, or none when
 * c is NULL), s = x, out[l] = sum_j x[j] q_l[j] (w: the Q rows to project
 * on). */
HOT_LOOP static void row_feedback4(const float *restrict g, float *restrict s, const float *c, qrows_t b, qrows_t w,
                                   size_t m, float out[4]) {
    static const float zero[4] = {0, 0, 0, 0};
    BLOCK_VARS(b, c ? c : zero);
    const float *restrict w0 = w.q[0], *restrict w1 = w.q[1], *restrict w2 = w.q[2], *restrict w3 = w.q[3];
    float a0[8] = {0}, a1[8] = {0}, a2[8] = {0}, a3[8] = {0};
    size_t j = 0;
    for (; j + 8 <= m; j += 8)
        for (int l = 0; l < 8; l++) {
            const float x = g[j + l] + (s[j + l] - APPROX4(j + l));
            s[j + l] = x;
            a0[l] += x * w0[j + l], a1[l] += x * w1[j + l], a2[l] += x * w2[j + l], a3[l] += x * w3[j + l];
        }
    for (int l = 0; j < m; j++, l++) {
        const float x = g[j] + (s[j] - APPROX4(j));
        s[j] = x;
        a0[l] += x * w0[j], a1[l] += x * w1[j], a2[l] += x * w2[j], a3[l] += x * w3[j];
    }
    out[0] = lanes(a0), out[1] = lanes(a1), out[2] = lanes(a2), out[3] = lanes(a3);
}

/* out[l] = sum_j x[j] w_l[j] (further blocks of P, r > 4). */
HOT_LOOP static void row_dots4(const float *restrict x, qrows_t w, size_t m, float out[4]) {
    const float *restrict w0 = w.q[0], *restrict w1 = w.q[1], *restrict w2 = w.q[2], *restrict w3 = w.q[3];
    float a0[8] = {0}, a1[8] = {0}, a2[8] = {0}, a3[8] = {0};
    size_t j = 0;
    for (; j + 8 <= m; j += 8)
        for (int l = 0; l < 8; l++)
            a0[l] += x[j + l] * w0[j + l], a1[l] += x[j + l] * w1[j + l], a2[l] += x[j + l] * w2[j + l],
                a3[l] += x[j + l] * w3[j + l];
    for (int l = 0; j < m; j++, l++) a0[l] += x[j] * w0[j], a1[l] += x[j] * w1[j], a2[l] += x[j] * w2[j], a3[l] += x[j] * w3[j];
    out[0] = lanes(a0), out[1] = lanes(a1), out[2] = lanes(a2), out[3] = lanes(a3);
}

/* q_l[j] += sum_i c[i][l] x_i[j] for four rows x_i of M at once, so each Q
 * row is loaded and stored once per four rows of M (Q = M^T P is bound by
 * these updates, not by reading M). */
HOT_LOOP static void rows4_axpy4(float *restrict q0, float *restrict q1, float *restrict q2, float *restrict q3,
                                 const float c[4][4], const float *restrict x0, const float *restrict x1,
                                 const float *restrict x2, const float *restrict x3, size_t m) {
    for (size_t j = 0; j < m; j++) {
        const float v0 = x0[j], v1 = x1[j], v2 = x2[j], v3 = x3[j];
        q0[j] += ((c[0][0] * v0 + c[1][0] * v1) + c[2][0] * v2) + c[3][0] * v3;
        q1[j] += ((c[0][1] * v0 + c[1][1] * v1) + c[2][1] * v2) + c[3][1] * v3;
        q2[j] += ((c[0][2] * v0 + c[1][2] * v1) + c[2][2] * v2) + c[3][2] * v3;
        q3[j] += ((c[0][3] * v0 + c[1][3] * v1) + c[2][3] * v2) + c[3][3] * v3;
    }
}

/* q_l[j] += c[l] x[j] for the four rows of a block (distinct rows only). */
HOT_LOOP static void row_axpy4(float *restrict q0, float *restrict q1, float *restrict q2, float *restrict q3,
                               const float c[4], const float *restrict x, size_t m) {
    const float c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
    for (size_t j = 0; j < m; j++) {
        const float v = x[j];
        q0[j] += c0 * v, q1[j] += c1 * v, q2[j] += c2 * v, q3[j] += c3 * v;
    }
}

HOT_LOOP static void row_axpy1(float *restrict q, float c, const float *restrict x, size_t m) {
    for (size_t j = 0; j < m; j++) q[j] += c * x[j];
}

/* y[j] = (acc ? y[j] : 0) + sum_l c[l] q_l[j]. */
HOT_LOOP static void row_combine4(float *restrict y, int acc, const float c[4], qrows_t b, size_t m) {
    BLOCK_VARS(b, c);
    for (size_t j = 0; j < m; j++) y[j] = acc ? y[j] + APPROX4(j) : APPROX4(j);
}

/* The coefficients of row i for the block at k0, zero past r. */
static void coeffs(const float *p, size_t i, int r, int k0, float c[4]) {
    for (int l = 0; l < 4; l++) c[l] = k0 + l < r ? p[i * (size_t)r + (size_t)(k0 + l)] : 0.0f;
}

/* Row by row, so each row is read from memory once and then from L1 for the
 * products (qt, r x m floats, stays in L1/L2). With r <= 4 (the usual) the
 * whole of pass 1 is one loop over the row. */
void psgd_feedback_project(const float *g, float *s, const float *p, size_t n, size_t m, const float *qt, int r,
                           float *pnew) {
    for (size_t i = 0; i < n; i++) {
        const float *gi = g + i * m;
        float *si = s + i * m, c[4], out[4];
        for (int k0 = 4; k0 < r; k0 += 4) { /* r > 4: the approximation's later blocks first */
            coeffs(p, i, r, k0, c);
            row_sub4(si, c, qrows(qt, m, k0, r), m);
        }
        coeffs(p, i, r, 0, c); /* read before pnew's row is written: p may be pnew */
        row_feedback4(gi, si, c, qrows(qt, m, 0, r), qrows(qt, m, 0, r), m, out);
        for (int l = 0; l < 4 && l < r; l++) pnew[i * (size_t)r + (size_t)l] = out[l];
        for (int k0 = 4; k0 < r; k0 += 4) {
            row_dots4(si, qrows(qt, m, k0, r), m, out);
            for (int l = 0; l < 4 && k0 + l < r; l++) pnew[i * (size_t)r + (size_t)(k0 + l)] = out[l];
        }
    }
}

void psgd_project_back(const float *s, size_t n, size_t m, const float *p, int r, float *qt) {
    memset(qt, 0, (size_t)r * m * sizeof *qt);
    const int rb = r / 4 * 4;        /* columns in whole blocks of four */
    const size_t nb = n / 4 * 4;     /* rows in whole groups of four */
    for (size_t i = 0; i < nb; i += 4)
        for (int k0 = 0; k0 < rb; k0 += 4) {
            float c[4][4];
            for (int a = 0; a < 4; a++) coeffs(p, i + (size_t)a, r, k0, c[a]);
            rows4_axpy4(qt + (size_t)k0 * m, qt + (size_t)(k0 + 1) * m, qt + (size_t)(k0 + 2) * m,
                        qt + (size_t)(k0 + 3) * m, (const float(*)[4])c, s + i * m, s + (i + 1) * m, s + (i + 2) * m,
                        s + (i + 3) * m, m);
        }
    for (size_t i = 0; i < n; i++) { /* the rows and columns left over */
        for (int k0 = i < nb ? rb : 0; k0 < rb; k0 += 4) {
            float c[4];
            coeffs(p, i, r, k0, c);
            row_axpy4(qt + (size_t)k0 * m, qt + (size_t)(k0 + 1) * m, qt + (size_t)(k0 + 2) * m, qt + (size_t)(k0 + 3) * m,
                      c, s + i * m, m);
        }
        for (int k = rb; k < r; k++) row_axpy1(qt + (size_t)k * m, p[i * (size_t)r + (size_t)k], s + i * m, m);
    }
}

void psgd_reconstruct(float *g, size_t n, size_t m, const float *p, const float *qt, int r) {
    for (size_t i = 0; i < n; i++)
        for (int k0 = 0; k0 < r; k0 += 4) {
            float c[4];
            coeffs(p, i, r, k0, c);
            row_combine4(g + i * m, k0 > 0, c, qrows(qt, m, k0, r), m);
        }
}

void psgd_residual(const float *s, size_t n, size_t m, const float *p, const float *qt, int r, float *e) {
    memcpy(e, s, n * m * sizeof *e);
    for (size_t i = 0; i < n; i++) {
        float c[4];
        for (int k0 = 4; k0 < r; k0 += 4) coeffs(p, i, r, k0, c), row_sub4(e + i * m, c, qrows(qt, m, k0, r), m);
        coeffs(p, i, r, 0, c);
        row_sub4(e + i * m, c, qrows(qt, m, 0, r), m);
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
