/* The data-parallel engine (include/ddp.h): buckets over the flat gradient
 * buffer, launched from the backward callback, ZeRO-1 shards, compression,
 * timing. */
#include "ddp.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compress.h"
#include "liveness.h"
#include "metrics.h"
#include "simd.h"

_Static_assert((int)DDP_COMPRESS_BF16 == (int)COMPRESS_BF16 && (int)DDP_COMPRESS_FP16 == (int)COMPRESS_FP16 &&
                   (int)DDP_COMPRESS_POWERSGD == (int)COMPRESS_POWERSGD,
               "ddp.h and compress.h number the modes alike");

#define PSGD_EPS 1e-4f /* relative: a P column below this after projection is rank-deficient */

/* A weight matrix PowerSGD compresses. */
typedef struct mat {
    size_t off, n, m;  /* flat-buffer offset, rows, columns */
    size_t p_at, q_at; /* its P in its bucket's pq, its Q (transposed) in qt */
} mat_t;

/* The fused update averages 32 KiB at a time, in L1. */
#define FUSE_CHUNK 8192

typedef struct bucket {
    size_t lo, hi;      /* range in the flat buffers; without PowerSGD hi - lo is a multiple of P */
    coll_request_t req; /* in flight, or NULL */
    /* PowerSGD */
    int m0, m1;         /* its matrices: d->mat[m0, m1) */
    float *pq;          /* its matrices' P's (plen floats), then its uncompressed values (ulen) */
    size_t plen, ulen;
    float *qt;          /* its matrices' Q's, kept between steps (warm start) */
    size_t qlen;
    int phase;          /* this step: 0 plain all-reduce, 1 P's in flight, 2 Q's in flight */
} bucket_t;

struct ddp {
    coll_comm_t comm;
    int rank, size;
    float *params, *grads;
    float *mem_params, *mem_grads; /* ddp_share_buffers' coll_mem_alloc buffers, or NULL */
    /* fused update (ddp_update): every rank's gradient buffer mapped here, or NULL */
    float **peer_grads;
    int fused_now; /* this step runs the fused update */
    int alternate; /* DDP_FUSED_ALTERNATE set: an A/B within one run (ddp.h) */
    float *acc;  /* FUSE_CHUNK floats: a chunk's sum before it is written back */
    int reading; /* fused, zero = 0: peers may still read this rank's gradients */
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
    double comm_ms, exposed_ms, compress_ms;
    uint64_t bytes0, wire;
    /* compression */
    uint16_t *h16;  /* bf16/fp16: the wire copy of the gradients (padded) */
    mat_t *mat;     /* PowerSGD's matrices, in offset order */
    int nmat;
    float *state;   /* PowerSGD: each matrix's last M, flat layout (padded; compress.h) */
    float *pq_all, *qt_all;
    size_t qt_len;
    long steps;     /* synchronised steps done */
    /* straggler probes */
    double arrival;   /* now_s() at this step's first gradient launch */
    double step_end;  /* ... and when its last collective was done here */
    double update_wait; /* seconds in this step's barrier before backward (fused update) */
    double *waits, *sends; /* per peer, this step (coll_comm_peer_waits) */
    char *hop_buf;         /* ddp_hop_probe's messages */
    int psgd_now;   /* this step is compressed with PowerSGD */
    float *stage; /* one bucket, for gathering shards to rank 0 (made at the first use) */
    /* slow phases (checkpoints): a barrier and liveness pings on communicators of their own */
    MPI_Comm side;
    liveness_t *lv;
    char err[512];
};

static int fused_barrier(ddp_t *d, const char *what);
static double fused_spent(ddp_t *d, double t0);

static int fail(ddp_t *d, const char *what, coll_result_t rc) {
    snprintf(d->err, sizeof d->err, "%s: %s (%s)", what, coll_last_error(d->comm), coll_strerror(rc));
    d->failed = 1;
    return -1;
}

static int check_compress(ddp_t *d, const ddp_options_t *o, char *err, size_t errlen) {
    if ((unsigned)o->compress > DDP_COMPRESS_POWERSGD)
        return snprintf(err, errlen, "ddp: compress = %d is not a mode", (int)o->compress), -1;
    if (o->compress != DDP_COMPRESS_NONE && o->cuda_stream)
        return snprintf(err, errlen, "ddp: compress = %s runs on the host; gradients on a GPU are not supported yet",
                        compress_name((compress_t)o->compress)), -1;
    if (o->compress != DDP_COMPRESS_POWERSGD) return 0;
    if (o->zero)
        return snprintf(err, errlen, "ddp: compress = powersgd cannot be combined with zero = 1 (ZeRO-1 "
                        "reduce-scatters the gradients, which PowerSGD's low-rank factors cannot be)"), -1;
    if (o->powersgd_rank < 1 || o->powersgd_rank > PSGD_MAX_RANK)
        return snprintf(err, errlen, "ddp: powersgd_rank = %d must be in 1..%d", o->powersgd_rank, PSGD_MAX_RANK), -1;
    if (o->powersgd_start < 0) return snprintf(err, errlen, "ddp: powersgd_start = %ld must be >= 0", o->powersgd_start), -1;
    if (!o->tensors || o->ntensors < 1) return snprintf(err, errlen, "ddp: compress = powersgd needs the parameters' shapes"), -1;
    size_t at = 0;
    for (int i = 0; i < o->ntensors; i++) {
        if (o->tensors[i].offset != at)
            return snprintf(err, errlen, "ddp: tensor %d starts at %zu, expected %zu (tensors must tile the parameters in order)",
                            i, o->tensors[i].offset, at), -1;
        at += o->tensors[i].rows * o->tensors[i].cols;
    }
    if (at != d->count)
        return snprintf(err, errlen, "ddp: the tensors hold %zu floats, the parameters %zu", at, d->count), -1;
    return 0;
}

/* PowerSGD's buckets end at tensor boundaries (a matrix is compressed
 * whole): tensors are added until a bucket holds bf floats; the padding
 * joins the last. Then each bucket's P, Q and uncompressed sizes. */
static int psgd_setup(ddp_t *d, size_t bf, char *err, size_t errlen) {
    const ddp_options_t *o = &d->opt;
    const int r = o->powersgd_rank;
    d->mat = calloc((size_t)o->ntensors, sizeof *d->mat);
    d->state = calloc(d->padded ? d->padded : 1, sizeof *d->state);
    if (!d->mat || !d->state) return snprintf(err, errlen, "ddp: out of memory for PowerSGD's state"), -1;
    int nb = 0;
    size_t lo = 0, ptotal = 0;
    for (int i = 0; i < o->ntensors; i++) {
        const ddp_tensor_t *t = &o->tensors[i];
        const size_t end = t->offset + t->rows * t->cols;
        bucket_t *b = &d->b[nb];
        if (b->m1 == 0 && b->m0 == 0 && b->plen == 0 && b->ulen == 0) b->m0 = b->m1 = d->nmat, b->lo = lo;
        if (psgd_worth_it(t->rows, t->cols, r)) {
            d->mat[d->nmat++] = (mat_t){.off = t->offset, .n = t->rows, .m = t->cols, .p_at = b->plen, .q_at = b->qlen};
            b->m1 = d->nmat;
            b->plen += t->rows * (size_t)r;
            b->qlen += t->cols * (size_t)r;
        } else {
            b->ulen += t->rows * t->cols;
        }
        if (end - lo >= bf || i == o->ntensors - 1) {
            b->hi = i == o->ntensors - 1 ? d->padded : end;
            b->ulen += b->hi - end; /* the padding */
            ptotal += b->plen + b->ulen;
            d->qt_len += b->qlen;
            lo = end;
            nb++;
        }
    }
    d->nb = nb;
    d->pq_all = calloc(ptotal ? ptotal : 1, sizeof(float)); /* P = 0: no residual yet */
    d->qt_all = malloc((d->qt_len ? d->qt_len : 1) * sizeof(float));
    if (!d->pq_all || !d->qt_all) return snprintf(err, errlen, "ddp: out of memory for PowerSGD's factors"), -1;
    size_t pa = 0, qa = 0;
    for (int i = 0; i < nb; i++) {
        d->b[i].pq = d->pq_all + pa;
        d->b[i].qt = d->qt_all + qa;
        pa += d->b[i].plen + d->b[i].ulen;
        qa += d->b[i].qlen;
        for (int k = d->b[i].m0; k < d->b[i].m1; k++)
            psgd_init_q(d->b[i].qt + d->mat[k].q_at, d->mat[k].m, r, o->seed, k);
    }
    d->opt.tensors = NULL; /* the caller's, read only here */
    return 0;
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
    if (check_compress(d, opt, err, errlen)) {
        ddp_destroy(d);
        return -1;
    }
    /* bucket length: bucket_mb rounded down to a multiple of P (at least P) */
    size_t bf = (size_t)(opt->bucket_mb * (1 << 20) / sizeof(float)) / P * P;
    if (bf < P) bf = P;
    if (!opt->overlap || bf > padded) bf = padded ? padded : P;
    d->nb = padded ? (int)((padded + bf - 1) / bf) : 0;
    if (opt->compress == DDP_COMPRESS_POWERSGD) d->nb = opt->ntensors + 1; /* at most; whole tensors each */
    d->b = calloc((size_t)d->nb + 1, sizeof *d->b);
    d->shard_lo = calloc((size_t)d->nb + 1, sizeof *d->shard_lo);
    d->shard_hi = calloc((size_t)d->nb + 1, sizeof *d->shard_hi);
    if (!d->b || !d->shard_lo || !d->shard_hi) {
        snprintf(err, errlen, "ddp: out of memory");
        ddp_destroy(d);
        return -1;
    }
    if (opt->compress == DDP_COMPRESS_POWERSGD) {
        if (psgd_setup(d, bf, err, errlen)) {
            ddp_destroy(d);
            return -1;
        }
    } else {
        for (int i = 0; i < d->nb; i++) {
            d->b[i].lo = (size_t)i * bf;
            d->b[i].hi = d->b[i].lo + bf < padded ? d->b[i].lo + bf : padded;
        }
    }
    if ((opt->compress == DDP_COMPRESS_BF16 || opt->compress == DDP_COMPRESS_FP16) &&
        !(d->h16 = malloc((padded ? padded : 1) * sizeof *d->h16))) {
        snprintf(err, errlen, "ddp: out of memory for the 16-bit gradient copy");
        ddp_destroy(d);
        return -1;
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
    if (!(d->waits = calloc(P, sizeof *d->waits)) || !(d->sends = calloc(P, sizeof *d->sends))) {
        snprintf(err, errlen, "ddp: out of memory");
        ddp_destroy(d);
        return -1;
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
    coll_mem_free(d->comm, d->mem_params);
    coll_mem_free(d->comm, d->mem_grads);
    coll_comm_destroy(d->comm);
    free(d->b);
    free(d->shard_lo);
    free(d->shard_hi);
    free(d->stage);
    free(d->h16);
    free(d->mat);
    free(d->state);
    free(d->pq_all);
    free(d->qt_all);
    free(d->waits);
    free(d->sends);
    free(d->hop_buf);
    free(d->peer_grads);
    free(d->acc);
    free(d);
}

/* The fused update (ddp.h) needs every peer's gradient buffer mapped here;
 * where a rank cannot map them, every rank keeps the collectives. */
static void map_peer_grads(ddp_t *d) {
    const int P = d->size;
    float **peers = calloc((size_t)P, sizeof *peers);
    float *acc = malloc(FUSE_CHUNK * sizeof *acc);
    int ok = peers && acc && coll_mem_map_peers(d->comm, d->grads, (void **)peers) == COLL_SUCCESS, all = 0;
    for (int q = 0; q < P && ok; q++) ok = peers[q] != NULL;
    if (!ok && peers) fprintf(stderr, "rank %d: note: ddp: fused update off: %s\n", d->rank, coll_last_error(d->comm));
    if (MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, d->side) != MPI_SUCCESS) all = 0;
    if (!all) {
        free(peers);
        free(acc);
        return;
    }
    d->peer_grads = peers;
    const char *alt = getenv("DDP_FUSED_ALTERNATE");
    d->alternate = alt && *alt && strcmp(alt, "0");
    d->acc = acc;
}

/* Shared buffers pay only where the collectives read them in place: shared
 * memory (one node), uncompressed (compression reduces a staging buffer).
 * There the gradient all-reduce (ZeRO-0), or the gradient reduce-scatter
 * and the parameter all-gather (ZeRO-1), are zero-copy. Elsewhere they
 * cost: memfd memory gets no transparent huge pages here (shmem_enabled is
 * never), and the ring's process-to-process copies from 4 KiB pages made
 * ZeRO-1's step 5% slower (docs/PERFORMANCE.md). */
int ddp_share_buffers(ddp_t *d, float **params, float **grads) {
    const coll_algo_t algo = d->opt.algorithm;
    if (d->opt.compress != DDP_COMPRESS_NONE || (algo != COLL_ALGO_AUTO && algo != COLL_ALGO_SHM) ||
        d->side == MPI_COMM_NULL || d->size < 2)
        return 1;
    if (coll_comm_local_size(d->comm) != d->size) return 1; /* the same answer on every rank */
    const size_t bytes = (d->padded ? d->padded : 1) * sizeof(float);
    void *p = NULL, *g = NULL;
    int ok = coll_mem_alloc(d->comm, bytes, &p) == COLL_SUCCESS && coll_mem_alloc(d->comm, bytes, &g) == COLL_SUCCESS, all = 0;
    if (!ok) snprintf(d->err, sizeof d->err, "ddp: coll_mem_alloc: %s", coll_last_error(d->comm));
    if (MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, d->side) != MPI_SUCCESS) all = 0;
    if (!all) { /* every rank shares, or none */
        coll_mem_free(d->comm, p);
        coll_mem_free(d->comm, g);
        return ok ? 1 : -1;
    }
    /* buckets are 4 MiB by default, where auto's ring beats shm on ordinary
     * buffers at 2 ranks; zero-copy, shm all-reduce is 2.4-6.8x Open MPI
     * there and 2.1-2.5x our ring, reduce-scatter 1.9-2.7x and all-gather
     * 1.3-1.6x the ring (2026-12-05); auto cannot see buffers (its choice
     * must agree across ranks), so the engine names shm */
    if (algo == COLL_ALGO_AUTO) coll_comm_set_algorithm(d->comm, COLL_ALGO_SHM);
    d->params = d->mem_params = p;
    d->grads = d->mem_grads = g;
    *params = p, *grads = g;
    if (d->opt.fuse && !d->opt.zero) map_peer_grads(d);
    return 0;
}

int ddp_rank(const ddp_t *d) { return d->rank; }
int ddp_size(const ddp_t *d) { return d->size; }
const char *ddp_error(const ddp_t *d) { return d->err; }
size_t ddp_shard_size(const ddp_t *d) { return d->shard_size; }
int ddp_fused(const ddp_t *d) { return d->peer_grads != NULL; }
int ddp_alternating(const ddp_t *d) { return d->alternate; }

int ddp_shard(const ddp_t *d, const size_t **lo, const size_t **hi) {
    *lo = d->shard_lo;
    *hi = d->shard_hi;
    return d->nshard;
}

ddp_stats_t ddp_last_stats(const ddp_t *d) { return (ddp_stats_t){d->comm_ms, d->exposed_ms, d->compress_ms, d->wire}; }
void ddp_set_steps(ddp_t *d, long steps) { d->steps = steps; }
size_t ddp_compress_q_len(const ddp_t *d) { return d->opt.compress == DDP_COMPRESS_POWERSGD ? d->qt_len : 0; }

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
    coll_comm_set_tag(d->comm, "step statistics");
    coll_result_t rc = coll_allreduce(v, v, (size_t)n, COLL_FLOAT64, op, d->comm);
    return rc == COLL_SUCCESS ? 0 : fail(d, "all-reduce of step statistics", rc);
}

int ddp_backward_begin(ddp_t *d, int sync) {
    d->syncing = sync;
    d->next = 0;
    d->comm_ms = d->exposed_ms = d->compress_ms = 0;
    d->bytes0 = coll_comm_bytes_sent(d->comm);
    d->wire = 0;
    d->psgd_now = d->opt.compress == DDP_COMPRESS_POWERSGD && d->steps >= d->opt.powersgd_start;
    if (sync) coll_comm_peer_waits(d->comm, NULL, NULL, 1); /* this step's waits from here */
    d->update_wait = 0;
    if (d->reading && !d->failed) { /* backward overwrites what peers may still be reading */
        const double t0 = now_s();
        d->reading = 0;
        fused_barrier(d, "update");
        d->update_wait = fused_spent(d, t0);
    }
    d->fused_now = d->peer_grads && !(d->alternate && d->steps / DDP_ALTERNATE_BLOCK % 2);
    return d->failed ? -1 : 0;
}

void ddp_probe(ddp_t *d, double probe[4]) {
    coll_comm_peer_waits(d->comm, d->waits, d->sends, 0);
    double total = 0;
    int top = -1;
    for (int p = 0; p < d->size; p++) {
        total += d->waits[p];
        if (d->sends[p] > 0 && (top < 0 || d->sends[p] > d->sends[top])) top = p;
    }
    /* minus the time this rank spent in the step's collectives, the fused
     * update's barrier before backward included: a rank stopped in its
     * optimiser or forward is waited for there, and then reaches the
     * gradients' barrier with the others (a 1.3x-throttled rank was named
     * in 0-6 of 10 records without it, 8-10 with the collectives) */
    probe[0] = d->arrival - d->step_end - d->update_wait;
    probe[1] = total;
    probe[2] = top;
    probe[3] = top >= 0 ? d->sends[top] : 0;
}

#define HOP_BYTES (2 << 20) /* past a shaped link's burst (launch/vcluster: 0.5 MB at 1 Gbit/s) */
#define HOP_TAG 0x0b0b

/* Posts a receive from left and a send to right on the side communicator;
 * returns when both are done (*recv_s: seconds until the receive was), -1
 * after timeout_s without them. */
static int hop_exchange(ddp_t *d, int n, int left, int right, double *recv_s) {
    MPI_Request rq[2];
    if (MPI_Irecv(d->hop_buf + HOP_BYTES, n, MPI_BYTE, left, HOP_TAG, d->side, &rq[0]) != MPI_SUCCESS) return -1;
    if (MPI_Isend(d->hop_buf, n, MPI_BYTE, right, HOP_TAG, d->side, &rq[1]) != MPI_SUCCESS) {
        MPI_Cancel(&rq[0]), MPI_Request_free(&rq[0]);
        return -1;
    }
    const double t0 = now_s();
    int got = 0, sent = 0;
    *recv_s = -1;
    while (!got || !sent) {
        if (!got && MPI_Test(&rq[0], &got, MPI_STATUS_IGNORE) == MPI_SUCCESS && got) *recv_s = now_s() - t0;
        if (!sent) MPI_Test(&rq[1], &sent, MPI_STATUS_IGNORE);
        if (got && sent) break;
        if (d->opt.timeout_s > 0 && now_s() - t0 > d->opt.timeout_s) {
            if (!got) MPI_Cancel(&rq[0]), MPI_Request_free(&rq[0]);
            if (!sent) MPI_Cancel(&rq[1]), MPI_Request_free(&rq[1]);
            return -1;
        }
        sched_yield();
    }
    return 0;
}

double ddp_hop_probe(ddp_t *d) {
    if (d->size < 2 || d->side == MPI_COMM_NULL || d->failed) return 0;
    if (!d->hop_buf && !(d->hop_buf = calloc(2, HOP_BYTES))) return -1;
    const int right = (d->rank + 1) % d->size, left = (d->rank + d->size - 1) % d->size;
    double t, best = 1e30;
    /* one byte first, so the neighbours start the timed transfers together;
     * the fastest of five, so a rank descheduled during some does not make
     * its hop look slow (three ranks on two cores did: 2 records in 18 with
     * one, 2 in 6 in a run with three) */
    if (hop_exchange(d, 1, left, right, &t)) return -1;
    for (int k = 0; k < 5; k++) {
        if (hop_exchange(d, HOP_BYTES, left, right, &t)) return -1;
        best = t < best ? t : best;
    }
    return best;
}

int ddp_allgather_double(ddp_t *d, const double *mine, double *all, size_t n) {
    coll_comm_set_tag(d->comm, "straggler probes");
    coll_result_t rc = coll_allgather(mine, all, n, COLL_FLOAT64, d->comm);
    return rc == COLL_SUCCESS ? 0 : fail(d, "all-gather of step statistics", rc);
}

void ddp_trace_dump(ddp_t *d, const char *reason) {
    if (d && !d->failed) coll_trace_dump(d->comm, reason);
}

static int is16(const ddp_t *d) { return d->opt.compress == DDP_COMPRESS_BF16 || d->opt.compress == DDP_COMPRESS_FP16; }
static coll_dtype_t type16(const ddp_t *d) { return d->opt.compress == DDP_COMPRESS_FP16 ? COLL_FLOAT16 : COLL_BFLOAT16; }

/* A PowerSGD bucket's values that are not compressed matrices (vectors,
 * small matrices, padding): into buf after the P's, or back (back = 1). */
static void psgd_pack(ddp_t *d, bucket_t *b, int back) {
    float *buf = b->pq + b->plen;
    size_t at = b->lo, k = 0;
    for (int i = b->m0; i <= b->m1; i++) {
        const size_t end = i < b->m1 ? d->mat[i].off : b->hi, len = end - at;
        if (back) memcpy(d->grads + at, buf + k, len * sizeof(float));
        else memcpy(buf + k, d->grads + at, len * sizeof(float));
        k += len;
        if (i < b->m1) at = d->mat[i].off + d->mat[i].n * d->mat[i].m;
    }
}

/* Compression work since t0, counted apart from the collectives' calls. */
static void spent(ddp_t *d, double t0) { d->compress_ms += 1e3 * (now_s() - t0); }

/* First round: error feedback and P = M Q for each matrix (over the last
 * step's P), sent with the uncompressed values in one all-reduce. */
static coll_result_t psgd_first(ddp_t *d, bucket_t *b) {
    const int r = d->opt.powersgd_rank;
    const double t0 = now_s();
    for (int i = b->m0; i < b->m1; i++) {
        const mat_t *M = &d->mat[i];
        float *p = b->pq + M->p_at;
        psgd_feedback_project(d->grads + M->off, d->state + M->off, p, M->n, M->m, b->qt + M->q_at, r, p);
    }
    psgd_pack(d, b, 0);
    spent(d, t0);
    b->phase = 1;
    return coll_iallreduce(b->pq, b->pq, b->plen + b->ulen, COLL_FLOAT32, COLL_AVG, d->comm, &b->req);
}

/* Second round, once the P's are averaged: orthonormal P, Q = M^T P. */
static coll_result_t psgd_second(ddp_t *d, bucket_t *b) {
    const int r = d->opt.powersgd_rank;
    const double t0 = now_s();
    psgd_pack(d, b, 1);
    for (int i = b->m0; i < b->m1; i++) {
        const mat_t *M = &d->mat[i];
        psgd_orthogonalise(b->pq + M->p_at, M->n, r, PSGD_EPS);
        psgd_project_back(d->state + M->off, M->n, M->m, b->pq + M->p_at, r, b->qt + M->q_at);
    }
    spent(d, t0);
    b->phase = 2;
    if (!b->qlen) return COLL_SUCCESS;
    return coll_iallreduce(b->qt, b->qt, b->qlen, COLL_FLOAT32, COLL_AVG, d->comm, &b->req);
}

static void psgd_third(ddp_t *d, bucket_t *b) {
    const int r = d->opt.powersgd_rank;
    const double t0 = now_s();
    for (int i = b->m0; i < b->m1; i++) {
        const mat_t *M = &d->mat[i];
        psgd_reconstruct(d->grads + M->off, M->n, M->m, b->pq + M->p_at, b->qt + M->q_at, r);
    }
    spent(d, t0);
    b->phase = 0;
}

static void launch(ddp_t *d, int i) {
    bucket_t *b = &d->b[i];
    const size_t len = b->hi - b->lo;
    coll_result_t rc;
    b->phase = 0;
    if (i == 0) d->arrival = now_s();
    char tag[64]; /* libcoll keeps 31 characters */
    snprintf(tag, sizeof tag, "step %ld bucket %d/%d", d->steps, i + 1, d->nb);
    coll_comm_set_tag(d->comm, tag);
    if (d->opt.zero) {
        const size_t piece = len / (size_t)d->size, mine = b->lo + (size_t)d->rank * piece;
        if (is16(d)) {
            const double t0 = now_s();
            compress_to16((compress_t)d->opt.compress, d->h16 + b->lo, d->grads + b->lo, len, 1.0f / (float)d->size);
            spent(d, t0);
            rc = coll_ireduce_scatter(d->h16 + b->lo, d->h16 + mine, piece, type16(d), COLL_SUM, d->comm, &b->req);
        } else {
            rc = coll_ireduce_scatter(d->grads + b->lo, d->grads + mine, piece, COLL_FLOAT32, COLL_AVG, d->comm, &b->req);
        }
    } else if (is16(d)) {
        const double t0 = now_s();
        compress_to16((compress_t)d->opt.compress, d->h16 + b->lo, d->grads + b->lo, len, 1.0f / (float)d->size);
        spent(d, t0);
        rc = coll_iallreduce(d->h16 + b->lo, d->h16 + b->lo, len, type16(d), COLL_SUM, d->comm, &b->req);
    } else if (d->psgd_now) {
        rc = psgd_first(d, b);
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

/* After a gradient bucket's collective: widen the 16-bit result, or take
 * PowerSGD's next round (which may launch another collective). */
static coll_result_t finish(ddp_t *d, bucket_t *b) {
    const double t0 = now_s();
    const int widen = is16(d);
    coll_result_t rc = COLL_SUCCESS;
    const size_t len = b->hi - b->lo, piece = len / (size_t)d->size;
    if (is16(d) && d->opt.zero) {
        const size_t mine = b->lo + (size_t)d->rank * piece;
        compress_from16((compress_t)d->opt.compress, d->grads + mine, d->h16 + mine, piece);
    } else if (is16(d)) {
        compress_from16((compress_t)d->opt.compress, d->grads + b->lo, d->h16 + b->lo, len);
    } else if (b->phase == 1) {
        rc = psgd_second(d, b);
    } else if (b->phase == 2) {
        psgd_third(d, b);
    }
    if (widen) spent(d, t0);
    return rc;
}

void ddp_grad_ready(void *user, int param, size_t offset, size_t count) {
    ddp_t *d = user;
    (void)param;
    if (d->fused_now || !d->syncing || !d->opt.overlap || d->failed) return;
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

/* Waits for every launched bucket, in order; adds to comm and exposed time.
 * With grads, each finished bucket is finished (compression), which may
 * launch PowerSGD's second round: the loop then goes over them again. Every
 * rank launches the same collectives in the same order, whatever the
 * timing, so they match. */
static int wait_all(ddp_t *d, const char *what, int grads) {
    const double t0 = now_s(), z0 = d->compress_ms;
    double busy = 0;
    int rc = d->failed ? -1 : 0, again = 1;
    while (again) {
        again = 0;
        for (int i = 0; i < d->nb; i++) {
            if (!d->b[i].req) continue;
            double s = 0, e = 0;
            coll_result_t r = coll_wait_timed(d->b[i].req, &s, &e);
            d->b[i].req = NULL;
            if (r == COLL_SUCCESS && grads && !rc) r = finish(d, &d->b[i]);
            if (r != COLL_SUCCESS && !rc) {
                char w[96];
                snprintf(w, sizeof w, "%s, bucket %d of %d", what, i + 1, d->nb);
                rc = fail(d, w, r);
            }
            if (d->b[i].req) again = 1;
            else if (grads && !rc && d->b[i].phase == 2) finish(d, &d->b[i]); /* no Q's to send */
            busy += e - s;
        }
    }
    /* the compression kernels run here count as compute, not as waiting */
    d->exposed_ms += 1e3 * (now_s() - t0) - (d->compress_ms - z0);
    d->comm_ms += 1e3 * busy; /* the progress thread runs them one at a time */
    d->wire = coll_comm_bytes_sent(d->comm) - d->bytes0;
    d->step_end = now_s();
    return rc;
}

/* ---- the fused update: every rank on one node, gradients read in place ---- */

/* acc[0, n) = the sum of every rank's grads[lo, lo + n) in rank order, then
 * divided by P: the same bits on every rank, whichever rank computes them */
HOT_LOOP static void mean_of(float *restrict acc, float *const *g, int P, size_t lo, size_t n) {
    const float *a = g[0] + lo, *b = g[1] + lo;
    for (size_t i = 0; i < n; i++) acc[i] = a[i] + b[i];
    for (int q = 2; q < P; q++) {
        const float *c = g[q] + lo;
        for (size_t i = 0; i < n; i++) acc[i] += c[i];
    }
    const float fp = (float)P;
    for (size_t i = 0; i < n; i++) acc[i] /= fp;
}

/* This rank's grads[lo, hi) = the mean over ranks, in place (peers read
 * other ranges of this buffer meanwhile, never this one). */
static void average(ddp_t *d, size_t lo, size_t hi) {
    for (size_t at = lo; at < hi; at += FUSE_CHUNK) {
        const size_t n = hi - at < FUSE_CHUNK ? hi - at : FUSE_CHUNK;
        mean_of(d->acc, d->peer_grads, d->size, at, n);
        memcpy(d->grads + at, d->acc, n * sizeof *d->acc);
    }
}

static int fused_barrier(ddp_t *d, const char *what) {
    char tag[48];
    snprintf(tag, sizeof tag, "step %ld %s", d->steps, what);
    coll_comm_set_tag(d->comm, tag);
    coll_result_t rc = coll_barrier(d->comm);
    if (rc != COLL_SUCCESS) {
        char w[96];
        snprintf(w, sizeof w, "fused update: waiting for every rank's %s", what);
        return fail(d, w, rc);
    }
    return 0;
}

/* Charges the fused update's time since t0 (nothing overlaps it); returns it in seconds. */
static double fused_spent(ddp_t *d, double t0) {
    const double s = now_s() - t0;
    d->exposed_ms += 1e3 * s;
    d->comm_ms += 1e3 * s;
    return s;
}

/* Every gradient is final everywhere; each rank averages its 1/P in place
 * (the reduce-scatter) and waits for the others'. */
static int fused_sync(ddp_t *d) {
    const double t0 = d->arrival = now_s();
    int rc = fused_barrier(d, "gradients");
    if (!rc) {
        const size_t n = d->padded / (size_t)d->size;
        average(d, (size_t)d->rank * n, (size_t)(d->rank + 1) * n);
        rc = fused_barrier(d, "averaged gradients");
    }
    d->steps++;
    fused_spent(d, t0);
    d->step_end = now_s();
    return rc;
}

int ddp_update(ddp_t *d, ddp_update_fn update, void *u) {
    if (d->failed) return -1;
    if (d->fused_now) { /* each range's mean is in its owner's buffer (the all-gather, read in place) */
        const size_t n = d->padded / (size_t)d->size;
        for (int q = 0; q < d->size; q++) update(u, d->peer_grads[q] + (size_t)q * n, (size_t)q * n, (size_t)(q + 1) * n, (size_t)q * n);
        d->reading = 1; /* until every rank is past this step (the next backward) */
        return 0;
    }
    size_t at = 0;
    for (int i = 0; i < d->nshard; at += d->shard_hi[i] - d->shard_lo[i], i++)
        update(u, d->grads + d->shard_lo[i], d->shard_lo[i], d->shard_hi[i], at);
    return 0;
}

int ddp_sync(ddp_t *d) {
    if (d->failed) return -1;
    if (d->fused_now) return fused_sync(d);
    /* without overlap every bucket (one) starts here; launching counts as
     * exposed time since the caller is blocked in it all the same */
    const double t0 = now_s(), z0 = d->compress_ms;
    while (d->next < d->nb && !d->failed) launch(d, d->next++);
    d->exposed_ms += 1e3 * (now_s() - t0) - (d->compress_ms - z0);
    d->steps++;
    return wait_all(d, d->opt.zero ? "gradient reduce-scatter" : "gradient all-reduce", 1);
}

int ddp_gather(ddp_t *d) {
    if (!d->opt.zero || d->size == 1) return d->failed ? -1 : 0;
    char tag[48]; /* libcoll keeps 31 characters */
    snprintf(tag, sizeof tag, "step %ld gather", d->steps - 1);
    coll_comm_set_tag(d->comm, tag);
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
    return wait_all(d, "parameter all-gather", 0);
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

/* ---- PowerSGD's state in checkpoints ---- */

/* Rank src's v[0, count) to rank 0's out, a bucket at a time through the
 * integer-sum reduction of ddp_gather_shards (exact for any bits). */
static int to_root(ddp_t *d, int src, const float *v, float *out) {
    for (int i = 0; i < d->nb; i++) {
        const size_t lo = d->b[i].lo, hi = d->b[i].hi < d->count ? d->b[i].hi : d->count;
        if (hi <= lo) continue;
        const float *send = v + lo;
        if (d->rank != src) memset(d->stage, 0, (hi - lo) * sizeof(float)), send = d->stage;
        coll_result_t rc = coll_reduce(send, d->rank == 0 ? out + lo : NULL, hi - lo, COLL_INT32, COLL_SUM, 0, d->comm);
        if (rc != COLL_SUCCESS) return fail(d, "gathering PowerSGD's residuals on rank 0", rc);
    }
    return 0;
}

/* This rank's residuals, flat layout (count floats; zero outside matrices). */
static void residuals(const ddp_t *d, float *e) {
    memset(e, 0, d->count * sizeof *e);
    for (int k = 0; k < d->nb; k++)
        for (int i = d->b[k].m0; i < d->b[k].m1; i++) {
            const mat_t *M = &d->mat[i];
            psgd_residual(d->state + M->off, M->n, M->m, d->b[k].pq + M->p_at, d->b[k].qt + M->q_at, d->opt.powersgd_rank,
                          e + M->off);
        }
}

int ddp_compress_save(ddp_t *d, float *q, float *const *resid) {
    if (d->opt.compress != DDP_COMPRESS_POWERSGD) return 0;
    if (d->rank == 0) memcpy(q, d->qt_all, d->qt_len * sizeof(float));
    float *e = d->rank == 0 ? resid[0] : malloc((d->count ? d->count : 1) * sizeof *e);
    if (!e) return snprintf(d->err, sizeof d->err, "ddp: out of memory for PowerSGD's residuals"), d->failed = 1, -1;
    residuals(d, e);
    int rc = d->size > 1 ? need_stage(d) : 0;
    for (int r = 1; r < d->size && !rc; r++) rc = to_root(d, r, e, d->rank == 0 ? resid[r] : NULL);
    if (d->rank != 0) free(e);
    return rc;
}

int ddp_compress_load(ddp_t *d, const float *q, float *const *resid, int with_resid) {
    if (d->opt.compress != DDP_COMPRESS_POWERSGD) return 0;
    if (d->rank == 0) memcpy(d->qt_all, q, d->qt_len * sizeof(float));
    coll_result_t rc = d->qt_len ? coll_broadcast(d->qt_all, d->qt_len, COLL_FLOAT32, 0, d->comm) : COLL_SUCCESS;
    if (rc != COLL_SUCCESS) return fail(d, "broadcasting PowerSGD's Q from rank 0", rc);
    /* with P = 0 the state is the residual itself (compress.h) */
    for (int k = 0; k < d->nb; k++) memset(d->b[k].pq, 0, d->b[k].plen * sizeof(float));
    memset(d->state, 0, d->padded * sizeof(float));
    if (!with_resid) return 0;
    if (d->rank == 0) memcpy(d->state, resid[0], d->count * sizeof(float));
    if (d->size > 1 && need_stage(d)) return -1;
    for (int r = 1; r < d->size; r++)
        for (int i = 0; i < d->nb; i++) {
            const size_t lo = d->b[i].lo, hi = d->b[i].hi < d->count ? d->b[i].hi : d->count;
            if (hi <= lo) continue;
            float *buf = d->rank == 0 ? resid[r] + lo : d->rank == r ? d->state + lo : d->stage;
            if ((rc = coll_broadcast(buf, hi - lo, COLL_FLOAT32, 0, d->comm)) != COLL_SUCCESS)
                return fail(d, "sending PowerSGD's residuals from rank 0", rc);
        }
    return 0;
}
