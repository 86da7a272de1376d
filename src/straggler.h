/* Straggler attribution: from each rank's per-step probe, which rank held
 * the step back, and why.
 *
 * A probe (ddp_probe) is four numbers per rank and step:
 *   arrival   when the rank reached the step's first gradient collective,
 *             as minus the time it then spent in the step's collectives
 *             (seconds): all ranks leave them within a hop of each other,
 *             so the latest to arrive spends the least, and its lead over
 *             the earliest is how late it was, with no clocks compared
 *   wait      how long its transfers waited, in all
 *   peer      the peer its sends waited on most (back-pressure: the hop from
 *             it to that peer drains slowly), and
 *   peer_wait how long its sends to that peer waited.
 * cause compute: a rank arrived late (after the earliest by more than the
 *   threshold, and clearly later than every other rank): it computed
 *   slowly. The latest is named.
 * cause link: every rank arrived on time, but sends waited: each send wait
 *   is charged to both ends of its hop (a node's slow link slows the hops
 *   into it and out of it, so its ranks collect both charges); the rank
 *   whose charge exceeds the median charge by more than the threshold (and
 *   by half) is named. Equal waits everywhere (a uniformly slow network)
 *   name nobody.
 * Receive waits are not used for the link cause: a pipelined ring runs every
 * hop at the pace of its slowest, so every rank waits about equally on its
 * predecessor (measured: docs/RELIABILITY.md). With two nodes a slow link of
 * either looks the same from the ranks anyway (every transfer between them
 * crosses both links). */
#ifndef DDP_STRAGGLER_H
#define DDP_STRAGGLER_H

enum { STRAGGLER_NONE = 0, STRAGGLER_COMPUTE, STRAGGLER_LINK };
#define PROBE_FIELDS 4

typedef struct straggler {
    int rank;           /* -1: none */
    int cause;          /* STRAGGLER_* */
    double lateness_ms; /* how late it arrived (compute), or the extra wait it caused (link) */
} straggler_t;

const char *straggler_cause_name(int cause);

/* A window of K steps: probes[(r * K + k) * PROBE_FIELDS ...] (each rank's
 * K probes end to end, as an all-gather of per-rank windows lays them out).
 * Judged on each rank's median lateness and median charge over the window,
 * so a single noisy step names nobody; counts[r * 3 + cause] (if not NULL)
 * adds K to the named rank's count for its cause. */
straggler_t straggler_window(const double *probes, int P, int K, double threshold_ms, long *counts);
/* The same, with hop[r] = seconds the hop into rank r from rank r - 1 took
 * in a timed exchange around the ring (ddp_hop_probe; NULL or any negative:
 * not measured). The link cause is then judged on the hops: each hop is
 * charged to both its ends, and a rank whose charge exceeds the median by
 * 40% and by twice the fastest hop (at least 1 ms: a hop has to be slow
 * against what the network can do, not only against its neighbours) is
 * named, when its steps waited on transfers more than the threshold (median
 * over the window); lateness_ms is then that wait. */
straggler_t straggler_window_hops(const double *probes, const double *hop, int P, int K, double threshold_ms,
                                  long *counts);

/* A window's verdict stands when the previous window named the same rank
 * with the same cause, at the threshold or at half of it (`relaxed`): a
 * host that slows one vCPU for a few seconds makes one window's rank
 * really late (a CI run named a healthy rank so in 2 of 10 records across
 * nodes), a throttle or a slow link persists. A rank once named stays
 * named while a window names it at half the threshold, and one dropped for
 * a single window (a throttled rank that was not late in it: measured, the
 * throttle itself was descheduled) is named again at once when the next
 * window names it. Returns the verdict to report (none while unconfirmed);
 * counts[r * 3 + cause] (if not NULL) gains the K steps of a reported
 * window, and at the first confirmation those of the window that first saw
 * it. tr starts zeroed. */
typedef struct straggler_track {
    straggler_t prev;         /* the previous window's verdict at the threshold */
    straggler_t prev_relaxed; /* ... and at half of it */
    straggler_t named;        /* the verdict reported last (no cause: none yet) */
    int since;                /* windows since it was reported (0: the previous one) */
    int prev_k;               /* the previous window's steps */
} straggler_track_t;
straggler_t straggler_confirm(straggler_track_t *tr, straggler_t now, straggler_t relaxed, int K, long *counts);

#endif
