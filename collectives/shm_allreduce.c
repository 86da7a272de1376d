/* Shared-memory all-reduce: one-shot, two-shot, and the 2-rank stream
 * (shm_internal.h describes the workspace). */
#include "shm_internal.h"

/* reduce_srcs into a workspace shard for the peers, copying each piece to
 * this rank's output while it is still in L1 (rather than reading the
 * whole shard back from L2/L3 with the peers' shards). */
static void reduce_keep(const coll_args_t *a, char *shard, char *out, const char *const *src, int P, size_t n) {
    const size_t es = coll_dtype_size(a->dtype), per = KEEP_PIECE_BYTES / es;
    const char *at[MAX_RANKS];
    for (size_t i = 0; i < n; i += per) {
        const size_t k = n - i < per ? n - i : per;
        for (int q = 0; q < P; q++) at[q] = src[q] + i * es;
        reduce_srcs(a, shard + i * es, at, P, k, 1);
        copy_bytes(out + i * es, shard + i * es, k * es);
    }
}

/* Whether a 2-rank all-reduce streams through memory (allreduce_stream)
 * or takes the two-shot: the stream where either rank finds the cores far
 * apart, with coll_mem_alloc buffers on either rank only up to
 * ZC_STREAM_MAX_BYTES (far apart, the zero-copy two-shot's reads from the
 * peer's cache took 1.1-1.9x the stream's time at 64 KiB-16 MiB, but from
 * 64 MiB, where both run at memory's pace, the stream's extra copies took
 * 1.6-2x). Every rank must take the same path. A call of more than one
 * round votes in a hand-off of its own first (its hand-off is also a
 * sample); a call of one round takes the votes of the last all-reduce round
 * (pair_vote, pair_tally), which both ranks read alike: the hand-off held
 * the ranks in step, and the two-shot after it took 1.6x as long at 64-120
 * KiB (Intel host, 2026-12-07: 64 KiB 16-18 us against 9.3-10.5). Larger
 * calls keep it (under 2% of their time): deciding them too on the last
 * call's votes, the 2-rank training of bench-mlp1024 with ZeRO-0's
 * all-reduces (buckets of megabytes) took the far path often enough to
 * expose 1.35 ms of communication a step (against 0.55) in 7 of 10 runs,
 * with the hand-off in 1-3 of 10 (why, not found). */
#define ZC_STREAM_MAX_BYTES ((size_t)16 << 20)
static coll_result_t allreduce_pick(coll_ctx_t *ctx, int zc, size_t bytes, int *stream) {
    struct coll_shm *s = ctx->shm;
    const int peer = 1 - s->me;
    uint64_t t;
    coll_result_t rc = begin_round(ctx, &t, "allreduce");
    if (rc != COLL_SUCCESS) return rc;
    hdr(s, s->me)->desc[t & 1].d.far = (far_apart(s) ? 1 : 0) | (zc ? 2 : 0); /* (both read both votes) */
    publish(s, F_COPIED, t);
    sample_line(s, &hdr(s, peer)->f[F_COPIED].v);
    rc = wait_peer(ctx, peer, F_COPIED, t, "allreduce");
    if (rc != COLL_SUCCESS) return rc;
    const int votes = hdr(s, s->me)->desc[t & 1].d.far | hdr(s, peer)->desc[t & 1].d.far;
    *stream = (votes & 1) && (!(votes & 2) || bytes <= ZC_STREAM_MAX_BYTES);
    publish(s, F_DONE, t);
    return COLL_SUCCESS;
}

/* A 2-rank all-reduce round's vote for the next call's path: this rank's
 * far_apart in its descriptor before the round's first hand-off, and after
 * it both ranks' (each reads the same two). */
static void pair_vote(struct coll_shm *s, uint64_t t) { hdr(s, s->me)->desc[t & 1].d.far = far_apart(s) ? 1 : 0; }
static void pair_tally(struct coll_shm *s, uint64_t t) {
    s->pair_far = (hdr(s, 0)->desc[t & 1].d.far | hdr(s, 1)->desc[t & 1].d.far) & 1;
}

/* 2-rank all-reduce through memory (as reduce_stream, both ways), for cores
 * far apart: each rank streams its input into its regions with
 * non-temporal stores, piece by piece, one piece ahead, and reduces each of
 * the peer's pieces as it lands, in rank order. */
static coll_result_t allreduce_stream(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_shm *s = ctx->shm;
    const size_t es = coll_dtype_size(a->dtype), per_round = s->region / es;
    const size_t per = stream_piece(s, es);
    const int me = s->me, peer = 1 - me;
    const char *in = a->sendbuf;
    char *out = a->recvbuf;
    coll_result_t rc = COLL_SUCCESS;
    size_t n;
    for (size_t at = 0; at < a->count; at += n) {
        n = a->count - at < per_round ? a->count - at : per_round;
        uint64_t t;
        COLL_TRY(begin_round(ctx, &t, "allreduce"));
        const uint64_t k0 = t << 20;
        pair_vote(s, t);
        char *mine = region(s, me, t, 0);
        const char *theirs = region(s, peer, t, 0);
        uint64_t sent = k0;
        for (size_t j = 0, k = k0 + 1; j < n; j += per, k++) {
            /* this piece and the next out before waiting for the peer's */
            for (size_t next = (sent - k0) * per; next < n && sent < k + 1; next += per) {
                const size_t m = n - next < per ? n - next : per;
                copy_nt(mine + next * es, in + (at + next) * es, m * es);
                publish(s, F_PIECES, ++sent);
            }
            const size_t m = n - j < per ? n - j : per;
            sample_line(s, &hdr(s, peer)->f[F_PIECES].v);
            COLL_TRY(wait_value(ctx, peer, &hdr(s, peer)->f[F_PIECES].v, k, "allreduce", stage_name[F_PIECES]));
            if (j == 0) pair_tally(s, t);
            const char *src[2];
            src[me] = in + (at + j) * es, src[peer] = theirs + j * es;
            if (me == 1 && in == out) { /* the kernels allow dst == src[0] only */
                char *tmp = region(s, me, t, 1) + j * es;
                reduce_srcs(a, tmp, src, 2, m, 1);
                copy_bytes(out + (at + j) * es, tmp, m * es);
            } else reduce_srcs(a, out + (at + j) * es, src, 2, m, 1);
        }
        publish(s, F_DONE, t);
    }
fail:
    return rc;
}

/* Two-shot: each rank reduces its shard of the round, then copies the
 * others'. With both buffers from coll_mem_alloc (zero-copy) a rank's input
 * and results stay in its own buffers: the peers read them there, and the
 * call returns only when every peer is done with them. */
coll_result_t coll_shm_allreduce(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_shm *s = ctx->shm;
    const size_t es = coll_dtype_size(a->dtype), per_round = s->region / es, bytes = a->count * es;
    const int P = s->P, me = s->me;
    const int oneshot = bytes <= coll_tun.shm_oneshot_bytes;
    coll_mem_ref_t rin, rout;
    /* (one-shot has every rank read every input while writing its own
     * result: a zero-copy buffer in place would be overwritten too early) */
    const int zc = !oneshot && P <= ZC_MAX_RANKS && coll_mem_find(ctx->comm, a->sendbuf, bytes, &rin) &&
                   coll_mem_find(ctx->comm, a->recvbuf, bytes, &rout);
    const char *in = a->sendbuf;
    char *out = a->recvbuf;
    const char *src[MAX_RANKS];
    coll_result_t rc = COLL_SUCCESS;
    uint64_t t = 0;
    size_t n;
    const int pair = P == 2 && !ctx->comm->oversubscribed;
    if (pair && !oneshot && bytes > EAGER_BYTES) {
        int stream = s->pair_far;
        if (bytes > s->region) COLL_TRY(allreduce_pick(ctx, zc, bytes, &stream));
        if (stream) return allreduce_stream(ctx, a);
    }
    if (bytes <= EAGER_BYTES) { /* every rank reduces every slot, in rank order: the same result everywhere */
        COLL_TRY(begin_eager_round(ctx, &t, "allreduce"));
        eager_put(s, t, in, bytes, P == 2 && !ctx->comm->oversubscribed && bytes <= EAGER_DEMOTE_BYTES);
        for (int q = 0; q < P; q++) {
            if (q != me) COLL_TRY(eager_get(ctx, q, t, unpacked(s, q), bytes, "allreduce"));
            src[q] = q != me ? unpacked(s, q) : in;
        }
        if (in == out && me > 0) src[me] = memcpy(unpacked(s, me), in, bytes); /* the kernels allow dst == src[0] only */
        reduce_srcs(a, out, src, P, a->count, 1);
        publish(s, F_DONE, t);
        return COLL_SUCCESS;
    }
    for (size_t at = 0; at < a->count; at += n) {
        n = a->count - at < per_round ? a->count - at : per_round;
        COLL_TRY(begin_round(ctx, &t, "allreduce"));
        shm_desc_t *d = &hdr(s, me)->desc[t & 1].d;
        if (zc) *d = (shm_desc_t){rin.fd, rout.fd, rin.id, rout.id, rin.bytes, rout.bytes, rin.off, rout.off, 0, 0};
        else describe_input(s, t, NULL);
        if (!zc && oneshot) copy_bytes(region(s, me, t, 0), in + at * es, n * es);
        else if (!zc) { /* only the shards the peers reduce: this rank reads its own from its input */
            const size_t mlo = coll_block_offset(n, P, me);
            copy_in(ctx, a, region(s, me, t, 0), in + at * es, n, mlo, mlo + coll_block_count(n, P, me));
        }
        if (pair) pair_vote(s, t);
        publish(s, F_COPIED, t);
        COLL_TRY(wait_all(ctx, F_COPIED, t, "allreduce"));
        if (pair) pair_tally(s, t);
        /* every rank zero-copy (each sees every descriptor, so all decide
         * alike): no region is used, so this round takes the whole rest
         * (the rounds' hand-offs cost 2-2.5x at 512 KiB-8 MiB) */
        if (zc && at == 0 && all_zero_copy(s, 1)) n = a->count;
        if (oneshot) {
            for (int q = 0; q < P; q++) src[q] = region(s, q, t, 0); /* rank order: the same result everywhere */
            reduce_srcs(a, out + at * es, src, P, n, 1);
            publish(s, F_DONE, t);
            continue;
        }
        const size_t lo = coll_block_offset(n, P, me), len = coll_block_count(n, P, me);
        /* this rank's input first, so that in place the first operand is
         * the destination (the kernels allow only that overlap) */
        src[0] = in + (at + lo) * es;
        for (int q = 1; q < P; q++) {
            const char *from = peer_data(ctx, q <= me ? q - 1 : q, t, 0, at * es);
            if (!from) COLL_TRY(coll_comm_fail(ctx->comm, COLL_ERR_INTERNAL));
            src[q] = from + lo * es;
        }
        if (zc) reduce_srcs(a, out + (at + lo) * es, src, P, len, 1);
        else reduce_keep(a, region(s, me, t, 1) + lo * es, out + (at + lo) * es, src, P, len);
        publish(s, F_REDUCED, t);
        COLL_TRY(wait_all(ctx, F_REDUCED, t, "allreduce"));
        for (int q = 0; q < P; q++) {
            if (q == me) continue; /* already in place */
            const size_t qlo = coll_block_offset(n, P, q);
            const char *from = peer_data(ctx, q, t, 1, at * es);
            if (!from) COLL_TRY(coll_comm_fail(ctx->comm, COLL_ERR_INTERNAL));
            const size_t qb = coll_block_count(n, P, q) * es;
            if (qb >= NT_MIN_BYTES) copy_nt(out + (at + qlo) * es, from + qlo * es, qb);
            else copy_bytes(out + (at + qlo) * es, from + qlo * es, qb);
        }
        publish(s, F_DONE, t);
    }
    if (zc && t) COLL_TRY(wait_all(ctx, F_DONE, t, "allreduce"));
fail:
    return rc;
}
