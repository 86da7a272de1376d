/* The limit for libcoll's shared-memory all-reduce (issue 11): a minimal
 * zero-copy two-shot float32 sum exchange at 2 ranks and nothing else. Each
 * rank's buffer lives in an MPI shared window, so the peer reads it in
 * place. Per call: publish "input ready"; sum my half of both buffers into
 * mine; publish "reduced"; copy the peer's reduced half into mine; publish
 * "done" (the next call waits for the peer's, so it never overwrites what
 * the peer still reads). Flags only, each on its own cache line; no
 * barrier, no workspace, no copy-in. Used by shm-limit and by coll-bench's
 * `-x limit` (timed interleaved with ours, so both see the same phase of a
 * noisy host). */
#ifndef BENCH_LIMIT_H
#define BENCH_LIMIT_H
#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    MPI_Comm node;
    MPI_Win win;
    char *mine, *peer; /* flags, then the buffer */
    uint64_t seq;
} limit_t;

/* Collective over MPI_COMM_WORLD: 0, or -1 where the world is not 2 ranks
 * on one node (nothing allocated then). Buffers of up to maxb bytes. */
int limit_open(limit_t *l, size_t maxb);
/* One all-reduce of bytes (float32 sum, in place in the rank's window). */
void limit_allreduce(limit_t *l, size_t bytes);
/* This rank's buffer (what limit_allreduce reduces in place). */
char *limit_buffer(limit_t *l);
void limit_close(limit_t *l);

#endif
