/* shm-limit: the reference for libcoll's shared-memory all-reduce (issue 11),
 * a minimal zero-copy two-shot exchange at 2 ranks and nothing else:
 *
 *   mpirun -np 2 shm-limit [-b MIN] [-e MAX] [-f FACTOR] [-n ITERS] [-R REPEATS]
 *
 * Each rank's buffer lives in an MPI shared window (MPI_Win_allocate_shared),
 * so the peer reads it in place. Per call: publish "input ready"; sum my half
 * of both buffers into mine; publish "reduced"; copy the peer's reduced half
 * into mine; publish "done" (the next call waits for the peer's, so it never
 * overwrites what the peer still reads). Flags only, on their own cache lines;
 * no barrier, no workspace, no copy-in. Prints float32 sum all-reduce time
 * and busbw per size, the median of REPEATS loops of ITERS calls (the slower
 * rank's), in coll-bench's columns. */
#include <mpi.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { READY, REDUCED, DONE, NFLAGS };
typedef struct {
    _Atomic uint64_t v;
    char pad[128 - sizeof(uint64_t)];
} flag_t;

#define HDR 4096 /* flags, then the buffer (page-aligned) */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void wait_for(flag_t *f, uint64_t v) {
    for (long polls = 0; atomic_load_explicit(&f->v, memory_order_acquire) < v; polls++)
        if (polls > 2000) sched_yield();
}

__attribute__((target_clones("avx2", "default"))) static void add(float *restrict dst, const float *restrict src,
                                                                   size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

/* a plain vector copy: glibc's memcpy uses `rep movsb` at these sizes, which
 * is slow on this machine kind (docs/COLLECTIVES.md); 16-byte vectors, as
 * the baseline ISA has them (32-byte ones built without AVX go through the
 * stack and halved this limit until 2026-12-06) */
typedef char vec16 __attribute__((vector_size(16), aligned(1), may_alias));
static void copy(void *dst, const void *src, size_t bytes) {
    char *d = dst;
    const char *s = src;
    size_t i = 0;
    for (; i + 64 <= bytes; i += 64) {
        vec16 w = *(const vec16 *)(s + i), x = *(const vec16 *)(s + i + 16);
        vec16 y = *(const vec16 *)(s + i + 32), z = *(const vec16 *)(s + i + 48);
        *(vec16 *)(d + i) = w, *(vec16 *)(d + i + 16) = x, *(vec16 *)(d + i + 32) = y, *(vec16 *)(d + i + 48) = z;
    }
    if (i < bytes) memcpy(d + i, s + i, bytes - i);
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
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
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
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    int nsize;
    MPI_Comm_size(node, &nsize);
    if (size != 2 || nsize != 2 || minb < 8 || maxb < minb || factor <= 1 || iters < 1 || repeats < 1 || repeats > 100) {
        if (rank == 0) fprintf(stderr, "shm-limit: needs 2 ranks on one node and sane -b/-e/-f/-n/-R\n");
        MPI_Finalize();
        return 1;
    }
    char *mine, *peer;
    MPI_Win win;
    MPI_Aint psize;
    int disp;
    MPI_Win_allocate_shared((MPI_Aint)(HDR + maxb), 1, MPI_INFO_NULL, node, &mine, &win);
    MPI_Win_shared_query(win, 1 - rank, &psize, &disp, &peer);
    flag_t *my = (flag_t *)mine, *their = (flag_t *)peer;
    memset(mine, 0, HDR + maxb);
    MPI_Barrier(node);
    float *a = (float *)(mine + HDR), *b = (float *)(peer + HDR);
    uint64_t seq = 0;
    if (rank == 0)
        printf("# shm-limit: minimal zero-copy two-shot all-reduce, float32 sum, 2 ranks, iters %d x %d repeats "
               "(median)\n# %12s %12s %10s %8s\n",
               iters, repeats, "bytes", "count", "time_us", "busbw");
    for (size_t bytes = minb; bytes <= maxb; bytes = (size_t)((double)bytes * factor)) {
        const size_t n = bytes / sizeof(float), half = n / 2;
        const size_t lo = rank == 0 ? 0 : half, len = rank == 0 ? half : n - half;
        const size_t plo = rank == 0 ? half : 0, plen = rank == 0 ? n - half : half;
        double t[100];
        for (int r = -1; r < repeats; r++) { /* r = -1: warm-up */
            MPI_Barrier(node);
            const double t0 = now();
            for (int i = 0; i < iters; i++) {
                seq++;
                if (seq > 1) wait_for(&their[DONE], seq - 1);
                atomic_store_explicit(&my[READY].v, seq, memory_order_release);
                wait_for(&their[READY], seq);
                add(a + lo, b + lo, len);
                atomic_store_explicit(&my[REDUCED].v, seq, memory_order_release);
                wait_for(&their[REDUCED], seq);
                copy(a + plo, b + plo, plen * sizeof(float));
                atomic_store_explicit(&my[DONE].v, seq, memory_order_release);
            }
            double dt = (now() - t0) / iters, slow;
            MPI_Allreduce(&dt, &slow, 1, MPI_DOUBLE, MPI_MAX, node);
            if (r >= 0) t[r] = slow;
        }
        qsort(t, (size_t)repeats, sizeof *t, cmp);
        const double med = t[repeats / 2];
        if (rank == 0) printf("  %12zu %12zu %10.2f %8.3f\n", bytes, n, 1e6 * med, (double)bytes / med / 1e9);
        fflush(stdout);
    }
    MPI_Barrier(node);
    MPI_Win_free(&win);
    MPI_Comm_free(&node);
    MPI_Finalize();
    return 0;
}
