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

/* Handles. A request's memory is recycled, so a handle is not its address
 * but (table slot, generation): a handle kept after coll_wait (or a
 * completed coll_test) no longer matches once the slot is reused, and a
 * second wait on it is an error instead of waiting on someone else's
 * request. Slots live for the process; the table is shared by all comms. */
static pthread_mutex_t tab_lock = PTHREAD_MUTEX_INITIALIZER;
static struct coll_request **tab;
static uint32_t tab_n, tab_cap;
#define GEN_BITS 24
#define GEN_MASK ((1u << GEN_BITS) - 1)

static int tab_add(struct coll_request *r) {
    pthread_mutex_lock(&tab_lock);
    if (tab_n == tab_cap) {
        uint32_t cap = tab_cap ? 2 * tab_cap : 64;
        struct coll_request **t = realloc(tab, cap * sizeof *t);
        if (!t) {
            pthread_mutex_unlock(&tab_lock);
            return -1;
        }
        tab = t, tab_cap = cap;
    }
    r->slot = tab_n;
    tab[tab_n++] = r;
    pthread_mutex_unlock(&tab_lock);
    return 0;
}

/* comm.c frees a comm's requests: their slots stay, empty */
void coll_request_forget(struct coll_request *r) {
    pthread_mutex_lock(&tab_lock);
    if (r->slot < tab_n && tab[r->slot] == r) tab[r->slot] = NULL;
    pthread_mutex_unlock(&tab_lock);
}

static coll_request_t handle_of(const struct coll_request *r) {
    return (coll_request_t)(uintptr_t)(((uintptr_t)r->slot + 1) << GEN_BITS | (r->gen & GEN_MASK));
}

static struct coll_request *resolve(coll_request_t h) {
    const uintptr_t v = (uintptr_t)h;
    const uintptr_t slot = (v >> GEN_BITS) - 1;
    struct coll_request *r = NULL;
    pthread_mutex_lock(&tab_lock);
    if (v >> GEN_BITS && slot < tab_n) r = tab[slot];
    pthread_mutex_unlock(&tab_lock);
    if (!r || r->magic != REQ_MAGIC || (r->gen & GEN_MASK) != (v & GEN_MASK)) return NULL;
    return r;
}

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
        /* fail fast: after a failure nothing queued runs against the dead
         * peer again (each would wait its own timeout) */
        const int failed = atomic_load(&c->failed);
        coll_result_t rc = failed ? (coll_result_t)failed : coll_execute(&c->async, &r->args, r->local);
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
    if (r && tab_add(r)) {
        free(r);
        r = NULL;
    }
    if (r) {
        r->all_next = c->all_reqs;
        r->cuda_ready = r->cuda_done = NULL;
        r->gen = 0;
        c->all_reqs = r;
    }
    return r;
}

/* Fills a request taken from req_get, keeping its place in all_reqs. */
static void req_init(struct coll_request *r, coll_comm_t c, const coll_args_t *a, coll_result_t local, int ghost) {
    *r = (struct coll_request){.magic = REQ_MAGIC, .gen = r->gen + 1, .slot = r->slot, .comm = c, .args = *a,
                               .local = local, .ghost = ghost, .all_next = r->all_next,
                               .cuda_ready = r->cuda_ready, .cuda_done = r->cuda_done};
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
        *out = handle_of(r);
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
    *out = handle_of(r);
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
    coll_result_t rc = coll_run_nccl_start(c, a, &r->cuda_done);
    if (rc != COLL_SUCCESS) {
        pthread_mutex_lock(&c->q_lock);
        r->magic = 0;
        r->next = c->free_reqs;
        c->free_reqs = r;
        pthread_mutex_unlock(&c->q_lock);
        return rc;
    }
    *out = handle_of(r);
    return COLL_SUCCESS;
}

/* An event request: checks (block = 0) or waits for its event. */
static void event_progress(struct coll_request *r, int block) {
    if (!r->by_event || atomic_load(&r->done)) return;
    int done = 0;
    coll_result_t rc = coll_cuda_event_wait(r->comm, r->cuda_done, block, &done);
    if (rc != COLL_SUCCESS || done) {
        r->result = rc;
        r->t_end = mono_s();
        coll_trace_finished(r->args.tr, rc);
        atomic_store(&r->done, 1);
    }
}

static struct coll_request *req_check(coll_request_t h, const char *fn, coll_result_t *rc) {
    *rc = COLL_SUCCESS;
    if (!h) return *rc = coll_error(NULL, COLL_ERR_INVALID_ARG, "%s: req is NULL", fn), NULL;
    struct coll_request *r = resolve(h);
    if (!r || !coll_comm_valid(r->comm)) {
        *rc = coll_error(NULL, COLL_ERR_INVALID_ARG, "%s: req is not a pending request (already completed?)", fn);
        return NULL;
    }
    return r;
}

/* Returns the request to the free list and gives its result; q_lock held. */
static coll_result_t req_release(struct coll_request *r) {
    coll_comm_t c = r->comm;
    coll_result_t rc = r->result;
    r->magic = 0;
    r->next = c->free_reqs;
    c->free_reqs = r;
    return rc;
}

coll_result_t coll_wait_timed(coll_request_t h, double *start_s, double *end_s) {
    coll_result_t rc;
    struct coll_request *r = req_check(h, "coll_wait", &rc);
    if (!r) return rc;
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

coll_result_t coll_test(coll_request_t h, int *done) {
    if (!done) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_test: done is NULL");
    *done = 0;
    coll_result_t rc;
    struct coll_request *r = req_check(h, "coll_test", &rc);
    if (!r) return rc;
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
