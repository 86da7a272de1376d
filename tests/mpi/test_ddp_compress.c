/* The data-parallel engine's gradient compression at any rank count
 * (mpirun -np 1..5): every rank generates every rank's gradients
 * (deterministic), drives ddp as backward would (ddp_grad_ready per tensor,
 * last layer first), and checks what rank 0 (and every rank) applies
 * against a serial reference:
 *   none      the mean gradient (float rounding only)
 *   bf16/fp16 the mean within the 16-bit format's rounding, ZeRO-1 too
 *   powersgd  PowerSGD run serially on the mean gradient: the applied update
 *             depends only on the mean of the ranks' gradients and
 *             residuals, so it is the same at every rank count
 * plus wire_bytes (16-bit sends half of none; PowerSGD a few percent), the
 * checkpoint state round trip, and bad arguments named. Prints
 * "N passed, N failed". */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compress.h"
#include "ddp.h"

static int rank, size, npass, nfail;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
    int all = ok;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rank == 0) {
        va_list ap;
        va_start(ap, fmt);
        printf("%s: ", all ? "ok" : "FAIL");
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
        fflush(stdout);
    }
    all ? npass++ : nfail++;
}

/* the model: matrices (some too small to compress), biases, a row vector */
static const size_t shapes[][2] = {{33, 17}, {33, 1}, {5, 40}, {64, 48}, {64, 1}, {1, 9}, {10, 64}, {10, 1}};
#define NT (int)(sizeof shapes / sizeof shapes[0])

static float grad_of(int r, int step, size_t i) { /* rank r's gradient element i at step */
    uint64_t z = (uint64_t)r * 0x9e3779b97f4a7c15ull ^ (uint64_t)step * 0xbf58476d1ce4e5b9ull ^ i * 0x94d049bb133111ebull;
    z ^= z >> 29, z *= 0xbf58476d1ce4e5b9ull, z ^= z >> 32;
    const float base = (float)((double)(z >> 11) * 0x1p-53 - 0.5);
    /* a low-rank part shared by all ranks plus per-rank noise */
    return base * 0.3f + (float)sin(0.01 * (double)i + step) * (float)(1 + r % 3);
}

typedef struct {
    ddp_tensor_t t[NT];
    size_t count, padded;
} layout_t;

static layout_t layout(void) {
    layout_t L = {0};
    for (int i = 0; i < NT; i++) {
        L.t[i] = (ddp_tensor_t){L.count, shapes[i][0], shapes[i][1]};
        L.count += shapes[i][0] * shapes[i][1];
    }
    L.padded = (L.count + (size_t)size - 1) / (size_t)size * (size_t)size;
    return L;
}

/* One step on ddp: fill this rank's gradient, announce the tensors in
 * backward order (the layout is already in that order), sync. */
static int step(ddp_t *d, const layout_t *L, float *g, int s) {
    for (size_t i = 0; i < L->padded; i++) g[i] = i < L->count ? grad_of(rank, s, i) : 0.0f;
    if (ddp_backward_begin(d, 1)) return -1;
    for (int i = 0; i < NT; i++) ddp_grad_ready(d, i, L->t[i].offset, L->t[i].rows * L->t[i].cols);
    return ddp_sync(d);
}

/* The serial reference of PowerSGD on the mean: state S, P and Q per matrix. */
typedef struct {
    float *s, *p, *q;
} ref_mat_t;

static double max_abs(const float *v, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(v[i]));
    return m;
}

static void run_mode(ddp_compress_t mode, int zero, double bucket_mb, int overlap, const char *label) {
    const layout_t L = layout();
    const int R = 4, start = 2, steps = 6;
    float *g = calloc(L.padded, sizeof *g), *params = calloc(L.padded, sizeof *params);
    float *mean = calloc(L.padded, sizeof *mean), *ref = calloc(L.padded, sizeof *ref);
    ref_mat_t rm[NT] = {{0}};
    for (int i = 0; i < NT; i++)
        if (psgd_worth_it(L.t[i].rows, L.t[i].cols, R)) {
            rm[i].s = calloc(L.t[i].rows * L.t[i].cols, sizeof(float));
            rm[i].p = calloc(L.t[i].rows * (size_t)R, sizeof(float));
            rm[i].q = malloc(L.t[i].cols * (size_t)R * sizeof(float));
        }
    int k = 0;
    for (int i = 0; i < NT; i++)
        if (rm[i].q) psgd_init_q(rm[i].q, L.t[i].cols, R, 42, k++);
    const ddp_options_t o = {.bucket_mb = bucket_mb, .overlap = overlap, .zero = zero, .algorithm = COLL_ALGO_RING,
                             .timeout_s = 60, .compress = mode, .powersgd_rank = R, .powersgd_start = start, .seed = 42,
                             .tensors = L.t, .ntensors = NT};
    ddp_t *d = NULL;
    char err[512] = "";
    if (ddp_create(&d, MPI_COMM_WORLD, params, g, L.count, L.padded, &o, err, sizeof err)) {
        check(0, "%s: ddp_create: %s", label, err);
        return;
    }
    double worst = 0;
    uint64_t wire = 0;
    int ok = 1;
    for (int s = 0; s < steps && ok; s++) {
        if (step(d, &L, g, s)) {
            check(0, "%s: step %d: %s", label, s, ddp_error(d));
            ok = 0;
            break;
        }
        wire += ddp_last_stats(d).wire_bytes;
        /* the reference: the mean gradient, in double */
        for (size_t i = 0; i < L.count; i++) {
            double m = 0;
            for (int r = 0; r < size; r++) m += grad_of(r, s, i);
            mean[i] = (float)(m / size);
        }
        memcpy(ref, mean, L.count * sizeof *ref);
        if (mode == DDP_COMPRESS_POWERSGD && s >= start)
            for (int i = 0; i < NT; i++) {
                if (!rm[i].q) continue;
                const size_t n = L.t[i].rows, m = L.t[i].cols;
                float *x = ref + L.t[i].offset;
                psgd_feedback_project(x, rm[i].s, rm[i].p, n, m, rm[i].q, R, rm[i].p);
                psgd_orthogonalise(rm[i].p, n, R, 1e-4f);
                psgd_project_back(rm[i].s, n, m, rm[i].p, R, rm[i].q);
                psgd_reconstruct(x, n, m, rm[i].p, rm[i].q, R);
            }
        /* this rank's slices: all, or its ZeRO-1 shard */
        const size_t *lo, *hi;
        const int ns = ddp_shard(d, &lo, &hi);
        const double scale = max_abs(ref, L.count);
        for (int j = 0; j < ns; j++)
            for (size_t i = lo[j]; i < hi[j] && i < L.count; i++) {
                double tol = 2e-5 * scale;
                if (mode == DDP_COMPRESS_BF16 || mode == DDP_COMPRESS_FP16) {
                    /* each rank's g/P rounded, the partial sums rounded again at every ring hop */
                    double mag = 0;
                    for (int r = 0; r < size; r++) mag += fabs(grad_of(r, s, i)) / size;
                    tol = (mode == DDP_COMPRESS_BF16 ? 0x1p-8 : 0x1p-11) * mag * (size + 1) + 1e-7;
                }
                if (mode == DDP_COMPRESS_POWERSGD) tol = 2e-4 * scale;
                const double e = fabs((double)g[i] - ref[i]);
                worst = fmax(worst, e / (tol > 0 ? tol : 1));
                if (e > tol && ok) {
                    fprintf(stderr, "rank %d %s step %d element %zu: applied %.9g, reference %.9g (tol %.3g)\n", rank,
                            label, s, i, g[i], ref[i], tol);
                    ok = 0;
                }
            }
    }
    check(ok, "%s: what each rank applies matches the reference over %d steps (worst %.2f of tolerance)", label, steps,
          worst);
    /* wire bytes, this rank, over the steps */
    uint64_t w = wire;
    MPI_Allreduce(&wire, &w, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0) printf("   %s: wire bytes per rank per step (most): %.0f\n", label, (double)w / steps);
    ddp_destroy(d);
    free(g), free(params), free(mean), free(ref);
    for (int i = 0; i < NT; i++) free(rm[i].s), free(rm[i].p), free(rm[i].q);
}

/* wire_bytes: 16-bit exactly half of none with the ring; PowerSGD far less */
static void wire_bytes(void) {
    const layout_t L = layout();
    uint64_t b[4] = {0};
    for (int mode = 0; mode < 4; mode++) {
        float *g = calloc(L.padded, sizeof *g), *p = calloc(L.padded, sizeof *p);
        const ddp_options_t o = {.bucket_mb = 1, .overlap = 1, .algorithm = COLL_ALGO_RING, .timeout_s = 60,
                                 .compress = (ddp_compress_t)mode, .powersgd_rank = 2, .powersgd_start = 0,
                                 .tensors = L.t, .ntensors = NT};
        ddp_t *d = NULL;
        char err[512];
        if (ddp_create(&d, MPI_COMM_WORLD, p, g, L.count, L.padded, &o, err, sizeof err) == 0 && step(d, &L, g, 0) == 0)
            b[mode] = ddp_last_stats(d).wire_bytes;
        ddp_destroy(d);
        free(g), free(p);
    }
    const uint64_t full = 2 * (uint64_t)(size - 1) * L.padded * 4 / (uint64_t)size; /* a ring, about */
    check(size == 1 ? b[0] == 0 : b[1] * 2 == b[0] && b[2] * 2 == b[0] && b[0] >= full / 2 && b[0] <= full * 2,
          "wire_bytes: none %llu, bf16 %llu, fp16 %llu (half)", (unsigned long long)b[0], (unsigned long long)b[1],
          (unsigned long long)b[2]);
    check(size == 1 ? b[3] == 0 : b[3] > 0 && b[3] * 2 < b[0], "wire_bytes: powersgd rank 2 %llu, under half of none's",
          (unsigned long long)b[3]);
}

/* ddp_compress_save then ddp_compress_load into a second engine: both
 * then apply the same bits for the following steps */
static void state_round_trip(void) {
    const layout_t L = layout();
    const int R = 3;
    float *g1 = calloc(L.padded, sizeof *g1), *g2 = calloc(L.padded, sizeof *g2), *p = calloc(L.padded, sizeof *p);
    const ddp_options_t o = {.bucket_mb = 0.002, .overlap = 1, .algorithm = COLL_ALGO_RING, .timeout_s = 60,
                             .compress = DDP_COMPRESS_POWERSGD, .powersgd_rank = R, .powersgd_start = 1, .seed = 7,
                             .tensors = L.t, .ntensors = NT};
    ddp_t *a = NULL, *b = NULL;
    char err[512];
    int ok = ddp_create(&a, MPI_COMM_WORLD, p, g1, L.count, L.padded, &o, err, sizeof err) == 0 &&
             ddp_create(&b, MPI_COMM_WORLD, p, g2, L.count, L.padded, &o, err, sizeof err) == 0;
    for (int s = 0; ok && s < 3; s++) ok = step(a, &L, g1, s) == 0;
    const size_t q = ok ? ddp_compress_q_len(a) : 0;
    float *qbuf = malloc((q + 1) * sizeof *qbuf), **res = calloc((size_t)size, sizeof *res);
    for (int r = 0; r < size; r++) res[r] = malloc((L.count + 1) * sizeof(float));
    ok = ok && q > 0 && ddp_compress_save(a, qbuf, res) == 0 && ddp_compress_load(b, qbuf, res, 1) == 0;
    ddp_set_steps(b, 3);
    for (int s = 3; ok && s < 6; s++) {
        ok = step(a, &L, g1, s) == 0 && step(b, &L, g2, s) == 0;
        ok = ok && memcmp(g1, g2, L.count * sizeof *g1) == 0;
    }
    check(ok, "PowerSGD state saved and loaded: the next steps bitwise equal (Q %zu floats)", q);
    ddp_destroy(a), ddp_destroy(b);
    for (int r = 0; r < size; r++) free(res[r]);
    free(res), free(qbuf), free(g1), free(g2), free(p);
}

static void bad_arguments(void) {
    const layout_t L = layout();
    float *g = calloc(L.padded, sizeof *g), *p = calloc(L.padded, sizeof *p);
    ddp_tensor_t gap[NT];
    memcpy(gap, L.t, sizeof gap);
    gap[2].offset += 1;
    struct {
        ddp_options_t o;
        const char *want;
    } cases[] = {
        {{.bucket_mb = 1, .compress = DDP_COMPRESS_POWERSGD, .zero = 1, .powersgd_rank = 4, .tensors = L.t, .ntensors = NT},
         "zero = 1"},
        {{.bucket_mb = 1, .compress = DDP_COMPRESS_POWERSGD, .powersgd_rank = 0, .tensors = L.t, .ntensors = NT},
         "powersgd_rank = 0"},
        {{.bucket_mb = 1, .compress = DDP_COMPRESS_POWERSGD, .powersgd_rank = 2}, "shapes"},
        {{.bucket_mb = 1, .compress = DDP_COMPRESS_POWERSGD, .powersgd_rank = 2, .tensors = gap, .ntensors = NT},
         "tensor 2 starts at"},
        {{.bucket_mb = 1, .compress = (ddp_compress_t)9}, "not a mode"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ddp_t *d = NULL;
        char err[512] = "";
        const int rc = ddp_create(&d, MPI_COMM_WORLD, p, g, L.count, L.padded, &cases[i].o, err, sizeof err);
        check(rc == -1 && !d && strstr(err, cases[i].want), "bad arguments named: %s", err);
        ddp_destroy(d);
    }
    free(g), free(p);
}

int main(int argc, char **argv) {
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (rank == 0) printf("test_ddp_compress: %d ranks\n", size);
    run_mode(DDP_COMPRESS_NONE, 0, 0.001, 1, "none");
    run_mode(DDP_COMPRESS_BF16, 0, 0.001, 1, "bf16");
    run_mode(DDP_COMPRESS_FP16, 0, 0.001, 1, "fp16");
    run_mode(DDP_COMPRESS_BF16, 1, 0.001, 1, "bf16 zero=1");
    run_mode(DDP_COMPRESS_FP16, 1, 1, 0, "fp16 zero=1 no overlap");
    run_mode(DDP_COMPRESS_POWERSGD, 0, 0.001, 1, "powersgd, small buckets");
    run_mode(DDP_COMPRESS_POWERSGD, 0, 1, 1, "powersgd, one bucket");
    run_mode(DDP_COMPRESS_POWERSGD, 0, 1, 0, "powersgd, no overlap");
    wire_bytes();
    state_round_trip();
    bad_arguments();
    if (rank == 0) printf("test_ddp_compress np=%d: %d passed, %d failed\n", size, npass, nfail);
    MPI_Finalize();
    return nfail ? 1 : 0;
}
