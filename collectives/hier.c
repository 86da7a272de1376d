/* Hierarchical collectives, for communicators that span nodes with the same
 * number of ranks on each.
 *
 * A flat ring sends 2(P-1)/P of an all-reduce's data over every node's link
 * once per rank on that node; here each node's ranks first reduce-scatter
 * through shared memory (shm*.c), each rank then all-reduces its shard with
 * the ranks of the same node rank on the other nodes (our ring or recursive
 * doubling, every shard at the same time), and the node all-gathers the
 * shards: the node's link carries the buffer about once each way. Broadcast
 * crosses the nodes once (between the root and the ranks of its node rank),
 * then each node broadcasts through shared memory; reduce is the reverse.
 *
 * Each context of a communicator (the caller's and the progress thread's)
 * has two child contexts of its own: `node` (its node's ranks, with
 * shared-memory workspaces) and `cross` (the ranks with its node rank on
 * every node, numbered by node). Children report waits and errors in the
 * communicator's rank numbers (ctx->world).
 *
 * A large all-reduce goes in segments of COLL_HIER_SEGMENT_BYTES: a helper
 * thread of the context runs each segment's cross-node stage while the
 * calling thread reduce-scatters the next segment and all-gathers the
 * previous one, so the node stages hide behind the link (without it they
 * were ~4% of a 64 MiB call at 1 Gbit/s, beside a cross stage already at
 * the link's payload rate). Only the helper calls MPI meanwhile (the node
 * stages are shared memory alone), which MPI_THREAD_MULTIPLE allows; below
 * it, or for one segment, the stages run one after another on the caller.
 *
 * COLL_NODE_SIZE=k groups ranks k at a time instead of by node (rank / k):
 * it tests the hierarchical paths on one machine, or splits a large node. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "coll_internal.h"

/* The helper thread's job: one all-reduce's segments, handed over one at
 * a time under mu. */
struct hier_pipe {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int running, quit;       /* a call is in progress; the thread is to exit */
    int posted, done, abort; /* segments reduce-scattered, crossed; the caller stopped */
    coll_result_t rc;        /* the helper's, once running is 0 */
    coll_ctx_t *ctx;
    coll_args_t a;           /* the call (recvbuf holds the shards) */
    size_t seg;              /* elements per segment */
    int S;                   /* segments */
    coll_trace_entry_t rec;  /* the helper's waits, added to the call's entry at the end */
};

struct coll_hier {
    coll_ctx_t node, cross;
    struct hier_pipe *pipe; /* started by the first segmented call */
    int N, L;                      /* nodes, ranks per node */
    int *lrank, *nidx;             /* every rank's node rank and node number */
    int *node_world, *cross_world; /* the children's ranks as the comm numbers them */
};

static void child_free(coll_ctx_t *ch) {
    coll_shm_ctx_free(ch);
    coll_ctx_close(ch);
}

static void pipe_stop(struct hier_pipe *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->th, NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static void hier_free(struct coll_hier *h) {
    if (!h) return;
    pipe_stop(h->pipe);
    child_free(&h->node);
    child_free(&h->cross);
    free(h->lrank), free(h->nidx), free(h->node_world), free(h->cross_world);
    free(h);
}

void coll_hier_ctx_free(coll_ctx_t *ctx) {
    hier_free(ctx->hier);
    ctx->hier = NULL;
    ctx->hier_local = 0;
}

/* Collective over ctx->mpi (COLL_NODE_SIZE agrees across ranks: checked by
 * coll_comm_init's first all-reduce). Leaves ctx->hier NULL (not an error)
 * where the communicator sits on one node (then without any communication),
 * its nodes hold unequal numbers of ranks, or a node's shared memory cannot
 * be set up. */
coll_result_t coll_hier_ctx_init(coll_ctx_t *ctx, int local_size) {
    ctx->hier = NULL;
    const int P = ctx->size, me = ctx->rank, k_emul = coll_tun.node_size;
    if (!k_emul && local_size == P) return COLL_SUCCESS; /* one node: shm's */
    int rc;
    struct coll_hier *h = calloc(1, sizeof *h);
    MPI_Comm node = MPI_COMM_NULL, cross = MPI_COMM_NULL;
    if (!h) return coll_error(NULL, COLL_ERR_NO_MEMORY, "coll_comm_init: hierarchical set-up");
    h->node.mpi = h->cross.mpi = MPI_COMM_NULL;
    rc = k_emul ? MPI_Comm_split(ctx->mpi, me / k_emul, me, &node)
                : MPI_Comm_split_type(ctx->mpi, MPI_COMM_TYPE_SHARED, me, MPI_INFO_NULL, &node);
    int L = 0, lr = 0, lead = me, sizes[2], ext[2];
    if (rc == MPI_SUCCESS) {
        MPI_Comm_size(node, &L);
        MPI_Comm_rank(node, &lr);
        rc = MPI_Allreduce(&me, &lead, 1, MPI_INT, MPI_MIN, node); /* a node's number: its lowest rank, for now */
    }
    sizes[0] = L, sizes[1] = -L;
    if (rc == MPI_SUCCESS) rc = MPI_Allreduce(sizes, ext, 2, MPI_INT, MPI_MAX, ctx->mpi);
    if (rc == MPI_SUCCESS && (ext[0] != -ext[1] || L == P)) { /* unequal nodes, or one: the flat algorithms */
        COLL_LOG(ctx->comm, COLL_LOG_INFO, "hier: %s, the flat algorithms instead",
                 L == P ? "one node" : "nodes with unequal numbers of ranks");
        MPI_Comm_free(&node);
        free(h);
        return COLL_SUCCESS;
    }
    /* the ranks of node rank lr on every node, numbered by node */
    if (rc == MPI_SUCCESS) rc = MPI_Comm_split(ctx->mpi, lr, lead, &cross);
    h->L = L, h->N = P / (L > 0 ? L : 1);
    h->lrank = malloc((size_t)P * sizeof(int));
    h->nidx = malloc((size_t)P * sizeof(int));
    h->node_world = malloc((size_t)L * sizeof(int));
    h->cross_world = malloc((size_t)h->N * sizeof(int));
    int *pairs = malloc(2 * (size_t)P * sizeof(int));
    if (rc == MPI_SUCCESS && (!h->lrank || !h->nidx || !h->node_world || !h->cross_world || !pairs)) rc = MPI_ERR_NO_MEM;
    if (rc == MPI_SUCCESS) {
        int mine[2] = {lr, 0};
        MPI_Comm_rank(cross, &mine[1]);
        rc = MPI_Allgather(mine, 2, MPI_INT, pairs, 2, MPI_INT, ctx->mpi);
    }
    if (rc == MPI_SUCCESS) {
        for (int r = 0; r < P; r++) h->lrank[r] = pairs[2 * r], h->nidx[r] = pairs[2 * r + 1];
        for (int r = 0; r < P; r++) {
            if (h->nidx[r] == h->nidx[me]) h->node_world[h->lrank[r]] = r;
            if (h->lrank[r] == lr) h->cross_world[h->nidx[r]] = r;
        }
    }
    free(pairs);
    coll_result_t crc = COLL_SUCCESS;
    if (rc == MPI_SUCCESS) {
        crc = coll_ctx_open(ctx->comm, &h->node, node, h->node_world);
        coll_result_t xrc = coll_ctx_open(ctx->comm, &h->cross, cross, h->cross_world);
        node = cross = MPI_COMM_NULL; /* the children own them now */
        if (crc == COLL_SUCCESS) crc = xrc;
    }
    if (rc == MPI_SUCCESS && crc == COLL_SUCCESS && L > 1) crc = coll_shm_ctx_init(&h->node);
    /* every node has its shared memory, or nobody runs hier */
    int ok = rc == MPI_SUCCESS && crc == COLL_SUCCESS && (L == 1 || h->node.shm), all = 0;
    if (rc == MPI_SUCCESS && crc == COLL_SUCCESS) rc = MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, ctx->mpi);
    if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
    if (cross != MPI_COMM_NULL) MPI_Comm_free(&cross);
    if (rc != MPI_SUCCESS || crc != COLL_SUCCESS || !all) {
        hier_free(h);
        if (crc != COLL_SUCCESS) return crc;
        if (rc != MPI_SUCCESS) return coll_mpi_error(NULL, rc, "coll_comm_init: hierarchical set-up");
        COLL_LOG(ctx->comm, COLL_LOG_INFO, "hier: a node has no shared memory, the flat algorithms instead");
        return COLL_SUCCESS;
    }
    ctx->hier = h;
    ctx->hier_local = h->L;
    COLL_LOG(ctx->comm, COLL_LOG_INFO, "hier: %d nodes x %d ranks%s", h->N, h->L, k_emul ? " (COLL_NODE_SIZE)" : "");
    return COLL_SUCCESS;
}

/* Runs a on child ch, its waits recorded in entry (the running call's, or
 * the helper's own). */
static coll_result_t run_child(coll_ctx_t *ch, coll_args_t *a, coll_trace_entry_t *entry) {
    a->algo = coll_p2p_algo(ch->size, a);
    a->tr = NULL;
    ch->cur = entry;
    coll_result_t rc = coll_run(ch, a);
    ch->cur = NULL;
    return rc;
}

/* reductions sum across both levels and divide once, by every rank */
static coll_op_t level_op(coll_op_t op) { return op == COLL_AVG ? COLL_SUM : op; }

/* An all-reduce's segment s of seg elements: where it starts, how long it is. */
static size_t seg_at(const coll_args_t *a, size_t seg, int s, size_t *len) {
    const size_t lo = (size_t)s * seg;
    *len = a->count - lo < seg ? a->count - lo : seg;
    return lo;
}

/* This rank's shard of segment s in the output: where, and (len) how long. */
static char *shard_at(const struct coll_hier *h, const coll_args_t *a, size_t seg, int s, size_t *len) {
    size_t n, lo = seg_at(a, seg, s, &n);
    *len = coll_block_count(n, h->L, h->node.rank);
    return (char *)a->recvbuf + (lo + coll_block_offset(n, h->L, h->node.rank)) * coll_dtype_size(a->dtype);
}

static coll_result_t node_rs(struct coll_hier *h, const coll_args_t *a, size_t seg, int s) {
    const size_t es = coll_dtype_size(a->dtype);
    size_t n, lo = seg_at(a, seg, s, &n), len;
    coll_args_t b = *a;
    b.op = level_op(a->op);
    char *shard = shard_at(h, a, seg, s, &len);
    if (h->L > 1) return coll_shm_reduce_scatter_blocks(&h->node, &b, (const char *)a->sendbuf + lo * es, n, shard, 0);
    coll_copy(shard, (const char *)a->sendbuf + lo * es, n * es);
    return COLL_SUCCESS;
}

static coll_result_t node_ag(struct coll_hier *h, const coll_args_t *a, size_t seg, int s) {
    size_t n, lo = seg_at(a, seg, s, &n);
    if (h->L == 1) return COLL_SUCCESS;
    return coll_shm_allgather_blocks(&h->node, a, (char *)a->recvbuf + lo * coll_dtype_size(a->dtype), n);
}

/* Every rank of this node rank has a shard of the same length. */
static coll_result_t cross(coll_ctx_t *ctx, struct coll_hier *h, const coll_args_t *a, size_t seg, int s,
                           coll_trace_entry_t *entry) {
    size_t len;
    char *shard = shard_at(h, a, seg, s, &len);
    if (!len) return COLL_SUCCESS;
    coll_args_t x = *a;
    x.op = level_op(a->op);
    x.sendbuf = x.recvbuf = shard;
    x.count = len;
    coll_result_t rc = run_child(&h->cross, &x, entry);
    if (rc == COLL_SUCCESS && a->op == COLL_AVG) coll_avg_finish(a->dtype, x.recvbuf, len, ctx->size);
    return rc;
}

static void *pipe_main(void *arg) {
    struct hier_pipe *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->running && !p->quit) pthread_cond_wait(&p->cv, &p->mu);
        if (p->quit) break;
        coll_result_t rc = COLL_SUCCESS;
        for (int s = 0; s < p->S && rc == COLL_SUCCESS; s++) {
            while (p->posted <= s && !p->abort) pthread_cond_wait(&p->cv, &p->mu);
            if (p->abort) break;
            pthread_mutex_unlock(&p->mu);
            rc = cross(p->ctx, p->ctx->hier, &p->a, p->seg, s, &p->rec);
            pthread_mutex_lock(&p->mu);
            if (rc == COLL_SUCCESS) p->done = s + 1;
            pthread_cond_broadcast(&p->cv);
        }
        p->rc = rc;
        p->running = 0;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static struct hier_pipe *pipe_get(coll_ctx_t *ctx) {
    struct coll_hier *h = ctx->hier;
    if (h->pipe) return h->pipe;
    struct hier_pipe *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (pthread_create(&p->th, NULL, pipe_main, p)) {
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
        free(p);
        COLL_LOG(ctx->comm, COLL_LOG_WARN, "hier: no helper thread, the stages run one after another");
        return NULL;
    }
    return h->pipe = p;
}

static void pipe_post(struct hier_pipe *p, int s) {
    pthread_mutex_lock(&p->mu);
    p->posted = s + 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* 1 once segment s has crossed, 0 if the helper stopped short of it. */
static int pipe_crossed(struct hier_pipe *p, int s) {
    pthread_mutex_lock(&p->mu);
    while (p->running && p->done <= s) pthread_cond_wait(&p->cv, &p->mu);
    const int ok = p->done > s;
    pthread_mutex_unlock(&p->mu);
    return ok;
}

/* Reduce-scatter of segment s+1 and all-gather of s-1 beside the crossing
 * of segment s. Every rank runs the node stages in the same order (RS 0,
 * then RS s+1 and AG s for each s), so the shared-memory calls match. */
static coll_result_t allreduce_pipelined(coll_ctx_t *ctx, struct hier_pipe *p, const coll_args_t *a, size_t seg) {
    struct coll_hier *h = ctx->hier;
    const int S = (int)((a->count + seg - 1) / seg);
    coll_result_t rc = COLL_SUCCESS;
    pthread_mutex_lock(&p->mu);
    p->ctx = ctx, p->a = *a, p->seg = seg, p->S = S;
    p->posted = p->done = p->abort = 0;
    p->rc = COLL_SUCCESS;
    memset(&p->rec, 0, sizeof p->rec);
    p->running = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    COLL_TRY(node_rs(h, a, seg, 0));
    pipe_post(p, 0);
    for (int s = 0; s < S; s++) {
        if (s + 1 < S) {
            COLL_TRY(node_rs(h, a, seg, s + 1));
            pipe_post(p, s + 1);
        }
        if (!pipe_crossed(p, s)) break; /* the helper's error, below */
        COLL_TRY(node_ag(h, a, seg, s));
    }
fail:
    pthread_mutex_lock(&p->mu);
    if (rc != COLL_SUCCESS) p->abort = 1;
    pthread_cond_broadcast(&p->cv);
    while (p->running) pthread_cond_wait(&p->cv, &p->mu);
    if (rc == COLL_SUCCESS) rc = p->rc;
    pthread_mutex_unlock(&p->mu);
    coll_trace_add_waits(ctx->cur, &p->rec);
    return rc;
}

coll_result_t coll_hier_allreduce(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_hier *h = ctx->hier;
    const size_t es = coll_dtype_size(a->dtype), seg_bytes = coll_tun.hier_segment_bytes;
    const size_t seg = seg_bytes / es ? seg_bytes / es : 1;
    struct hier_pipe *p = NULL;
    if (h->L > 1 && seg_bytes && a->count > seg && ctx->comm->thread_multiple) p = pipe_get(ctx);
    h->node.cur = ctx->cur;
    coll_result_t rc;
    if (p) {
        rc = allreduce_pipelined(ctx, p, a, seg);
    } else {
        rc = node_rs(h, a, a->count, 0);
        if (rc == COLL_SUCCESS) rc = cross(ctx, h, a, a->count, 0, ctx->cur);
        if (rc == COLL_SUCCESS) rc = node_ag(h, a, a->count, 0);
    }
    h->node.cur = NULL;
    return rc;
}

coll_result_t coll_hier_broadcast(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_hier *h = ctx->hier;
    const int rl = h->lrank[a->root];
    coll_result_t rc = COLL_SUCCESS;
    if (h->node.rank == rl) { /* across the nodes, among the root's node rank */
        coll_args_t x = *a;
        x.root = h->nidx[a->root];
        COLL_TRY(run_child(&h->cross, &x, ctx->cur));
    }
    if (h->L > 1) {
        coll_args_t y = *a;
        y.root = rl;
        h->node.cur = ctx->cur;
        rc = coll_shm_broadcast(&h->node, &y);
        h->node.cur = NULL;
    }
fail:
    return rc;
}

coll_result_t coll_hier_reduce(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_hier *h = ctx->hier;
    const int rl = h->lrank[a->root], root = ctx->rank == a->root;
    const size_t bytes = a->count * coll_dtype_size(a->dtype);
    const char *part = a->sendbuf; /* this node's partial result (on its rank rl) */
    coll_result_t rc = COLL_SUCCESS;
    if (h->L > 1) {
        char *to = a->recvbuf;
        if (h->node.rank == rl && !root) COLL_TRY(coll_ctx_scratch(ctx, bytes, (void **)&to));
        coll_args_t y = *a;
        y.op = level_op(a->op), y.root = rl, y.recvbuf = to;
        h->node.cur = ctx->cur;
        rc = coll_shm_reduce(&h->node, &y);
        h->node.cur = NULL;
        if (rc != COLL_SUCCESS) goto fail;
        part = to;
    }
    if (h->node.rank == rl) {
        coll_args_t x = *a;
        x.op = level_op(a->op), x.root = h->nidx[a->root], x.sendbuf = part;
        x.recvbuf = root ? a->recvbuf : NULL;
        COLL_TRY(run_child(&h->cross, &x, ctx->cur));
        if (root && a->op == COLL_AVG) coll_avg_finish(a->dtype, a->recvbuf, a->count, ctx->size);
    }
fail:
    return rc;
}

coll_result_t coll_hier_barrier(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_hier *h = ctx->hier;
    coll_result_t rc = COLL_SUCCESS;
    /* once a node rank's ranks on every node have met, every node's ranks had arrived */
    if (h->L > 1) COLL_TRY(coll_shm_barrier(&h->node, a));
    coll_args_t x = *a;
    rc = run_child(&h->cross, &x, ctx->cur);
fail:
    return rc;
}
