/* Non-blocking collectives.
 *
 * Design: each communicator starts one progress thread at its first
 * non-blocking call. Requests go into a FIFO and the thread runs them one
 * after another, in issue order, with the same algorithms as the blocking
 * calls but on its own context (its own MPI communicator and scratch), so a
 * blocking call on the caller's thread never matches its messages. Because
 * every rank issues non-blocking calls in the same order, the FIFO keeps the
 * ranks in step. The caller computes meanwhile; the progress thread's waits
 * yield the core (p2p.c), so on a machine with fewer cores than threads the
 * computation still gets most of it. coll_wait sleeps on a condition
 * variable rather than polling. Requests are recycled through a free list,
 * so steady-state training steps allocate nothing.
 *
 * Without MPI_THREAD_MULTIPLE two threads may not call MPI at once, so the
 * operation then runs to completion inside the call that starts it. */
#include <stdlib.h>
#include <time.h>

#include "coll_internal.h"

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define REQ_MAGIC 0xC0117E57u

static void *progress_main(void *arg) {
    coll_comm_t c = arg;
    pthread_mutex_lock(&c->q_lock);
    for (;;) {
        while (!c->q_head && !c->stop) pthread_cond_wait(&c->q_cond, &c->q_lock);
        if (!c->q_head) break;
        struct coll_request *r = c->q_head;
        c->q_head = r->next;
        if (!c->q_head) c->q_tail = NULL;
        pthread_mutex_unlock(&c->q_lock);
        const double t0 = mono_s();
        coll_result_t rc = coll_execute(&c->async, &r->args, r->local);
        const double t1 = mono_s();
        pthread_mutex_lock(&c->q_lock);
        r->result = rc;
        r->t_start = t0;
        r->t_end = t1;
        c->outstanding--;
        if (r->ghost) {
            r->magic = 0;
            r->next = c->free_reqs;
            c->free_reqs = r;
        } else {
            atomic_store(&r->done, 1);
        }
        pthread_cond_broadcast(&c->done_cond);
    }
    pthread_mutex_unlock(&c->q_lock);
    return NULL;
}

/* Takes a request from the free list (or allocates one); q_lock held. */
static struct coll_request *req_get(coll_comm_t c) {
    struct coll_request *r = c->free_reqs;
    if (r) {
        c->free_reqs = r->next;
        return r;
    }
    r = malloc(sizeof *r);
    if (r) {
        r->all_next = c->all_reqs;
        r->cuda_ready = r->cuda_done = NULL;
        c->all_reqs = r;
    }
    return r;
}

/* Fills a request taken from req_get, keeping its place in all_reqs. */
static void req_init(struct coll_request *r, coll_comm_t c, const coll_args_t *a, coll_result_t local, int ghost) {
    *r = (struct coll_request){.magic = REQ_MAGIC, .comm = c, .args = *a, .local = local, .ghost = ghost,
                               .all_next = r->all_next, .cuda_ready = r->cuda_ready, .cuda_done = r->cuda_done};
}

coll_result_t coll_progress_submit(coll_comm_t c, const coll_args_t *a, coll_result_t local,
                                   coll_request_t *out) {
    *out = NULL;
    if (!c->thread_multiple) {
        const double t0 = mono_s();
        coll_result_t rc = coll_execute(&c->sync, a, local);
        const double t1 = mono_s();
        if (rc != COLL_SUCCESS) return rc;
        pthread_mutex_lock(&c->q_lock);
        struct coll_request *r = req_get(c);
        pthread_mutex_unlock(&c->q_lock);
        if (!r) return coll_error(c, COLL_ERR_NO_MEMORY, "coll_i%s: request", coll_kind_name(a->kind));
        req_init(r, c, a, COLL_SUCCESS, 0);
        r->t_start = t0;
        r->t_end = t1;
        atomic_store(&r->done, 1);
        *out = r;
        return COLL_SUCCESS;
    }
    /* A call that failed validation is only queued when COLL_CHECK needs it
     * to take part in the agreement; the caller gets the error now. */
    int ghost = local != COLL_SUCCESS;
    if (ghost && !coll_tun.check) return local;
    pthread_mutex_lock(&c->q_lock);
    if (!c->thread_started) {
        if (pthread_create(&c->thread, NULL, progress_main, c)) {
            pthread_mutex_unlock(&c->q_lock);
            return coll_error(c, COLL_ERR_INTERNAL, "coll_i%s: cannot start the progress thread",
                              coll_kind_name(a->kind));
        }
        c->thread_started = 1;
    }
    struct coll_request *r = req_get(c);
    if (!r) {
        pthread_mutex_unlock(&c->q_lock);
        return coll_error(c, COLL_ERR_NO_MEMORY, "coll_i%s: request", coll_kind_name(a->kind));
    }
    req_init(r, c, a, local, ghost);
    atomic_store(&r->done, 0);
    if (a->device && local == COLL_SUCCESS) {
        /* inputs are ready when the user's stream gets here, not when the
         * progress thread reaches the request */
        coll_result_t rc = coll_cuda_mark_ready(c, &r->cuda_ready);
        if (rc != COLL_SUCCESS) {
            r->magic = 0;
            r->next = c->free_reqs;
            c->free_reqs = r;
            pthread_mutex_unlock(&c->q_lock);
            return rc;
        }
        r->args.ready = r->cuda_ready;
    }
    if (c->q_tail) c->q_tail->next = r;
    else c->q_head = r;
    c->q_tail = r;
    c->outstanding++;
    pthread_cond_signal(&c->q_cond);
    pthread_mutex_unlock(&c->q_lock);
    if (ghost) return local;
    *out = r;
    return COLL_SUCCESS;
}

coll_result_t coll_progress_event_request(coll_comm_t c, const coll_args_t *a, coll_request_t *out) {
    *out = NULL;
    pthread_mutex_lock(&c->q_lock);
    struct coll_request *r = req_get(c);
    if (r) req_init(r, c, a, COLL_SUCCESS, 0);
    pthread_mutex_unlock(&c->q_lock);
    if (!r) return coll_error(c, COLL_ERR_NO_MEMORY, "coll_i%s: request", coll_kind_name(a->kind));
    r->by_event = 1;
    r->t_start = mono_s();
    atomic_store(&r->done, 0);
    coll_result_t rc = coll_nccl_start(c, a, &r->cuda_done);
    if (rc != COLL_SUCCESS) {
        pthread_mutex_lock(&c->q_lock);
        r->magic = 0;
        r->next = c->free_reqs;
        c->free_reqs = r;
        pthread_mutex_unlock(&c->q_lock);
        return rc;
    }
    *out = r;
    return COLL_SUCCESS;
}

/* An event request: checks (block = 0) or waits for its event. */
static void event_progress(coll_request_t r, int block) {
    if (!r->by_event || atomic_load(&r->done)) return;
    int done = 0;
    coll_result_t rc = coll_cuda_event_wait(r->comm, r->cuda_done, block, &done);
    if (rc != COLL_SUCCESS || done) {
        r->result = rc;
        r->t_end = mono_s();
        atomic_store(&r->done, 1);
    }
}

static coll_result_t req_check(coll_request_t r, const char *fn) {
    if (!r) return coll_error(NULL, COLL_ERR_INVALID_ARG, "%s: req is NULL", fn);
    if (r->magic != REQ_MAGIC || !coll_comm_valid(r->comm))
        return coll_error(NULL, COLL_ERR_INVALID_ARG, "%s: req is not a pending request (already completed?)", fn);
    return COLL_SUCCESS;
}

/* Returns the request to the free list and gives its result; q_lock held. */
static coll_result_t req_release(coll_request_t r) {
    coll_comm_t c = r->comm;
    coll_result_t rc = r->result;
    r->magic = 0;
    r->next = c->free_reqs;
    c->free_reqs = r;
    return rc;
}

coll_result_t coll_wait_timed(coll_request_t r, double *start_s, double *end_s) {
    coll_result_t rc = req_check(r, "coll_wait");
    if (rc != COLL_SUCCESS) return rc;
    coll_comm_t c = r->comm;
    event_progress(r, 1);
    pthread_mutex_lock(&c->q_lock);
    while (!atomic_load(&r->done)) pthread_cond_wait(&c->done_cond, &c->q_lock);
    if (start_s) *start_s = r->t_start;
    if (end_s) *end_s = r->t_end;
    rc = req_release(r);
    pthread_mutex_unlock(&c->q_lock);
    return rc;
}

coll_result_t coll_wait(coll_request_t r) { return coll_wait_timed(r, NULL, NULL); }

coll_result_t coll_test(coll_request_t r, int *done) {
    if (!done) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_test: done is NULL");
    *done = 0;
    coll_result_t rc = req_check(r, "coll_test");
    if (rc != COLL_SUCCESS) return rc;
    event_progress(r, 0);
    if (!atomic_load(&r->done)) return COLL_SUCCESS;
    pthread_mutex_lock(&r->comm->q_lock);
    rc = req_release(r);
    pthread_mutex_unlock(&r->comm->q_lock);
    *done = 1;
    return rc;
}

void coll_progress_shutdown(coll_comm_t c) {
    pthread_mutex_lock(&c->q_lock);
    while (c->outstanding) pthread_cond_wait(&c->done_cond, &c->q_lock);
    c->stop = 1;
    pthread_cond_signal(&c->q_cond);
    int started = c->thread_started;
    pthread_mutex_unlock(&c->q_lock);
    if (started) pthread_join(c->thread, NULL);
    c->thread_started = 0;
}
