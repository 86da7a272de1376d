/* Running a call whose algorithm is chosen: on the caller's thread for
 * blocking calls and on the progress thread for queued ones, both through
 * coll_execute; the algorithm itself runs through coll_run (algos.c). */
#include "coll_internal.h"

static coll_result_t execute(coll_ctx_t *ctx, const coll_args_t *a, coll_result_t local) {
    coll_result_t rc;
    if (coll_tun.check) {
        rc = coll_check_agree(ctx, a, local);
        if (rc != COLL_SUCCESS) return rc;
    } else if (local != COLL_SUCCESS) {
        return local;
    }
    if (a->count == 0 && a->kind != COLL_K_BARRIER) return COLL_SUCCESS;
    rc = a->device ? coll_cuda_staged(ctx, a) : coll_run(ctx, a);
    if (rc == COLL_ERR_MPI || rc == COLL_ERR_TIMEOUT) coll_comm_fail(ctx->comm, rc);
    return rc;
}

/* Runs one operation on ctx, recorded by the flight recorder. */
coll_result_t coll_execute(coll_ctx_t *ctx, const coll_args_t *a, coll_result_t local) {
    coll_trace_run(ctx, a->tr);
    coll_result_t rc = execute(ctx, a, local);
    coll_trace_end(ctx, a->tr, rc);
    if (rc == COLL_ERR_MISMATCH) coll_trace_failure(ctx->comm, "mismatch");
    return rc;
}

/* NCCL runs the whole call on its stream; the agreement comes first. */
coll_result_t coll_run_nccl_start(coll_comm_t c, const coll_args_t *a, void **done) {
    if (coll_tun.check) {
        coll_result_t rc = coll_check_agree(&c->sync, a, COLL_SUCCESS);
        if (rc != COLL_SUCCESS) return rc;
    }
    coll_trace_started(a->tr);
    return coll_nccl_start(c, a, done);
}

/* A blocking call waits for its event here (non-blocking ones complete
 * through it: progress.c). */
coll_result_t coll_run_nccl(coll_comm_t c, const coll_args_t *a) {
    coll_result_t rc = coll_run_nccl_start(c, a, &c->sync_done);
    int done;
    if (rc == COLL_SUCCESS) rc = coll_cuda_event_wait(c, c->sync_done, 1, &done);
    coll_trace_finished(a->tr, rc);
    return rc;
}
