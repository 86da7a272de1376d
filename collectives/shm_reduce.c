/* Shared-memory reduce (shm_internal.h describes the workspace). */
#include "shm_internal.h"

/* 2-rank reduce, each rank on its own core, above the one-shot size: the
 * non-root streams its input into its regions, publishing every
 * STREAM_PIECE_BYTES, while the root reduces each piece as it lands
 * (one-shot, pipelined). With non-temporal stores no data line moves from
 * one core's cache to the other's: they meet in memory. Where the cores are
 * far apart (far_apart) the two-shot, whose reduced shard the root reads
 * back from the peer's cache, ran 0.22-0.61x Open MPI at 32 KiB-32 MiB, this
 * 1.1-3.0x; where they are close, 0.99-3.6x against the two-shot's
 * 0.86-2.6x. The root's operand comes first. */
static coll_result_t reduce_stream(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_shm *s = ctx->shm;
    const size_t es = coll_dtype_size(a->dtype), per_round = s->region / es;
    const size_t per = stream_piece(s, es);
    const int me = s->me, root = a->root, peer = 1 - me;
    const char *in = a->sendbuf;
    char *out = a->recvbuf;
    /* non-temporal stores where the cores are far apart, and up to nt_max
     * where they are close (AMD host, 128 KiB: 12.8-14.8 us against
     * 14.5-18.9 with ordinary stores; 512 KiB: 37-40 against 18-20; the
     * Intel host: nt_max_default) */
    const int nt = a->count * es <= s->nt_max || far_either(s);
    coll_result_t rc = COLL_SUCCESS;
    size_t n;
    for (size_t at = 0; at < a->count; at += n) {
        n = a->count - at < per_round ? a->count - at : per_round;
        uint64_t t;
        COLL_TRY(begin_round(ctx, &t, "reduce"));
        uint64_t k = t << 20; /* + pieces of round t published (fewer than 2^20: a region is at most 1 GiB) */
        for (size_t j = 0; j < n; j += per) {
            const size_t m = n - j < per ? n - j : per;
            if (me != root) {
                if (nt) copy_nt(region(s, me, t, 0) + j * es, in + (at + j) * es, m * es);
                else copy_bytes(region(s, me, t, 0) + j * es, in + (at + j) * es, m * es);
                publish(s, F_PIECES, ++k);
            } else {
                sample_line(s, &hdr(s, peer)->f[F_PIECES].v);
                COLL_TRY(wait_value(ctx, peer, &hdr(s, peer)->f[F_PIECES].v, ++k, "reduce", stage_name[F_PIECES]));
                const char *src[2] = {in + (at + j) * es, region(s, peer, t, 0) + j * es};
                reduce_srcs(a, out + (at + j) * es, src, 2, m, 1);
            }
        }
        publish(s, F_DONE, t);
    }
fail:
    return rc;
}

/* One-shot up to COLL_SHM_ONESHOT_BYTES (the root reduces from every
 * peer's input); two-shot above: every rank reduces its shard of the
 * round, the root gathers. As in the all-reduce, a rank copies in only the shards its peers reduce
 * (its own it reads from its input), and the root reduces its shard
 * straight into its output. */
coll_result_t coll_shm_reduce(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_shm *s = ctx->shm;
    const size_t es = coll_dtype_size(a->dtype), per_round = s->region / es;
    const int P = s->P, me = s->me, root = a->root, oneshot = a->count * es <= coll_tun.shm_oneshot_bytes;
    const char *in = a->sendbuf;
    char *out = a->recvbuf;
    const char *src[MAX_RANKS];
    coll_result_t rc = COLL_SUCCESS;
    if (P == 2 && !ctx->comm->oversubscribed && !oneshot && a->count * es > EAGER_BYTES) return reduce_stream(ctx, a);
    if (a->count * es <= EAGER_BYTES) {
        uint64_t t;
        if (me != root) {
            COLL_TRY(begin_eager_round(ctx, &t, "reduce"));
            eager_put(s, t, in, a->count * es, 0);
        } else {
            t = ++s->round; /* the root's slot is not read */
            src[0] = in;
            for (int q = 1; q < P; q++) {
                const int peer = q <= me ? q - 1 : q;
                COLL_TRY(eager_get(ctx, peer, t, unpacked(s, peer), a->count * es, "reduce"));
                src[q] = unpacked(s, peer);
            }
            reduce_srcs(a, out, src, P, a->count, 1);
        }
        publish(s, F_DONE, t);
        return COLL_SUCCESS;
    }
    for (size_t at = 0; at < a->count; at += per_round) {
        const size_t n = a->count - at < per_round ? a->count - at : per_round;
        uint64_t t;
        COLL_TRY(begin_round(ctx, &t, "reduce"));
        if (oneshot) { /* one hand-off: the root reduces straight from the peers' inputs */
            if (me != root) copy_bytes(region(s, me, t, 0), in + at * es, n * es), publish(s, F_COPIED, t);
            else {
                COLL_TRY(wait_all(ctx, F_COPIED, t, "reduce"));
                src[0] = in + at * es;
                for (int q = 1; q < P; q++) src[q] = region(s, q <= me ? q - 1 : q, t, 0);
                reduce_srcs(a, out + at * es, src, P, n, 1);
            }
            publish(s, F_DONE, t);
            continue;
        }
        const size_t lo = coll_block_offset(n, P, me), len = coll_block_count(n, P, me);
        copy_in(ctx, a, region(s, me, t, 0), in + at * es, n, lo, lo + len);
        publish(s, F_COPIED, t);
        COLL_TRY(wait_all(ctx, F_COPIED, t, "reduce"));
        /* this rank's input first: at an in-place root, out is that operand exactly */
        src[0] = in + (at + lo) * es;
        for (int q = 1; q < P; q++) src[q] = region(s, q <= me ? q - 1 : q, t, 0) + lo * es;
        char *mine = me == root ? out + (at + lo) * es : region(s, me, t, 1) + lo * es;
        reduce_srcs(a, mine, src, P, len, 1);
        publish(s, F_REDUCED, t);
        if (me == root) {
            COLL_TRY(wait_all(ctx, F_REDUCED, t, "reduce"));
            for (int q = 0; q < P; q++) {
                if (q == me) continue;
                const size_t qlo = coll_block_offset(n, P, q);
                copy_bytes(out + (at + qlo) * es, region(s, q, t, 1) + qlo * es, coll_block_count(n, P, q) * es);
            }
        }
        publish(s, F_DONE, t);
    }
fail:
    return rc;
}
