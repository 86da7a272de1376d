/* Shared-memory broadcast (shm_internal.h describes the workspace). */
#include "shm_internal.h"

/* 2-rank broadcast, each rank on its own core, in one round: the reader
 * reads the first half of the root's buffer while the root writes the
 * second half into the reader's, so each copies half, where through the
 * workspace the root copied all of it in and the reader all of it out
 * (0.6-0.9x Open MPI's single copy at 64 KiB-2 MiB; this: 1.35-2.2x).
 * Each returns once the other is done with its buffer. (Readers of the
 * root's buffer at 4 ranks on 2 cores measured 1.0-1.2x Open MPI, the
 * workspace 1.1-2.5x: more ranks keep to the workspace.) */
static coll_result_t broadcast_pair(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t bytes = a->count * coll_dtype_size(a->dtype);
    const size_t lines = (bytes / 2 + 63) & ~(size_t)63, half = lines < bytes ? lines : bytes; /* the reader's part */
    char *buf = a->recvbuf;
    uint64_t t;
    coll_result_t rc = COLL_SUCCESS;
    COLL_TRY(coll_shm_pair_begin(ctx, &t, buf, bytes, "broadcast"));
    if (ctx->shm->me == a->root) COLL_TRY(coll_shm_pair_copy(ctx, t, buf + half, half, bytes - half, 1, "broadcast"));
    else COLL_TRY(coll_shm_pair_copy(ctx, t, buf, 0, half, 0, "broadcast"));
    publish(ctx->shm, F_DONE, t);
    COLL_TRY(wait_peer(ctx, 1 - ctx->shm->me, F_DONE, t, "broadcast"));
fail:
    return rc;
}

coll_result_t coll_shm_broadcast(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_shm *s = ctx->shm;
    if (use_cma(ctx, a->count * coll_dtype_size(a->dtype))) return broadcast_pair(ctx, a);
    const size_t es = coll_dtype_size(a->dtype), per_round = s->region / es;
    char *buf = a->recvbuf;
    /* measured at 2 ranks: 16 MiB in 2.4-2.7 ms with non-temporal stores,
     * 5.4-6.6 ms without; no gain below a few MiB (the peers read the data
     * from memory instead of a cache) */
    const int nt = a->count * es >= s->bcast_nt_min || far_apart(s);
    coll_result_t rc = COLL_SUCCESS;
    if (a->count * es <= EAGER_BYTES) {
        uint64_t t;
        if (s->me == a->root) {
            COLL_TRY(begin_eager_round(ctx, &t, "broadcast"));
            eager_put(s, t, buf, a->count * es, 0);
        } else {
            /* (a reader's slot is not read by anyone: nothing to wait for) */
            t = ++s->round;
            COLL_TRY(eager_get(ctx, a->root, t, buf, a->count * es, "broadcast"));
        }
        publish(s, F_DONE, t);
        return COLL_SUCCESS;
    }
    for (size_t at = 0; at < a->count; at += per_round) {
        const size_t n = a->count - at < per_round ? a->count - at : per_round;
        uint64_t t;
        COLL_TRY(begin_round(ctx, &t, "broadcast"));
        if (s->me == a->root) {
            if (nt) copy_nt(region(s, s->me, t, 0), buf + at * es, n * es);
            else copy_bytes(region(s, s->me, t, 0), buf + at * es, n * es);
            publish(s, F_COPIED, t);
        } else {
            COLL_TRY(wait_peer(ctx, a->root, F_COPIED, t, "broadcast"));
            copy_bytes(buf + at * es, region(s, a->root, t, 0), n * es);
        }
        publish(s, F_DONE, t);
    }
fail:
    return rc;
}
