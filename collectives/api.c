/* The public collectives. A call goes down once: its arguments are
 * checked (check.c), its algorithm chosen (select.c), and it runs (run.c)
 * on the caller's thread, or is queued for the progress thread
 * (progress.c), which calls the same runner. Nothing below calls back up. */
#include <stdlib.h>

#include "coll_internal.h"

static coll_result_t start(coll_comm_t c, coll_args_t a, coll_request_t *req) {
    /* one look-up in the registry of live communicators (a global lock)
     * per call: coll_check_args takes a live comm */
    if (!coll_comm_valid(c))
        return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_%s: comm is NULL or destroyed", coll_kind_name(a.kind));
    coll_result_t local = coll_check_args(c, &a);
    if (local == COLL_SUCCESS) {
        a.device = coll_buffers_on_device(c, &a);
        if (a.device && c->algo == COLL_ALGO_AUTO && coll_cuda_distinct_gpus(c)) a.algo = COLL_ALGO_NCCL;
        else a.algo = coll_select(c, &a);
        if (a.algo == COLL_ALGO_NCCL && !a.device && a.kind != COLL_K_BARRIER && a.count)
            local = coll_error(c, COLL_ERR_UNSUPPORTED,
                               "coll_%s: algorithm nccl needs device (GPU) buffers, and these are host memory",
                               coll_kind_name(a.kind));
        else if (a.algo == COLL_ALGO_NCCL && (a.count || a.kind == COLL_K_BARRIER)) {
            a.tr = coll_trace_begin(c, &a);
            return req ? coll_progress_event_request(c, &a, req) : coll_run_nccl(c, &a);
        } else if (a.algo == COLL_ALGO_NCCL) /* nothing to move: no NCCL needed */
            a.algo = COLL_ALGO_RD;
    }
    /* a device call run on this thread is ordered after the user's stream here */
    if (local == COLL_SUCCESS && a.device && (!req || !c->thread_multiple)) {
        coll_result_t rc = coll_cuda_mark_ready(c, &c->sync_ready);
        if (rc != COLL_SUCCESS) return rc;
        a.ready = c->sync_ready;
    }
    a.tr = coll_trace_begin(c, &a);
    if (req) return coll_progress_submit(c, &a, local, req);
    return coll_execute(&c->sync, &a, local);
}

#define ARGS(K, S, R, N, D, O, ROOT) ((coll_args_t){K, S, R, N, D, O, ROOT, COLL_ALGO_AUTO, 0, NULL, NULL})

coll_result_t coll_allreduce(const void *s, void *r, size_t n, coll_dtype_t d, coll_op_t o, coll_comm_t c) {
    return start(c, ARGS(COLL_K_ALLREDUCE, s, r, n, d, o, 0), NULL);
}
coll_result_t coll_reduce_scatter(const void *s, void *r, size_t n, coll_dtype_t d, coll_op_t o, coll_comm_t c) {
    return start(c, ARGS(COLL_K_REDUCE_SCATTER, s, r, n, d, o, 0), NULL);
}
coll_result_t coll_allgather(const void *s, void *r, size_t n, coll_dtype_t d, coll_comm_t c) {
    return start(c, ARGS(COLL_K_ALLGATHER, s, r, n, d, COLL_SUM, 0), NULL);
}
coll_result_t coll_broadcast(void *b, size_t n, coll_dtype_t d, int root, coll_comm_t c) {
    return start(c, ARGS(COLL_K_BROADCAST, b, b, n, d, COLL_SUM, root), NULL);
}
coll_result_t coll_reduce(const void *s, void *r, size_t n, coll_dtype_t d, coll_op_t o, int root, coll_comm_t c) {
    return start(c, ARGS(COLL_K_REDUCE, s, r, n, d, o, root), NULL);
}
coll_result_t coll_barrier(coll_comm_t c) {
    return start(c, ARGS(COLL_K_BARRIER, NULL, NULL, 0, COLL_UINT8, COLL_SUM, 0), NULL);
}

#define NEED_REQ(name)                                                                      \
    if (!req) return coll_error(coll_comm_valid(c) ? c : NULL, COLL_ERR_INVALID_ARG, name ": req is NULL")

coll_result_t coll_iallreduce(const void *s, void *r, size_t n, coll_dtype_t d, coll_op_t o, coll_comm_t c,
                              coll_request_t *req) {
    NEED_REQ("coll_iallreduce");
    return start(c, ARGS(COLL_K_ALLREDUCE, s, r, n, d, o, 0), req);
}
coll_result_t coll_ireduce_scatter(const void *s, void *r, size_t n, coll_dtype_t d, coll_op_t o, coll_comm_t c,
                                   coll_request_t *req) {
    NEED_REQ("coll_ireduce_scatter");
    return start(c, ARGS(COLL_K_REDUCE_SCATTER, s, r, n, d, o, 0), req);
}
coll_result_t coll_iallgather(const void *s, void *r, size_t n, coll_dtype_t d, coll_comm_t c,
                              coll_request_t *req) {
    NEED_REQ("coll_iallgather");
    return start(c, ARGS(COLL_K_ALLGATHER, s, r, n, d, COLL_SUM, 0), req);
}
coll_result_t coll_ibroadcast(void *b, size_t n, coll_dtype_t d, int root, coll_comm_t c, coll_request_t *req) {
    NEED_REQ("coll_ibroadcast");
    return start(c, ARGS(COLL_K_BROADCAST, b, b, n, d, COLL_SUM, root), req);
}
coll_result_t coll_ireduce(const void *s, void *r, size_t n, coll_dtype_t d, coll_op_t o, int root, coll_comm_t c,
                           coll_request_t *req) {
    NEED_REQ("coll_ireduce");
    return start(c, ARGS(COLL_K_REDUCE, s, r, n, d, o, root), req);
}

/* An exchange of descriptors, then local mappings (mem.c): the exchange is
 * a collective like any other, so it waits behind this comm's calls in flight. */
coll_result_t coll_mem_map_peers(coll_comm_t c, void *ptr, void **peers) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_mem_map_peers: comm is not a live communicator");
    if (!peers) return coll_error(c, COLL_ERR_INVALID_ARG, "coll_mem_map_peers: peers (the output array) is NULL");
    const int P = c->size;
    int64_t mine[COLL_MEM_DESC], *all = malloc(sizeof(int64_t) * COLL_MEM_DESC * (size_t)P);
    if (!all) return coll_error(c, COLL_ERR_NO_MEMORY, "coll_mem_map_peers: %d descriptors", P);
    coll_mem_describe(c, ptr, mine);
    coll_result_t rc = coll_allgather(mine, all, COLL_MEM_DESC, COLL_INT64, c);
    /* a bad pointer fails every rank, so that none goes on alone */
    for (int q = 0; q < P && rc == COLL_SUCCESS; q++)
        if (all[COLL_MEM_DESC * q + 4] < 0)
            rc = coll_error(c, COLL_ERR_INVALID_ARG,
                            "coll_mem_map_peers: rank %d's ptr was not returned by coll_mem_alloc on this communicator", q);
    for (int q = 0; q < P; q++) peers[q] = q == c->rank ? ptr : NULL;
    /* the shared-memory context exists only where every rank is on this node */
    for (int q = 0; q < P && rc == COLL_SUCCESS && c->sync.shm; q++)
        if (q != c->rank && all[COLL_MEM_DESC * q + 4] == 1 && !(peers[q] = coll_mem_map_peer(c, q, all + COLL_MEM_DESC * q)))
            rc = COLL_ERR_INTERNAL;
    free(all);
    for (int q = 0; q < P && rc != COLL_SUCCESS; q++) peers[q] = q == c->rank ? ptr : NULL;
    return rc;
}
