/* Gradient compression kernels for the data-parallel engine (ddp.c): the
 * 16-bit wire formats and the per-matrix steps of PowerSGD (Vogels et al.,
 * NeurIPS 2019, as PyTorch's powerSGD_hook runs it). Pure functions of their
 * arguments, no MPI, so the tests check each against a reference.
 *
 * PowerSGD on one gradient matrix M (n x m, row-major as PyTorch's
 * view(n, -1)) with rank r, for each rank i with local gradient G_i and
 * residual E_i:
 *   M_i = G_i + E_i;  P = avg_i(M_i Q);  orthonormalise P;
 *   Q = avg_i(M_i^T P);  approx = P Q^T;  E_i = M_i - approx;  G_i = approx
 * so sum_i M_i = P approx + sum_i E_i: nothing is lost, only delayed. Q is
 * kept for the next step (warm start). The passes over M are fused: one
 * reads G_i and the state and forms P's product, one forms Q's, one writes
 * the approximation (below). */
#ifndef DDP_COMPRESS_H
#define DDP_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

typedef enum { COMPRESS_NONE = 0, COMPRESS_BF16, COMPRESS_FP16, COMPRESS_POWERSGD } compress_t;

const char *compress_name(compress_t c);

/* dst[i] = 16-bit(src[i] * scale), round to nearest even (bf16 or fp16). */
void compress_to16(compress_t kind, uint16_t *dst, const float *src, size_t n, float scale);
/* dst[i] = float(src[i]). */
void compress_from16(compress_t kind, float *dst, const uint16_t *src, size_t n);

/* PowerSGD compresses a matrix only when that saves at least half of its
 * bytes (PyTorch's min_compression_rate = 2). */
int psgd_worth_it(size_t n, size_t m, int r);

/* The per-matrix state s holds the last step's M; the residual is rebuilt
 * from it as s - p qt (p, qt: the last step's P and Q, which the
 * approximation used), which saves storing it: pass 3 then only writes the
 * approximation. Before the first step s and p are zero.
 *
 * Pass 1: M = g + (s - p qt); s = M; pnew = M qt. p (n x r) may be pnew.
 * q is m x r stored transposed, qt[k * m + j]; p is n x r row-major. */
void psgd_feedback_project(const float *g, float *s, const float *p, size_t n, size_t m, const float *qt, int r,
                           float *pnew);
/* Orthonormal columns of p (n x r) by Gram-Schmidt, each column projected
 * twice ("twice is enough") in float32. A column left with less than
 * eps of its norm after the projections is rank-deficient and set to zero,
 * so it adds nothing rather than amplified rounding noise. */
void psgd_orthogonalise(float *p, size_t n, int r, float eps);
/* Pass 2: qt[k * m + j] = sum_i s[i, j] p[i, k]  (Q = M^T P, transposed). */
void psgd_project_back(const float *s, size_t n, size_t m, const float *p, int r, float *qt);
/* Pass 3: g = p qt (n x m), the approximation; g is only written. */
void psgd_reconstruct(float *g, size_t n, size_t m, const float *p, const float *qt, int r);
/* e = s - p qt: the residual pass 1 will add, exactly as it will (for
 * checkpoints and tests). */
void psgd_residual(const float *s, size_t n, size_t m, const float *p, const float *qt, int r, float *e);
/* Q's first value: standard normal entries from (seed, matrix), the same on
 * every rank. */
void psgd_init_q(float *qt, size_t m, int r, uint64_t seed, int matrix);

#define PSGD_MAX_RANK 64

#endif
