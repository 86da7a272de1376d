/* coll-bench: collective bandwidth and latency, in the format of nccl-tests.
 *
 *   mpirun -np P coll-bench [-o allreduce|reduce_scatter|allgather|broadcast|reduce]
 *       [-d float32|float64|float16|bfloat16|int32|int64|uint8] [-r sum|prod|min|max|avg]
 *       [-a auto|ring|rd|native|shm|hier] [-b MIN] [-e MAX] [-f FACTOR] [-n ITERS] [-w WARMUP]
 *       [-c 0|1] [-i 0|1] [-m 0|1] [-F 0|1] [-R REPEATS] [-x BASELINE_ALGO] [-G | --device cpu|cuda]
 *
 * -F 1 rewrites every rank's input before each call, as a training step
 * writes its gradients (see freshen; with -x limit the limit's buffer too);
 * the rewriting is not timed.
 * -m 1 allocates the buffers with coll_mem_alloc (zero-copy for shm); the
 * default, ordinary memory, is what a user's buffers are.
 *
 * -G (--device cuda) runs on GPU buffers (cudaMalloc; the GPU is the rank's
 * index on its node modulo the GPUs present): inputs are filled on the host
 * and copied over, results copied back and compared exactly, as -c does on
 * the CPU. The CUDA runtime is loaded only for -G, so a CPU run never
 * touches it.
 *
 * Sizes are bytes with optional K/M/G suffixes: for all-gather the bytes
 * received, for reduce-scatter the bytes sent, otherwise the buffer size
 * (as nccl-tests). One row per size: bytes, count, type, redop, time_us,
 * algbw and busbw (GB/s), #wrong. busbw = algbw x 2(P-1)/P for all-reduce,
 * x (P-1)/P for reduce-scatter and all-gather, x 1 for broadcast and reduce.
 * time_us is the median over REPEATS timed loops of ITERS calls each (the
 * slowest rank's time per loop), which is robust against this machine's
 * noise. -x runs a second algorithm interleaved with the first, repeat by
 * repeat, and adds its time and busbw and the ratio base_time/time (>1: the
 * first is faster). -x limit takes the minimal zero-copy exchange of
 * tests/bench/limit.h as that second one (float32 sum all-reduce, 2 ranks on
 * one node): shm-limit's numbers, but in the same phase of the host as ours.
 * Exit status 1 if any result was wrong, 2 on bad usage.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_args.h"
#include "coll.h"
#include "limit.h"
#include "../common/cudart_shim.h"
#include "../common/testvals.h"


static int rank, nranks;

static int gpu;      /* -G */
static int memalloc; /* -m 1 */
static int fresh;    /* -F 1 */
static coll_comm_t comm;

static void *buf_alloc(size_t bytes) {
    if (memalloc) {
        void *p = NULL;
        return coll_mem_alloc(comm, bytes, &p) == COLL_SUCCESS ? p : NULL;
    }
    if (!gpu) return calloc(1, bytes);
    void *p = NULL;
    int e = cu.Malloc(&p, bytes);
    if (e) cudart_fail("coll-bench", rank, "cudaMalloc", e);
    return p;
}

static void buf_free(void *p) {
    if (memalloc) coll_mem_free(comm, p);
    else if (gpu) cu.Free(p);
    else free(p);
}

/* host <-> the buffers the collectives see (a plain copy on the CPU) */
static void buf_copy(void *dst, const void *src, size_t bytes) {
    if (dst == src || !bytes) return;
    if (!gpu) {
        memcpy(dst, src, bytes);
        return;
    }
    int e = cu.Memcpy(dst, src, bytes, CU_DEFAULT);
    if (e) cudart_fail("coll-bench", rank, "cudaMemcpy", e);
}

__attribute__((noreturn)) static void usage(const char *why) {
    if (rank == 0)
        fprintf(stderr,
                "coll-bench: %s\n"
                "usage: coll-bench [-o allreduce|reduce_scatter|allgather|broadcast|reduce]\n"
                "  [-d float32|float64|float16|bfloat16|int32|int64|uint8] [-r sum|prod|min|max|avg]\n"
                "  [-a auto|ring|rd|native|shm|hier] [-m 0|1 coll_mem_alloc] [-b MINBYTES] [-e MAXBYTES] [-f FACTOR] [-n ITERS]\n"
                "  [-w WARMUP] [-c 0|1] [-i 0|1 in-place] [-F 0|1 fresh inputs] [-R REPEATS] [-x BASELINE_ALGO|limit]\n"
                "  [-G | --device cpu|cuda]   (-a/-x also take nccl)\n",
                why);
    MPI_Finalize();
    exit(2);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct {
    bop_t op;
    coll_dtype_t dt;
    coll_op_t redop;
    int inplace;
    size_t count; /* per-call count argument */
    size_t es;
    char *send, *recv;   /* what the collectives get: host, or GPU with -G */
    coll_comm_t comm;
    char *hsend, *hrecv; /* host copies for filling and checking (== send, recv on the CPU) */
    size_t cap;
} run_t;

/* The buffers a call gets: its input s and output d. */
static void call_buffers(const run_t *r, const void **s, void **d) {
    *s = r->send, *d = r->recv;
    if (r->inplace) {
        *s = r->recv;
        if (r->op == O_ALLGATHER) *s = r->recv + (size_t)rank * r->count * r->es;
        if (r->op == O_REDUCE_SCATTER) *s = r->send, *d = r->send + (size_t)rank * r->count * r->es;
    }
}

static coll_result_t call(const run_t *r) {
    const void *s;
    void *d;
    call_buffers(r, &s, &d);
    switch (r->op) {
    case O_ALLREDUCE: return coll_allreduce(s, d, r->count, r->dt, r->redop, r->comm);
    case O_REDUCE_SCATTER: return coll_reduce_scatter(s, d, r->count, r->dt, r->redop, r->comm);
    case O_ALLGATHER: return coll_allgather(s, d, r->count, r->dt, r->comm);
    case O_BROADCAST: return coll_broadcast(d, r->count, r->dt, 0, r->comm);
    default: return coll_reduce(s, d, r->count, r->dt, r->redop, 0, r->comm);
    }
}

/* Fills the inputs, runs once, counts wrong elements on this rank. */
static long check(run_t *r) {
    const size_t P = (size_t)nranks, n = r->count;
    const coll_op_t vop = (r->op == O_ALLGATHER || r->op == O_BROADCAST) ? COLL_SUM : r->redop;
    size_t in_n = r->op == O_REDUCE_SCATTER ? P * n : n;
    char *in = r->inplace ? (r->op == O_REDUCE_SCATTER ? r->hsend
                             : r->op == O_ALLGATHER    ? r->hrecv + (size_t)rank * n * r->es
                                                       : r->hrecv)
                          : r->hsend;
    if (r->op == O_BROADCAST) in = r->hrecv;
    memset(r->hrecv, 0x5a, r->cap); /* stale results must not pass as new ones */
    for (size_t i = 0; i < in_n; i++) tv_store(r->dt, in, i, (double)tv_value(vop, r->dt, rank, i));
    if (r->op == O_BROADCAST && rank != 0) memset(r->hrecv, 0, n * r->es);
    buf_copy(r->send, r->hsend, r->cap);
    buf_copy(r->recv, r->hrecv, r->cap);
    if (call(r) != COLL_SUCCESS) {
        fprintf(stderr, "rank %d: %s\n", rank, coll_last_error(r->comm));
        return (long)n;
    }
    buf_copy(r->hsend, r->send, r->cap);
    buf_copy(r->hrecv, r->recv, r->cap);
    long wrong = 0;
    const char *out = r->op == O_REDUCE_SCATTER && r->inplace ? r->hsend + (size_t)rank * n * r->es : r->hrecv;
    switch (r->op) {
    case O_ALLREDUCE:
        for (size_t i = 0; i < n; i++) wrong += tv_load(r->dt, out, i) != tv_expected(r->redop, r->dt, i, nranks);
        break;
    case O_REDUCE_SCATTER:
        for (size_t i = 0; i < n; i++)
            wrong += tv_load(r->dt, out, i) != tv_expected(r->redop, r->dt, (size_t)rank * n + i, nranks);
        break;
    case O_ALLGATHER:
        for (size_t i = 0; i < P * n; i++)
            wrong += tv_load(r->dt, out, i) != (double)tv_value(vop, r->dt, (int)(i / n), i % n);
        break;
    case O_BROADCAST:
        for (size_t i = 0; i < n; i++) wrong += tv_load(r->dt, out, i) != (double)tv_value(vop, r->dt, 0, i);
        break;
    default:
        if (rank == 0)
            for (size_t i = 0; i < n; i++) wrong += tv_load(r->dt, out, i) != tv_expected(r->redop, r->dt, i, nranks);
        break;
    }
    return wrong;
}

/* -F 1: rewrites the input this rank's call reads (one byte of every
 * 64-byte line, with its own value; with lim, the limit exchange's buffer,
 * which it reduces in place), as a training step writes the gradients it
 * then reduces. Otherwise a library that reads a peer's unchanged input
 * straight from its memory (Open MPI's single copy) finds it in this core's
 * cache from the second call on, which no training step does (2-rank
 * reduce, 32 KiB: 3.1 us against 8.9 with rewritten inputs). Returns the
 * seconds it took, which timed() leaves out. */
static double freshen(const run_t *r, limit_t *lim) {
    const void *s;
    void *d;
    size_t bytes = r->count * r->es;
    if (lim) s = limit_buffer(lim);
    else {
        call_buffers(r, &s, &d);
        if (r->op == O_REDUCE_SCATTER) bytes *= (size_t)nranks;
        if (r->op == O_BROADCAST) s = rank == 0 ? d : NULL; /* only the root's buffer is an input */
    }
    const double t0 = now();
    volatile char *p = (volatile char *)s;
    for (size_t o = 0; p && o < bytes; o += 64) p[o] = p[o];
    return now() - t0;
}

/* One timed loop: seconds per call on the slowest rank (of the limit
 * exchange instead of the library where lim is given); with fresh inputs
 * (-F 1), less the time their rewriting took. */
static double timed(const run_t *r, int iters, limit_t *lim) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = now(), rewriting = 0;
    for (int i = 0; i < iters; i++) {
        if (fresh) rewriting += freshen(r, lim);
        if (lim) limit_allreduce(lim, r->count * r->es);
        else if (call(r) != COLL_SUCCESS) {
            fprintf(stderr, "rank %d: %s\n", rank, coll_last_error(r->comm));
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    double t = (now() - t0 - rewriting) / iters, tmax;
    MPI_Allreduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return tmax;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv) {
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);

    bench_args_t A;
    char why[256];
    const int prc = bench_args_parse(argc, argv, &A, why, sizeof why);
    if (prc) usage(prc > 0 ? "help" : why);
    const bop_t op = A.op;
    const coll_dtype_t dt = A.dt;
    const coll_op_t redop = A.redop;
    const int algo = A.algo, base = A.base, checkit = A.checkit, inplace = A.inplace, repeats = A.repeats;
    const size_t minb = A.minb, maxb = A.maxb;
    const double factor = A.factor;
    const int iters = A.iters, warmup = A.warmup;
    gpu = A.gpu;
    memalloc = A.memalloc;
    fresh = A.fresh;
    if (gpu && memalloc) usage("-m 1 allocates host memory: not with -G");
    if (gpu && fresh) usage("-F 1 rewrites inputs in host memory: not with -G");

    if (gpu) cudart_load("coll-bench", rank); /* before coll_comm_init, which looks for CUDA */
    if (coll_comm_init(&comm, MPI_COMM_WORLD) != COLL_SUCCESS) {
        fprintf(stderr, "rank %d: coll_comm_init: %s\n", rank, coll_last_error(NULL));
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    const size_t es = coll_dtype_size(dt), P = (size_t)nranks;
    const int per_rank = op == O_ALLGATHER || op == O_REDUCE_SCATTER;
    const double busf = op == O_ALLREDUCE ? 2.0 * (double)(P - 1) / (double)P
                        : per_rank       ? (double)(P - 1) / (double)P
                                         : 1.0;
    const size_t unit = es * (per_rank ? P : 1);
    size_t cap = maxb / unit * unit + unit;
    limit_t lim;
    if (base == BENCH_BASE_LIMIT && limit_open(&lim, cap)) usage("-x limit: needs 2 ranks on one node");
    char *sendbuf = buf_alloc(cap), *recvbuf = buf_alloc(cap);
    char *hsend = gpu ? calloc(1, cap) : sendbuf, *hrecv = gpu ? calloc(1, cap) : recvbuf;
    if (!sendbuf || !recvbuf || !hsend || !hrecv) {
        fprintf(stderr, "rank %d: cannot allocate 2 x %zu bytes\n", rank, cap);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }

    char host[64] = "";
    gethostname(host, sizeof host - 1);
    if (rank == 0) {
        printf("# coll-bench: %s %s %s, algo %s%s%s, %d ranks, %s, iters %d x %d repeats (median), warmup %d, %s, %s "
               "buffers%s\n",
               bench_op_names[op], coll_dtype_name(dt), coll_op_name(redop), coll_algo_name((coll_algo_t)algo),
               base >= 0 ? " vs " : "", base == BENCH_BASE_LIMIT ? "limit" : base >= 0 ? coll_algo_name((coll_algo_t)base) : "",
               nranks, host, iters,
               repeats, warmup, inplace ? "in-place" : "out-of-place", gpu ? "GPU" : memalloc ? "coll_mem_alloc" : "host",
               fresh ? ", fresh inputs (rewritten before every call, not timed)" : "");
        printf("# %12s %12s %9s %6s %10s %8s %8s %7s", "bytes", "count", "type", "op", "time_us", "algbw",
               "busbw", "#wrong");
        if (base >= 0) printf(" %10s %8s %8s", "base_us", "base_bw", "speedup");
        printf("\n");
    }
    long total_wrong = 0;
    double bw_sum = 0;
    int nsizes = 0;
    for (size_t bytes = minb;; bytes = (size_t)((double)bytes * factor) > bytes ? (size_t)((double)bytes * factor) : bytes + 1) {
        if (bytes > maxb) break;
        size_t b = bytes / unit * unit;
        run_t r = {op, dt, redop, inplace, b / unit, es, sendbuf, recvbuf, comm, hsend, hrecv, cap};
        int algos[2] = {algo, base};
        double t[2][BENCH_MAX_REPEATS], med[2] = {0, 0};
        long wrong = 0;
        limit_t *limk[2] = {NULL, base == BENCH_BASE_LIMIT ? &lim : NULL};
        for (int k = 0; k < (base >= 0 ? 2 : 1); k++) {
            if (limk[k]) {
                for (int i = 0; i < warmup; i++) {
                    if (fresh) freshen(&r, limk[k]);
                    limit_allreduce(limk[k], b);
                }
                continue;
            }
            coll_comm_set_algorithm(comm, (coll_algo_t)algos[k]);
            if (checkit) wrong += check(&r);
            for (int i = 0; i < warmup; i++) {
                if (fresh) freshen(&r, NULL);
                call(&r);
            }
        }
        for (int rep = 0; rep < repeats; rep++)
            for (int k = 0; k < (base >= 0 ? 2 : 1); k++) {
                if (!limk[k]) coll_comm_set_algorithm(comm, (coll_algo_t)algos[k]);
                t[k][rep] = timed(&r, iters, limk[k]);
            }
        for (int k = 0; k < (base >= 0 ? 2 : 1); k++) med[k] = median(t[k], repeats);
        long wsum = 0;
        MPI_Allreduce(&wrong, &wsum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
        total_wrong += wsum;
        double algbw = med[0] > 0 ? (double)b / med[0] / 1e9 : 0, busbw = algbw * busf;
        bw_sum += busbw;
        nsizes++;
        if (rank == 0) {
            printf("  %12zu %12zu %9s %6s %10.2f %8.3f %8.3f %7ld", b, b / es, coll_dtype_name(dt),
                   (op == O_ALLGATHER || op == O_BROADCAST) ? "none" : coll_op_name(redop), med[0] * 1e6, algbw,
                   busbw, wsum);
            if (base >= 0) {
                double bbw = med[1] > 0 ? (double)b / med[1] / 1e9 * busf : 0;
                printf(" %10.2f %8.3f %8.2f", med[1] * 1e6, bbw, med[0] > 0 ? med[1] / med[0] : 0);
            }
            printf("\n");
            fflush(stdout);
        }
        if (bytes == maxb) break;
    }
    if (rank == 0) {
        printf("# Out of bounds values : %ld %s\n", total_wrong, total_wrong ? "FAILED" : "OK");
        printf("# Avg bus bandwidth : %g\n", nsizes ? bw_sum / nsizes : 0.0);
    }
    if (base == BENCH_BASE_LIMIT) limit_close(&lim);
    coll_comm_destroy(comm);
    buf_free(sendbuf);
    buf_free(recvbuf);
    if (gpu) free(hsend), free(hrecv);
    MPI_Finalize();
    return total_wrong ? 1 : 0;
}
