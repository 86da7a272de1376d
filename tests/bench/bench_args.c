#include "bench_args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const bench_op_names[NOPS] = {"allreduce", "reduce_scatter", "allgather", "broadcast", "reduce"};

#define BAD(...) do { snprintf(why, len, __VA_ARGS__); return -1; } while (0)

/* bytes with optional K/M/G (and B); at most 2^50 */
static int parse_size(const char *s, const char *flag, size_t *out, char *why, size_t len) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0)) BAD("%s: '%s' is not a size (bytes, with K/M/G)", flag, s);
    switch (*end) {
    case 'k': case 'K': v *= 1024; end++; break;
    case 'm': case 'M': v *= 1024 * 1024; end++; break;
    case 'g': case 'G': v *= 1024.0 * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end == 'B' || *end == 'b') end++;
    if (*end) BAD("%s: '%s' is not a size (bytes, with K/M/G)", flag, s);
    if (v > 0x1p50) BAD("%s: '%s' is too large", flag, s);
    *out = (size_t)v;
    return 0;
}

static int parse_int(const char *s, const char *flag, long lo, long hi, int *out, char *why, size_t len) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) BAD("%s: '%s' must be an integer in %ld..%ld", flag, s, lo, hi);
    *out = (int)v;
    return 0;
}

int bench_args_parse(int argc, char **argv, bench_args_t *a, char *why, size_t len) {
    *a = (bench_args_t){.op = O_ALLREDUCE, .dt = COLL_FLOAT32, .redop = COLL_SUM, .algo = COLL_ALGO_AUTO, .base = -1,
                        .checkit = 1, .repeats = 5, .iters = 20, .warmup = 5, .minb = 8, .maxb = 64 * 1024 * 1024,
                        .factor = 2};
    /* --device cpu|cuda, the long form of -G, is taken out before getopt */
    for (int i = 1; i < argc; i++) {
        if (!argv[i] || strcmp(argv[i], "--device")) continue;
        if (i + 1 >= argc || (strcmp(argv[i + 1], "cuda") && strcmp(argv[i + 1], "cpu")))
            BAD("--device: expected cpu or cuda");
        a->gpu = !strcmp(argv[i + 1], "cuda");
        memmove(argv + i, argv + i + 2, (size_t)(argc - i - 1) * sizeof *argv); /* keeps argv[argc] == NULL */
        argc -= 2, i--;
    }
    int c, v;
    opterr = 0;
    optind = 0; /* a full reset (glibc), so the parser can run more than once */
    while ((c = getopt(argc, argv, "o:d:r:a:b:e:f:n:w:c:i:R:x:m:F:hG")) != -1) {
        switch (c) {
        case 'o':
            for (v = 0; v < NOPS && strcmp(optarg, bench_op_names[v]); v++) {}
            if (v == NOPS) BAD("-o: expected allreduce|reduce_scatter|allgather|broadcast|reduce");
            a->op = (bop_t)v;
            break;
        case 'd':
            if ((v = coll_dtype_parse(optarg)) < 0) BAD("-d: expected float32|float64|float16|bfloat16|int32|int64|uint8");
            a->dt = (coll_dtype_t)v;
            break;
        case 'r':
            if ((v = coll_op_parse(optarg)) < 0) BAD("-r: expected sum|prod|min|max|avg");
            a->redop = (coll_op_t)v;
            break;
        case 'a':
            if ((a->algo = coll_algo_parse(optarg)) < 0) BAD("-a: expected auto|ring|rd|native|nccl|shm");
            break;
        case 'x':
            if (!strcmp(optarg, "limit")) a->base = BENCH_BASE_LIMIT;
            else if ((a->base = coll_algo_parse(optarg)) < 0) BAD("-x: expected auto|ring|rd|native|nccl|shm|limit");
            break;
        case 'b': if (parse_size(optarg, "-b", &a->minb, why, len)) return -1; break;
        case 'e': if (parse_size(optarg, "-e", &a->maxb, why, len)) return -1; break;
        case 'f': {
            char *end;
            a->factor = strtod(optarg, &end);
            if (end == optarg || *end || !(a->factor > 1) || !(a->factor <= 1e6))
                BAD("-f: the factor must be a number above 1 (at most 1e6)");
            break;
        }
        case 'n': if (parse_int(optarg, "-n", 1, 1000000000, &a->iters, why, len)) return -1; break;
        case 'w': if (parse_int(optarg, "-w", 0, 1000000000, &a->warmup, why, len)) return -1; break;
        case 'c': if (parse_int(optarg, "-c", 0, 1, &a->checkit, why, len)) return -1; break;
        case 'i': if (parse_int(optarg, "-i", 0, 1, &a->inplace, why, len)) return -1; break;
        case 'm': if (parse_int(optarg, "-m", 0, 1, &a->memalloc, why, len)) return -1; break;
        case 'F': if (parse_int(optarg, "-F", 0, 1, &a->fresh, why, len)) return -1; break;
        case 'R': if (parse_int(optarg, "-R", 1, BENCH_MAX_REPEATS, &a->repeats, why, len)) return -1; break;
        case 'G': a->gpu = 1; break;
        case 'h': return 1;
        default: BAD("unknown option or missing value: -%c", optopt ? optopt : '?');
        }
    }
    if (optind < argc) BAD("unexpected argument '%s'", argv[optind]);
    if (a->minb > a->maxb) BAD("-b must not exceed -e");
    if (a->base == BENCH_BASE_LIMIT && (a->op != O_ALLREDUCE || a->dt != COLL_FLOAT32 || a->redop != COLL_SUM || a->gpu))
        BAD("-x limit: the limit is a float32 sum all-reduce on host memory");
    return 0;
}
