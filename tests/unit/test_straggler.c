/* Unit tests of straggler attribution (src/straggler.c) on hand-made
 * probes with known answers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "straggler.h"

enum { P = 4, K = 12 };
static double pr[P * K * PROBE_FIELDS];

/* every rank computes 10 ms; its sends to its ring successor wait 2 ms */
static void healthy(void) {
    for (int r = 0; r < P; r++)
        for (int k = 0; k < K; k++) {
            double *q = pr + ((size_t)r * K + k) * PROBE_FIELDS;
            q[0] = 0.010 + 1e-5 * ((r * 7 + k * 3) % 5); /* 0-40 us of jitter */
            q[1] = q[3] = 0.002;
            q[2] = (r + 1) % P;
        }
}

static void none_when_healthy(void **st) {
    (void)st;
    healthy();
    straggler_t s = straggler_window(pr, P, K, 0.5, NULL);
    assert_int_equal(s.rank, -1);
    assert_int_equal(s.cause, STRAGGLER_NONE);
}

static void compute_named(void **st) {
    (void)st;
    healthy();
    long counts[P * 3] = {0};
    for (int k = 0; k < K; k++) pr[((size_t)2 * K + k) * PROBE_FIELDS] += 0.003; /* rank 2 computes 3 ms longer */
    straggler_t s = straggler_window(pr, P, K, 0.5, counts);
    assert_int_equal(s.rank, 2);
    assert_int_equal(s.cause, STRAGGLER_COMPUTE);
    assert_true(s.lateness_ms > 2.9 && s.lateness_ms < 3.1);
    assert_int_equal(counts[2 * 3 + STRAGGLER_COMPUTE], K);
}

/* late in only a third of the steps: a transient stall, not a straggler */
static void transient_not_named(void **st) {
    (void)st;
    healthy();
    for (int k = 0; k < K; k += 3) pr[((size_t)1 * K + k) * PROBE_FIELDS] += 0.005;
    assert_int_equal(straggler_window(pr, P, K, 0.5, NULL).rank, -1);
}

/* Across emulated nodes with more ranks than cores: rank 1 (throttled)
 * is last in 8 steps of 12, rank 0 often late by a little; rank 1 is
 * named. When the two are about equally late, nobody is. */
static void late_among_late(void **st) {
    (void)st;
    healthy();
    for (int k = 0; k < K; k++) {
        pr[((size_t)1 * K + k) * PROBE_FIELDS] += k < 8 ? 0.009 : 0.003;
        pr[((size_t)0 * K + k) * PROBE_FIELDS] += k < 8 ? 0.004 : 0.006;
    }
    straggler_t s = straggler_window(pr, P, K, 1.5, NULL);
    assert_int_equal(s.rank, 1);
    assert_int_equal(s.cause, STRAGGLER_COMPUTE);
    for (int k = 0; k < K; k++) pr[((size_t)0 * K + k) * PROBE_FIELDS] += 0.004;
    assert_int_equal(straggler_window(pr, P, K, 1.5, NULL).rank, -1);
}

/* rank 3's link is slow both ways: the hop into it (2 -> 3) and the hop
 * out of it (3 -> 0) back-pressure their senders */
static void link_named(void **st) {
    (void)st;
    healthy();
    for (int k = 0; k < K; k++) {
        double *w2 = pr + ((size_t)2 * K + k) * PROBE_FIELDS, *w3 = pr + ((size_t)3 * K + k) * PROBE_FIELDS;
        w2[1] = w2[3] = 0.020; /* rank 2's sends to 3 */
        w3[1] = w3[3] = 0.020; /* rank 3's sends to 0 */
    }
    straggler_t s = straggler_window(pr, P, K, 0.5, NULL);
    assert_int_equal(s.rank, 3);
    assert_int_equal(s.cause, STRAGGLER_LINK);
}

/* every rank waits long and equally (a uniformly slow network): nobody */
static void uniform_waits_not_named(void **st) {
    (void)st;
    healthy();
    for (int i = 0; i < P * K; i++) pr[i * PROBE_FIELDS + 1] = pr[i * PROBE_FIELDS + 3] = 0.080;
    assert_int_equal(straggler_window(pr, P, K, 0.5, NULL).rank, -1);
}

/* timed hops into 0, 1, 2, 3: rank 2's link is slow, so the hops into 2
 * and out of 2 (into 3) are; nobody is late, the steps wait */
static void link_from_hops(void **st) {
    (void)st;
    healthy();
    for (int i = 0; i < P * K; i++) pr[i * PROBE_FIELDS + 1] = 0.050;
    const double slow[P] = {0.002, 0.0025, 0.016, 0.015}, even[P] = {0.003, 0.002, 0.003, 0.0025};
    straggler_t s = straggler_window_hops(pr, slow, P, K, 5.0, NULL);
    assert_int_equal(s.rank, 2);
    assert_int_equal(s.cause, STRAGGLER_LINK);
    assert_int_equal(straggler_window_hops(pr, even, P, K, 5.0, NULL).rank, -1);
    const double unmeasured[P] = {0.002, -1, 0.016, 0.015};
    assert_int_equal(straggler_window_hops(pr, unmeasured, P, K, 5.0, NULL).cause, STRAGGLER_NONE);
    /* steps that hardly waited: a slow hop that costs nothing is not named */
    for (int i = 0; i < P * K; i++) pr[i * PROBE_FIELDS + 1] = 0.001;
    assert_int_equal(straggler_window_hops(pr, slow, P, K, 5.0, NULL).rank, -1);
}

/* rank 2 computes slowly, 3 ms late against a 5 ms threshold, and was
 * pre-empted during the timed hop, so its hops look slow: not a link */
static void late_rank_not_link(void **st) {
    (void)st;
    healthy();
    for (int i = 0; i < P * K; i++) pr[i * PROBE_FIELDS + 1] = 0.050;
    const double slow[P] = {0.002, 0.0025, 0.016, 0.015};
    for (int k = 0; k < K; k++) pr[((size_t)2 * K + k) * PROBE_FIELDS] += 0.003;
    assert_int_equal(straggler_window_hops(pr, slow, P, K, 5.0, NULL).rank, -1);
    /* rank 3 late instead: rank 2's link is still named */
    for (int k = 0; k < K; k++) pr[((size_t)2 * K + k) * PROBE_FIELDS] -= 0.003, pr[((size_t)3 * K + k) * PROBE_FIELDS] += 0.003;
    straggler_t s = straggler_window_hops(pr, slow, P, K, 5.0, NULL);
    assert_int_equal(s.rank, 2);
    assert_int_equal(s.cause, STRAGGLER_LINK);
}

/* A verdict is reported when the next window repeats it: a host that
 * slows one vCPU for a few seconds makes one window's rank really late,
 * a throttle keeps it late. The done record's counts then include the
 * window that first saw it; a named rank stays named while it is late at
 * half the threshold. */
static void confirmed_next_window(void **st) {
    (void)st;
    straggler_track_t tr = {0};
    long counts[P * 3] = {0};
    const straggler_t none = {-1, STRAGGLER_NONE, 0}, late2 = {2, STRAGGLER_COMPUTE, 3.0}, link1 = {1, STRAGGLER_LINK, 4.0};
    const straggler_t zero = {0, STRAGGLER_COMPUTE, 3.0};
    assert_int_equal(straggler_confirm(&tr, zero, zero, K, counts).rank, -1); /* a zeroed track names nobody */
    assert_int_equal(straggler_confirm(&tr, none, none, K, counts).rank, -1);
    assert_int_equal(straggler_confirm(&tr, late2, late2, K, counts).rank, -1); /* first sight: pending */
    assert_int_equal(straggler_confirm(&tr, none, none, K, counts).rank, -1);   /* gone: a transient */
    assert_int_equal(counts[2 * 3 + STRAGGLER_COMPUTE], 0);
    assert_int_equal(straggler_confirm(&tr, late2, late2, K, counts).rank, -1);
    straggler_t s = straggler_confirm(&tr, late2, late2, K / 2, counts); /* repeated: named, both windows counted */
    assert_int_equal(s.rank, 2);
    assert_int_equal(s.cause, STRAGGLER_COMPUTE);
    assert_true(s.lateness_ms == 3.0);
    assert_int_equal(counts[2 * 3 + STRAGGLER_COMPUTE], K + K / 2);
    assert_int_equal(straggler_confirm(&tr, late2, late2, K, counts).rank, 2); /* still: this window only */
    assert_int_equal(counts[2 * 3 + STRAGGLER_COMPUTE], 2 * K + K / 2);
    /* under the threshold for a window, still late at half of it: kept */
    const straggler_t half2 = {2, STRAGGLER_COMPUTE, 1.2};
    s = straggler_confirm(&tr, none, half2, K, counts);
    assert_int_equal(s.rank, 2);
    assert_true(s.lateness_ms == 1.2);
    assert_int_equal(counts[2 * 3 + STRAGGLER_COMPUTE], 3 * K + K / 2);
    /* not even that: dropped for the window; back in the next, named again at once */
    assert_int_equal(straggler_confirm(&tr, none, none, K, counts).rank, -1);
    assert_int_equal(straggler_confirm(&tr, late2, late2, K, counts).rank, 2);
    assert_int_equal(counts[2 * 3 + STRAGGLER_COMPUTE], 4 * K + K / 2);
    /* two windows away: it has to be seen twice again */
    assert_int_equal(straggler_confirm(&tr, none, none, K, counts).rank, -1);
    assert_int_equal(straggler_confirm(&tr, none, none, K, counts).rank, -1);
    assert_int_equal(straggler_confirm(&tr, late2, none, K, counts).rank, -1);
    assert_int_equal(straggler_confirm(&tr, none, late2, K, counts).rank, -1); /* (relaxed does not keep a pending one) */
    /* the same rank with another cause is another verdict */
    assert_int_equal(straggler_confirm(&tr, (straggler_t){2, STRAGGLER_LINK, 3.0}, none, K, counts).rank, -1);
    assert_int_equal(straggler_confirm(&tr, link1, link1, K, counts).rank, -1);
    assert_int_equal(straggler_confirm(&tr, link1, link1, K, counts).cause, STRAGGLER_LINK);
    assert_int_equal(counts[1 * 3 + STRAGGLER_LINK], 2 * K);
    assert_int_equal(counts[2 * 3 + STRAGGLER_LINK], 0);
    assert_int_equal(counts[2 * 3 + STRAGGLER_COMPUTE], 4 * K + K / 2);
    /* a relaxed verdict alone never starts a name; one followed by a verdict does */
    straggler_track_t fresh = {0};
    assert_int_equal(straggler_confirm(&fresh, none, late2, K, NULL).rank, -1);
    assert_int_equal(straggler_confirm(&fresh, none, late2, K, NULL).rank, -1);
    assert_int_equal(straggler_confirm(&fresh, late2, late2, K, NULL).rank, 2);
    straggler_track_t other = {0};
    assert_int_equal(straggler_confirm(&other, none, link1, K, NULL).rank, -1);
    assert_int_equal(straggler_confirm(&other, late2, late2, K, NULL).rank, -1); /* another rank before */
}

static void one_step(void **st) {
    (void)st;
    double q[2 * PROBE_FIELDS] = {0.010, 0, -1, 0, 0.016, 0, -1, 0};
    straggler_t s = straggler_window(q, 2, 1, 1.0, NULL);
    assert_int_equal(s.rank, 1);
    assert_int_equal(s.cause, STRAGGLER_COMPUTE);
    assert_int_equal(straggler_window(q, 1, 1, 1.0, NULL).rank, -1); /* one rank: nobody to compare */
    assert_string_equal(straggler_cause_name(STRAGGLER_LINK), "link");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(none_when_healthy), cmocka_unit_test(compute_named),
        cmocka_unit_test(transient_not_named), cmocka_unit_test(late_among_late), cmocka_unit_test(link_named),
        cmocka_unit_test(uniform_waits_not_named), cmocka_unit_test(link_from_hops), cmocka_unit_test(late_rank_not_link),
        cmocka_unit_test(confirmed_next_window),
        cmocka_unit_test(one_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
