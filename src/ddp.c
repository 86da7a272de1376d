/* The data-parallel engine (include/ddp.h): buckets over the flat gradient
 * buffer, launched from the backward callback, ZeRO-1 shards, timing. */
#include "ddp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "liveness.h"
#include "metrics.h"

typedef struct bucket {
    size_t lo, hi;      /* range in the flat buffers; hi - lo is a multiple of P */
    coll_request_t req; /* in flight, or NULL */
} bucket_t;

struct ddp {
    coll_comm_t comm;
    int rank, size;
    float *params, *grads;
    size_t count, padded;
    ddp_options_t opt;
    int nb;
    bucket_t *b;
    size_t *shard_lo, *shard_hi;
    int nshard;
    size_t shard_size;
    /* this step */
    int syncing;     /* the current backward's gradients are to be averaged */
    int next;        /* buckets launched so far */
    int failed;      /* a launch from the callback failed */
    double comm_ms, exposed_ms;
    float *stage; /* one bucket, for gathering shards to rank 0 (made at the first use) */
    /* slow phases (checkpoints): a barrier and liveness pings on communicators of their own */
    MPI_Comm side;
    liveness_t *lv;
    char err[512];
};

static int fail(ddp_t *d, const char *what, coll_result_t rc) {
    snprintf(d->err, sizeof d->err, "%s: %s (%s)", what, coll_last_error(d->comm), coll_strerror(rc));
    d->failed = 1;
    return -1;
}

int ddp_create(ddp_t **out, MPI_Comm mpi, float *params, float *grads, size_t count, size_t padded,
               const ddp_options_t *opt, char *err, size_t errlen) {
    *out = NULL;
    ddp_t *d = calloc(1, sizeof *d);
    if (!d) return snprintf(err, errlen, "ddp: out of memory"), -1;
    coll_result_t rc = coll_comm_init(&d->comm, mpi);
    if (rc != COLL_SUCCESS) {
        snprintf(err, errlen, "ddp: coll_comm_init: %s", coll_last_error(NULL));
        free(d);
        return -1;
    }
    d->rank = coll_comm_rank(d->comm);
    d->size = coll_comm_size(d->comm);
    if (MPI_Comm_dup(mpi, &d->side) != MPI_SUCCESS) d->side = MPI_COMM_NULL;
    if (d->side != MPI_COMM_NULL) MPI_Comm_set_errhandler(d->side, MPI_ERRORS_RETURN);
    d->lv = liveness_create(mpi);
    const size_t P = (size_t)d->size;
    if (padded % P || padded < count || !(opt->bucket_mb > 0)) {
        snprintf(err, errlen, "ddp: bad arguments (count %zu, padded %zu, %zu ranks, bucket_mb %g)", count, padded, P,
                 opt->bucket_mb);
        ddp_destroy(d);
        return -1;
    }
    d->params = params;
    d->grads = grads;
    d->count = count;
    d->padded = padded;
    d->opt = *opt;
    coll_comm_set_algorithm(d->comm, opt->algorithm);
    coll_comm_set_timeout(d->comm, opt->timeout_s);
    if (opt->cuda_stream && (rc = coll_comm_set_stream(d->comm, opt->cuda_stream)) != COLL_SUCCESS) {
        snprintf(err, errlen, "ddp: %s", coll_last_error(d->comm));
        ddp_destroy(d);
        return -1;
    }
    /* bucket length: bucket_mb rounded down to a multiple of P (at least P) */
    size_t bf = (size_t)(opt->bucket_mb * (1 << 20) / sizeof(float)) / P * P;
    if (bf < P) bf = P;
    if (!opt->overlap || bf > padded) bf = padded ? padded : P;
    d->nb = padded ? (int)((padded + bf - 1) / bf) : 0;
    d->b = calloc((size_t)d->nb + 1, sizeof *d->b);
    d->shard_lo = calloc((size_t)d->nb + 1, sizeof *d->shard_lo);
    d->shard_hi = calloc((size_t)d->nb + 1, sizeof *d->shard_hi);
    if (!d->b || !d->shard_lo || !d->shard_hi) {
        snprintf(err, errlen, "ddp: out of memory");
        ddp_destroy(d);
        return -1;
    }
    for (int i = 0; i < d->nb; i++) {
        d->b[i].lo = (size_t)i * bf;
        d->b[i].hi = d->b[i].lo + bf < padded ? d->b[i].lo + bf : padded;
    }
    if (opt->zero) {
        for (int i = 0; i < d->nb; i++) {
            const size_t piece = (d->b[i].hi - d->b[i].lo) / P;
            d->shard_lo[i] = d->b[i].lo + (size_t)d->rank * piece;
            d->shard_hi[i] = d->shard_lo[i] + piece;
            d->shard_size += piece;
        }
        d->nshard = d->nb;
    } else {
        d->shard_lo[0] = 0;
        d->shard_hi[0] = padded;
        d->shard_size = padded;
        d->nshard = 1;
    }
    *out = d;
    return 0;
}

void ddp_destroy(ddp_t *d) {
    if (!d) return;
    for (int i = 0; d->b && i < d->nb; i++)
        if (d->b[i].req) coll_wait(d->b[i].req);
    liveness_destroy(d->lv);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (d->side != MPI_COMM_NULL && !finalized) MPI_Comm_free(&d->side);
    coll_comm_destroy(d->comm);
    free(d->b);
    free(d->shard_lo);
    free(d->shard_hi);
    free(d->stage);
    free(d);
}

int ddp_rank(const ddp_t *d) { return d->rank; }
int ddp_size(const ddp_t *d) { return d->size; }
const char *ddp_error(const ddp_t *d) { return d->err; }
size_t ddp_shard_size(const ddp_t *d) { return d->shard_size; }

int ddp_shard(const ddp_t *d, const size_t **lo, const size_t **hi) {
    *lo = d->shard_lo;
    *hi = d->shard_hi;
    return d->nshard;
}

ddp_stats_t ddp_last_stats(const ddp_t *d) { return (ddp_stats_t){d->comm_ms, d->exposed_ms}; }

int ddp_broadcast(ddp_t *d, void *buf, size_t count, coll_dtype_t dtype) {
    coll_result_t rc = coll_broadcast(buf, count, dtype, 0, d->comm);
    return rc == COLL_SUCCESS ? 0 : fail(d, "broadcast from rank 0", rc);
}

int ddp_barrier(ddp_t *d, double timeout_s) {
    /* no collective is in flight here, so the progress thread reads no timeout */
    coll_comm_set_timeout(d->comm, timeout_s);
    coll_result_t rc = coll_barrier(d->comm);
    coll_comm_set_timeout(d->comm, d->opt.timeout_s);
    return rc == COLL_SUCCESS ? 0 : fail(d, "barrier after the checkpoint", rc);
}

/* ---- slow phases: a wait that tolerates slow ranks but not silent ones ---- */

int ddp_slow_phase_begin(ddp_t *d) {
    liveness_answer(d->lv, 1);
    return 0;
}

int ddp_slow_phase_end(ddp_t *d, double max_s) {
    if (!d->lv || d->side == MPI_COMM_NULL) return ddp_barrier(d, max_s);
    MPI_Request b;
    int rc = MPI_Ibarrier(d->side, &b) == MPI_SUCCESS ? 0 : -1;
    if (rc) snprintf(d->err, sizeof d->err, "ddp: MPI_Ibarrier failed");
    else rc = liveness_wait(d->lv, &b, d->opt.timeout_s, max_s, "ddp: waiting for a checkpoint to be written", d->err,
                            sizeof d->err);
    liveness_answer(d->lv, 0);
    if (rc) d->failed = 1; /* the barrier request is abandoned: the job ends */
    return rc;
}

int ddp_allreduce_double(ddp_t *d, double *v, int n, coll_op_t op) {
    coll_result_t rc = coll_allreduce(v, v, (size_t)n, COLL_FLOAT64, op, d->comm);
    return rc == COLL_SUCCESS ? 0 : fail(d, "all-reduce of step statistics", rc);
}

int ddp_backward_begin(ddp_t *d, int sync) {
    d->syncing = sync;
    d->next = 0;
    d->comm_ms = d->exposed_ms = 0;
    return d->failed ? -1 : 0;
}

static void launch(ddp_t *d, int i) {
    bucket_t *b = &d->b[i];
    const size_t len = b->hi - b->lo;
    coll_result_t rc;
    if (d->opt.zero) {
        const size_t piece = len / (size_t)d->size;
        rc = coll_ireduce_scatter(d->grads + b->lo, d->grads + b->lo + (size_t)d->rank * piece, piece, COLL_FLOAT32,
                                  COLL_AVG, d->comm, &b->req);
    } else {
        rc = coll_iallreduce(d->grads + b->lo, d->grads + b->lo, len, COLL_FLOAT32, COLL_AVG, d->comm, &b->req);
    }
    if (rc != COLL_SUCCESS) {
        char what[96];
        snprintf(what, sizeof what, "gradient bucket %d of %d", i + 1, d->nb);
        fail(d, what, rc);
        b->req = NULL;
    }
}

void ddp_grad_ready(void *user, int param, size_t offset, size_t count) {
    ddp_t *d = user;
    (void)param;
    if (!d->syncing || !d->opt.overlap || d->failed) return;
    const size_t frontier = offset + count;
    /* a bucket is complete when backward has passed its end (the padding
     * past the model's last parameter is always complete) */
    while (d->next < d->nb) {
        const size_t end = d->b[d->next].hi < d->count ? d->b[d->next].hi : d->count;
        if (frontier < end) break;
        launch(d, d->next++);
        if (d->failed) return;
    }
}

/* Waits for every launched bucket; adds to comm and exposed time. */
static int wait_all(ddp_t *d, const char *what) {
    const double t0 = now_s();
    double busy = 0;
    int rc = d->failed ? -1 : 0;
    for (int i = 0; i < d->nb; i++) {
        if (!d->b[i].req) continue;
        double s = 0, e = 0;
        coll_result_t r = coll_wait_timed(d->b[i].req, &s, &e);
        d->b[i].req = NULL;
        if (r != COLL_SUCCESS && !rc) {
            char w[96];
            snprintf(w, sizeof w, "%s, bucket %d of %d", what, i + 1, d->nb);
            rc = fail(d, w, r);
        }
        busy += e - s;
    }
    d->exposed_ms += 1e3 * (now_s() - t0);
    d->comm_ms += 1e3 * busy; /* the progress thread runs them one at a time */
    return rc;
}

int ddp_sync(ddp_t *d) {
    if (d->failed) return -1;
    /* without overlap every bucket (one) starts here; launching counts as
     * exposed time since the caller is blocked in it all the same */
    const double t0 = now_s();
    while (d->next < d->nb && !d->failed) launch(d, d->next++);
    d->exposed_ms += 1e3 * (now_s() - t0);
    return wait_all(d, d->opt.zero ? "gradient reduce-scatter" : "gradient all-reduce");
}

int ddp_gather(ddp_t *d) {
    if (!d->opt.zero || d->size == 1) return d->failed ? -1 : 0;
    for (int i = 0; i < d->nb && !d->failed; i++) {
        bucket_t *b = &d->b[i];
        const size_t piece = (b->hi - b->lo) / (size_t)d->size;
        coll_result_t rc = coll_iallgather(d->params + b->lo + (size_t)d->rank * piece, d->params + b->lo, piece,
                                           COLL_FLOAT32, d->comm, &b->req);
        if (rc != COLL_SUCCESS) {
            b->req = NULL;
            fail(d, "parameter all-gather", rc);
        }
    }
    return wait_all(d, "parameter all-gather");
}

static int need_stage(ddp_t *d) {
    size_t most = 0;
    for (int i = 0; i < d->nb; i++) most = d->b[i].hi - d->b[i].lo > most ? d->b[i].hi - d->b[i].lo : most;
    if (!d->stage && !(d->stage = malloc((most ? most : 1) * sizeof(float)))) {
        snprintf(d->err, sizeof d->err, "ddp: out of memory for a bucket of checkpoint staging");
        return -1;
    }
    return 0;
}

/* Libcoll has no gather: each bucket is reduced to rank 0 as integers, every
 * rank contributing its piece and zeros elsewhere (x + 0 is exact for the
 * bits of any float, -0.0 and NaN included, which a float sum is not). */
int ddp_gather_shards(ddp_t *d, const float *shard, float *full) {
    if (!d->opt.zero || d->size == 1) {
        if (d->rank == 0) memcpy(full, shard, d->padded * sizeof(float));
        return 0;
    }
    if (need_stage(d)) return -1;
    size_t at = 0;
    for (int i = 0; i < d->nshard; i++) {
        const size_t piece = d->shard_hi[i] - d->shard_lo[i], len = d->b[i].hi - d->b[i].lo;
        memset(d->stage, 0, len * sizeof(float));
        memcpy(d->stage + (size_t)d->rank * piece, shard + at, piece * sizeof(float));
        at += piece;
        coll_result_t rc = coll_reduce(d->stage, d->rank == 0 ? full + d->b[i].lo : NULL, len, COLL_INT32, COLL_SUM, 0,
                                       d->comm);
        if (rc != COLL_SUCCESS) return fail(d, "gathering the sharded optimiser state on rank 0", rc);
    }
    return 0;
}

int ddp_scatter_shards(ddp_t *d, const float *full, float *shard) {
    if (!d->opt.zero || d->size == 1) {
        if (d->rank == 0) memcpy(shard, full, d->padded * sizeof(float));
        coll_result_t rc = d->size > 1 ? coll_broadcast(shard, d->padded, COLL_FLOAT32, 0, d->comm) : COLL_SUCCESS;
        return rc == COLL_SUCCESS ? 0 : fail(d, "broadcasting the optimiser state from rank 0", rc);
    }
    if (need_stage(d)) return -1;
    size_t at = 0;
    for (int i = 0; i < d->nshard; i++) {
        const size_t piece = d->shard_hi[i] - d->shard_lo[i], len = d->b[i].hi - d->b[i].lo;
        float *buf = d->rank == 0 ? (float *)full + d->b[i].lo : d->stage; /* the root's is only read */
        coll_result_t rc = coll_broadcast(buf, len, COLL_FLOAT32, 0, d->comm);
        if (rc != COLL_SUCCESS) return fail(d, "scattering the optimiser state from rank 0", rc);
        memcpy(shard + at, buf + (size_t)d->rank * piece, piece * sizeof(float));
        at += piece;
    }
    return 0;
}
