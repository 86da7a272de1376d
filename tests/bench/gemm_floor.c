/* gemm-floor: the matrix products of one MLP training step, called straight
 * through OpenBLAS, nothing else. It is the floor a framework's step time is
 * measured against: whatever a step costs above it is per-op overhead.
 *
 *   gemm-floor [-n REPEATS] BATCH IN HIDDEN... OUT
 *   gemm-floor 64 784 1024 1024 10     -> median ms of the step's GEMMs
 *   gemm-floor [-n REPEATS] --gpt BATCH T C HEADS LAYERS VOCAB
 *                                      -> the same for ddp-train's arch = gpt
 *
 * Per linear layer: forward Y = X W^T, weight gradient dW = dY^T X, and the
 * input gradient dX = dY W for every layer but the first (whose input is
 * data), exactly the products ddp-train and PyTorch run. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static float *buf(size_t n) {
    float *p = malloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "gemm-floor: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) p[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    return p;
}

static void report(double *t, int reps, double flop) {
    qsort(t, (size_t)reps, sizeof *t, cmp);
    const double med = t[reps / 2];
    printf("gemm-floor: %.4f ms median of %d, %.1f MFLOP, %.1f GFLOP/s\n", med, reps, flop / 1e6, flop / med / 1e6);
}

/* C = A B^T (tb) or A B, row-major with leading dimensions; adds its flops */
static void mm(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *Bm, int ldb, float *C, int ldc,
               double *flop) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda,
                Bm, ldb, 0.0f, C, ldc);
    *flop += 2.0 * M * N * K;
}

/* A GPT step's products as ops_cpu.c and ops_seq.c call them: per block the
 * q,k,v, output, MLP-in and MLP-out linear layers (forward, weight gradient,
 * input gradient) and, per sample and head, attention's two forward and four
 * backward products, each split at T/2 around the causal mask's zero block as
 * ops_seq.c runs them; the head (its input gradient too). */
static int gpt(int reps, int B, int T, int C, int H, int L, int V) {
    const int n = B * T, hs = C / H, C3 = 3 * C;
    const int in[5] = {C, C, C, 4 * C, C}, out[5] = {3 * C, C, 4 * C, C, V};
    float *X[5], *W[5], *dW[5], *Y[5];
    for (int l = 0; l < 5; l++) {
        X[l] = buf((size_t)n * in[l]), W[l] = buf((size_t)out[l] * in[l]);
        dW[l] = buf((size_t)out[l] * in[l]), Y[l] = buf((size_t)n * out[l]);
    }
    float *qkv = buf((size_t)n * C3), *P = buf((size_t)T * T), *S = buf((size_t)T * T), *O = buf((size_t)n * C);
    double *t = malloc((size_t)reps * sizeof *t), flop = 0;
    for (int r = -3; r < reps; r++) {
        const double t0 = now_ms();
        flop = 0;
        for (int pass = 0; pass < 2; pass++) /* 0 forward, 1 backward */
            for (int b = 0; b < L; b++) {
                for (int l = 0; l < 4; l++) {
                    if (!pass) mm(0, 1, n, out[l], in[l], X[l], in[l], W[l], in[l], Y[l], out[l], &flop);
                    else {
                        mm(1, 0, out[l], in[l], n, Y[l], out[l], X[l], in[l], dW[l], in[l], &flop);
                        mm(0, 0, n, in[l], out[l], Y[l], out[l], W[l], in[l], X[l], in[l], &flop);
                    }
                }
                for (int s = 0; s < B; s++) /* attention, split at h2 = T/2 as ops_seq.c does (causal) */
                    for (int h = 0; h < H; h++) {
                        const int h2 = T / 2;
                        const float *q = qkv + (size_t)s * T * C3 + h * hs;
                        float *o = O + (size_t)s * T * C + h * hs, *dq = qkv + (size_t)s * T * C3 + h * hs;
                        if (!pass) {
                            mm(0, 1, h2, h2, hs, q, C3, q + C, C3, P, T, &flop);
                            mm(0, 1, T - h2, T, hs, q + (size_t)h2 * C3, C3, q + C, C3, P + (size_t)h2 * T, T, &flop);
                            mm(0, 0, h2, hs, h2, P, T, q + 2 * C, C3, o, C, &flop);
                            mm(0, 0, T - h2, hs, T, P + (size_t)h2 * T, T, q + 2 * C, C3, o + (size_t)h2 * C, C, &flop);
                        } else {
                            mm(0, 1, h2, h2, hs, o, C, q + 2 * C, C3, S, T, &flop);
                            mm(0, 1, T - h2, T, hs, o + (size_t)h2 * C, C, q + 2 * C, C3, S + (size_t)h2 * T, T, &flop);
                            mm(1, 0, h2, hs, T, P, T, o, C, dq + 2 * C, C3, &flop);
                            mm(1, 0, T - h2, hs, T - h2, P + (size_t)h2 * T + h2, T, o + (size_t)h2 * C, C,
                               dq + 2 * C + (size_t)h2 * C3, C3, &flop);
                            mm(0, 0, h2, hs, h2, S, T, q + C, C3, dq, C3, &flop);
                            mm(0, 0, T - h2, hs, T, S + (size_t)h2 * T, T, q + C, C3, dq + (size_t)h2 * C3, C3, &flop);
                            mm(1, 0, h2, hs, T, S, T, q, C3, dq + C, C3, &flop);
                            mm(1, 0, T - h2, hs, T - h2, S + (size_t)h2 * T + h2, T, q + (size_t)h2 * C3, C3,
                               dq + C + (size_t)h2 * C3, C3, &flop);
                        }
                    }
            }
        mm(0, 1, n, V, C, X[4], C, W[4], C, Y[4], V, &flop); /* the head */
        mm(1, 0, V, C, n, Y[4], V, X[4], C, dW[4], C, &flop);
        mm(0, 0, n, C, V, Y[4], V, W[4], C, X[4], C, &flop);
        if (r >= 0) t[r] = now_ms() - t0;
    }
    report(t, reps, flop);
    return 0;
}

int main(int argc, char **argv) {
    int reps = 200, a = 1;
    if (a + 1 < argc && !strcmp(argv[a], "-n")) reps = atoi(argv[a + 1]), a += 2;
    if (a < argc && !strcmp(argv[a], "--gpt")) {
        if (argc - a != 7 || reps < 1) {
            fprintf(stderr, "usage: gemm-floor [-n REPEATS] --gpt BATCH T C HEADS LAYERS VOCAB\n");
            return 2;
        }
        const int B = atoi(argv[a + 1]), T = atoi(argv[a + 2]), C = atoi(argv[a + 3]), H = atoi(argv[a + 4]);
        const int L = atoi(argv[a + 5]), V = atoi(argv[a + 6]);
        if (B < 1 || T < 1 || H < 1 || C < H || C % H || L < 1 || V < 1) {
            fprintf(stderr, "gemm-floor: --gpt needs positive sizes, C a multiple of HEADS\n");
            return 2;
        }
        return gpt(reps, B, T, C, H, L, V);
    }
    const int nl = argc - a - 2; /* linear layers */
    if (nl < 1 || reps < 1) {
        fprintf(stderr, "usage: gemm-floor [-n REPEATS] BATCH IN HIDDEN... OUT\n");
        return 2;
    }
    const int B = atoi(argv[a]);
    int dims[64];
    for (int i = 0; i <= nl && i < 63; i++) dims[i] = atoi(argv[a + 1 + i]);
    float *X[64], *W[64], *dW[64], *dY[64];
    for (int l = 0; l < nl; l++) {
        X[l] = buf((size_t)B * dims[l]);
        W[l] = buf((size_t)dims[l + 1] * dims[l]);
        dW[l] = buf((size_t)dims[l + 1] * dims[l]);
        dY[l] = buf((size_t)B * dims[l + 1]);
    }
    double *t = malloc((size_t)reps * sizeof *t), flop = 0;
    for (int l = 0; l < nl; l++) flop += 2.0 * B * dims[l] * dims[l + 1] * (l ? 3 : 2);
    for (int r = -20; r < reps; r++) {
        const double t0 = now_ms();
        for (int l = 0; l < nl; l++) /* forward */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, dims[l + 1], dims[l], 1.0f, X[l], dims[l], W[l],
                        dims[l], 0.0f, dY[l], dims[l + 1]);
        for (int l = nl - 1; l >= 0; l--) { /* backward */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, dims[l + 1], dims[l], B, 1.0f, dY[l], dims[l + 1],
                        X[l], dims[l], 0.0f, dW[l], dims[l]);
            if (l)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, dims[l], dims[l + 1], 1.0f, dY[l],
                            dims[l + 1], W[l], dims[l], 0.0f, X[l], dims[l]);
        }
        if (r >= 0) t[r] = now_ms() - t0;
    }
    report(t, reps, flop);
    return 0;
}
