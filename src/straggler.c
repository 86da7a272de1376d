#include "straggler.h"

#include <math.h>
#include <stdlib.h>

const char *straggler_cause_name(int cause) {
    return cause == STRAGGLER_COMPUTE ? "compute" : cause == STRAGGLER_LINK ? "link" : "none";
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* median of v[0, n) (reorders v) */
static double median(double *v, int n) {
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Per-rank medians over the window, so one noisy step does not name a
 * rank: compute, when a rank's median lateness exceeds the threshold and it
 * arrived last in at least 2 of 3 steps (and is later than the next
 * latest by the threshold and by half again); link,
 * when every rank's median lateness is under it: from the timed hops when
 * there are any, else a rank whose median send-wait charge (its sends'
 * waits plus those of sends to it) exceeds the median charge by the
 * threshold and by half. */
straggler_t straggler_window(const double *pr, int P, int K, double thr_ms, long *counts) {
    return straggler_window_hops(pr, NULL, P, K, thr_ms, counts);
}

/* link from the timed hops: a node's slow link slows the hop into its rank
 * and the hop out of it, so that rank collects two slow charges */
static straggler_t hop_verdict(const double *hop, const double *pr, int P, int K, double thr_ms) {
    straggler_t none = {-1, STRAGGLER_NONE, 0};
    double *c = malloc((size_t)P * sizeof *c), *sorted = malloc((size_t)P * sizeof *sorted);
    double *w = malloc((size_t)K * sizeof *w);
    if (!c || !sorted || !w) return free(c), free(sorted), free(w), none;
    int top = 0;
    for (int r = 0; r < P; r++) {
        c[r] = 1e3 * (hop[r] + hop[(r + 1) % P]); /* into r, and into r + 1 (out of r) */
        sorted[r] = c[r];
        if (c[r] > c[top]) top = r;
    }
    double fastest = hop[0];
    for (int r = 1; r < P; r++) fastest = hop[r] < fastest ? hop[r] : fastest;
    const double med = median(sorted, P), margin = fmax(1.0, 2e3 * fastest);
    for (int k = 0; k < K; k++) w[k] = 1e3 * pr[((size_t)top * K + k) * PROBE_FIELDS + 1];
    const double waited = median(w, K);
    straggler_t s = none;
    if (c[top] > 1.4 * med && c[top] - med > margin && waited > thr_ms) s = (straggler_t){top, STRAGGLER_LINK, waited};
    free(c), free(sorted), free(w);
    return s;
}

straggler_t straggler_window_hops(const double *pr, const double *hop, int P, int K, double thr_ms, long *counts) {
    straggler_t best = {-1, STRAGGLER_NONE, 0};
    if (P < 2 || K < 1) return best;
    double *late = malloc((size_t)P * K * sizeof *late), *charge = calloc((size_t)P * K, sizeof *charge);
    double *med_late = malloc((size_t)P * sizeof *med_late), *med_charge = malloc((size_t)P * sizeof *med_charge);
    long *last_n = calloc((size_t)P, sizeof *last_n); /* steps each rank arrived last */
    if (!late || !charge || !med_late || !med_charge || !last_n) {
        free(late), free(charge), free(med_late), free(med_charge), free(last_n);
        return best;
    }
#define AT(r, k, f) pr[((size_t)(r) * K + (k)) * PROBE_FIELDS + (f)]
    for (int k = 0; k < K; k++) {
        double first = AT(0, k, 0);
        for (int r = 1; r < P; r++) first = AT(r, k, 0) < first ? AT(r, k, 0) : first;
        for (int r = 0; r < P; r++) {
            late[(size_t)r * K + k] = 1e3 * (AT(r, k, 0) - first);
            const int peer = (int)AT(r, k, 2);
            const double w = AT(r, k, 3);
            if (peer < 0 || peer >= P || !(w > 0)) continue;
            charge[(size_t)r * K + k] += 1e3 * w;
            charge[(size_t)peer * K + k] += 1e3 * w;
        }
        int last = 0;
        for (int r = 1; r < P; r++) last = AT(r, k, 0) > AT(last, k, 0) ? r : last;
        last_n[last]++;
    }
#undef AT
    int top_late = 0, top_charge = 0, latest_n = 0;
    for (int r = 0; r < P; r++) {
        med_late[r] = median(late + (size_t)r * K, K);
        med_charge[r] = median(charge + (size_t)r * K, K);
        if (med_late[r] > med_late[top_late]) top_late = r;
        if (med_charge[r] > med_charge[top_charge]) top_charge = r;
    }
    latest_n = (int)last_n[top_late];
    double second = 0; /* the next latest median */
    for (int r = 0; r < P; r++) second = r != top_late && med_late[r] > second ? med_late[r] : second;
    /* a straggler is late persistently: the last to arrive in 2 steps of 3
     * (a transient stall of one core, common on shared machines, is not),
     * and later than the next latest by the threshold and by half again
     * (with more ranks than cores every rank is often a little late: 4-7 ms
     * of 45 across three nodes on two cores, against 7-11 ms for a
     * throttled rank; docs/RELIABILITY.md) */
    const int persistent =
        3 * latest_n >= 2 * K && med_late[top_late] - second > thr_ms && med_late[top_late] > 1.5 * second;
    int hops_ok = hop != NULL;
    for (int r = 0; hops_ok && r < P; r++) hops_ok = hop[r] >= 0;
    if (med_late[top_late] > thr_ms && persistent) {
        best = (straggler_t){top_late, STRAGGLER_COMPUTE, med_late[top_late]};
    } else if (hops_ok) {
        best = hop_verdict(hop, pr, P, K, thr_ms);
        /* a rank that arrives last persistently, only not by the threshold,
         * computes slowly: pre-empted during the timed hop (a throttled
         * rank is, a third of the time) its hops look slow too. Neither
         * cause is certain then, so nobody is named. */
        if (best.rank == top_late && 3 * latest_n >= 2 * K && med_late[top_late] - second > thr_ms / 2 &&
            med_late[top_late] > 1.5 * second) best = (straggler_t){-1, STRAGGLER_NONE, 0};
    } else {
        const double top = med_charge[top_charge], mid = median(med_charge, P); /* reorders med_charge */
        if ((top - mid) / 2 > thr_ms && top > 1.5 * mid) best = (straggler_t){top_charge, STRAGGLER_LINK, (top - mid) / 2};
    }
    if (counts && best.rank >= 0) counts[best.rank * 3 + best.cause] += K;
    free(late), free(charge), free(med_late), free(med_charge), free(last_n);
    return best;
}

static int same_verdict(straggler_t a, straggler_t b) {
    return a.rank >= 0 && a.cause != STRAGGLER_NONE && a.rank == b.rank && a.cause == b.cause;
}

straggler_t straggler_confirm(straggler_track_t *tr, straggler_t now, straggler_t relaxed, int K, long *counts) {
    straggler_t out = {-1, STRAGGLER_NONE, 0};
    long add = K;
    if (same_verdict(now, tr->named) && tr->since <= 1) out = now; /* named, or away for one window */
    else if (same_verdict(relaxed, tr->named) && tr->since == 0) out = relaxed;
    else if (same_verdict(now, tr->prev) || same_verdict(now, tr->prev_relaxed))
        out = now, add += tr->prev_k; /* the window that first saw it */
    if (counts && out.rank >= 0) counts[out.rank * 3 + out.cause] += add;
    if (out.rank >= 0) tr->named = out, tr->since = 0;
    else tr->since++;
    tr->prev = now, tr->prev_relaxed = relaxed, tr->prev_k = K;
    return out;
}
