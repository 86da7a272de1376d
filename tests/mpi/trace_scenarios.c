/* Scenarios for the flight recorder's end-to-end test (tests/e2e/flight.sh):
 *   desync  ten good all-reduces, then rank 0 calls an all-reduce where the
 *           others call a broadcast (run under COLL_CHECK=0, so nothing
 *           stops it), then a barrier: the ranks hang until COLL_TIMEOUT and
 *           write their records (COLL_TRACE_DIR); exits 1.
 *   healthy all-reduces every millisecond for SECONDS, tagged, then exits 0
 *           (the test sends SIGUSR1 meanwhile). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coll.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    coll_comm_t c;
    if (argc < 2 || coll_comm_init(&c, MPI_COMM_WORLD) != COLL_SUCCESS) {
        fprintf(stderr, "usage: trace_scenarios desync|healthy [SECONDS]\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    const int rank = coll_comm_rank(c);
    float buf[1000] = {0};
    if (!strcmp(argv[1], "desync")) {
        for (int i = 0; i < 10; i++) coll_allreduce(buf, buf, 1000, COLL_FLOAT32, COLL_SUM, c);
        coll_comm_set_tag(c, "the odd one");
        coll_result_t r = rank == 0 ? coll_allreduce(buf, buf, 1000, COLL_FLOAT32, COLL_SUM, c)
                                    : coll_broadcast(buf, 1000, COLL_FLOAT32, 0, c);
        if (r == COLL_SUCCESS) r = coll_barrier(c);
        fprintf(stderr, "rank %d: %s\n", rank, coll_last_error(c));
        if (r != COLL_SUCCESS) MPI_Abort(MPI_COMM_WORLD, 1); /* a failed comm cannot be finalised cleanly */
    } else {
        const double end = now() + (argc > 2 ? atof(argv[2]) : 3);
        int go = 1;
        for (long i = 0; go; i++) {
            char tag[32];
            snprintf(tag, sizeof tag, "iteration %ld", i);
            coll_comm_set_tag(c, tag);
            if (coll_allreduce(buf, buf, 1000, COLL_FLOAT32, COLL_SUM, c) != COLL_SUCCESS) return 1;
            go = now() < end;
            nanosleep(&(struct timespec){0, 1000000}, NULL); /* 1 ms of "compute" per iteration */
            if (coll_allreduce(&go, &go, 1, COLL_INT32, COLL_MIN, c) != COLL_SUCCESS) return 1;
        }
    }
    coll_comm_destroy(c);
    MPI_Finalize();
    return 0;
}
