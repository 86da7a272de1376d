/* The algorithm table: coll_run runs a chosen algorithm on a context. A
 * hierarchical algorithm runs its stages through here too (the one cycle
 * between files that tests/layering.sh allows). */
#include "coll_internal.h"

static const coll_algo_fn algos[COLL_NUM_KINDS][COLL_NUM_ALGOS] = {
    [COLL_K_ALLREDUCE] = {NULL, coll_ring_allreduce, coll_rd_allreduce, coll_native_run, NULL, coll_shm_allreduce,
                          coll_hier_allreduce},
    [COLL_K_REDUCE_SCATTER] = {NULL, coll_ring_reduce_scatter, coll_rd_reduce_scatter, coll_native_run, NULL,
                               coll_shm_reduce_scatter},
    [COLL_K_ALLGATHER] = {NULL, coll_ring_allgather, coll_bruck_allgather, coll_native_run, NULL, coll_shm_allgather},
    [COLL_K_BROADCAST] = {NULL, coll_chain_broadcast, coll_tree_broadcast, coll_native_run, NULL, coll_shm_broadcast,
                          coll_hier_broadcast},
    [COLL_K_REDUCE] = {NULL, coll_chain_reduce, coll_tree_reduce, coll_native_run, NULL, coll_shm_reduce,
                       coll_hier_reduce},
    [COLL_K_BARRIER] = {NULL, coll_dissemination_barrier, coll_dissemination_barrier, coll_native_run, NULL,
                        coll_shm_barrier, coll_hier_barrier},
};

uint64_t coll_nominal_bytes(const coll_args_t *a, int P) {
    const uint64_t b = (uint64_t)a->count * coll_dtype_size(a->dtype);
    switch (a->kind) {
    case COLL_K_ALLREDUCE: return 2 * b * (uint64_t)(P - 1) / (uint64_t)P;
    case COLL_K_REDUCE_SCATTER:
    case COLL_K_ALLGATHER: return b * (uint64_t)(P - 1);
    case COLL_K_BROADCAST:
    case COLL_K_REDUCE: return b * (uint64_t)(P - 1) / (uint64_t)P; /* a chain: every rank but one sends it */
    default: return 0;
    }
}

coll_result_t coll_run(coll_ctx_t *ctx, const coll_args_t *a) {
    COLL_LOG(ctx->comm, COLL_LOG_TRACE, "%s count=%zu %s %s root=%d algo=%s", coll_kind_name(a->kind),
             a->count, coll_dtype_name(a->dtype), coll_op_name(a->op), a->root, coll_algo_name(a->algo));
    const coll_algo_t algo = coll_select_on(ctx, a);
    /* what a ring would send, for the algorithms whose traffic libcoll
     * does not post as messages */
    if (algo == COLL_ALGO_NATIVE || algo == COLL_ALGO_SHM)
        atomic_fetch_add_explicit(&ctx->comm->bytes_sent, coll_nominal_bytes(a, ctx->size), memory_order_relaxed);
    return algos[a->kind][algo](ctx, a);
}
