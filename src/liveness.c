#include "liveness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The guard pings with its own tags, so its rounds and a wait's rounds
 * (another thread) never take each other's pongs. */
enum { TAG_PING = 7101, TAG_PONG = 7102, TAG_GUARD_PING = 7103, TAG_GUARD_PONG = 7104 };

struct liveness {
    MPI_Comm comm;
    int rank, size, multiple;
    pthread_t thread;
    atomic_int stop;
    int answering;
    int round; /* sent in pings, echoed in pongs */
    /* the guard (liveness_guard) */
    pthread_t guard;
    atomic_int guard_stop;
    int guarding, guard_round;
    double guard_every_s;
    char guard_what[256];
};

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void nap_ms(long ms) {
    const struct timespec t = {0, ms * 1000000};
    nanosleep(&t, NULL);
}
static void nap(void) { nap_ms(1); }

liveness_t *liveness_create(MPI_Comm comm) {
    liveness_t *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    l->multiple = level >= MPI_THREAD_MULTIPLE;
    if (MPI_Comm_dup(comm, &l->comm) != MPI_SUCCESS) {
        free(l);
        return NULL;
    }
    MPI_Comm_set_errhandler(l->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(l->comm, &l->rank);
    MPI_Comm_size(l->comm, &l->size);
    return l;
}

void liveness_destroy(liveness_t *l) {
    if (!l) return;
    liveness_guard(l, 0, NULL);
    liveness_answer(l, 0);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&l->comm);
    free(l);
}

/* Answers every ping until told to stop (a stopped process answers none).
 * One probe for both kinds of ping; a pong it sees came after its round
 * gave up (a round posts its receives before it pings) and is dropped. */
static void *responder(void *arg) {
    liveness_t *l = arg;
    while (!atomic_load(&l->stop)) {
        int flag = 0, round;
        MPI_Status st;
        if (MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, l->comm, &flag, &st) != MPI_SUCCESS) break;
        if (!flag) { /* 5 ms: a reply is quick enough, and a step barely notices */
            nap_ms(5);
            continue;
        }
        MPI_Recv(&round, 1, MPI_INT, st.MPI_SOURCE, st.MPI_TAG, l->comm, MPI_STATUS_IGNORE);
        if (st.MPI_TAG == TAG_PING || st.MPI_TAG == TAG_GUARD_PING)
            MPI_Send(&round, 1, MPI_INT, st.MPI_SOURCE, st.MPI_TAG + 1, l->comm);
    }
    return NULL;
}

void liveness_answer(liveness_t *l, int on) {
    if (!l || !l->multiple || on == l->answering) return;
    if (on) {
        atomic_store(&l->stop, 0);
        l->answering = pthread_create(&l->thread, NULL, responder, l) == 0;
    } else {
        atomic_store(&l->stop, 1);
        pthread_join(l->thread, NULL);
        l->answering = 0;
    }
}

/* Pings every other rank (tags ping, ping + 1 for the pongs); returns how
 * many did not answer within limit_s (listed in err), or 0 early once *req
 * completes or *cancel is set. */
static int ping_all(liveness_t *l, int ping, int *round, double limit_s, MPI_Request *req, int *done,
                    const atomic_int *cancel, const char *what, char *err, size_t errlen) {
    const int P = l->size;
    MPI_Request *rq = malloc(2 * (size_t)P * sizeof *rq);
    int *pong = calloc((size_t)P, sizeof *pong), *got = calloc((size_t)P, sizeof *got);
    int silent = 0;
    if (!rq || !pong || !got) goto out;
    (*round)++;
    for (int r = 0; r < P; r++) {
        rq[2 * r] = rq[2 * r + 1] = MPI_REQUEST_NULL;
        if (r == l->rank) continue;
        MPI_Irecv(&pong[r], 1, MPI_INT, r, ping + 1, l->comm, &rq[2 * r]);
        MPI_Isend(round, 1, MPI_INT, r, ping, l->comm, &rq[2 * r + 1]);
    }
    const double t0 = mono_s();
    int missing = P - 1;
    while (missing > 0 && mono_s() - t0 < limit_s && !*done) {
        for (int r = 0; r < P; r++) {
            int flag = 0;
            if (r == l->rank || got[r]) continue;
            MPI_Test(&rq[2 * r], &flag, MPI_STATUS_IGNORE);
            if (flag) got[r] = 1, missing--;
        }
        if (req) MPI_Test(req, done, MPI_STATUS_IGNORE);
        if (cancel && atomic_load(cancel)) *done = 1;
        if (missing && !*done) nap();
    }
    char names[256] = "";
    size_t o = 0;
    for (int r = 0; r < P; r++) {
        if (r == l->rank) continue;
        for (int k = 0; k < 2; k++) { /* a late pong is dropped, a ping not yet taken withdrawn */
            int flag = 0;
            if (rq[2 * r + k] == MPI_REQUEST_NULL) continue;
            MPI_Test(&rq[2 * r + k], &flag, MPI_STATUS_IGNORE);
            if (!flag) {
                MPI_Cancel(&rq[2 * r + k]);
                MPI_Request_free(&rq[2 * r + k]);
            }
        }
        if (!got[r] && !*done) {
            silent++;
            if (o < sizeof names) o += (size_t)snprintf(names + o, sizeof names - o, " %d", r);
        }
    }
    /* "rank 1", as every other message names a rank (and what a reader greps for) */
    if (silent)
        snprintf(err, errlen, "%s: rank%s%s stopped answering (no reply within %.1f s)", what, silent > 1 ? "s" : "",
                 names, limit_s);
out:
    free(rq), free(pong), free(got);
    return silent;
}

int liveness_census(liveness_t *l, double limit_s, const char *what, char *err, size_t errlen) {
    int done = 0;
    if (!l || !l->multiple) return 0;
    return ping_all(l, TAG_PING, &l->round, limit_s, NULL, &done, NULL, what, err, errlen);
}

int liveness_wait(liveness_t *l, MPI_Request *req, double every_s, double max_s, const char *what, char *err,
                  size_t errlen) {
    const double t0 = mono_s();
    double quiet_since = t0;
    int done = 0;
    for (;;) {
        if (MPI_Test(req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return snprintf(err, errlen, "%s: MPI error", what), -1;
        if (done) return 0;
        const double now = mono_s();
        if (max_s > 0 && now - t0 > max_s)
            return snprintf(err, errlen, "%s: not every rank arrived within %.0f s", what, max_s), -1;
        if (l && l->multiple && every_s > 0 && now - quiet_since > every_s) {
            if (ping_all(l, TAG_PING, &l->round, every_s, req, &done, NULL, what, err, errlen)) return -1;
            quiet_since = mono_s();
        } else {
            nap();
        }
    }
}

/* Every every_s, one round of pings with every_s to answer; a silent rank
 * ends the job. Between rounds it naps, so it costs nothing on idle cores. */
static void *guard(void *arg) {
    liveness_t *l = arg;
    double last = mono_s();
    while (!atomic_load(&l->guard_stop)) {
        nap_ms(10);
        if (mono_s() - last < l->guard_every_s) continue;
        char err[512];
        int done = 0;
        const int silent = ping_all(l, TAG_GUARD_PING, &l->guard_round, l->guard_every_s, NULL, &done, &l->guard_stop,
                                    l->guard_what, err, sizeof err);
        if (silent && !atomic_load(&l->guard_stop)) {
            fprintf(stderr, "%s\n", err);
            fflush(stderr);
            MPI_Abort(MPI_COMM_WORLD, 1); /* this rank's main thread is blocked in MPI, waiting for the silent one */
        }
        last = mono_s();
    }
    return NULL;
}

void liveness_guard(liveness_t *l, double every_s, const char *what) {
    if (!l || !l->multiple) return;
    if (l->guarding) {
        atomic_store(&l->guard_stop, 1);
        pthread_join(l->guard, NULL);
        l->guarding = 0;
    }
    if (!(every_s > 0) || !what) return;
    l->guard_every_s = every_s;
    snprintf(l->guard_what, sizeof l->guard_what, "%s", what);
    atomic_store(&l->guard_stop, 0);
    l->guarding = pthread_create(&l->guard, NULL, guard, l) == 0;
}
