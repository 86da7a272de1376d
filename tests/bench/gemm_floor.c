/* gemm-floor: the matrix products of one MLP training step, called straight
 * through OpenBLAS, nothing else. It is the floor a framework's step time is
 * measured against: whatever a step costs above it is per-op overhead.
 *
 *   gemm-floor [-n REPEATS] BATCH IN HIDDEN... OUT
 *   gemm-floor 64 784 1024 1024 10     -> median ms of the step's GEMMs
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

int main(int argc, char **argv) {
    int reps = 200, a = 1;
    if (a + 1 < argc && !strcmp(argv[a], "-n")) reps = atoi(argv[a + 1]), a += 2;
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
    qsort(t, (size_t)reps, sizeof *t, cmp);
    const double med = t[reps / 2];
    printf("gemm-floor: %.4f ms median of %d, %.1f MFLOP, %.1f GFLOP/s\n", med, reps, flop / 1e6, flop / med / 1e6);
    return 0;
}
