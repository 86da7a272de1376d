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
 * The reduction writes into a send slot, never the input; zero-length
 * chunks (counts smaller than P x chunk) are still sent, so both sides of
 * every link always agree on the message sequence. ring_run below states
 * the schedule once for all three operations.
 *
 * Only the transport interface is used: a new transport needs no change here. */
#include <string.h>

#include "coll_internal.h"

#define MAX_DEPTH 64
/* Transport channels of the ring: step 0 of each stream travels apart
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
     * pieces, and pieces of requests in flight together could interleave.
     * Across nodes chunks are smaller: over TCP each message's rendezvous
     * control messages queue behind the bulk data already in the socket, and
     * 2 MiB chunks left a 1 Gbit/s link idle for 40% of an all-reduce
     * (docs/COLLECTIVES.md); in one node, CMA copies want them large. */
    size_t cb = coll_chunk_bytes(ctx->comm);
    if (cb > coll_tun.max_msg_bytes) cb = coll_tun.max_msg_bytes;
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
    rc = coll_tp_isend(p->ctx, buf, n * p->es, peer, chan, &p->sq[p->nsend % p->depth]);
    p->nsend++;
    return rc;
}

static coll_result_t pipe_recv(pipe_t *p, long m, void *buf, size_t n, int peer, int chan) {
    return coll_tp_irecv(p->ctx, buf, n * p->es, peer, chan, &p->rq[m % p->depth]);
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

/* The ring schedule, written once for reduce-scatter, all-gather and
 * all-reduce (which is the first two run as two streams, chunk by chunk,
 * on separate transport channels, each with its own receives posted ahead
 * and its own window of sends; the reduce-scatter runs `look` chunks ahead
 * of the all-gather, as NCCL runs the same schedule as one loop per
 * channel). In NCCL's terms, for each chunk j on rank r:
 *   reduce-scatter: send (input block r-1); recv-reduce-send for k = 1..P-2
 *     (block r-1-k); at k = P-1 (block r) recv-reduce-copy into the output,
 *     or recv-reduce-copy-send when the all-gather follows;
 *   all-gather: send (own block r, when it runs alone); recv-copy-send for
 *     k = 1..P-2 (block r-k, received straight into the output and passed
 *     on from there); recv at k = P-1.
 * Step-0 sends read only input, so they go out as soon as a send slot is
 * free (step 0 of each stream has a channel of its own, so running ahead
 * cannot reorder the later steps): while a rank waits for all-gather data
 * its MPI progress engine is already copying in the next chunks'
 * reduce-scatter data, and reductions run ahead. In place, an all-gather
 * receive overwrites input, so it is posted only after this rank's
 * reduce-scatter of that chunk has read it and the step-0 send of it has
 * completed. */
#define LOOKAHEAD 4

typedef struct {
    coll_ctx_t *ctx;
    const char *in; /* reduce-scatter input: all n elements */
    char *out;      /* the result: all n elements, or block r only (out_lo: its first element) */
    size_t out_lo, n, es, nch;
    coll_dtype_t dt;
    coll_op_t op;
    int P, r, left, right;
    int rs_on, ag_on;
    int ag_after_rs;                 /* in-place all-reduce: see above */
    size_t look;                     /* chunks the reduce-scatter runs ahead */
    pipe_t rs, ag;                   /* the two streams */
    pipe_t s0;                       /* step-0 sends of the reduce-scatter */
    long rs_posted, rs_used, ag_posted, ag_used, R;
    size_t rs_done, step0_sent;      /* chunks */
    long step0_idx[LOOKAHEAD + 2];   /* s0 send index of recent step-0 sends */
} ring_t;

/* The index arithmetic. Receive m of either stream is step
 * k = m % (P-1) + 1 of chunk m / (P-1); step 1 arrives on the stream's
 * step-0 channel. At step k of the reduce-scatter rank r holds block r-1-k,
 * at step k of the all-gather block r-k. */
static int recv_step(const ring_t *t, long m) { return (int)(m % (t->P - 1)) + 1; }
static size_t recv_chunk(const ring_t *t, long m) { return (size_t)(m / (t->P - 1)); }
static long recv_index(const ring_t *t, size_t j, int k) { return (long)j * (t->P - 1) + (k - 1); }
static int rs_block(const ring_t *t, int k) { return coll_mod(t->r - 1 - k, t->P); }
static int ag_block(const ring_t *t, int k) { return coll_mod(t->r - k, t->P); }
/* chunk j of block b: its first element, its length in *len */
static size_t piece(const ring_t *t, int b, size_t j, size_t *len) { return chunk_at(&t->rs, t->n, t->P, b, j, len); }
static char *in_at(const ring_t *t, size_t off) { return (char *)t->in + off * t->es; }
static char *out_at(const ring_t *t, size_t off) { return t->out + (off - t->out_lo) * t->es; }

static coll_result_t post_rs(ring_t *t) {
    coll_result_t rc = COLL_SUCCESS;
    while (t->rs_posted < t->R && t->rs_posted < t->rs_used + t->rs.depth) {
        const long m = t->rs_posted;
        const int k = recv_step(t, m);
        size_t len;
        piece(t, rs_block(t, k), recv_chunk(t, m), &len);
        COLL_TRY(pipe_recv(&t->rs, m, rslot(&t->rs, m), len, t->left, k > 1 ? CH_RS : CH_RS0));
        t->rs_posted++;
    }
fail:
    return rc;
}

static coll_result_t post_ag(ring_t *t) {
    coll_result_t rc = COLL_SUCCESS;
    while (t->ag_posted < t->R && t->ag_posted < t->ag_used + t->ag.depth &&
           (!t->ag_after_rs || recv_chunk(t, t->ag_posted) < t->rs_done)) {
        const long m = t->ag_posted;
        const int k = recv_step(t, m);
        size_t len, off = piece(t, ag_block(t, k), recv_chunk(t, m), &len);
        COLL_TRY(pipe_recv(&t->ag, m, out_at(t, off), len, t->left, k > 1 ? CH_AG : CH_AG0));
        t->ag_posted++;
    }
fail:
    return rc;
}

/* The reduce-scatter's `send`: step 0 of the next chunks, up to `upto`
 * (blocking on its send window), and beyond it, up to LOOKAHEAD chunks
 * ahead, only while a send slot is free without waiting. Step-0 sends have
 * a window of their own: sharing the reduce-scatter's would let look-ahead
 * sends hold the slots that the middle steps need, which deadlocks a ring
 * of more than 2. */
static coll_result_t send_step0(ring_t *t, size_t upto) {
    coll_result_t rc = COLL_SUCCESS;
    while (t->step0_sent < t->nch) {
        if (t->step0_sent > upto) {
            if (t->step0_sent > upto + LOOKAHEAD) break;
            coll_treq_t *q = &t->s0.sq[t->s0.nsend % t->s0.depth];
            int done = !q->active;
            if (!done) COLL_TRY(coll_tp_test(t->ctx, q, &done));
            if (!done) break;
        }
        size_t len, off = piece(t, rs_block(t, 0), t->step0_sent, &len);
        t->step0_idx[t->step0_sent % (LOOKAHEAD + 2)] = t->s0.nsend;
        COLL_TRY(pipe_send(&t->s0, in_at(t, off), len, t->right, CH_RS0));
        t->step0_sent++;
    }
fail:
    return rc;
}

static coll_result_t reduce_scatter_chunk(ring_t *t, size_t j) {
    const int P = t->P;
    coll_result_t rc;
    COLL_TRY(send_step0(t, j));
    for (int k = 1; k < P; k++) {
        const long m = recv_index(t, j, k);
        COLL_TRY(pipe_wait_recv(&t->rs, m));
        size_t len, off = piece(t, rs_block(t, k), j, &len);
        char *dst;
        if (k < P - 1) { /* recv-reduce-send */
            COLL_TRY(pipe_next_sslot(&t->rs, &dst));
            coll_reduce_kernel(t->dt, t->op, dst, in_at(t, off), rslot(&t->rs, m), len);
        } else { /* recv-reduce-copy(-send) */
            dst = out_at(t, off);
            coll_reduce_last(t->dt, t->op, dst, in_at(t, off), rslot(&t->rs, m), len, P);
        }
        t->rs_used++;
        COLL_TRY(post_rs(t));
        if (k < P - 1) {
            COLL_TRY(pipe_send(&t->rs, dst, len, t->right, CH_RS));
            continue;
        }
        if (t->ag_after_rs) {
            long s0 = t->step0_idx[j % (LOOKAHEAD + 2)];
            if (t->s0.nsend - s0 <= t->s0.depth) COLL_TRY(coll_p2p_wait(t->ctx, &t->s0.sq[s0 % t->s0.depth]));
        }
        t->rs_done = j + 1;
        if (t->ag_on) {
            COLL_TRY(post_ag(t));
            COLL_TRY(pipe_send(&t->ag, dst, len, t->right, CH_AG0));
        }
    }
    return send_step0(t, j); /* opportunistic look-ahead */
fail:
    return rc;
}

static coll_result_t allgather_chunk(ring_t *t, size_t j) {
    const int P = t->P;
    coll_result_t rc;
    size_t len, off;
    if (!t->rs_on) { /* send: the own block (an all-reduce sent it from its last reduction) */
        off = piece(t, ag_block(t, 0), j, &len);
        COLL_TRY(pipe_send(&t->ag, out_at(t, off), len, t->right, CH_AG0));
    }
    for (int k = 1; k < P; k++) {
        const long m = recv_index(t, j, k);
        COLL_TRY(post_ag(t));
        COLL_TRY(pipe_wait_recv(&t->ag, m));
        t->ag_used++;
        COLL_TRY(post_ag(t));
        if (t->rs_on) COLL_TRY(send_step0(t, j)); /* keep the other stream fed while here */
        if (k < P - 1) {                          /* recv-copy-send; the last step is recv */
            off = piece(t, ag_block(t, k), j, &len);
            COLL_TRY(pipe_send(&t->ag, out_at(t, off), len, t->right, CH_AG));
        }
    }
    return COLL_SUCCESS;
fail:
    return rc;
}

/* Runs the schedule over n elements (P balanced blocks): the reduce-scatter
 * of `in` when rs_on (block r to out, or the whole of out with ag_on too),
 * the all-gather of out (block r already there) when ag_on. */
static coll_result_t ring_run(coll_ctx_t *ctx, const char *in, char *out, size_t n, coll_dtype_t dt,
                              coll_op_t op, int rs_on, int ag_on) {
    const int P = ctx->size, r = ctx->rank;
    ring_t t = {.ctx = ctx, .in = in, .out = out, .n = n, .es = coll_dtype_size(dt), .dt = dt, .op = op, .P = P,
                .r = r, .left = coll_mod(r - 1, P), .right = coll_mod(r + 1, P), .rs_on = rs_on, .ag_on = ag_on,
                .ag_after_rs = rs_on && ag_on && in == out};
    if (rs_on && !ag_on) t.out_lo = coll_block_offset(n, P, r);
    const size_t blk = coll_block_count(n, P, 0);
    coll_result_t rc = pipe_init(&t.rs, ctx, dt, rs_on, blk);
    if (rc == COLL_SUCCESS) rc = pipe_init(&t.ag, ctx, dt, 0, blk);
    if (rc == COLL_SUCCESS) rc = pipe_init(&t.s0, ctx, dt, 0, blk);
    if (rc != COLL_SUCCESS) return rc;
    t.s0.depth = LOOKAHEAD + 1;
    if (rs_on && ag_on) {
        /* The all-gather lags by `look` chunks, so its window must cover
         * them, or a rank's all-gather send would wait on a peer that first
         * needs this rank's later reduce-scatter data. All-gather receives
         * land in the output, so its deeper window costs requests only. */
        int agd = t.rs.depth + (LOOKAHEAD + 1) * (P - 1);
        t.ag.depth = agd < MAX_DEPTH ? agd : MAX_DEPTH;
        long look = (long)(t.ag.depth - t.rs.depth) / (P - 1) - 1;
        t.look = look < 0 ? 0 : look > LOOKAHEAD ? LOOKAHEAD : (size_t)look;
    }
    t.nch = nchunks(&t.rs, blk);
    t.R = (long)t.nch * (P - 1);
    if (rs_on) COLL_TRY(post_rs(&t));
    if (ag_on) COLL_TRY(post_ag(&t));
    for (size_t it = 0; it < t.nch + t.look; it++) {
        if (rs_on && it < t.nch) COLL_TRY(reduce_scatter_chunk(&t, it));
        if (ag_on && it >= t.look && it - t.look < t.nch) COLL_TRY(allgather_chunk(&t, it - t.look));
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

coll_result_t coll_ring_reduce_scatter(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t es = coll_dtype_size(a->dtype);
    if (ctx->size == 1) {
        coll_copy(a->recvbuf, a->sendbuf, a->count * es);
        return COLL_SUCCESS;
    }
    return ring_run(ctx, a->sendbuf, a->recvbuf, a->count * (size_t)ctx->size, a->dtype, a->op, 1, 0);
}

coll_result_t coll_ring_allgather(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t es = coll_dtype_size(a->dtype);
    char *own = (char *)a->recvbuf + (size_t)ctx->rank * a->count * es;
    coll_copy(own, a->sendbuf, a->count * es);
    if (ctx->size == 1) return COLL_SUCCESS;
    return ring_run(ctx, NULL, a->recvbuf, a->count * (size_t)ctx->size, a->dtype, COLL_SUM, 0, 1);
}

coll_result_t coll_ring_allreduce(coll_ctx_t *ctx, const coll_args_t *a) {
    if (ctx->size == 1) {
        coll_copy(a->recvbuf, a->sendbuf, a->count * coll_dtype_size(a->dtype));
        return COLL_SUCCESS;
    }
    return ring_run(ctx, a->sendbuf, a->recvbuf, a->count, a->dtype, a->op, 1, 1);
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
