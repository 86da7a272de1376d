/* Communicator lifecycle and settings. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#include "coll_internal.h"

/* ---- lifecycle ---- */
/* One of the comm's two contexts: its own duplicate of the communicator,
 * shared memory on one node, the hierarchical children across nodes. */
static coll_result_t comm_ctx_init(coll_comm_t c, coll_ctx_t *ctx, MPI_Comm parent) {
    MPI_Comm dup;
    int rc = MPI_Comm_dup(parent, &dup);
    if (rc != MPI_SUCCESS) return coll_mpi_error(NULL, rc, "MPI_Comm_dup");
    coll_result_t crc = coll_ctx_open(c, ctx, dup, NULL);
    if (crc == COLL_SUCCESS && c->local_size == c->size && c->size > 1) crc = coll_shm_ctx_init(ctx);
    return crc == COLL_SUCCESS && c->size > 1 ? coll_hier_ctx_init(ctx, c->local_size) : crc;
}

static void comm_ctx_free(coll_ctx_t *ctx) {
    coll_hier_ctx_free(ctx);
    coll_shm_ctx_free(ctx);
    coll_ctx_close(ctx);
}

/* Ranks sharing this node, to know whether the cores are oversubscribed. */
static int local_ranks(MPI_Comm comm) {
    MPI_Comm node;
    int n = 1;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_size(node, &n);
        MPI_Comm_free(&node);
    }
    return n;
}

coll_result_t coll_comm_init(coll_comm_t *out, MPI_Comm mpi_comm) {
    if (!out) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_init: comm (the output pointer) is NULL");
    *out = NULL;
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (!inited || finalized)
        return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_init: MPI is not initialised (call MPI_Init first)");
    if (mpi_comm == MPI_COMM_NULL)
        return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_init: mpi_comm is MPI_COMM_NULL");
    const char *terr = coll_tunables_load();
    coll_comm_t c = terr ? NULL : calloc(1, sizeof *c);
    /* Every rank learns whether one failed here (a bad COLL_* variable in
     * one rank's environment, say) before the collective set-up below, so
     * none is left waiting in it. */
    /* The same all-reduce checks that COLL_NODE_SIZE agrees (hier's node
     * split would hang otherwise), so the set-up adds no collective for it. */
    int me = 0;
    MPI_Comm_rank(mpi_comm, &me);
    int mine[3] = {c ? INT_MAX : me, coll_tun.node_size, -coll_tun.node_size}, agreed[3] = {INT_MAX, 0, 0};
    int mrc = MPI_Allreduce(mine, agreed, 3, MPI_INT, MPI_MIN, mpi_comm);
    const int first = agreed[0], k_differs = agreed[1] != -agreed[2];
    if (mrc != MPI_SUCCESS || !c || first != INT_MAX || (!terr && k_differs)) free(c);
    if (mrc != MPI_SUCCESS) return coll_mpi_error(NULL, mrc, "coll_comm_init: agreeing on the set-up (MPI_Allreduce)");
    if (terr) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_init: %s", terr);
    if (!c) return coll_error(NULL, COLL_ERR_NO_MEMORY, "coll_comm_init: communicator");
    if (first != INT_MAX)
        return coll_error(NULL, COLL_ERR_INVALID_ARG,
                          "coll_comm_init: rank %d could not set up its communicator (see its error), so no rank has one",
                          first);
    if (k_differs)
        return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_init: COLL_NODE_SIZE differs between ranks (%d to %d)",
                          agreed[1], -agreed[2]);
    c->sync.mpi = c->async.mpi = MPI_COMM_NULL;
    pthread_mutex_init(&c->err_lock, NULL);
    pthread_mutex_init(&c->mem_lock, NULL);
    pthread_mutex_init(&c->q_lock, NULL);
    pthread_cond_init(&c->q_cond, NULL);
    pthread_cond_init(&c->done_cond, NULL);
    MPI_Comm_rank(mpi_comm, &c->rank);
    MPI_Comm_size(mpi_comm, &c->size);
    gethostname(c->host, sizeof c->host - 1);
    c->algo = coll_tun.algo;
    c->timeout = coll_tun.timeout;
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    c->thread_multiple = level >= MPI_THREAD_MULTIPLE;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    c->local_size = local_ranks(mpi_comm);
    c->oversubscribed = c->local_size > (cores > 0 ? cores : 1);

    coll_result_t rc = comm_ctx_init(c, &c->sync, mpi_comm);
    if (rc == COLL_SUCCESS) rc = comm_ctx_init(c, &c->async, mpi_comm);
    if (rc == COLL_SUCCESS && coll_trace_init(c) != COLL_SUCCESS)
        rc = coll_error(NULL, COLL_ERR_NO_MEMORY, "coll_comm_init: flight recorder (COLL_TRACE=%d entries)", coll_tun.trace);
    if (rc == COLL_SUCCESS && coll_registry_add(c)) rc = coll_error(NULL, COLL_ERR_NO_MEMORY, "coll_comm_init: registry");
    if (rc != COLL_SUCCESS) {
        comm_ctx_free(&c->sync);
        comm_ctx_free(&c->async);
        coll_trace_free(c);
        free(c);
        return rc;
    }
    coll_cuda_available(); /* device buffers are recognised if the program loaded CUDA */
    COLL_LOG(c, COLL_LOG_INFO, "init: %d ranks, algo=%s, thread_multiple=%d, oversubscribed=%d, chunk=%zu depth=%d",
             c->size, coll_algo_name(c->algo), c->thread_multiple, c->oversubscribed,
             coll_chunk_bytes(c), coll_tun.depth);
    if (!c->thread_multiple)
        COLL_LOG(c, COLL_LOG_WARN, "MPI thread level below MPI_THREAD_MULTIPLE: non-blocking calls will complete inside the call that starts them");
    *out = c;
    return COLL_SUCCESS;
}

coll_result_t coll_comm_destroy(coll_comm_t c) {
    if (!c) return COLL_SUCCESS;
    if (!coll_comm_valid(c))
        return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_destroy: comm is not a live communicator (destroyed twice?)");
    coll_progress_shutdown(c);
    size_t left = coll_registry_remove(c);
    coll_trace_free(c);
    coll_cuda_comm_free(c);
    coll_cuda_event_free(c->sync_ready);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        comm_ctx_free(&c->sync);
        comm_ctx_free(&c->async);
        if (!left) coll_native_release();
    }
    /* requests never waited for are freed too; their handles die with comm */
    while (c->all_reqs) {
        struct coll_request *r = c->all_reqs;
        c->all_reqs = r->all_next;
        coll_cuda_event_free(r->cuda_ready);
        coll_cuda_event_free(r->cuda_done);
        coll_request_forget(r);
        free(r);
    }
    coll_mem_free_all(c);
    pthread_mutex_destroy(&c->mem_lock);
    pthread_mutex_destroy(&c->err_lock);
    pthread_mutex_destroy(&c->q_lock);
    pthread_cond_destroy(&c->q_cond);
    pthread_cond_destroy(&c->done_cond);
    free(c);
    return COLL_SUCCESS;
}

int coll_comm_rank(coll_comm_t c) { return coll_comm_valid(c) ? c->rank : -1; }
int coll_comm_size(coll_comm_t c) { return coll_comm_valid(c) ? c->size : -1; }
int coll_comm_local_size(coll_comm_t c) { return coll_comm_valid(c) ? c->local_size : -1; }
uint64_t coll_comm_bytes_sent(coll_comm_t c) {
    return coll_comm_valid(c) ? atomic_load_explicit(&c->bytes_sent, memory_order_relaxed) : 0;
}

coll_result_t coll_comm_set_algorithm(coll_comm_t c, coll_algo_t algo) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_set_algorithm: comm is NULL or destroyed");
    if ((unsigned)algo >= COLL_NUM_ALGOS)
        return coll_error(c, COLL_ERR_INVALID_ARG, "coll_comm_set_algorithm: algo=%d is not a coll_algo_t", (int)algo);
    c->algo = algo;
    return COLL_SUCCESS;
}

coll_result_t coll_comm_get_algorithm(coll_comm_t c, coll_algo_t *algo) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_get_algorithm: comm is NULL or destroyed");
    if (!algo) return coll_error(c, COLL_ERR_INVALID_ARG, "coll_comm_get_algorithm: algo is NULL");
    *algo = c->algo;
    return COLL_SUCCESS;
}

coll_result_t coll_comm_set_timeout(coll_comm_t c, double seconds) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_set_timeout: comm is NULL or destroyed");
    if (!(seconds >= 0))
        return coll_error(c, COLL_ERR_INVALID_ARG, "coll_comm_set_timeout: seconds=%g must be >= 0", seconds);
    c->timeout = seconds;
    return COLL_SUCCESS;
}
