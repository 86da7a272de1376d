/* Execution contexts: a communicator's (and a hierarchical stage's) MPI
 * communicator, the transport chosen for each peer, and scratch space. */
#include <stdlib.h>
#include <sys/mman.h>

#include "coll_internal.h"

/* In order of preference: each peer gets the first that reaches it. A
 * second transport (a shared-memory one, say) goes before MPI here. */
const coll_transport_t *const coll_transports[] = {&coll_transport_mpi, NULL};

/* Every transport is initialised on every rank (an init may be collective),
 * before any is asked which peers it reaches. An init must fail alike on
 * every rank, as MPI's does (its checks depend only on the MPI library). */
coll_result_t coll_ctx_open(coll_comm_t c, coll_ctx_t *ctx, MPI_Comm mpi, const int *world) {
    *ctx = (coll_ctx_t){.comm = c, .mpi = mpi, .world = world};
    /* errors come back as return codes, turned into coll_result_t */
    MPI_Comm_set_errhandler(mpi, MPI_ERRORS_RETURN);
    MPI_Comm_rank(mpi, &ctx->rank);
    MPI_Comm_size(mpi, &ctx->size);
    ctx->peer_tp = calloc((size_t)ctx->size, sizeof *ctx->peer_tp);
    if (!ctx->peer_tp) return coll_error(NULL, COLL_ERR_NO_MEMORY, "coll_comm_init: per-peer transports");
    for (int i = 0; coll_transports[i]; i++) {
        if (coll_transports[i]->init) {
            coll_result_t rc = coll_transports[i]->init(ctx);
            if (rc != COLL_SUCCESS) return rc;
        }
        ctx->tp_ready |= 1u << i;
    }
    for (int p = 0; p < ctx->size; p++) {
        for (int i = 0; p != ctx->rank && !ctx->peer_tp[p] && coll_transports[i]; i++)
            if (coll_transports[i]->reaches(ctx, p)) ctx->peer_tp[p] = coll_transports[i];
        if (p != ctx->rank && !ctx->peer_tp[p])
            return coll_error(NULL, COLL_ERR_INTERNAL, "coll_comm_init: no transport reaches rank %d",
                              coll_world_rank(ctx, p));
    }
    return COLL_SUCCESS;
}

void coll_ctx_close(coll_ctx_t *ctx) {
    for (int i = 0; coll_transports[i]; i++)
        if (ctx->tp_ready & (1u << i) && coll_transports[i]->finalize) coll_transports[i]->finalize(ctx);
    ctx->tp_ready = 0;
    free(ctx->peer_tp);
    ctx->peer_tp = NULL;
    if (ctx->mpi != MPI_COMM_NULL) MPI_Comm_free(&ctx->mpi);
    free(ctx->scratch);
    ctx->scratch = NULL;
    ctx->scratch_bytes = 0;
}

coll_result_t coll_ctx_scratch(coll_ctx_t *ctx, size_t bytes, void **out) {
    if (bytes > ctx->scratch_bytes) {
        /* Large scratch areas are 2 MiB aligned and backed by huge pages
         * where the kernel allows: peers copy into them with process-to-
         * process copies (CMA), which pin pages one at a time. */
        const size_t huge = (size_t)2 << 20;
        size_t want = bytes < 4096 ? 4096 : (bytes + 4095) & ~(size_t)4095;
        if (want >= huge) want = (want + huge - 1) & ~(huge - 1);
        void *p = NULL;
        if (posix_memalign(&p, want >= huge ? huge : 64, want))
            return coll_error(ctx->comm, COLL_ERR_NO_MEMORY, "scratch buffer of %zu bytes", want);
        if (want >= huge) madvise(p, want, MADV_HUGEPAGE);
        free(ctx->scratch);
        ctx->scratch = p;
        ctx->scratch_bytes = want;
    }
    *out = ctx->scratch;
    return COLL_SUCCESS;
}

