/* coll-bench's command line, parsed without side effects (no MPI, no exit),
 * so tests/fuzz can run it on any input. */
#ifndef BENCH_ARGS_H
#define BENCH_ARGS_H

#include <stddef.h>

#include "coll.h"

typedef enum { O_ALLREDUCE, O_REDUCE_SCATTER, O_ALLGATHER, O_BROADCAST, O_REDUCE, NOPS } bop_t;
extern const char *const bench_op_names[NOPS];

typedef struct bench_args {
    bop_t op;
    coll_dtype_t dt;
    coll_op_t redop;
    int algo, base; /* base < 0: no -x; BENCH_BASE_LIMIT: -x limit */
    int checkit, inplace, repeats, iters, warmup, gpu;
    int memalloc; /* -m 1: buffers from coll_mem_alloc */
    int fresh;    /* -F 1: inputs rewritten before every call */
    size_t minb, maxb;
    double factor;
} bench_args_t;

#define BENCH_MAX_REPEATS 1000
/* -x limit: the minimal zero-copy exchange (limit.h) as the baseline */
#define BENCH_BASE_LIMIT 1000

/* Fills a from argv (which --device handling may reorder). Returns 0 to run,
 * 1 when help was asked for, -1 with the reason in why for bad usage. */
int bench_args_parse(int argc, char **argv, bench_args_t *a, char *why, size_t len);

#endif
