/* Multi-rank tests of libcoll, run under mpirun at several rank counts.
 *
 *   test_coll [matrix] [-s small] [-m 0|1|2]  every collective x dtype x op
 *                                  x size x in-place/out-of-place x algorithm,
 *                                  every root; results checked exactly (-m:
 *                                  buffers from coll_mem_alloc, 2: odd ranks)
 *   test_coll nonblocking          non-blocking calls overlapped with compute
 *   test_coll check                COLL_CHECK=1: mismatched calls fail cleanly
 *   test_coll timeout              COLL_TIMEOUT: a silent peer gives an error
 *   test_coll bigcount             counts above INT_MAX (needs ~5 GB)
 *
 * Inputs are small integers, so every float sum, product and average is
 * exact in every dtype (bfloat16 holds integers up to 256 exactly) and the
 * reference is computed independently in int64. Each case is one test; rank
 * 0 prints "FAIL ..." lines and a closing "test_coll ...: N passed, N failed".
 */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "coll.h"
#include "../common/cudart_shim.h"

#include "../common/testvals.h"

static int rank, nranks, passed, failed;
static coll_comm_t comm;
static int gpu; /* -G: the matrix on GPU buffers */
#define expected(op, dt, i) tv_expected(op, dt, i, nranks)
#define value tv_value
#define store tv_store
#define load tv_load

/* ---- bookkeeping ---- */
static void result(int ok_local, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void result(int ok_local, const char *fmt, ...) {
    int ok = 0;
    MPI_Allreduce(&ok_local, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (ok) {
        passed++;
        return;
    }
    failed++;
    if (rank == 0) {
        char line[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof line, fmt, ap);
        va_end(ap);
        printf("FAIL np=%d %s\n", nranks, line);
        fflush(stdout);
    }
}

static char errbuf[1024];
static int report(int bad, const char *what, size_t idx, double got, double want) {
    if (bad && !errbuf[0])
        snprintf(errbuf, sizeof errbuf, "rank %d: %s[%zu] = %g, expected %g", rank, what, idx, got, want);
    return bad;
}

static void *xmalloc(size_t n);

/* -m 1: the call's buffers come from coll_mem_alloc on every rank; -m 2:
 * on odd ranks only (zero-copy ranks beside copying ones) */
static int memalloc;
static int use_mem(void) { return memalloc == 1 || (memalloc == 2 && rank % 2); }
static void *buf_alloc(size_t n) {
    void *p = NULL;
    if (!use_mem()) return xmalloc(n);
    if (coll_mem_alloc(comm, n, &p) != COLL_SUCCESS) {
        fprintf(stderr, "rank %d: coll_mem_alloc(%zu): %s\n", rank, n, coll_last_error(comm));
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    return p;
}
static void buf_free(void *p) {
    if (!use_mem()) free(p);
    else if (coll_mem_free(comm, p) != COLL_SUCCESS) {
        fprintf(stderr, "rank %d: coll_mem_free: %s\n", rank, coll_last_error(comm));
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "rank %d: out of memory (%zu bytes)\n", rank, n);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    return p;
}

/* ---- one case: a collective at one size, placement and root ---- */
typedef enum { K_ALLREDUCE, K_REDUCE_SCATTER, K_ALLGATHER, K_BROADCAST, K_REDUCE, NK } kind_t;
static const char *kind_names[NK] = {"allreduce", "reduce_scatter", "allgather", "broadcast", "reduce"};

static int run_case(kind_t k, coll_dtype_t dt, coll_op_t op, size_t n, int inplace, int root) {
    const size_t es = coll_dtype_size(dt), P = (size_t)nranks;
    size_t in_n = k == K_REDUCE_SCATTER ? P * n : n;
    size_t big = (k == K_REDUCE_SCATTER || k == K_ALLGATHER) ? P * n : n;
    char *sbuf = buf_alloc(big * es), *rbuf = buf_alloc(big * es), *orig = xmalloc(in_n * es);
    const void *send;
    void *recv;
    /* -G: the call gets GPU copies of sbuf and rbuf; results come back to
     * them before the checks */
    char *dsbuf = NULL, *drbuf = NULL;
    if (gpu) {
        int e = cu.Malloc((void **)&dsbuf, big * es + 1);
        if (!e) e = cu.Malloc((void **)&drbuf, big * es + 1);
        if (e) cudart_fail("test_coll", rank, "cudaMalloc", e);
    }
    int bad = 0;
    coll_op_t vop = (k == K_ALLGATHER || k == K_BROADCAST) ? COLL_SUM : op;
    errbuf[0] = 0;

    memset(rbuf, 0x7b, big * es);
    for (size_t i = 0; i < in_n; i++) store(dt, orig, i, (double)value(vop, dt, rank, i));
    if (k == K_BROADCAST) inplace = 1; /* one buffer */
    if (!inplace) {
        memcpy(sbuf, orig, in_n * es);
        send = sbuf;
        recv = rbuf;
    } else if (k == K_ALLGATHER) {
        memcpy(rbuf + (size_t)rank * n * es, orig, n * es);
        send = rbuf + (size_t)rank * n * es;
        recv = rbuf;
    } else if (k == K_REDUCE_SCATTER) {
        memcpy(rbuf, orig, in_n * es);
        send = rbuf;
        recv = rbuf + (size_t)rank * n * es;
    } else {
        memcpy(rbuf, orig, in_n * es);
        send = recv = rbuf;
    }

    coll_result_t rc;
    if (gpu) {
        if (k == K_BROADCAST && rank != root) memset(recv, 0x5a, n * es);
        cu.Memcpy(dsbuf, sbuf, big * es, CU_DEFAULT);
        cu.Memcpy(drbuf, rbuf, big * es, CU_DEFAULT);
#define ON_GPU(p) ((p) ? ((const char *)(p) >= rbuf && (const char *)(p) <= rbuf + big * es ? drbuf + ((const char *)(p) - rbuf) \
                                                                                           : dsbuf + ((const char *)(p) - sbuf)) \
                       : NULL)
        const void *gs = ON_GPU(send);
        void *gr = ON_GPU(recv);
        switch (k) {
        case K_ALLREDUCE: rc = coll_allreduce(gs, gr, n, dt, op, comm); break;
        case K_REDUCE_SCATTER: rc = coll_reduce_scatter(gs, gr, n, dt, op, comm); break;
        case K_ALLGATHER: rc = coll_allgather(gs, gr, n, dt, comm); break;
        case K_BROADCAST: rc = coll_broadcast(gr, n, dt, root, comm); break;
        default: rc = coll_reduce(gs, (rank == root || inplace) ? gr : NULL, n, dt, op, root, comm); break;
        }
        cu.Memcpy(sbuf, dsbuf, big * es, CU_DEFAULT);
        cu.Memcpy(rbuf, drbuf, big * es, CU_DEFAULT);
        goto called;
    }
    switch (k) {
    case K_ALLREDUCE: rc = coll_allreduce(send, recv, n, dt, op, comm); break;
    case K_REDUCE_SCATTER: rc = coll_reduce_scatter(send, recv, n, dt, op, comm); break;
    case K_ALLGATHER: rc = coll_allgather(send, recv, n, dt, comm); break;
    case K_BROADCAST:
        if (rank != root) memset(recv, 0x5a, n * es);
        rc = coll_broadcast(recv, n, dt, root, comm);
        break;
    default:
        /* recvbuf matters only at the root; elsewhere pass NULL */
        rc = coll_reduce(send, (rank == root || inplace) ? recv : NULL, n, dt, op, root, comm);
        break;
    }
called:
    if (rc != COLL_SUCCESS) {
        snprintf(errbuf, sizeof errbuf, "rank %d: returned %s (%s)", rank, coll_strerror(rc), coll_last_error(comm));
        bad = 1;
        goto out;
    }
    switch (k) {
    case K_ALLREDUCE:
        for (size_t i = 0; i < n && !bad; i++) {
            double w = expected(op, dt, i), g = load(dt, recv, i);
            bad = report(g != w, "recvbuf", i, g, w);
        }
        break;
    case K_REDUCE_SCATTER:
        for (size_t i = 0; i < n && !bad; i++) {
            double w = expected(op, dt, (size_t)rank * n + i), g = load(dt, recv, i);
            bad = report(g != w, "recvbuf", i, g, w);
        }
        break;
    case K_ALLGATHER:
        for (size_t i = 0; i < P * n && !bad; i++) {
            double w = (double)value(vop, dt, (int)(i / n), i % n);
            double g = load(dt, recv, i);
            bad = report(g != w, "recvbuf", i, g, w);
        }
        break;
    case K_BROADCAST:
        for (size_t i = 0; i < n && !bad; i++) {
            double w = (double)value(vop, dt, root, i), g = load(dt, recv, i);
            bad = report(g != w, "buf", i, g, w);
        }
        break;
    default:
        if (rank == root)
            for (size_t i = 0; i < n && !bad; i++) {
                double w = expected(op, dt, i), g = load(dt, recv, i);
                bad = report(g != w, "recvbuf", i, g, w);
            }
        break;
    }
    /* out-of-place: the input must be untouched */
    if (!inplace && memcmp(sbuf, orig, in_n * es)) {
        bad = 1;
        if (!errbuf[0]) snprintf(errbuf, sizeof errbuf, "rank %d: sendbuf was modified", rank);
    }
    /* reduce-scatter out of place: nothing past the output block is written */
    if (!inplace && k == K_REDUCE_SCATTER)
        for (size_t i = n * es; i < big * es && !bad; i++)
            if ((unsigned char)rbuf[i] != 0x7b) {
                bad = 1;
                snprintf(errbuf, sizeof errbuf, "rank %d: recvbuf byte %zu written past recvcount", rank, i);
            }
out:
    if (bad) fprintf(stderr, "%s\n", errbuf);
    buf_free(sbuf);
    buf_free(rbuf);
    free(orig);
    if (gpu) cu.Free(dsbuf), cu.Free(drbuf);
    return !bad;
}

/* Integer sums and products that overflow wrap, in every algorithm (Open
 * MPI 4.1's own AVX kernels saturate 8-bit ones; native must not). */
static void wraparound(void) {
    const size_t n = 4099;
    for (int algo = COLL_ALGO_RING; algo < COLL_NUM_ALGOS; algo++) {
        if (algo == COLL_ALGO_NCCL) continue;
        coll_comm_set_algorithm(comm, (coll_algo_t)algo);
        for (int op = COLL_SUM; op <= COLL_PROD; op++) {
            uint8_t *u = xmalloc(n);
            int32_t *i32 = xmalloc(n * 4);
            int64_t *i64 = xmalloc(n * 8);
            for (size_t i = 0; i < n; i++) {
                u[i] = (uint8_t)(200 + i % 50);
                i32[i] = INT32_MAX - (int32_t)(i % 7);
                i64[i] = INT64_MAX - (int64_t)(i % 5);
            }
            int ok = coll_allreduce(u, u, n, COLL_UINT8, (coll_op_t)op, comm) == COLL_SUCCESS &&
                     coll_allreduce(i32, i32, n, COLL_INT32, (coll_op_t)op, comm) == COLL_SUCCESS &&
                     coll_allreduce(i64, i64, n, COLL_INT64, (coll_op_t)op, comm) == COLL_SUCCESS;
            for (size_t i = 0; i < n && ok; i++) {
                uint8_t wu = (uint8_t)(200 + i % 50);
                uint32_t w32 = (uint32_t)(INT32_MAX - (int32_t)(i % 7));
                uint64_t w64 = (uint64_t)(INT64_MAX - (int64_t)(i % 5));
                uint8_t au = wu;
                uint32_t a32 = w32;
                uint64_t a64 = w64;
                for (int r = 1; r < nranks; r++) {
                    au = (uint8_t)(op == COLL_SUM ? au + wu : au * wu);
                    a32 = op == COLL_SUM ? a32 + w32 : a32 * w32;
                    a64 = op == COLL_SUM ? a64 + w64 : a64 * w64;
                }
                ok = u[i] == au && (uint32_t)i32[i] == a32 && (uint64_t)i64[i] == a64;
                if (!ok) fprintf(stderr, "rank %d: [%zu] got %u %d %lld\n", rank, i, u[i], i32[i], (long long)i64[i]);
            }
            result(ok, "integer %s wraps around (uint8, int32, int64) algo=%s", coll_op_name((coll_op_t)op),
                   coll_algo_name((coll_algo_t)algo));
            free(u), free(i32), free(i64);
        }
    }
    coll_comm_set_algorithm(comm, COLL_ALGO_AUTO);
}

/* Long runs of small broadcasts, reduces and all-reduces (shm's eager slots let a
 * writer run up to 16 calls ahead: the run wraps the slots many times), a
 * reader pausing now and then so that the writer must wait for it, every
 * value depending on the call, sizes across the eager limit (4 KiB), and an
 * all-reduce after each run (lock-step rounds after eager ones). */
static void bursts(void) {
    const coll_algo_t algos[] = {COLL_ALGO_AUTO, COLL_ALGO_SHM};
    const size_t sizes[] = {1, 7, 56, 57, 113, 256, 1025, 4096, 4097}; /* bytes: uint8 elements (56: an eager line) */
    uint8_t *buf = xmalloc(8192), *out = xmalloc(8192);
    for (size_t ai = 0; ai < sizeof algos / sizeof *algos; ai++) {
        coll_comm_set_algorithm(comm, algos[ai]);
        int ok = 1;
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            const size_t n = sizes[si];
            /* 200 broadcasts, then 200 reduces: the writers (a broadcast's
             * root, a reduce's non-roots) are ahead only while nothing in
             * between waits for them */
            for (int call = 0; call < 200; call++) { /* (no early exit: the peers would wait) */
                const int root = (call / 50) % nranks;
                if (rank != root && rank == (root + 1) % nranks && call % 37 == 5) usleep(300);
                for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)(rank == root ? call * 7 + i : 0xEE);
                int good = coll_broadcast(buf, n, COLL_UINT8, root, comm) == COLL_SUCCESS;
                for (size_t i = 0; i < n && good; i++) good = buf[i] == (uint8_t)(call * 7 + i);
                if (!good && ok) fprintf(stderr, "rank %d: broadcast of %zu bytes, call %d, root %d wrong\n", rank, n, call, root);
                ok &= good;
            }
            for (int call = 0; call < 200; call++) { /* (no early exit: the peers would wait) */
                const int root = (call / 50) % nranks;
                if (rank == root && call % 37 == 5) usleep(300);
                for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)(call + rank + i);
                memset(out, 0xEE, n);
                int good = coll_reduce(buf, out, n, COLL_UINT8, COLL_SUM, root, comm) == COLL_SUCCESS;
                for (size_t i = 0; i < n && good && rank == root; i++) {
                    uint8_t want = 0;
                    for (int r = 0; r < nranks; r++) want = (uint8_t)(want + call + r + i);
                    good = out[i] == want;
                }
                if (!good && ok) fprintf(stderr, "rank %d: reduce of %zu bytes, call %d, root %d wrong\n", rank, n, call, root);
                ok &= good;
            }
            /* all-reduces (eager up to 1 KiB: every rank writes a slot),
             * every third one a broadcast in between, in place and not */
            for (int call = 0; call < 200; call++) { /* (no early exit: the peers would wait) */
                if (rank == call % nranks && call % 29 == 3) usleep(300);
                for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)(call * 3 + rank * 5 + i);
                memset(out, 0xEE, n);
                uint8_t *to = call & 1 ? buf : out;
                int good = coll_allreduce(buf, to, n, COLL_UINT8, COLL_SUM, comm) == COLL_SUCCESS;
                for (size_t i = 0; i < n && good; i++) {
                    uint8_t want = 0;
                    for (int r = 0; r < nranks; r++) want = (uint8_t)(want + call * 3 + r * 5 + i);
                    good = to[i] == want;
                }
                if (call % 3 == 0) {
                    const int root = call % nranks;
                    for (size_t i = 0; i < n; i++) out[i] = (uint8_t)(rank == root ? call + i : 0xEE);
                    good = good && coll_broadcast(out, n, COLL_UINT8, root, comm) == COLL_SUCCESS;
                    for (size_t i = 0; i < n && good; i++) good = out[i] == (uint8_t)(call + i);
                }
                if (!good && ok) fprintf(stderr, "rank %d: all-reduce/broadcast of %zu bytes, call %d wrong\n", rank, n, call);
                ok &= good;
            }
            float f = (float)rank;
            const coll_result_t rc = coll_allreduce(&f, &f, 1, COLL_FLOAT32, COLL_SUM, comm);
            if (rc != COLL_SUCCESS || f != (float)(nranks * (nranks - 1) / 2)) {
                fprintf(stderr, "rank %d: all-reduce after the bursts of %zu bytes: %s, %g\n", rank, n,
                        coll_strerror(rc), f);
                ok = 0;
            }
        }
        int all = 0;
        MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        result(all, "200-call bursts of broadcast, reduce, all-reduce + broadcast, 1 B-4097 B, a pausing rank, algo=%s",
               coll_algo_name(algos[ai]));
    }
    free(buf), free(out);
    coll_comm_set_algorithm(comm, COLL_ALGO_AUTO);
}

/* The algorithms the matrix covers: every host algorithm; on GPU buffers
 * also NCCL where it can run (one rank, or one GPU per rank: -N). */
static int with_nccl;
static int skip_algo(int algo) { return algo == COLL_ALGO_NCCL && !(gpu && with_nccl); }

static int matrix(int small) {
    size_t sizes[7] = {0, 1, (size_t)nranks - 1, (size_t)nranks, (size_t)nranks + 1, 100003, 1000003};
    int nsizes = small ? 6 : 7;
    for (int algo = COLL_ALGO_AUTO; algo < COLL_NUM_ALGOS; algo++) {
        if (skip_algo(algo)) continue;
        coll_comm_set_algorithm(comm, (coll_algo_t)algo);
        for (int k = 0; k < NK; k++)
            for (int dt = 0; dt < COLL_NUM_DTYPES; dt++) {
                int reduces = k == K_ALLREDUCE || k == K_REDUCE_SCATTER || k == K_REDUCE;
                for (int op = 0; op < (reduces ? COLL_NUM_OPS : 1); op++)
                    for (int ip = 0; ip < (k == K_BROADCAST ? 1 : 2); ip++) {
                        int ok = 1;
                        size_t bad_n = 0;
                        int bad_root = -1;
                        int roots = (k == K_BROADCAST || k == K_REDUCE) ? nranks : 1;
                        for (int s = 0; s < nsizes && ok; s++)
                            for (int root = 0; root < roots && ok; root++) {
                                /* rooted ops: every root up to the prime near
                                 * 10^5, a rotating root at 1M+3 */
                                if (sizes[s] > 200000 && roots > 1 && root != s % nranks) continue;
                                if (!run_case((kind_t)k, (coll_dtype_t)dt, (coll_op_t)op, sizes[s], ip, root)) {
                                    ok = 0;
                                    bad_n = sizes[s];
                                    bad_root = root;
                                }
                                int all = 0;
                                MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
                                ok = all;
                            }
                        result(ok, "%s algo=%s dtype=%s op=%s %s (first failure: count=%zu root=%d)",
                               kind_names[k], coll_algo_name((coll_algo_t)algo), coll_dtype_name((coll_dtype_t)dt),
                               reduces ? coll_op_name((coll_op_t)op) : "-", ip ? "in-place" : "out-of-place", bad_n,
                               bad_root);
                    }
            }
    }
    coll_comm_set_algorithm(comm, COLL_ALGO_AUTO);
    wraparound();
    if (!gpu) bursts();
    /* barrier with every algorithm */
    for (int algo = COLL_ALGO_AUTO; algo < COLL_NUM_ALGOS; algo++) {
        if (skip_algo(algo)) continue;
        coll_comm_set_algorithm(comm, (coll_algo_t)algo);
        result(coll_barrier(comm) == COLL_SUCCESS, "barrier algo=%s", coll_algo_name((coll_algo_t)algo));
    }
    coll_comm_set_algorithm(comm, COLL_ALGO_AUTO);
    return 0;
}

/* ---- non-blocking ---- */
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Deterministic work whose result is known: sum of i*i mod 1000. */
static double compute(long iters) {
    volatile double acc = 0;
    for (long i = 0; i < iters; i++) acc += (double)((i * i) % 1000);
    return acc;
}

static int check_f32_sum(const float *buf, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++) {
        double w = expected(COLL_SUM, COLL_FLOAT32, i);
        if (buf[i] != w) {
            fprintf(stderr, "rank %d: %s[%zu] = %g, expected %g\n", rank, what, i, buf[i], w);
            return 0;
        }
    }
    return 1;
}

static void fill_f32(float *buf, size_t n) {
    for (size_t i = 0; i < n; i++) buf[i] = (float)value(COLL_SUM, COLL_FLOAT32, rank, i);
}

static int nonblocking(void) {
    const size_t n = 1000003;
    float *a = xmalloc(n * sizeof *a), *b = xmalloc(n * sizeof *b);
    for (int algo = COLL_ALGO_AUTO; algo < COLL_NUM_ALGOS; algo++) {
        if (algo == COLL_ALGO_NCCL) continue;
        coll_comm_set_algorithm(comm, (coll_algo_t)algo);
        /* overlapped with computation, polled with coll_test */
        fill_f32(a, n);
        coll_request_t req;
        int ok = coll_iallreduce(a, a, n, COLL_FLOAT32, COLL_SUM, comm, &req) == COLL_SUCCESS;
        double acc = 0;
        int done = 0, polls = 0;
        long chunks = 0;
        while (ok && !done) {
            acc += compute(20000);
            chunks++;
            polls++;
            ok = coll_test(req, &done) == COLL_SUCCESS;
        }
        double want = compute(20000) * (double)chunks;
        ok = ok && acc == want && check_f32_sum(a, n, "iallreduce");
        result(ok, "iallreduce algo=%s overlapped with compute (%d polls)", coll_algo_name((coll_algo_t)algo), polls);
    }
    coll_comm_set_algorithm(comm, COLL_ALGO_AUTO);

    /* progress without any library call: after computing long enough, the
     * operation has finished by itself */
    {
        const size_t m = 65536;
        fill_f32(a, m);
        coll_request_t req;
        int ok = coll_iallreduce(a, b, m, COLL_FLOAT32, COLL_SUM, comm, &req) == COLL_SUCCESS;
        double t0 = now();
        while (now() - t0 < 0.5) compute(10000);
        int done = 0;
        ok = ok && coll_test(req, &done) == COLL_SUCCESS;
        if (ok && !done) ok = 0, coll_wait(req);
        ok = ok && check_f32_sum(b, m, "iallreduce(progress)");
        result(ok, "iallreduce completes while the caller computes, without test/wait calls");
    }

    /* several kinds outstanding at once, waited in reverse order, with a
     * blocking call in between */
    {
        const size_t m = 100003, P = (size_t)nranks;
        float *rs_in = xmalloc(P * m * sizeof(float)), *rs_out = xmalloc(m * sizeof(float));
        float *ag_out = xmalloc(P * m * sizeof(float)), *bc = xmalloc(m * sizeof(float));
        float *red = xmalloc(m * sizeof(float)), *blk = xmalloc(m * sizeof(float));
        fill_f32(a, m);
        for (size_t i = 0; i < P * m; i++) rs_in[i] = (float)value(COLL_SUM, COLL_FLOAT32, rank, i);
        for (size_t i = 0; i < m; i++) bc[i] = rank == 1 % nranks ? (float)(i % 1000) : -1.0f;
        coll_request_t r[5];
        int ok = 1;
        ok &= coll_iallreduce(a, b, m, COLL_FLOAT32, COLL_SUM, comm, &r[0]) == COLL_SUCCESS;
        ok &= coll_ireduce_scatter(rs_in, rs_out, m, COLL_FLOAT32, COLL_SUM, comm, &r[1]) == COLL_SUCCESS;
        ok &= coll_iallgather(a, ag_out, m, COLL_FLOAT32, comm, &r[2]) == COLL_SUCCESS;
        ok &= coll_ibroadcast(bc, m, COLL_FLOAT32, 1 % nranks, comm, &r[3]) == COLL_SUCCESS;
        ok &= coll_ireduce(a, red, m, COLL_FLOAT32, COLL_SUM, 0, comm, &r[4]) == COLL_SUCCESS;
        ok &= coll_allreduce(a, blk, m, COLL_FLOAT32, COLL_SUM, comm) == COLL_SUCCESS;
        for (int i = 4; i >= 0 && ok; i--) ok &= coll_wait(r[i]) == COLL_SUCCESS;
        ok = ok && check_f32_sum(b, m, "iallreduce") && check_f32_sum(blk, m, "allreduce");
        for (size_t i = 0; i < m && ok; i++) ok = rs_out[i] == expected(COLL_SUM, COLL_FLOAT32, (size_t)rank * m + i);
        for (size_t i = 0; i < P * m && ok; i++) ok = ag_out[i] == value(COLL_SUM, COLL_FLOAT32, (int)(i / m), i % m);
        for (size_t i = 0; i < m && ok; i++) ok = bc[i] == (float)(i % 1000);
        if (rank == 0) ok = ok && check_f32_sum(red, m, "ireduce");
        result(ok, "five kinds of non-blocking calls in flight together, plus a blocking one");
        free(rs_in), free(rs_out), free(ag_out), free(bc), free(red), free(blk);
    }
    free(a);
    free(b);
    return 0;
}

/* ---- COLL_CHECK=1: mismatches are reported on every rank ---- */
static int check_mode(void) {
    float x[16] = {0}, y[16];
    if (nranks < 2) {
        result(1, "check mode needs 2 ranks (skipped at 1)");
        return 0;
    }
    coll_result_t rc = coll_allreduce(x, y, rank == 0 ? 8 : 9, COLL_FLOAT32, COLL_SUM, comm);
    result(rc == COLL_ERR_MISMATCH && strstr(coll_last_error(comm), "count"), "count mismatch gives COLL_ERR_MISMATCH (%s)",
           coll_last_error(comm));
    rc = coll_allreduce(x, y, 4, rank == 0 ? COLL_FLOAT32 : COLL_INT32, COLL_SUM, comm);
    result(rc == COLL_ERR_MISMATCH && strstr(coll_last_error(comm), "dtype"), "dtype mismatch gives COLL_ERR_MISMATCH");
    rc = rank == 0 ? coll_broadcast(x, 4, COLL_FLOAT32, 0, comm) : coll_allreduce(x, y, 4, COLL_FLOAT32, COLL_SUM, comm);
    result(rc == COLL_ERR_MISMATCH && strstr(coll_last_error(comm), "operation"), "different collectives give COLL_ERR_MISMATCH");
    rc = coll_broadcast(x, 4, COLL_FLOAT32, rank == 0 ? 0 : 1, comm);
    result(rc == COLL_ERR_MISMATCH && strstr(coll_last_error(comm), "root"), "root mismatch gives COLL_ERR_MISMATCH");
    /* a bad argument on rank 1 only: everyone gets an error naming rank 1 */
    rc = coll_allreduce(rank == 1 ? NULL : x, y, 4, COLL_FLOAT32, COLL_SUM, comm);
    result(rc == COLL_ERR_INVALID_ARG && (rank == 1 ? strstr(coll_last_error(comm), "sendbuf") != NULL
                                                    : strstr(coll_last_error(comm), "rank 1") != NULL),
           "invalid argument on one rank fails on all (%s)", coll_last_error(comm));
    coll_request_t req;
    rc = coll_iallreduce(rank == 1 ? NULL : x, y, 4, COLL_FLOAT32, COLL_SUM, comm, &req);
    if (rank != 1 && rc == COLL_SUCCESS) rc = coll_wait(req);
    result(rc == COLL_ERR_INVALID_ARG, "non-blocking: invalid argument on one rank fails on all");
    /* and the comm still works */
    for (int i = 0; i < 16; i++) x[i] = 1;
    rc = coll_allreduce(x, y, 16, COLL_FLOAT32, COLL_SUM, comm);
    result(rc == COLL_SUCCESS && y[15] == nranks, "communicator usable after mismatches");
    return 0;
}

/* ---- COLL_TIMEOUT: a rank that never joins ---- */

/* Ranks 0 and 1 start a large all-reduce, the others never do: under hier
 * with COLL_NODE_SIZE=2 the node stage succeeds and the cross-node stage
 * (segmented: a helper thread's) times out. Both callers return
 * COLL_ERR_TIMEOUT in time; rank 0 names a silent rank (rank 1 may name
 * rank 0, whom it was waiting on). */
static void silent_half(void) {
    enum { N = 1 << 16 };
    coll_comm_t c3;
    if (coll_comm_init(&c3, MPI_COMM_WORLD) != COLL_SUCCESS) {
        result(0, "silent half: third communicator");
        return;
    }
    coll_comm_set_timeout(c3, 1.0);
    int ok = 1;
    if (rank < 2) {
        float *x = calloc(N, sizeof *x);
        const double t0 = now();
        coll_result_t rc = x ? coll_allreduce(x, x, N, COLL_FLOAT32, COLL_SUM, c3) : COLL_ERR_NO_MEMORY;
        const double t = now() - t0;
        const char *e = coll_last_error(c3);
        ok = rc == COLL_ERR_TIMEOUT && t < 5 && (rank == 1 || strstr(e, "rank 2") || strstr(e, "rank 3"));
        if (!ok) fprintf(stderr, "rank %d: rc=%s after %.1f s: %s\n", rank, coll_strerror(rc), t, e);
        free(x);
        MPI_Send(&ok, 1, MPI_INT, rank + 2, 97, MPI_COMM_WORLD);
    } else if (rank < 4) {
        MPI_Recv(&ok, 1, MPI_INT, rank - 2, 97, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    result(ok, "silent half: a large all-reduce of ranks 0-1 with ranks 2+ silent times out at both, in time");
}
static int timeout_mode(void) {
    if (nranks < 2) {
        result(1, "timeout mode needs 2 ranks (skipped at 1)");
        return 0;
    }
    coll_comm_set_timeout(comm, 1.0);
    float x = 1, y = 0;
    if (rank == 0) {
        double t0 = now();
        coll_result_t rc = coll_allreduce(&x, &y, 1, COLL_FLOAT32, COLL_SUM, comm);
        double t = now() - t0;
        int ok = rc == COLL_ERR_TIMEOUT && strstr(coll_last_error(comm), "rank 1") && t < 5;
        if (!ok) fprintf(stderr, "rank 0: rc=%s after %.1f s: %s\n", coll_strerror(rc), t, coll_last_error(comm));
        /* the comm is now failed: further calls say so at once */
        ok = ok && coll_allreduce(&x, &y, 1, COLL_FLOAT32, COLL_SUM, comm) == COLL_ERR_TIMEOUT;
        MPI_Send(&ok, 1, MPI_INT, 1, 99, MPI_COMM_WORLD);
        result(ok, "silent peer: COLL_ERR_TIMEOUT naming rank 1 within the timeout");
    } else {
        int ok = 1;
        if (rank == 1) MPI_Recv(&ok, 1, MPI_INT, 0, 99, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        result(ok, "silent peer: COLL_ERR_TIMEOUT naming rank 1 within the timeout");
    }
    /* Fail fast: 16 non-blocking all-reduces queued while rank 1 stays
     * silent all end within 1.5 timeouts (the first times out, the others
     * fail at once), each naming rank 1; not 16 timeouts one after another. */
    coll_comm_t c2;
    if (coll_comm_init(&c2, MPI_COMM_WORLD) != COLL_SUCCESS) {
        result(0, "fail fast: second communicator");
        return 0;
    }
    const double T = 1.0;
    coll_comm_set_timeout(c2, T);
    int ok = 1;
    if (rank == 0) {
        enum { Q = 16 };
        float a[Q][64];
        coll_request_t r[Q];
        const double t0 = now();
        for (int i = 0; i < Q; i++)
            ok &= coll_iallreduce(a[i], a[i], 64, COLL_FLOAT32, COLL_SUM, c2, &r[i]) == COLL_SUCCESS;
        int timeouts = 0;
        for (int i = 0; i < Q && ok; i++) timeouts += coll_wait(r[i]) == COLL_ERR_TIMEOUT;
        const double t = now() - t0;
        ok = ok && timeouts == Q && t <= 1.5 * T && strstr(coll_last_error(c2), "rank 1");
        /* a later call fails at once, with the first failure's text */
        const double t1 = now();
        ok = ok && coll_allreduce(a[0], a[0], 64, COLL_FLOAT32, COLL_SUM, c2) == COLL_ERR_TIMEOUT && now() - t1 < 0.1 &&
             strstr(coll_last_error(c2), "failed earlier") && strstr(coll_last_error(c2), "rank 1");
        if (!ok) fprintf(stderr, "rank 0: %d of %d timed out after %.2f s (limit %.2f): %s\n", timeouts, Q, t, 1.5 * T,
                         coll_last_error(c2));
        MPI_Send(&ok, 1, MPI_INT, 1, 98, MPI_COMM_WORLD);
    } else if (rank == 1) {
        MPI_Recv(&ok, 1, MPI_INT, 0, 98, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    result(ok, "fail fast: 16 queued calls and a silent peer all end within 1.5 x COLL_TIMEOUT, naming it");
    if (nranks >= 4) silent_half();
    return 0;
}

/* ---- counts above INT_MAX ---- */
static int bigcount(void) {
    const size_t n = (size_t)INT_MAX + 13;
    uint8_t *buf = malloc(n);
    if (!buf) {
        result(0, "bigcount: cannot allocate %zu bytes", n);
        return 0;
    }
    for (int algo = COLL_ALGO_RING; algo < COLL_NUM_ALGOS; algo++) {
        if (algo == COLL_ALGO_NCCL) continue;
        coll_comm_set_algorithm(comm, (coll_algo_t)algo);
        for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)(i * 7 + (size_t)rank);
        coll_result_t rc = coll_allreduce(buf, buf, n, COLL_UINT8, COLL_SUM, comm);
        int ok = rc == COLL_SUCCESS;
        for (size_t i = 0; i < n && ok; i += 4093) {
            uint8_t w = 0;
            for (int r = 0; r < nranks; r++) w = (uint8_t)(w + (uint8_t)(i * 7 + (size_t)r));
            ok = buf[i] == w;
        }
        ok = ok && buf[n - 1] == (uint8_t)((n - 1) * 7 * (size_t)nranks + (size_t)(nranks * (nranks - 1) / 2));
        if (!ok) fprintf(stderr, "rank %d: rc=%s %s\n", rank, coll_strerror(rc), coll_last_error(comm));
        result(ok, "allreduce uint8 count=INT_MAX+13 algo=%s", coll_algo_name((coll_algo_t)algo));
    }
    free(buf);
    return 0;
}

/* ---- coll_mem_map_peers: every rank's buffer seen from every rank ---- */
static void peers_mode(void) {
    enum { N = 5000 };
    int32_t *mine = NULL, *half = NULL;
    void **peers = calloc((size_t)nranks, sizeof *peers);
    int ok = peers && coll_mem_alloc(comm, N * sizeof(int32_t), (void **)&mine) == COLL_SUCCESS;
    for (int i = 0; ok && i < N; i++) mine[i] = rank * 1000003 + i;
    /* the whole buffer, from every rank; a pointer inside it (offset 100) */
    for (int off = 0; off <= 100; off += 100) {
        coll_result_t rc = coll_mem_map_peers(comm, mine + off, peers);
        const int local = coll_comm_local_size(comm) == nranks;
        int good = ok && rc == COLL_SUCCESS && peers[rank] == mine + off;
        for (int q = 0; good && q < nranks; q++) {
            if (!local) good = q == rank || peers[q] == NULL;
            else
                for (int i = 0; good && i < N - off; i += 97) good = ((int32_t *)peers[q])[i] == q * 1000003 + i + off;
        }
        result(good, "peers: every rank's buffer at offset %d (%s)", off, coll_last_error(comm));
    }
    /* writes through a view land in the owner's memory (ordered by a barrier) */
    if (ok && coll_comm_local_size(comm) == nranks && nranks > 1) {
        coll_mem_map_peers(comm, mine, peers);
        ((int32_t *)peers[(rank + 1) % nranks])[N - 1] = -rank;
        coll_barrier(comm);
        result(mine[N - 1] == -((rank + nranks - 1) % nranks), "peers: a write through the left neighbour's view");
    }
    /* odd ranks pass NULL: NULL there everywhere */
    coll_result_t rc = coll_mem_map_peers(comm, rank % 2 ? NULL : mine, peers);
    int good = rc == COLL_SUCCESS;
    for (int q = 0; good && q < nranks; q++) good = (q % 2 == 1) == (peers[q] == NULL) || (q != rank && coll_comm_local_size(comm) < nranks);
    result(good, "peers: NULL from odd ranks");
    /* a pointer coll_mem_alloc did not return, on the last rank: an error everywhere, naming it */
    half = malloc(64);
    rc = coll_mem_map_peers(comm, rank == nranks - 1 ? (void *)half : mine, peers);
    char want[32];
    snprintf(want, sizeof want, "rank %d's ptr", nranks - 1);
    result(rc == COLL_ERR_INVALID_ARG && strstr(coll_last_error(comm), want) && peers[rank] == (rank == nranks - 1 ? (void *)half : mine),
           "peers: a foreign pointer is INVALID_ARG on every rank (%s)", coll_last_error(comm));
    result(coll_mem_map_peers(comm, mine, NULL) == COLL_ERR_INVALID_ARG, "peers: NULL output array");
    free(half);
    coll_mem_free(comm, mine);
    free(peers);
}

int main(int argc, char **argv) {
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    const char *mode = argc > 1 && argv[1][0] != '-' ? argv[1] : "matrix";
    int small = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-s") && i + 1 < argc) small = !strcmp(argv[++i], "small");
        if (!strcmp(argv[i], "-G")) gpu = 1;
        if (!strcmp(argv[i], "-N")) with_nccl = 1;
        if (!strcmp(argv[i], "-m") && i + 1 < argc) memalloc = atoi(argv[++i]);
    }
    if (gpu) cudart_load("test_coll", rank); /* before coll_comm_init, which looks for CUDA */
    coll_result_t rc = coll_comm_init(&comm, MPI_COMM_WORLD);
    if (rc != COLL_SUCCESS) {
        fprintf(stderr, "rank %d: coll_comm_init: %s\n", rank, coll_last_error(NULL));
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    double t0 = now();
    if (!strcmp(mode, "matrix")) matrix(small);
    else if (!strcmp(mode, "nonblocking")) nonblocking();
    else if (!strcmp(mode, "check")) check_mode();
    else if (!strcmp(mode, "timeout")) timeout_mode();
    else if (!strcmp(mode, "bigcount")) bigcount();
    else if (!strcmp(mode, "bursts")) bursts();
    else if (!strcmp(mode, "peers")) peers_mode();
    else {
        if (rank == 0) fprintf(stderr, "test_coll: unknown mode '%s'\n", mode);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    if (strcmp(mode, "timeout")) coll_comm_destroy(comm);
    if (rank == 0) {
        printf("test_coll %s np=%d (%.1f s): %d passed, %d failed\n", mode, nranks, now() - t0, passed, failed);
        fflush(stdout);
    }
    MPI_Finalize();
    return failed ? 1 : 0;
}
