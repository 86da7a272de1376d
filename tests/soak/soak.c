/* A differential soak of libcoll: a seeded random sequence of collectives,
 * each result checked exactly against a reference computed in int64
 * (tests/common/testvals.h), independently of the library.
 *
 *   mpirun -np P soak [-n CALLS] [-s SEED] [-v]
 *
 * Every rank draws the same sequence from SEED: kind, dtype, op, algorithm
 * (auto, ring, rd, native), root, count (0, 1, P-1..P+1, primes, the ring's
 * chunk boundaries, and now and then several MiB), in place or not, blocking
 * or non-blocking. Non-blocking calls are issued in groups of up to six in
 * flight and waited for in an order each rank shuffles on its own. Inputs
 * depend on the call's number, so a result that lands in another call's
 * buffer is caught; outputs start poisoned. A failure prints the seed and
 * the call, which reproduce it: `soak -s SEED -n CALL+1`. Ends with
 * "soak np=P: N passed, N failed". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coll.h"
#include "../common/testvals.h"
#include "../../src/rng.h"

enum { K_ALLREDUCE, K_REDUCE_SCATTER, K_ALLGATHER, K_BROADCAST, K_REDUCE, NK };
static const char *kinds[NK] = {"allreduce", "reduce_scatter", "allgather", "broadcast", "reduce"};
#define MAX_INFLIGHT 6

typedef struct call {
    long id;
    int kind, dtype, op, algo, root, inplace, nonblocking;
    size_t n, shift;
    char *sbuf, *rbuf;
    size_t big; /* elements in rbuf (and sbuf) */
    coll_request_t req;
} call_t;

static int rank, P;

static size_t pick_count(rng_t *r, int es) {
    const size_t chunk = (size_t)(2 << 20) / (size_t)es; /* COLL_CHUNK_BYTES' default, in elements */
    const size_t small[] = {0, 1, 2, (size_t)P - 1, (size_t)P, (size_t)P + 1, 7, 13, 97, 1009, 4099, 10007};
    const unsigned u = (unsigned)rng_below(r, 100);
    if (u < 70) return small[rng_below(r, sizeof small / sizeof small[0])];
    if (u < 90) return 1 + (size_t)rng_below(r, 100003);
    if (u < 97) return chunk / (size_t)P - 1 + (size_t)rng_below(r, 3); /* around a block of one chunk */
    return ((size_t)1 << 20) + 3 + (size_t)rng_below(r, (size_t)4 << 20) / (size_t)es; /* several MiB */
}

static void describe(const call_t *c, char *buf, size_t len) {
    snprintf(buf, len, "call %ld: %s count=%zu dtype=%s op=%s algo=%s root=%d %s %s", c->id, kinds[c->kind], c->n,
             coll_dtype_name((coll_dtype_t)c->dtype), coll_op_name((coll_op_t)c->op), coll_algo_name((coll_algo_t)c->algo),
             c->root, c->inplace ? "in-place" : "out-of-place", c->nonblocking ? "non-blocking" : "blocking");
}

/* Fills inputs, poisons outputs, starts the call. */
static coll_result_t issue(call_t *c, coll_comm_t comm) {
    const size_t es = coll_dtype_size((coll_dtype_t)c->dtype), n = c->n;
    const int vop = c->kind == K_ALLGATHER || c->kind == K_BROADCAST ? COLL_SUM : c->op;
    const size_t in_n = c->kind == K_REDUCE_SCATTER ? (size_t)P * n : n;
    c->big = c->kind == K_REDUCE_SCATTER || c->kind == K_ALLGATHER ? (size_t)P * n : n;
    c->sbuf = malloc(c->big * es + 1);
    c->rbuf = malloc(c->big * es + 1);
    memset(c->rbuf, 0x7b, c->big * es);
    if (c->kind == K_BROADCAST) c->inplace = 1;
    char *in = !c->inplace ? c->sbuf
               : c->kind == K_ALLGATHER ? c->rbuf + (size_t)rank * n * es
                                        : c->rbuf;
    for (size_t i = 0; i < in_n; i++)
        tv_store((coll_dtype_t)c->dtype, in, i, (double)tv_value((coll_op_t)vop, (coll_dtype_t)c->dtype, rank, i + c->shift));
    if (c->kind == K_BROADCAST && rank != c->root) memset(c->rbuf, 0x5a, n * es);
    const void *s = in;
    void *d = c->rbuf;
    if (c->inplace && c->kind == K_REDUCE_SCATTER) d = c->rbuf + (size_t)rank * n * es;
    coll_comm_set_algorithm(comm, (coll_algo_t)c->algo);
    const coll_dtype_t dt = (coll_dtype_t)c->dtype;
    const coll_op_t op = (coll_op_t)c->op;
    coll_request_t *rq = c->nonblocking ? &c->req : NULL;
    switch (c->kind) {
    case K_ALLREDUCE: return rq ? coll_iallreduce(s, d, n, dt, op, comm, rq) : coll_allreduce(s, d, n, dt, op, comm);
    case K_REDUCE_SCATTER:
        return rq ? coll_ireduce_scatter(s, d, n, dt, op, comm, rq) : coll_reduce_scatter(s, d, n, dt, op, comm);
    case K_ALLGATHER: return rq ? coll_iallgather(s, d, n, dt, comm, rq) : coll_allgather(s, d, n, dt, comm);
    case K_BROADCAST: return rq ? coll_ibroadcast(d, n, dt, c->root, comm, rq) : coll_broadcast(d, n, dt, c->root, comm);
    default: {
        void *r = rank == c->root || c->inplace ? d : NULL;
        return rq ? coll_ireduce(s, r, n, dt, op, c->root, comm, rq) : coll_reduce(s, r, n, dt, op, c->root, comm);
    }
    }
}

/* Checks the finished call; returns the first wrong index, or -1. */
static long verify(const call_t *c) {
    const coll_dtype_t dt = (coll_dtype_t)c->dtype;
    const coll_op_t op = (coll_op_t)c->op;
    const size_t es = coll_dtype_size(dt), n = c->n;
    const char *out = c->inplace && c->kind == K_REDUCE_SCATTER ? c->rbuf + (size_t)rank * n * es : c->rbuf;
    switch (c->kind) {
    case K_ALLREDUCE:
        for (size_t i = 0; i < n; i++)
            if (tv_load(dt, out, i) != tv_expected(op, dt, i + c->shift, P)) return (long)i;
        break;
    case K_REDUCE_SCATTER:
        for (size_t i = 0; i < n; i++)
            if (tv_load(dt, out, i) != tv_expected(op, dt, (size_t)rank * n + i + c->shift, P)) return (long)i;
        break;
    case K_ALLGATHER:
        for (size_t i = 0; i < (size_t)P * n; i++)
            if (tv_load(dt, out, i) != (double)tv_value(COLL_SUM, dt, (int)(i / n), i % n + c->shift)) return (long)i;
        break;
    case K_BROADCAST:
        for (size_t i = 0; i < n; i++)
            if (tv_load(dt, out, i) != (double)tv_value(COLL_SUM, dt, c->root, i + c->shift)) return (long)i;
        break;
    default:
        if (rank == c->root)
            for (size_t i = 0; i < n; i++)
                if (tv_load(dt, out, i) != tv_expected(op, dt, i + c->shift, P)) return (long)i;
        break;
    }
    /* out of place, the input is untouched (checked by value) */
    if (!c->inplace && c->kind != K_BROADCAST) {
        const int vop = c->kind == K_ALLGATHER ? COLL_SUM : c->op;
        const size_t in_n = c->kind == K_REDUCE_SCATTER ? (size_t)P * n : n;
        for (size_t i = 0; i < in_n; i++)
            if (tv_load(dt, c->sbuf, i) != (double)tv_value((coll_op_t)vop, dt, rank, i + c->shift)) return -2 - (long)i;
    }
    return -1;
}

int main(int argc, char **argv) {
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    long calls = 1000;
    unsigned long long seed = 1;
    int verbose = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-n") && i + 1 < argc) calls = atol(argv[++i]);
        else if (!strcmp(argv[i], "-s") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "-v")) verbose = 1;
        else {
            if (rank == 0) fprintf(stderr, "usage: soak [-n CALLS] [-s SEED] [-v]\n");
            MPI_Finalize();
            return 2;
        }
    }
    coll_comm_t comm;
    if (coll_comm_init(&comm, MPI_COMM_WORLD) != COLL_SUCCESS) {
        fprintf(stderr, "soak: rank %d: coll_comm_init: %s\n", rank, coll_last_error(NULL));
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    rng_t r, mine; /* the shared sequence; this rank's wait order */
    rng_seed(&r, seed, 0x736f616b, 0);
    rng_seed(&mine, seed, 0x77616974, (uint64_t)rank);
    long passed = 0, failed = 0, id = 0;
    call_t fl[MAX_INFLIGHT];
    while (id < calls && !failed) {
        /* a group: one blocking call, or up to MAX_INFLIGHT non-blocking ones */
        const int nb = rng_below(&r, 3) != 0;
        int g = nb ? 1 + (int)rng_below(&r, MAX_INFLIGHT) : 1;
        if (g > calls - id) g = (int)(calls - id);
        for (int k = 0; k < g; k++) {
            call_t *c = &fl[k];
            *c = (call_t){.id = id++, .nonblocking = nb};
            c->kind = (int)rng_below(&r, NK);
            c->dtype = (int)rng_below(&r, COLL_NUM_DTYPES);
            c->op = (int)rng_below(&r, COLL_NUM_OPS);
            c->algo = (int)rng_below(&r, COLL_ALGO_NCCL + 1); /* host algorithms: auto..native, then shm */
            if (c->algo == COLL_ALGO_NCCL) c->algo = COLL_ALGO_SHM;
            c->root = (int)rng_below(&r, (uint64_t)P);
            c->inplace = (int)rng_below(&r, 2);
            c->n = pick_count(&r, (int)coll_dtype_size((coll_dtype_t)c->dtype));
            c->shift = (size_t)(c->id % 97);
            char what[256];
            describe(c, what, sizeof what);
            if (verbose && rank == 0) printf("%s\n", what);
            coll_result_t rc = issue(c, comm);
            if (rc != COLL_SUCCESS) {
                fprintf(stderr, "FAIL: soak seed %llu np %d: %s: returned %s: %s\n", seed, P, what, coll_strerror(rc),
                        coll_last_error(comm));
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
        }
        /* waits in this rank's own order */
        int order[MAX_INFLIGHT];
        for (int k = 0; k < g; k++) order[k] = k;
        for (int k = g - 1; k > 0; k--) {
            const int j = (int)rng_below(&mine, (uint64_t)k + 1), t = order[k];
            order[k] = order[j], order[j] = t;
        }
        for (int k = 0; k < g; k++) {
            call_t *c = &fl[order[k]];
            char what[256];
            describe(c, what, sizeof what);
            coll_result_t rc = c->nonblocking ? coll_wait(c->req) : COLL_SUCCESS;
            const long bad = rc == COLL_SUCCESS ? verify(c) : -1;
            if (rc != COLL_SUCCESS || bad != -1) {
                failed++;
                if (rc != COLL_SUCCESS)
                    fprintf(stderr, "FAIL: soak seed %llu np %d rank %d: %s: wait returned %s: %s\n", seed, P, rank,
                            what, coll_strerror(rc), coll_last_error(comm));
                else if (bad >= 0)
                    fprintf(stderr, "FAIL: soak seed %llu np %d rank %d: %s: wrong result at element %ld\n", seed, P,
                            rank, what, bad);
                else
                    fprintf(stderr, "FAIL: soak seed %llu np %d rank %d: %s: the input was modified at element %ld\n",
                            seed, P, rank, what, -2 - bad);
            } else {
                passed++;
            }
            free(c->sbuf);
            free(c->rbuf);
        }
        long any = failed, all;
        MPI_Allreduce(&any, &all, 1, MPI_LONG, MPI_MAX, MPI_COMM_WORLD);
        if (all && !failed) failed = 0, id = calls; /* another rank failed: stop together */
        if (all) break;
    }
    long tot[2] = {passed, failed}, sum[2];
    MPI_Reduce(tot, sum, 2, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    coll_comm_destroy(comm);
    if (rank == 0) printf("soak np=%d seed %llu: %ld calls x %d ranks: %ld passed, %ld failed\n", P, seed, calls, P, sum[0], sum[1]);
    MPI_Finalize();
    return passed && !failed ? 0 : 1;
}
