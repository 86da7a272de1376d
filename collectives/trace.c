/* The flight recorder (coll.h): per communicator, a ring buffer of its last
 * COLL_TRACE collectives, filled as calls are issued and run, and written as
 * JSON lines when something goes wrong. Recording is a few stores per call
 * and two clock reads per transfer wait; nothing is allocated after
 * coll_comm_init. Dumps format into a stack buffer and write(2) it, so the
 * signal handlers can use the same code (snprintf in a handler is not
 * async-signal-safe by the letter, but glibc's does not allocate for the
 * formats used here). */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "coll_internal.h"

static double wall_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- live recorders, for dumps from signal handlers (no locks there) ---- */
#define MAX_LIVE 64
static _Atomic(coll_comm_t) live[MAX_LIVE];
static atomic_int next_id;
static char trace_dir[1024];

void coll_trace_set_dir(const char *dir) {
    snprintf(trace_dir, sizeof trace_dir, "%s", dir ? dir : "");
}

static void install_handlers(void);
static pthread_once_t handlers_once = PTHREAD_ONCE_INIT;

coll_result_t coll_trace_init(coll_comm_t c) {
    c->trace_id = atomic_fetch_add(&next_id, 1);
    c->peer_wait_ns = calloc((size_t)c->size, sizeof *c->peer_wait_ns);
    c->peer_send_ns = calloc((size_t)c->size, sizeof *c->peer_send_ns);
    if (!c->peer_wait_ns || !c->peer_send_ns) return COLL_ERR_NO_MEMORY;
    if (coll_tun.trace > 0) {
        c->trace = calloc((size_t)coll_tun.trace, sizeof *c->trace);
        if (!c->trace) return COLL_ERR_NO_MEMORY;
        c->trace_n = (size_t)coll_tun.trace;
    }
    if (!trace_dir[0] && getenv("COLL_TRACE_DIR")) coll_trace_set_dir(getenv("COLL_TRACE_DIR"));
    for (int i = 0; i < MAX_LIVE; i++) {
        coll_comm_t none = NULL;
        if (atomic_compare_exchange_strong(&live[i], &none, c)) break;
    }
    pthread_once(&handlers_once, install_handlers);
    return COLL_SUCCESS;
}

void coll_trace_free(coll_comm_t c) {
    for (int i = 0; i < MAX_LIVE; i++) {
        coll_comm_t me = c;
        atomic_compare_exchange_strong(&live[i], &me, NULL);
    }
    free(c->trace);
    free((void *)c->peer_wait_ns);
    free((void *)c->peer_send_ns);
    c->trace = NULL;
    c->peer_wait_ns = c->peer_send_ns = NULL;
}

coll_result_t coll_comm_set_tag(coll_comm_t c, const char *tag) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_set_tag: comm is NULL or destroyed");
    snprintf(c->tag, sizeof c->tag, "%s", tag ? tag : "");
    return COLL_SUCCESS;
}

/* ---- recording ---- */

coll_trace_entry_t *coll_trace_begin(coll_comm_t c, const coll_args_t *a) {
    const uint64_t seq = c->trace_seq++;
    if (!c->trace) return NULL;
    coll_trace_entry_t *e = &c->trace[seq % c->trace_n];
    atomic_store_explicit(&e->state, COLL_TS_EMPTY, memory_order_relaxed);
    e->seq = seq;
    e->kind = a->kind, e->dtype = a->dtype, e->op = a->op, e->algo = a->algo, e->root = a->root;
    e->count = a->count;
    memcpy(e->tag, c->tag, sizeof e->tag);
    e->t_enq = wall_s();
    e->t_start = e->t_end = 0;
    e->result = 0;
    e->nsteps = 0;
    e->wait_s = 0;
    atomic_store_explicit(&e->state, COLL_TS_QUEUED, memory_order_release);
    return e;
}

void coll_trace_started(coll_trace_entry_t *e) {
    if (!e) return;
    e->t_start = wall_s();
    atomic_store_explicit(&e->state, COLL_TS_RUNNING, memory_order_release);
}

void coll_trace_finished(coll_trace_entry_t *e, coll_result_t rc) {
    if (!e) return;
    e->t_end = wall_s();
    e->result = (int)rc;
    atomic_store_explicit(&e->state, rc == COLL_SUCCESS ? COLL_TS_DONE : COLL_TS_FAILED, memory_order_release);
}

void coll_trace_run(coll_ctx_t *ctx, coll_trace_entry_t *e) {
    ctx->cur = e;
    if (!e) return;
    /* a blocking call starts as it is issued: no second clock read */
    if (ctx == &ctx->comm->sync) {
        e->t_start = e->t_enq;
        atomic_store_explicit(&e->state, COLL_TS_RUNNING, memory_order_release);
    } else {
        coll_trace_started(e);
    }
}

void coll_trace_end(coll_ctx_t *ctx, coll_trace_entry_t *e, coll_result_t rc) {
    ctx->cur = NULL;
    coll_trace_finished(e, rc);
}

void coll_trace_wait(coll_ctx_t *ctx, int peer, int send, double seconds) {
    coll_comm_t c = ctx->comm;
    peer = coll_world_rank(ctx, peer);
    if (peer >= 0 && peer < c->size && c->peer_wait_ns) {
        atomic_fetch_add_explicit(&c->peer_wait_ns[peer], (uint64_t)(seconds * 1e9), memory_order_relaxed);
        if (send) atomic_fetch_add_explicit(&c->peer_send_ns[peer], (uint64_t)(seconds * 1e9), memory_order_relaxed);
    }
    coll_trace_entry_t *e = ctx->cur;
    if (!e) return;
    if (e->nsteps < COLL_TRACE_STEPS) {
        e->step[e->nsteps].peer = peer;
        e->step[e->nsteps].send = (int8_t)send;
        e->step[e->nsteps].wait_s = (float)seconds;
    }
    e->nsteps++;
    e->wait_s += seconds;
}

void coll_trace_add_waits(coll_trace_entry_t *e, const coll_trace_entry_t *from) {
    if (!e) return;
    for (int i = 0; i < from->nsteps && e->nsteps + i < COLL_TRACE_STEPS; i++)
        e->step[e->nsteps + i] = from->step[i];
    e->nsteps += from->nsteps;
    e->wait_s += from->wait_s;
}

static double take(_Atomic uint64_t *v, int reset) { return 1e-9 * (double)(reset ? atomic_exchange(v, 0) : atomic_load(v)); }

coll_result_t coll_comm_peer_waits(coll_comm_t c, double *wait_s, double *send_s, int reset) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_peer_waits: comm is NULL or destroyed");
    for (int p = 0; p < c->size; p++) {
        const double w = take(&c->peer_wait_ns[p], reset), s = take(&c->peer_send_ns[p], reset);
        if (wait_s) wait_s[p] = w;
        if (send_s) send_s[p] = s;
    }
    return COLL_SUCCESS;
}

/* ---- dumps ---- */

static const char *state_name(int s) {
    static const char *n[] = {"empty", "queued", "running", "done", "failed"};
    return (unsigned)s < 5 ? n[s] : "?";
}

/* tags are the caller's text: keep printable ASCII, drop quotes and backslashes */
static void clean(char *dst, const char *src, size_t n) {
    size_t k = 0;
    for (size_t i = 0; src[i] && k + 1 < n; i++)
        if (src[i] >= 32 && src[i] < 127 && src[i] != '"' && src[i] != '\\') dst[k++] = src[i];
    dst[k] = 0;
}

static void put(int fd, const char *s, int n) {
    while (n > 0) {
        const ssize_t w = write(fd, s, (size_t)n);
        if (w <= 0) return;
        s += w, n -= (int)w;
    }
}

static int dump_comm(coll_comm_t c, const char *reason) {
    if (!trace_dir[0]) return -1;
    char path[1200], tmp[1240];
    snprintf(path, sizeof path, "%s/coll-trace-r%d-c%d.jsonl", trace_dir, c->rank, c->trace_id);
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
    const int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    char line[2048], tag[40];
    const uint64_t seq = c->trace_seq, n = c->trace ? (seq < c->trace_n ? seq : c->trace_n) : 0;
    char rsn[64];
    clean(rsn, reason, sizeof rsn);
    int len = snprintf(line, sizeof line,
                       "{\"type\":\"header\",\"rank\":%d,\"size\":%d,\"comm\":%d,\"host\":\"%s\",\"pid\":%d,"
                       "\"reason\":\"%s\",\"time\":%.6f,\"calls\":%llu,\"recorded\":%llu,\"capacity\":%zu,"
                       "\"timeout_s\":%g}\n",
                       c->rank, c->size, c->trace_id, c->host, (int)getpid(), rsn, wall_s(), (unsigned long long)seq,
                       (unsigned long long)n, c->trace_n, c->timeout);
    put(fd, line, len);
    for (uint64_t s = seq - n; s < seq; s++) {
        const coll_trace_entry_t *e = &c->trace[s % c->trace_n];
        const int st = atomic_load_explicit(&e->state, memory_order_acquire);
        if (st == COLL_TS_EMPTY || e->seq != s) continue;
        clean(tag, e->tag, sizeof tag);
        len = snprintf(line, sizeof line,
                       "{\"seq\":%llu,\"kind\":\"%s\",\"count\":%zu,\"dtype\":\"%s\",\"op\":\"%s\",\"algo\":\"%s\","
                       "\"root\":%d,\"tag\":\"%s\",\"t_enqueue\":%.6f,\"t_start\":%.6f,\"t_end\":%.6f,\"state\":\"%s\","
                       "\"result\":%d,\"waits\":%d,\"wait_s\":%.6f,\"steps\":[",
                       (unsigned long long)e->seq, coll_kind_name(e->kind), e->count, coll_dtype_name(e->dtype),
                       coll_op_name(e->op), coll_algo_name(e->algo), e->root, tag, e->t_enq, e->t_start, e->t_end,
                       state_name(st), e->result, e->nsteps, e->wait_s);
        const int k = e->nsteps < COLL_TRACE_STEPS ? e->nsteps : COLL_TRACE_STEPS;
        for (int i = 0; i < k && len < (int)sizeof line - 64; i++)
            len += snprintf(line + len, sizeof line - (size_t)len, "%s[%d,\"%s\",%.6f]", i ? "," : "", e->step[i].peer,
                            e->step[i].send ? "send" : "recv", (double)e->step[i].wait_s);
        len += snprintf(line + len, sizeof line - (size_t)len, "]}\n");
        put(fd, line, len);
    }
    close(fd);
    return rename(tmp, path);
}

coll_result_t coll_trace_dump(coll_comm_t c, const char *reason) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_trace_dump: comm is NULL or destroyed");
    if (!trace_dir[0]) return COLL_SUCCESS; /* nowhere to write: not an error */
    if (dump_comm(c, reason ? reason : "requested"))
        return coll_error(c, COLL_ERR_INTERNAL, "coll_trace_dump: cannot write in %s", trace_dir);
    COLL_LOG(c, COLL_LOG_INFO, "flight recorder written to %s (%s)", trace_dir, reason ? reason : "requested");
    return COLL_SUCCESS;
}

/* A failure (timeout, MPI error, mismatch): the comm's record, once
 * (trace_dumped: 0 not yet, 1 being written, 2 written). */
void coll_trace_failure(coll_comm_t c, const char *reason) {
    int no = 0;
    if (atomic_compare_exchange_strong(&c->trace_dumped, &no, 1)) {
        dump_comm(c, reason);
        atomic_store(&c->trace_dumped, 2);
    }
}

/* fatal = 1 keeps a failure's dump (its reason says more than the signal
 * the launcher sends afterwards) */
static void dump_all(const char *reason, int fatal) {
    for (int i = 0; i < MAX_LIVE; i++) {
        coll_comm_t c = atomic_load(&live[i]);
        if (!c) continue;
        if (fatal && atomic_load(&c->trace_dumped)) {
            /* a failure's record being written on another thread (the launcher
             * sends SIGTERM as soon as a rank aborts): let it finish, 2 s at most */
            for (int k = 0; k < 200 && atomic_load(&c->trace_dumped) == 1; k++) nanosleep(&(struct timespec){0, 10000000}, NULL);
            continue;
        }
        dump_comm(c, reason);
    }
}

/* ---- signals: SIGUSR1 dumps and goes on; fatal ones dump, then the
 * previous disposition runs (Open MPI's own handlers, or the default) ---- */
static const int fatal[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTERM};
#define NFATAL (int)(sizeof fatal / sizeof fatal[0])
static struct sigaction previous[NFATAL + 1];
static atomic_int in_fatal;

static void on_usr1(int sig, siginfo_t *si, void *uc) {
    dump_all("SIGUSR1", 0);
    const struct sigaction *p = &previous[NFATAL];
    if ((p->sa_flags & SA_SIGINFO) && p->sa_sigaction) p->sa_sigaction(sig, si, uc);
    else if (p->sa_handler != SIG_DFL && p->sa_handler != SIG_IGN && p->sa_handler) p->sa_handler(sig);
}

static void on_fatal(int sig, siginfo_t *si, void *uc) {
    (void)si, (void)uc;
    if (!atomic_exchange(&in_fatal, 1)) {
        char why[32];
        snprintf(why, sizeof why, "signal %d (%s)", sig, sig == SIGTERM ? "SIGTERM" : sig == SIGABRT ? "SIGABRT" : sig == SIGSEGV ? "SIGSEGV" : "fatal");
        dump_all(why, 1);
    }
    for (int i = 0; i < NFATAL; i++)
        if (fatal[i] == sig) sigaction(sig, &previous[i], NULL);
    raise(sig); /* runs the previous handler, or the default action, when we return */
}

static void install_handlers(void) {
    if (coll_tun.trace <= 0) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sa.sa_sigaction = on_fatal;
    for (int i = 0; i < NFATAL; i++) {
        struct sigaction old;
        if (sigaction(fatal[i], NULL, &old) || old.sa_handler == SIG_IGN) continue;
        previous[i] = old;
        sigaction(fatal[i], &sa, NULL);
    }
    sa.sa_sigaction = on_usr1;
    struct sigaction old;
    if (!sigaction(SIGUSR1, NULL, &old) && old.sa_handler != SIG_IGN) {
        previous[NFATAL] = old;
        sigaction(SIGUSR1, &sa, NULL);
    }
}
