/* The public collectives. A call goes down once: its arguments are
 * checked (check.c), its algorithm chosen (select.c), and it runs (run.c)
 * on the caller's thread, or is queued for the progress thread
 * (progress.c), which calls the same runner. Nothing below calls back up. */
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
