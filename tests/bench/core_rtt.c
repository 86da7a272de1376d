/* core-rtt: the round trip of a cache line between two CPUs, the floor under
 * every shared-memory hand-off (a flag written by one core, read by the other).
 *
 *   core-rtt [-a CPU] [-b CPU] [-n ROUNDS] [-t SECONDS]
 *
 * Two threads pinned to CPUs a and b (default 0 and 1) pass a counter back and
 * forth through two lines of one page; prints the median round trip of
 * ROUNDS (default 20000) in microseconds. With -t, one line every 0.25 s for
 * that long: on a VM whose vCPUs the host moves between its cores, the round
 * trip changes by 4-15x (0.03 us on sibling threads, 0.1 us on one core
 * complex, 0.4 us across), which is what makes shared-memory collectives
 * fast or slow in a run. Spins (two threads on two CPUs), so not for CPUs
 * that other work is using. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINE 64
#define SAMPLE 100 /* round trips per timed sample */

typedef struct {
    _Alignas(LINE) _Atomic long ping;
    _Alignas(LINE) _Atomic long pong;
    _Alignas(LINE) _Atomic int stop;
} lines_t;

static lines_t L;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    return pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static void *echo(void *arg) {
    const int cpu = *(const int *)arg;
    if (pin(cpu)) fprintf(stderr, "core-rtt: cannot pin to CPU %d; running unpinned\n", cpu);
    for (long last = 0; !atomic_load_explicit(&L.stop, memory_order_relaxed);) {
        const long v = atomic_load_explicit(&L.ping, memory_order_acquire);
        if (v == last) {
            relax();
            continue;
        }
        atomic_store_explicit(&L.pong, v, memory_order_release);
        last = v;
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median over samples of SAMPLE round trips each, in microseconds. */
static double measure(long rounds, long *seq, double *buf) {
    const long n = rounds / SAMPLE > 0 ? rounds / SAMPLE : 1;
    for (long s = 0; s < n; s++) {
        const double t0 = now_s();
        for (int i = 0; i < SAMPLE; i++) {
            const long v = ++*seq;
            atomic_store_explicit(&L.ping, v, memory_order_release);
            while (atomic_load_explicit(&L.pong, memory_order_acquire) != v) relax();
        }
        buf[s] = 1e6 * (now_s() - t0) / SAMPLE;
    }
    qsort(buf, (size_t)n, sizeof *buf, cmp);
    return buf[n / 2];
}

static long number(const char *flag, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    const long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "core-rtt: %s '%s': expected a whole number from %ld to %ld\n", flag, s, lo, hi);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    int a = 0, b = 1, opt;
    long rounds = 20000, seconds = 0;
    const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    while ((opt = getopt(argc, argv, "a:b:n:t:h")) != -1) {
        switch (opt) {
        case 'a': a = (int)number("-a", optarg, 0, ncpu - 1); break;
        case 'b': b = (int)number("-b", optarg, 0, ncpu - 1); break;
        case 'n': rounds = number("-n", optarg, 1, 100000000); break;
        case 't': seconds = number("-t", optarg, 1, 3600); break;
        default:
            fprintf(stderr, "usage: core-rtt [-a CPU] [-b CPU] [-n ROUNDS] [-t SECONDS]\n");
            return opt == 'h' ? 0 : 2;
        }
    }
    if (a == b) {
        fprintf(stderr, "core-rtt: -a and -b name the same CPU (%d): the round trip is between two\n", a);
        return 2;
    }
    double *buf = malloc((size_t)(rounds / SAMPLE + 1) * sizeof *buf);
    if (!buf) {
        fprintf(stderr, "core-rtt: out of memory\n");
        return 1;
    }
    if (pin(a)) fprintf(stderr, "core-rtt: cannot pin to CPU %d; running unpinned\n", a);
    pthread_t t;
    if (pthread_create(&t, NULL, echo, &b)) {
        fprintf(stderr, "core-rtt: cannot start the second thread\n");
        return 1;
    }
    long seq = 0;
    measure(SAMPLE, &seq, buf); /* the echo thread starting */
    if (!seconds) {
        printf("core-rtt: CPU %d <-> %d: %.3f us round trip (median of %ld samples of %d)\n", a, b,
               measure(rounds, &seq, buf), rounds / SAMPLE > 0 ? rounds / SAMPLE : 1, SAMPLE);
    } else {
        const double start = now_s();
        for (double next = start; now_s() - start < (double)seconds; next += 0.25) {
            while (now_s() < next) usleep(1000);
            printf("%7.2f s  %.3f us\n", now_s() - start, measure(rounds, &seq, buf));
            fflush(stdout);
        }
    }
    atomic_store(&L.stop, 1);
    pthread_join(t, NULL);
    free(buf);
    return 0;
}
