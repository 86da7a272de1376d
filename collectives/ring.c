/* Bandwidth-optimal algorithms: ring reduce-scatter and all-gather (all-reduce
 * is the two in sequence), and chain broadcast and reduce, all pipelined in
 * chunks of COLL_CHUNK_BYTES with COLL_PIPELINE_DEPTH receives posted ahead
 * and as many sends in flight, so sending, receiving and reducing overlap.
 *
 * Schedule (as in NCCL): the buffer is cut into P blocks (balanced, any
 * count) and every block into chunks; the ring runs chunk by chunk, and for
 * each chunk index all P-1 steps, so a chunk travels the whole ring while the
 * next one follows it. Every element is reduced exactly once, by one rank, in
 * ring order, so every rank ends with bitwise the same result.
 *
 * Reduce-scatter on rank r, for each chunk index: send block r-1 of the
 * input; then for k = 1..P-1 receive block r-1-k from the left, reduce it with
 * the own input, and send the sum on (into a send slot, so the input is never
 * written) or, at k = P-1 where the block is r, write it to the output. Zero
 * length chunks (counts smaller than P x chunk) are still sent, so both sides
 * of every link always agree on the message sequence.
 *
 * Only the transport interface is used: a new transport needs no change here. */
#include <string.h>

#include "coll_internal.h"

#define MAX_DEPTH 64
/* Transport channels of the all-reduce: step 0 of each stream travels apart
 * from the later steps, so either can run ahead without reordering the other. */
enum { CH_RS0 = 0, CH_RS = 1, CH_AG0 = 2, CH_AG = 3 };

typedef struct {
    coll_ctx_t *ctx;
    int depth;
    size_t chunk; /* elements */
    size_t es;    /* element size */
    long nsend;
    char *rslot, *sslot; /* depth chunks each, when the algorithm needs them */
    coll_treq_t rq[MAX_DEPTH], sq[MAX_DEPTH];
} pipe_t;

/* `longest`: the most elements one chunk can need (a block, or the buffer),
 * so the scratch slots of a small operation stay small. */
static coll_result_t pipe_init(pipe_t *p, coll_ctx_t *ctx, coll_dtype_t dt, int slots, size_t longest) {
    memset(p, 0, sizeof *p);
    p->ctx = ctx;
    p->depth = coll_tun.depth < MAX_DEPTH ? coll_tun.depth : MAX_DEPTH;
    p->es = coll_dtype_size(dt);
    /* A chunk is one message: the transport would split a longer one into
     * pieces, and pieces of requests in flight together could interleave. */
    size_t cb = coll_tun.chunk_bytes < coll_tun.max_msg_bytes ? coll_tun.chunk_bytes : coll_tun.max_msg_bytes;
    p->chunk = cb / p->es;
    if (p->chunk > longest) p->chunk = longest;
    if (!p->chunk) p->chunk = 1;
    if (!slots) return COLL_SUCCESS;
    void *s;
    size_t slot_bytes = p->chunk * p->es;
    coll_result_t rc = coll_ctx_scratch(ctx, 2 * (size_t)p->depth * slot_bytes, &s);
    if (rc != COLL_SUCCESS) return rc;
    p->rslot = s;
    p->sslot = p->rslot + (size_t)p->depth * slot_bytes;
    return COLL_SUCCESS;
}

static char *rslot(pipe_t *p, long m) { return p->rslot + (size_t)(m % p->depth) * p->chunk * p->es; }

/* Waits until send slot for the next send is free and returns its buffer. */
static coll_result_t pipe_next_sslot(pipe_t *p, char **buf) {
    int i = (int)(p->nsend % p->depth);
    coll_result_t rc = coll_p2p_wait(p->ctx, &p->sq[i]);
    if (buf) *buf = p->sslot + (size_t)i * p->chunk * p->es;
    return rc;
}

static coll_result_t pipe_send(pipe_t *p, const void *buf, size_t n, int peer, int chan) {
    coll_result_t rc = pipe_next_sslot(p, NULL);
    if (rc != COLL_SUCCESS) return rc;
    rc = p->ctx->tp->isend(p->ctx, buf, n * p->es, peer, chan, &p->sq[p->nsend % p->depth]);
    p->nsend++;
    return rc;
}

static coll_result_t pipe_recv(pipe_t *p, long m, void *buf, size_t n, int peer, int chan) {
    return p->ctx->tp->irecv(p->ctx, buf, n * p->es, peer, chan, &p->rq[m % p->depth]);
}

static coll_result_t pipe_wait_recv(pipe_t *p, long m) {
    return coll_p2p_wait(p->ctx, &p->rq[m % p->depth]);
}

static coll_result_t pipe_finish(pipe_t *p) { return coll_p2p_waitall(p->ctx, p->sq, p->depth); }

static coll_result_t pipe_abort(pipe_t *p, coll_result_t rc) {
    coll_p2p_cancel_all(p->ctx, p->rq, p->depth);
    coll_p2p_cancel_all(p->ctx, p->sq, p->depth);
    return rc;
}

/* Chunk j of block b of an n-element buffer cut into P blocks. */
static size_t chunk_at(const pipe_t *p, size_t n, int P, int b, size_t j, size_t *len) {
    size_t cnt = coll_block_count(n, P, b), lo = j * p->chunk;
    *len = lo >= cnt ? 0 : (cnt - lo < p->chunk ? cnt - lo : p->chunk);
    return coll_block_offset(n, P, b) + (lo < cnt ? lo : cnt);
}

static size_t nchunks(const pipe_t *p, size_t elems) { return (elems + p->chunk - 1) / p->chunk; }

/* Reduce-scatter of the n-element `in` (P balanced blocks); block r of the
 * result goes to `out`, which may be in + its block offset (in-place). */
static coll_result_t ring_rs(coll_ctx_t *ctx, const char *in, char *out, size_t n,
                             coll_dtype_t dt, coll_op_t op) {
    const int P = ctx->size, r = ctx->rank, left = coll_mod(r - 1, P), right = coll_mod(r + 1, P);
    pipe_t p;
    coll_result_t rc = pipe_init(&p, ctx, dt, 1, coll_block_count(n, P, 0));
    if (rc != COLL_SUCCESS) return rc;
    const size_t nch = nchunks(&p, coll_block_count(n, P, 0));
    const long R = (long)nch * (P - 1); /* receives in total */
    size_t len;

    /* receive m is step k = m%(P-1)+1 of chunk j = m/(P-1), block r-1-k */
#define POST_RECV(m)                                                                        \
    do {                                                                                    \
        long m_ = (m);                                                                      \
        size_t j_ = (size_t)(m_ / (P - 1)), l_;                                             \
        chunk_at(&p, n, P, coll_mod(r - 2 - (int)(m_ % (P - 1)), P), j_, &l_);              \
        COLL_TRY(pipe_recv(&p, m_, rslot(&p, m_), l_, left, 0));                               \
    } while (0)

    for (long m = 0; m < R && m < p.depth; m++) POST_RECV(m);
    for (size_t j = 0; j < nch; j++) {
        size_t off = chunk_at(&p, n, P, coll_mod(r - 1, P), j, &len);
        COLL_TRY(pipe_send(&p, in + off * p.es, len, right, 0));
        for (int k = 1; k < P; k++) {
            long m = (long)j * (P - 1) + (k - 1);
            COLL_TRY(pipe_wait_recv(&p, m));
            off = chunk_at(&p, n, P, coll_mod(r - 1 - k, P), j, &len);
            char *dst;
            if (k < P - 1) {
                COLL_TRY(pipe_next_sslot(&p, &dst));
            } else {
                dst = out + (off - coll_block_offset(n, P, r)) * p.es;
            }
            coll_reduce_kernel(dt, op, dst, in + off * p.es, rslot(&p, m), len);
            if (k == P - 1 && op == COLL_AVG) coll_avg_finish(dt, dst, len, P);
            if (m + p.depth < R) POST_RECV(m + p.depth);
            if (k < P - 1) COLL_TRY(pipe_send(&p, dst, len, right, 0));
        }
    }
#undef POST_RECV
    COLL_TRY(pipe_finish(&p));
    return COLL_SUCCESS;
fail:
    return pipe_abort(&p, rc);
}

/* All-gather over an n-element buffer of P balanced blocks, block r already
 * in place; received blocks are forwarded straight from the buffer. */
static coll_result_t ring_ag(coll_ctx_t *ctx, char *buf, size_t n, coll_dtype_t dt) {
    const int P = ctx->size, r = ctx->rank, left = coll_mod(r - 1, P), right = coll_mod(r + 1, P);
    pipe_t p;
    coll_result_t rc = pipe_init(&p, ctx, dt, 0, coll_block_count(n, P, 0));
    if (rc != COLL_SUCCESS) return rc;
    const size_t nch = nchunks(&p, coll_block_count(n, P, 0));
    const long R = (long)nch * (P - 1);
    size_t len, off;

    /* receive m is step k = m%(P-1)+1 of chunk j = m/(P-1), block r-k */
#define POST_RECV(m)                                                                        \
    do {                                                                                    \
        long m_ = (m);                                                                      \
        size_t l_, o_ = chunk_at(&p, n, P, coll_mod(r - 1 - (int)(m_ % (P - 1)), P),        \
                                 (size_t)(m_ / (P - 1)), &l_);                              \
        COLL_TRY(pipe_recv(&p, m_, buf + o_ * p.es, l_, left, 0));                             \
    } while (0)

    for (long m = 0; m < R && m < p.depth; m++) POST_RECV(m);
    for (size_t j = 0; j < nch; j++) {
        off = chunk_at(&p, n, P, r, j, &len);
        COLL_TRY(pipe_send(&p, buf + off * p.es, len, right, 0));
        for (int k = 1; k < P; k++) {
            long m = (long)j * (P - 1) + (k - 1);
            COLL_TRY(pipe_wait_recv(&p, m));
            if (m + p.depth < R) POST_RECV(m + p.depth);
            if (k < P - 1) {
                off = chunk_at(&p, n, P, coll_mod(r - k, P), j, &len);
                COLL_TRY(pipe_send(&p, buf + off * p.es, len, right, 0));
            }
        }
    }
#undef POST_RECV
    COLL_TRY(pipe_finish(&p));
    return COLL_SUCCESS;
fail:
    return pipe_abort(&p, rc);
}

coll_result_t coll_ring_reduce_scatter(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t es = coll_dtype_size(a->dtype);
    if (ctx->size == 1) {
        coll_copy(a->recvbuf, a->sendbuf, a->count * es);
        return COLL_SUCCESS;
    }
    return ring_rs(ctx, a->sendbuf, a->recvbuf, a->count * (size_t)ctx->size, a->dtype, a->op);
}

coll_result_t coll_ring_allgather(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t es = coll_dtype_size(a->dtype);
    char *own = (char *)a->recvbuf + (size_t)ctx->rank * a->count * es;
    coll_copy(own, a->sendbuf, a->count * es);
    if (ctx->size == 1) return COLL_SUCCESS;
    return ring_ag(ctx, a->recvbuf, a->count * (size_t)ctx->size, a->dtype);
}

/* All-reduce: reduce-scatter and all-gather, chunk by chunk, as two
 * streams on separate transport channels (each with its own receives posted
 * ahead and its own window of sends), with the reduce-scatter running
 * LOOKAHEAD chunks ahead of the all-gather (NCCL runs the same schedule as
 * one loop per channel). On rank r, for chunk j:
 *   reduce-scatter: send input block r-1; for k = 1..P-1 receive block r-1-k,
 *     reduce it with the input and pass it on, the last one (block r) into the
 *     output, then start the all-gather by sending output block r;
 *   all-gather: for k = 1..P-1 receive block r-k into the output and pass it on.
 * Step-0 sends read only input, so they go out as soon as a send slot is free
 * (step 0 of each stream has a channel of its own, so running ahead cannot
 * reorder the later steps):
 * while a rank waits for all-gather data its MPI progress engine is already
 * copying in the next chunks' reduce-scatter data, and reductions run ahead.
 * In place, an all-gather receive overwrites input, so it is posted only
 * after this rank's reduce-scatter of that chunk has read it and the step-0
 * send of it has completed. */
#define LOOKAHEAD 4

typedef struct {
    coll_ctx_t *ctx;
    const coll_args_t *a;
    const char *in;
    char *out;
    size_t n, es, nch;
    int P, r, left, right, inplace;
    size_t look;                     /* chunks the reduce-scatter runs ahead */
    pipe_t rs, ag;                   /* the two streams */
    pipe_t s0;                       /* step-0 sends of the reduce-scatter */
    long rs_posted, rs_used, ag_posted, ag_used, R;
    size_t rs_done, step0_sent;      /* chunks */
    long step0_idx[LOOKAHEAD + 2];   /* s0 send index of recent step-0 sends */
} ar_t;

/* reduce-scatter receive m: chunk m/(P-1), step k = m%(P-1)+1, block r-1-k */
static coll_result_t ar_post_rs(ar_t *t) {
    coll_result_t rc = COLL_SUCCESS;
    while (t->rs_posted < t->R && t->rs_posted < t->rs_used + t->rs.depth) {
        long m = t->rs_posted;
        size_t len;
        chunk_at(&t->rs, t->n, t->P, coll_mod(t->r - 2 - (int)(m % (t->P - 1)), t->P), (size_t)(m / (t->P - 1)), &len);
        COLL_TRY(pipe_recv(&t->rs, m, rslot(&t->rs, m), len, t->left, m % (t->P - 1) ? CH_RS : CH_RS0));
        t->rs_posted++;
    }
fail:
    return rc;
}

/* all-gather receive m: chunk m/(P-1), step k = m%(P-1)+1, block r-k */
static coll_result_t ar_post_ag(ar_t *t) {
    coll_result_t rc = COLL_SUCCESS;
    while (t->ag_posted < t->R && t->ag_posted < t->ag_used + t->ag.depth &&
           (!t->inplace || (size_t)(t->ag_posted / (t->P - 1)) < t->rs_done)) {
        long m = t->ag_posted;
        size_t len, off = chunk_at(&t->ag, t->n, t->P, coll_mod(t->r - 1 - (int)(m % (t->P - 1)), t->P),
                                   (size_t)(m / (t->P - 1)), &len);
        COLL_TRY(pipe_recv(&t->ag, m, t->out + off * t->es, len, t->left, m % (t->P - 1) ? CH_AG : CH_AG0));
        t->ag_posted++;
    }
fail:
    return rc;
}

/* Sends step 0 of the next chunks: up to `upto` (blocking on its send
 * window), and beyond it, up to LOOKAHEAD chunks ahead, only while a send
 * slot is free without waiting. Step-0 sends have a window of their own:
 * sharing the reduce-scatter's would let look-ahead sends hold the slots
 * that the middle steps need, which deadlocks a ring of more than 2. */
static coll_result_t ar_send_step0(ar_t *t, size_t upto) {
    coll_result_t rc = COLL_SUCCESS;
    while (t->step0_sent < t->nch) {
        if (t->step0_sent > upto) {
            if (t->step0_sent > upto + LOOKAHEAD) break;
            coll_treq_t *q = &t->s0.sq[t->s0.nsend % t->s0.depth];
            int done = !q->active;
            if (!done) COLL_TRY(t->ctx->tp->test(t->ctx, q, &done));
            if (!done) break;
        }
        size_t len, off = chunk_at(&t->rs, t->n, t->P, coll_mod(t->r - 1, t->P), t->step0_sent, &len);
        t->step0_idx[t->step0_sent % (LOOKAHEAD + 2)] = t->s0.nsend;
        COLL_TRY(pipe_send(&t->s0, t->in + off * t->es, len, t->right, CH_RS0));
        t->step0_sent++;
    }
fail:
    return rc;
}

static coll_result_t ar_reduce_scatter(ar_t *t, size_t j) {
    const int P = t->P;
    const coll_args_t *a = t->a;
    coll_result_t rc;
    COLL_TRY(ar_send_step0(t, j));
    for (int k = 1; k < P; k++) {
        long m = (long)j * (P - 1) + (k - 1);
        COLL_TRY(pipe_wait_recv(&t->rs, m));
        size_t len, off = chunk_at(&t->rs, t->n, P, coll_mod(t->r - 1 - k, P), j, &len);
        char *dst = t->out + off * t->es;
        if (k < P - 1) COLL_TRY(pipe_next_sslot(&t->rs, &dst));
        coll_reduce_kernel(a->dtype, a->op, dst, t->in + off * t->es, rslot(&t->rs, m), len);
        t->rs_used++;
        COLL_TRY(ar_post_rs(t));
        if (k < P - 1) {
            COLL_TRY(pipe_send(&t->rs, dst, len, t->right, CH_RS));
            continue;
        }
        if (a->op == COLL_AVG) coll_avg_finish(a->dtype, dst, len, P);
        if (t->inplace) {
            long s0 = t->step0_idx[j % (LOOKAHEAD + 2)];
            if (t->s0.nsend - s0 <= t->s0.depth) COLL_TRY(coll_p2p_wait(t->ctx, &t->s0.sq[s0 % t->s0.depth]));
        }
        t->rs_done = j + 1;
        COLL_TRY(ar_post_ag(t));
        COLL_TRY(pipe_send(&t->ag, dst, len, t->right, CH_AG0));
    }
    return ar_send_step0(t, j); /* opportunistic look-ahead */
fail:
    return rc;
}

static coll_result_t ar_allgather(ar_t *t, size_t j) {
    const int P = t->P;
    coll_result_t rc;
    for (int k = 1; k < P; k++) {
        long m = (long)j * (P - 1) + (k - 1);
        COLL_TRY(ar_post_ag(t));
        COLL_TRY(pipe_wait_recv(&t->ag, m));
        t->ag_used++;
        COLL_TRY(ar_post_ag(t));
        COLL_TRY(ar_send_step0(t, j)); /* keep the other stream fed while here */
        if (k < P - 1) {
            size_t len, off = chunk_at(&t->ag, t->n, P, coll_mod(t->r - k, P), j, &len);
            COLL_TRY(pipe_send(&t->ag, t->out + off * t->es, len, t->right, CH_AG));
        }
    }
    return COLL_SUCCESS;
fail:
    return rc;
}

coll_result_t coll_ring_allreduce(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t es = coll_dtype_size(a->dtype), n = a->count;
    const int P = ctx->size, r = ctx->rank;
    if (P == 1) {
        coll_copy(a->recvbuf, a->sendbuf, n * es);
        return COLL_SUCCESS;
    }
    ar_t t = {.ctx = ctx, .a = a, .in = a->sendbuf, .out = a->recvbuf, .n = n, .es = es, .P = P, .r = r,
              .left = coll_mod(r - 1, P), .right = coll_mod(r + 1, P), .inplace = a->sendbuf == a->recvbuf};
    const size_t blk = coll_block_count(n, P, 0);
    coll_result_t rc = pipe_init(&t.rs, ctx, a->dtype, 1, blk);
    if (rc != COLL_SUCCESS) return rc;
    rc = pipe_init(&t.ag, ctx, a->dtype, 0, blk);
    if (rc == COLL_SUCCESS) rc = pipe_init(&t.s0, ctx, a->dtype, 0, blk);
    if (rc != COLL_SUCCESS) return rc;
    t.s0.depth = LOOKAHEAD + 1;
    /* The all-gather lags by `look` chunks, so its window must cover them,
     * or a rank's all-gather send would wait on a peer that first needs this
     * rank's later reduce-scatter data. All-gather receives land in the
     * output, so its deeper window costs requests only, no scratch. */
    int agd = t.rs.depth + (LOOKAHEAD + 1) * (P - 1);
    t.ag.depth = agd < MAX_DEPTH ? agd : MAX_DEPTH;
    long look = (long)(t.ag.depth - t.rs.depth) / (P - 1) - 1;
    t.look = look < 0 ? 0 : look > LOOKAHEAD ? LOOKAHEAD : (size_t)look;
    t.nch = nchunks(&t.rs, blk);
    t.R = (long)t.nch * (P - 1);
    COLL_TRY(ar_post_rs(&t));
    COLL_TRY(ar_post_ag(&t));
    for (size_t it = 0; it < t.nch + t.look; it++) {
        if (it < t.nch) COLL_TRY(ar_reduce_scatter(&t, it));
        if (it >= t.look && it - t.look < t.nch) COLL_TRY(ar_allgather(&t, it - t.look));
    }
    COLL_TRY(pipe_finish(&t.s0));
    COLL_TRY(pipe_finish(&t.rs));
    COLL_TRY(pipe_finish(&t.ag));
    return COLL_SUCCESS;
fail:
    pipe_abort(&t.s0, rc);
    pipe_abort(&t.ag, rc);
    return pipe_abort(&t.rs, rc);
}

/* A chain is P-1 hops deep: with 2(P-1) chunks (none under 64 KiB) the
 * pipeline fills without paying per-message costs on more chunks. */
static size_t chain_chunk(const coll_args_t *a, int P) {
    size_t min = 65536 / coll_dtype_size(a->dtype), k = 2 * (size_t)(P - 1), c = (a->count + k - 1) / k;
    return c > min ? c : min;
}

/* Chain broadcast: root -> root+1 -> ... -> root-1, chunk-pipelined; each
 * chunk is forwarded from the buffer as soon as it has arrived. */
coll_result_t coll_chain_broadcast(coll_ctx_t *ctx, const coll_args_t *a) {
    const int P = ctx->size, pos = coll_mod(ctx->rank - a->root, P);
    if (P == 1) return COLL_SUCCESS;
    const int prev = coll_mod(ctx->rank - 1, P), next = coll_mod(ctx->rank + 1, P);
    pipe_t p;
    coll_result_t rc = pipe_init(&p, ctx, a->dtype, 0, chain_chunk(a, P));
    if (rc != COLL_SUCCESS) return rc;
    char *buf = a->recvbuf;
    const long nch = (long)nchunks(&p, a->count);
#define CHUNK(j) (buf + (size_t)(j) * p.chunk * p.es)
#define CLEN(j) ((size_t)(j) == (size_t)(nch - 1) ? a->count - (size_t)(nch - 1) * p.chunk : p.chunk)
    if (pos > 0)
        for (long j = 0; j < nch && j < p.depth; j++) COLL_TRY(pipe_recv(&p, j, CHUNK(j), CLEN(j), prev, 0));
    for (long j = 0; j < nch; j++) {
        if (pos > 0) {
            COLL_TRY(pipe_wait_recv(&p, j));
            if (j + p.depth < nch) COLL_TRY(pipe_recv(&p, j + p.depth, CHUNK(j + p.depth), CLEN(j + p.depth), prev, 0));
        }
        if (pos < P - 1) COLL_TRY(pipe_send(&p, CHUNK(j), CLEN(j), next, 0));
    }
#undef CHUNK
#undef CLEN
    COLL_TRY(pipe_finish(&p));
    return COLL_SUCCESS;
fail:
    return pipe_abort(&p, rc);
}

/* Chain reduce towards the root: root-1 -> root-2 -> ... -> root. The end of
 * the chain sends its input; every other rank receives the partial sum,
 * reduces it with its own input into a send slot and passes it on; the root
 * reduces into recvbuf. */
coll_result_t coll_chain_reduce(coll_ctx_t *ctx, const coll_args_t *a) {
    const int P = ctx->size, pos = coll_mod(ctx->rank - a->root, P);
    const size_t es = coll_dtype_size(a->dtype);
    if (P == 1) {
        coll_copy(a->recvbuf, a->sendbuf, a->count * es);
        return COLL_SUCCESS;
    }
    const int from = coll_mod(ctx->rank + 1, P), to = coll_mod(ctx->rank - 1, P);
    pipe_t p;
    coll_result_t rc = pipe_init(&p, ctx, a->dtype, 1, chain_chunk(a, P));
    if (rc != COLL_SUCCESS) return rc;
    const char *in = a->sendbuf;
    const long nch = (long)nchunks(&p, a->count);
#define CLEN(j) ((size_t)(j) == (size_t)(nch - 1) ? a->count - (size_t)(nch - 1) * p.chunk : p.chunk)
#define COFF(j) ((size_t)(j) * p.chunk * es)
    if (pos < P - 1)
        for (long j = 0; j < nch && j < p.depth; j++) COLL_TRY(pipe_recv(&p, j, rslot(&p, j), CLEN(j), from, 0));
    for (long j = 0; j < nch; j++) {
        if (pos == P - 1) {
            COLL_TRY(pipe_send(&p, in + COFF(j), CLEN(j), to, 0));
            continue;
        }
        COLL_TRY(pipe_wait_recv(&p, j));
        char *dst;
        if (pos > 0) COLL_TRY(pipe_next_sslot(&p, &dst));
        else dst = (char *)a->recvbuf + COFF(j);
        coll_reduce_kernel(a->dtype, a->op, dst, in + COFF(j), rslot(&p, j), CLEN(j));
        if (pos == 0 && a->op == COLL_AVG) coll_avg_finish(a->dtype, dst, CLEN(j), P);
        if (j + p.depth < nch) COLL_TRY(pipe_recv(&p, j + p.depth, rslot(&p, j + p.depth), CLEN(j + p.depth), from, 0));
        if (pos > 0) COLL_TRY(pipe_send(&p, dst, CLEN(j), to, 0));
    }
#undef CLEN
#undef COFF
    COLL_TRY(pipe_finish(&p));
    return COLL_SUCCESS;
fail:
    return pipe_abort(&p, rc);
}
