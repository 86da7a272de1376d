/* Shared-memory reduce-scatter and all-gather (shm_internal.h describes
 * the workspace); the 2-rank all-gather copies between the ranks' buffers. */
#include "shm_internal.h"

/* Elements of block q (of n over P) in the round starting j into every block. */
static size_t piece(size_t n, int P, int q, size_t j, size_t per) {
    const size_t left = coll_block_count(n, P, q) - j; /* j <= the shortest block: blocks differ by one at most */
    return left < per ? left : per;
}

/* Rounds carry up to `per` elements of every rank's block (blocks differ
 * by one element at most, so every rank counts the same rounds). An input
 * from coll_mem_alloc is read by the peers in place (zero-copy: the call
 * returns once they are done with it); when every rank's is, one round
 * takes the whole buffer. */
coll_result_t coll_shm_reduce_scatter_blocks(coll_ctx_t *ctx, const coll_args_t *a, const char *in, size_t n, char *out,
                                             int avg) {
    struct coll_shm *s = ctx->shm;
    const int P = s->P, me = s->me;
    const size_t es = coll_dtype_size(a->dtype), per = s->region / (es * (size_t)P);
    const size_t longest = coll_block_count(n, P, 0), lo = coll_block_offset(n, P, me);
    coll_mem_ref_t ref;
    const int zc = P <= ZC_MAX_RANKS && coll_mem_find(ctx->comm, in, n * es, &ref);
    const char *src[MAX_RANKS];
    coll_result_t rc = COLL_SUCCESS;
    uint64_t t = 0;
    for (size_t j = 0, step = per; j < longest; j += step) {
        COLL_TRY(begin_round(ctx, &t, "reduce-scatter"));
        describe_input(s, t, zc ? &ref : NULL);
        for (int q = 0; q < P && !zc; q++) { /* the peers' parts of this round; this rank reads its own from in */
            if (q != me)
                copy_far(s)(region(s, me, t, 0) + (size_t)q * per * es, in + (coll_block_offset(n, P, q) + j) * es,
                            piece(n, P, q, j, per) * es);
        }
        publish(s, F_COPIED, t);
        COLL_TRY(wait_all(ctx, F_COPIED, t, "reduce-scatter"));
        if (zc && j == 0 && all_zero_copy(s, 0)) step = longest;
        const size_t len = piece(n, P, me, j, step);
        /* this rank's input first: in place, out is that operand exactly */
        src[0] = in + (lo + j) * es;
        for (int q = 1; q < P; q++) {
            const int peer = q <= me ? q - 1 : q;
            src[q] = peer_input(ctx, peer, t, (lo + j) * es, (size_t)me * per * es);
            if (!src[q]) COLL_TRY(coll_comm_fail(ctx->comm, COLL_ERR_INTERNAL));
        }
        reduce_srcs(a, out + j * es, src, P, len, avg);
        publish(s, F_DONE, t);
    }
    if (zc && t) COLL_TRY(wait_all(ctx, F_DONE, t, "reduce-scatter"));
fail:
    return rc;
}

coll_result_t coll_shm_reduce_scatter(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t P = (size_t)ctx->shm->P;
    return coll_shm_reduce_scatter_blocks(ctx, a, a->sendbuf, a->count * P, a->recvbuf, 1);
}

/* A buf from coll_mem_alloc is read by the peers in place, as above. */
coll_result_t coll_shm_allgather_blocks(coll_ctx_t *ctx, const coll_args_t *a, char *buf, size_t n) {
    struct coll_shm *s = ctx->shm;
    const int P = s->P, me = s->me;
    const size_t es = coll_dtype_size(a->dtype), per = s->region / es;
    const size_t longest = coll_block_count(n, P, 0), lo = coll_block_offset(n, P, me);
    coll_mem_ref_t ref;
    const int zc = P <= ZC_MAX_RANKS && coll_mem_find(ctx->comm, buf, n * es, &ref);
    coll_result_t rc = COLL_SUCCESS;
    uint64_t t = 0;
    for (size_t j = 0, step = per; j < longest; j += step) {
        COLL_TRY(begin_round(ctx, &t, "allgather"));
        describe_input(s, t, zc ? &ref : NULL);
        if (!zc) copy_far(s)(region(s, me, t, 0), buf + (lo + j) * es, piece(n, P, me, j, per) * es);
        publish(s, F_COPIED, t);
        COLL_TRY(wait_all(ctx, F_COPIED, t, "allgather"));
        if (zc && j == 0 && all_zero_copy(s, 0)) step = longest;
        for (int q = 0; q < P; q++) {
            if (q == me) continue;
            const size_t qlo = coll_block_offset(n, P, q), qb = piece(n, P, q, j, step) * es;
            const char *from = peer_input(ctx, q, t, (qlo + j) * es, 0);
            if (!from) COLL_TRY(coll_comm_fail(ctx->comm, COLL_ERR_INTERNAL));
            if (qb >= NT_MIN_BYTES) copy_nt(buf + (qlo + j) * es, from, qb);
            else copy_bytes(buf + (qlo + j) * es, from, qb);
        }
        publish(s, F_DONE, t);
    }
    if (zc && t) COLL_TRY(wait_all(ctx, F_DONE, t, "allgather"));
fail:
    return rc;
}

/* 2-rank all-gather in one round: each rank reads the peer's block from
 * the peer's send buffer while it copies its own. */
static coll_result_t allgather_pair(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t bytes = a->count * coll_dtype_size(a->dtype);
    const int me = ctx->shm->me, peer = 1 - me;
    char *buf = a->recvbuf;
    uint64_t t;
    coll_result_t rc = COLL_SUCCESS;
    COLL_TRY(coll_shm_pair_begin(ctx, &t, a->sendbuf, bytes, "allgather"));
    coll_copy(buf + (size_t)me * bytes, a->sendbuf, bytes);
    COLL_TRY(coll_shm_pair_copy(ctx, t, buf + (size_t)peer * bytes, 0, bytes, 0, "allgather"));
    publish(ctx->shm, F_DONE, t);
    COLL_TRY(wait_peer(ctx, peer, F_DONE, t, "allgather"));
fail:
    return rc;
}

coll_result_t coll_shm_allgather(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t P = (size_t)ctx->shm->P, es = coll_dtype_size(a->dtype);
    char *buf = a->recvbuf;
    if (use_cma(ctx, a->count * es * P)) return allgather_pair(ctx, a);
    coll_copy(buf + (size_t)ctx->shm->me * a->count * es, a->sendbuf, a->count * es);
    return coll_shm_allgather_blocks(ctx, a, buf, a->count * P);
}
