/* The MPI point-to-point transport: bytes as MPI_BYTE on the context's own
 * duplicate communicator. Messages longer than COLL_MAX_MSG_BYTES (at most
 * INT_MAX, MPI's count type) go as several pieces, posted one after the
 * other; both sides split the same length the same way, so they match. */
#include "coll_internal.h"

#define COLL_TAG 0x3c11

_Static_assert(sizeof(MPI_Request) <= sizeof(((coll_treq_t *)0)->priv), "an MPI_Request fits a request's priv");
static MPI_Request *mreq(coll_treq_t *r) { return (MPI_Request *)(void *)r->priv; }

/* Our tags must be valid on this MPI (the standard promises 32767). */
static coll_result_t mpi_init(coll_ctx_t *ctx) {
    int *ub = NULL, flag = 0;
    MPI_Comm_get_attr(ctx->mpi, MPI_TAG_UB, &ub, &flag);
    if (flag && ub && *ub < COLL_TAG + COLL_MAX_CHANNELS - 1)
        return coll_error(NULL, COLL_ERR_UNSUPPORTED, "coll_comm_init: this MPI's largest tag (%d) is below libcoll's (%d)",
                          *ub, COLL_TAG + COLL_MAX_CHANNELS - 1);
    return COLL_SUCCESS;
}

/* MPI reaches every rank of the context. */
static int mpi_reaches(const coll_ctx_t *ctx, int peer) { return peer >= 0 && peer < ctx->size; }

static coll_result_t post_piece(coll_ctx_t *ctx, coll_treq_t *r) {
    size_t n = r->left < coll_tun.max_msg_bytes ? r->left : coll_tun.max_msg_bytes;
    int rc = r->is_send ? MPI_Isend(r->ptr, (int)n, MPI_BYTE, r->peer, COLL_TAG + r->chan, ctx->mpi, mreq(r))
                        : MPI_Irecv(r->ptr, (int)n, MPI_BYTE, r->peer, COLL_TAG + r->chan, ctx->mpi, mreq(r));
    if (rc != MPI_SUCCESS) {
        r->active = 0;
        return coll_mpi_error(ctx->comm, rc, r->is_send ? "MPI_Isend" : "MPI_Irecv");
    }
    r->ptr += n;
    r->left -= n;
    return COLL_SUCCESS;
}

static coll_result_t start(coll_ctx_t *ctx, void *buf, size_t bytes, int peer, int chan, int is_send,
                           coll_treq_t *r) {
    r->ptr = buf;
    r->chan = chan;
    r->left = bytes;
    r->peer = peer;
    r->is_send = is_send;
    r->active = 1;
    return post_piece(ctx, r);
}

static coll_result_t mpi_isend(coll_ctx_t *ctx, const void *buf, size_t bytes, int peer, int chan,
                               coll_treq_t *r) {
    atomic_fetch_add_explicit(&ctx->comm->bytes_sent, bytes, memory_order_relaxed);
    return start(ctx, (void *)buf, bytes, peer, chan, 1, r);
}

static coll_result_t mpi_irecv(coll_ctx_t *ctx, void *buf, size_t bytes, int peer, int chan,
                               coll_treq_t *r) {
    return start(ctx, buf, bytes, peer, chan, 0, r);
}

static coll_result_t mpi_test(coll_ctx_t *ctx, coll_treq_t *r, int *done) {
    int flag = 0;
    *done = 0;
    int rc = MPI_Test(mreq(r), &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
        r->active = 0;
        return coll_error(ctx->comm, COLL_ERR_MPI, "MPI_Test on a %s rank %d failed (MPI error %d)",
                          r->is_send ? "send to" : "receive from", coll_world_rank(ctx, r->peer), rc);
    }
    if (!flag) return COLL_SUCCESS;
    if (r->left) return post_piece(ctx, r);
    r->active = 0;
    *done = 1;
    return COLL_SUCCESS;
}

static void mpi_cancel(coll_ctx_t *ctx, coll_treq_t *r) {
    (void)ctx;
    if (!r->active) return;
    /* Cancelled, not only released, so that a message of the aborted
     * operation cannot match a later one (a send already matched completes
     * in the background, as MPI allows). */
    MPI_Cancel(mreq(r));
    MPI_Request_free(mreq(r));
    r->active = 0;
}

const coll_transport_t coll_transport_mpi = {
    .name = "mpi",
    .init = mpi_init,
    .finalize = NULL,
    .reaches = mpi_reaches,
    .isend = mpi_isend,
    .irecv = mpi_irecv,
    .test = mpi_test,
    .cancel = mpi_cancel,
};
