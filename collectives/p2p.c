/* Waiting on transport requests, written once for every transport.
 * A wait polls; after COLL_SPIN fruitless polls (COLL_SPIN_OVERSUBSCRIBED
 * when this node has more ranks than cores) every poll yields the core, so oversubscribed
 * ranks and the caller's compute threads get to run. The optional timeout
 * turns a peer that never answers into COLL_ERR_TIMEOUT naming that peer,
 * and marks the communicator failed. */
#include <sched.h>
#include <time.h>

#include "coll_internal.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Waits are timed only while the flight recorder is on (COLL_TRACE > 0;
 * off, they cost nothing), and the clock is read only once a first poll has
 * found the transfer unfinished: a wait that never waited records 0 and
 * costs no clock read (t0 = 0 then means "not started"). */
static void wait_started(double *t0) {
    if (*t0 == 0 && coll_tun.trace > 0) *t0 = now_s();
}
static void waited(coll_ctx_t *ctx, int peer, int send, double t0) {
    if (coll_tun.trace > 0) coll_trace_wait(ctx, peer, send, t0 > 0 ? now_s() - t0 : 0);
}

typedef struct {
    long polls;
    double t0;
} waiter_t;

/* Called after each fruitless poll round; returns non-zero on timeout. */
static int idle(coll_ctx_t *ctx, waiter_t *w) {
    const coll_comm_t c = ctx->comm;
    if (w->polls >= (c->oversubscribed ? coll_tun.spin_oversub : coll_tun.spin)) sched_yield();
    if (c->timeout > 0 && (w->polls & 63) == 0) {
        double t = now_s();
        if (w->t0 == 0) w->t0 = t;
        else if (t - w->t0 > c->timeout) return 1;
    }
    w->polls++;
    return 0;
}

static coll_result_t timed_out(coll_ctx_t *ctx, const coll_treq_t *r) {
    const int w = coll_world_rank(ctx, r->peer);
    coll_error(ctx->comm, COLL_ERR_TIMEOUT,
               "no progress on a %s rank %d for %.1f s (rank %d lost or not calling the same collective?)",
               r->is_send ? "send to" : "receive from", w, ctx->comm->timeout, w);
    return coll_comm_fail(ctx->comm, COLL_ERR_TIMEOUT);
}

/* Every wait is timed for the flight recorder and the per-peer totals
 * (trace.c): two clock reads, against transfers of microseconds or more. */
coll_result_t coll_p2p_wait(coll_ctx_t *ctx, coll_treq_t *r) {
    waiter_t w = {0, 0};
    double t0 = 0;
    const int peer = r->peer, send = r->is_send;
    while (r->active) {
        int done;
        coll_result_t rc = coll_tp_test(ctx, r, &done);
        if (rc != COLL_SUCCESS) return rc;
        if (done) break;
        wait_started(&t0);
        if (idle(ctx, &w)) {
            coll_tp_cancel(ctx, r);
            waited(ctx, peer, send, t0);
            return timed_out(ctx, r);
        }
    }
    waited(ctx, peer, send, t0);
    return COLL_SUCCESS;
}

/* The wait is charged to the request that completed last: the peer this
 * rank was waiting on. */
coll_result_t coll_p2p_waitall(coll_ctx_t *ctx, coll_treq_t *reqs, int n) {
    waiter_t w = {0, 0};
    double t0 = 0;
    int last = -1, last_peer = -1, last_send = 0;
    for (;;) {
        int pending = -1;
        for (int i = 0; i < n; i++) {
            if (!reqs[i].active) continue;
            int done;
            coll_result_t rc = coll_tp_test(ctx, &reqs[i], &done);
            if (rc != COLL_SUCCESS) {
                coll_p2p_cancel_all(ctx, reqs, n);
                return rc;
            }
            if (!done) pending = i;
        }
        if (pending < 0) {
            if (last >= 0) waited(ctx, last_peer, last_send, t0);
            return COLL_SUCCESS;
        }
        last = pending, last_peer = reqs[pending].peer, last_send = reqs[pending].is_send;
        wait_started(&t0);
        if (idle(ctx, &w)) {
            coll_treq_t r = reqs[pending];
            coll_p2p_cancel_all(ctx, reqs, n);
            waited(ctx, r.peer, r.is_send, t0);
            return timed_out(ctx, &r);
        }
    }
}

coll_result_t coll_p2p_wait_mpi(coll_ctx_t *ctx, MPI_Request *rq, const char *what) {
    waiter_t w = {0, 0};
    double t0 = 0;
    for (;;) {
        int flag = 0;
        const int mrc = MPI_Test(rq, &flag, MPI_STATUS_IGNORE);
        if (mrc != MPI_SUCCESS) return coll_comm_fail(ctx->comm, coll_mpi_error(ctx->comm, mrc, what));
        if (flag) return waited(ctx, -1, 0, t0), COLL_SUCCESS;
        wait_started(&t0);
        if (idle(ctx, &w)) {
            waited(ctx, -1, 0, t0);
            /* a collective request cannot be cancelled; the comm is failed anyway */
            coll_error(ctx->comm, COLL_ERR_TIMEOUT, "%s: not every rank arrived within %.1f s (a rank lost, or calling another collective?)",
                       what, ctx->comm->timeout);
            return coll_comm_fail(ctx->comm, COLL_ERR_TIMEOUT);
        }
    }
}

void coll_p2p_cancel_all(coll_ctx_t *ctx, coll_treq_t *reqs, int n) {
    for (int i = 0; i < n; i++) coll_tp_cancel(ctx, &reqs[i]);
}

coll_result_t coll_p2p_sendrecv(coll_ctx_t *ctx, const void *sbuf, size_t sbytes, int dst,
                                void *rbuf, size_t rbytes, int src) {
    coll_treq_t r[2];
    coll_result_t rc = coll_tp_irecv(ctx, rbuf, rbytes, src, 0, &r[0]);
    if (rc != COLL_SUCCESS) return rc;
    rc = coll_tp_isend(ctx, sbuf, sbytes, dst, 0, &r[1]);
    if (rc != COLL_SUCCESS) {
        coll_p2p_cancel_all(ctx, r, 1);
        return rc;
    }
    return coll_p2p_waitall(ctx, r, 2);
}
