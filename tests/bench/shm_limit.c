/* shm-limit: the reference for libcoll's shared-memory all-reduce (issue 11),
 * a minimal zero-copy two-shot exchange at 2 ranks and nothing else
 * (limit.h says what it does):
 *
 *   mpirun -np 2 shm-limit [-b MIN] [-e MAX] [-f FACTOR] [-n ITERS] [-R REPEATS]
 *
 * Prints float32 sum all-reduce time and busbw per size, the median of
 * REPEATS loops of ITERS calls (the slower rank's), in coll-bench's columns.
 * `coll-bench -x limit` times the same exchange interleaved with libcoll's. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "limit.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* "64K", "256M", "1G", plain bytes */
static size_t parse_bytes(const char *s) {
    char *end;
    size_t v = strtoull(s, &end, 0);
    switch (*end) {
    case 'k': case 'K': return v << 10;
    case 'm': case 'M': return v << 20;
    case 'g': case 'G': return v << 30;
    default: return v;
    }
}

static int cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    size_t minb = 8, maxb = (size_t)256 << 20;
    double factor = 4;
    int iters = 10, repeats = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-b")) minb = parse_bytes(argv[i + 1]);
        else if (!strcmp(argv[i], "-e")) maxb = parse_bytes(argv[i + 1]);
        else if (!strcmp(argv[i], "-f")) factor = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "-n")) iters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-R")) repeats = atoi(argv[i + 1]);
    }
    limit_t L;
    if (minb < 8 || maxb < minb || factor <= 1 || iters < 1 || repeats < 1 || repeats > 100 || limit_open(&L, maxb)) {
        if (rank == 0) fprintf(stderr, "shm-limit: needs 2 ranks on one node and sane -b/-e/-f/-n/-R\n");
        MPI_Finalize();
        return 1;
    }
    if (rank == 0)
        printf("# shm-limit: minimal zero-copy two-shot all-reduce, float32 sum, 2 ranks, iters %d x %d repeats "
               "(median)\n# %12s %12s %10s %8s\n",
               iters, repeats, "bytes", "count", "time_us", "busbw");
    for (size_t bytes = minb; bytes <= maxb; bytes = (size_t)((double)bytes * factor)) {
        const size_t n = bytes / sizeof(float);
        double t[100];
        for (int r = -1; r < repeats; r++) { /* r = -1: warm-up */
            MPI_Barrier(MPI_COMM_WORLD);
            const double t0 = now();
            for (int i = 0; i < iters; i++) limit_allreduce(&L, bytes);
            double dt = (now() - t0) / iters, slow;
            MPI_Allreduce(&dt, &slow, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
            if (r >= 0) t[r] = slow;
        }
        qsort(t, (size_t)repeats, sizeof *t, cmp);
        const double med = t[repeats / 2];
        if (rank == 0) printf("  %12zu %12zu %10.2f %8.3f\n", bytes, n, 1e6 * med, (double)bytes / med / 1e9);
        fflush(stdout);
    }
    limit_close(&L);
    MPI_Finalize();
    return 0;
}
