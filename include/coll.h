/*
 * coll.h - collectives for MPI programs: ring all-reduce, reduce-scatter,
 * all-gather, broadcast, reduce and barrier over MPI point-to-point, plus a
 * latency-optimal algorithm for small messages and the MPI library's own
 * collectives as a baseline.
 *
 * Usage: after MPI_Init (MPI_Init_thread with MPI_THREAD_MULTIPLE if you use
 * the non-blocking calls, see below), create a communicator with
 * coll_comm_init() and call the collectives on it. Link with libcoll
 * (`pkg-config --cflags --libs coll`).
 *
 * Conventions (taken from NCCL):
 *  - Every call that can fail returns a coll_result_t; coll_strerror() gives
 *    the code's text and coll_last_error() the message of the last failure on
 *    a communicator, naming the argument or the remote rank at fault.
 *  - Every collective has the shape (sendbuf, recvbuf, count, dtype, op, comm).
 *    Counts are element counts of type size_t; counts above INT_MAX work.
 *  - Every rank of the communicator must call the same collectives in the
 *    same order with matching count, dtype, op and root (as in MPI). With
 *    COLL_CHECK=1 in the environment the library verifies this before each
 *    call and returns COLL_ERR_MISMATCH on every rank instead of hanging.
 *  - Buffers belong to the caller; the library never allocates them. Results
 *    are bitwise identical on every rank (each element is reduced once, or in
 *    the same order everywhere).
 *
 * In-place rules:
 *  - allreduce, reduce:  in-place when sendbuf == recvbuf.
 *  - reduce_scatter:     sendbuf holds size*recvcount elements, recvbuf
 *                        recvcount; in-place when
 *                        recvbuf == sendbuf + rank*recvcount elements.
 *  - allgather:          recvbuf holds size*sendcount elements; in-place
 *                        when sendbuf == recvbuf + rank*sendcount elements.
 *  Any other overlap of sendbuf and recvbuf is rejected (COLL_ERR_INVALID_ARG).
 *  For coll_reduce, recvbuf is used only on the root and may be NULL elsewhere.
 *
 * Threads: a coll_comm_t may be used by one application thread at a time.
 * Non-blocking calls (coll_i*) are executed in issue order by a progress
 * thread that the communicator starts at its first non-blocking call, so they
 * advance while the caller computes; this needs MPI_THREAD_MULTIPLE. Under a
 * lower thread level they still return correct results, but complete inside
 * the call that starts them (no overlap), and COLL_DEBUG=WARN says so once.
 *
 * Environment (read once, at the first coll_comm_init):
 *  COLL_ALGO=auto|ring|rd|native|nccl|shm|hier   algorithm (default auto)
 *  COLL_DEBUG=WARN|INFO|TRACE      logging to stderr (default: silent)
 *  COLL_CHECK=0|1                  verify call signatures agree across ranks
 *  COLL_TIMEOUT=SECONDS            fail a wait after this long (0 = never,
 *                                  the default); the comm is then unusable
 *  COLL_CHUNK_BYTES, COLL_NET_CHUNK_BYTES, COLL_PIPELINE_DEPTH, COLL_RD_MAX_BYTES,
 *  COLL_MAX_MSG_BYTES              tunables, see docs/COLLECTIVES.md
 */
#ifndef COLL_H
#define COLL_H

#include <stddef.h>
#include <stdint.h>
#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

#define COLL_VERSION_MAJOR 0
#define COLL_VERSION_MINOR 1

typedef struct coll_comm *coll_comm_t;       /* opaque */
typedef struct coll_request *coll_request_t; /* opaque */

typedef enum {
    COLL_SUCCESS = 0,
    COLL_ERR_INVALID_ARG = 1, /* a bad argument; the message names it */
    COLL_ERR_MPI = 2,         /* an MPI call failed */
    COLL_ERR_NO_MEMORY = 3,   /* an allocation failed */
    COLL_ERR_TIMEOUT = 4,     /* a peer did not answer within COLL_TIMEOUT */
    COLL_ERR_MISMATCH = 5,    /* ranks called with different arguments */
    COLL_ERR_UNSUPPORTED = 6, /* combination not supported */
    COLL_ERR_INTERNAL = 7,    /* a bug in libcoll */
    COLL_NUM_RESULTS
} coll_result_t;

typedef enum {
    COLL_FLOAT32 = 0,
    COLL_FLOAT64,
    COLL_FLOAT16,  /* IEEE binary16; reduced in float32 */
    COLL_BFLOAT16, /* bfloat16; reduced in float32 */
    COLL_INT32,
    COLL_INT64,
    COLL_UINT8,
    COLL_NUM_DTYPES
} coll_dtype_t;

typedef enum {
    COLL_SUM = 0,
    COLL_PROD,
    COLL_MIN,
    COLL_MAX,
    COLL_AVG, /* sum, divided once by the rank count at the end (integer
                 types: truncating division) */
    COLL_NUM_OPS
} coll_op_t;

typedef enum {
    COLL_ALGO_AUTO = 0, /* choose by message size and rank count */
    COLL_ALGO_RING,     /* bandwidth-optimal, chunk-pipelined ring/chain */
    COLL_ALGO_RD,       /* latency-optimal: recursive doubling, trees */
    COLL_ALGO_NATIVE,   /* the MPI library's own collective (baseline) */
    COLL_ALGO_NCCL,     /* NCCL, on device buffers (a CUDA build, one GPU per rank) */
    COLL_ALGO_SHM,      /* shared memory between the ranks of one node (a communicator
                           spanning nodes, or one rank, runs the point-to-point ones) */
    COLL_ALGO_HIER,     /* hierarchical, for communicators spanning nodes with as many ranks
                           on each: shared memory inside each node, our point-to-point
                           algorithms across nodes (all-reduce, broadcast, reduce, barrier;
                           reduce-scatter and all-gather, and unequal nodes, run the flat
                           algorithms; a communicator on one node runs shm) */
    COLL_NUM_ALGOS
} coll_algo_t;

/* Communicator lifecycle. coll_comm_init is collective over mpi_comm and
 * duplicates it, so the caller's own traffic on mpi_comm never mixes with
 * ours. coll_comm_destroy waits for outstanding non-blocking calls; it is
 * NULL-safe and must be called before MPI_Finalize. */
coll_result_t coll_comm_init(coll_comm_t *comm, MPI_Comm mpi_comm);
coll_result_t coll_comm_destroy(coll_comm_t comm);
int coll_comm_rank(coll_comm_t comm); /* -1 for an invalid comm */
int coll_comm_size(coll_comm_t comm); /* -1 for an invalid comm */
/* Ranks of comm on this rank's node (sharing its memory), this one
 * included; -1 for an invalid comm. Learned at coll_comm_init, so asking
 * costs no communication. */
int coll_comm_local_size(coll_comm_t comm);
/* Bytes this rank has sent on comm since coll_comm_init (a running total,
 * any thread; difference two readings for a step's traffic). Our algorithms'
 * messages are counted as posted; for COLL_ALGO_NATIVE and COLL_ALGO_NCCL,
 * whose messages libcoll does not see, what a ring would send is counted
 * (all-reduce 2(P-1)/P of the buffer). 0 for an invalid comm. */
uint64_t coll_comm_bytes_sent(coll_comm_t comm);

/* ---- Flight recorder ----
 * Every communicator keeps a ring buffer of its last N collectives
 * (COLL_TRACE=N, default 2000; COLL_TRACE=0 turns it off): the sequence
 * number (issue order, so the same call has the same number on every rank),
 * kind, count, dtype, op, algorithm, root, the caller's tag, the wall-clock
 * times it was called, started and ended, its state (queued, running, done,
 * failed) and, for each transfer it waited on, the peer and how long. It is
 * written as JSON lines to DIR/coll-trace-r<rank>-c<comm>.jsonl, DIR being
 * COLL_TRACE_DIR or coll_trace_set_dir's (no directory: nothing is written),
 * when a call times out or fails, when COLL_CHECK finds arguments that differ
 * between ranks, on a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT,
 * SIGTERM: written, then the previous handler or the default action runs),
 * and on SIGUSR1 (the job goes on). Survivors of a failure write theirs
 * whatever happened to the culprit; launch/trace-report merges them and
 * names the rank that is missing, late or out of step. <comm> numbers the
 * process's communicators in creation order. */
/* A label for the calls issued after it on comm (31 characters kept), e.g.
 * "step 12 bucket 3/4"; "" clears it. */
coll_result_t coll_comm_set_tag(coll_comm_t comm, const char *tag);
void coll_trace_set_dir(const char *dir); /* overrides COLL_TRACE_DIR; NULL or "": no dumps */
/* Writes comm's record now (reason goes into the file's header). */
coll_result_t coll_trace_dump(coll_comm_t comm, const char *reason);
/* Seconds this rank has waited on each peer's transfers (wait_s[comm size]),
 * and of those on its sends to each peer (send_s: the back-pressure of that
 * hop; a pipelined ring makes every rank wait about equally on receives, so
 * only the sends tell a slow hop), since the communicator was made or the
 * last reset (reset = 1 zeroes the totals after reading). Either array may
 * be NULL. Kept while the flight recorder is on (COLL_TRACE > 0, the
 * default); with COLL_TRACE=0 nothing is timed and they stay 0. */
coll_result_t coll_comm_peer_waits(coll_comm_t comm, double *wait_s, double *send_s, int reset);

/* Memory that the ranks of comm on the same node read directly, as
 * ncclMemAlloc's memory is: a collective given such buffers (COLL_ALGO_SHM,
 * or auto where it picks shm) reads and writes the peers' buffers in place
 * instead of copying them through a shared workspace (zero-copy; all-reduce
 * today, the other collectives still copy). Any other buffer works as
 * before. Not collective: each rank allocates its own, of any size, and may
 * pass it with ordinary buffers on other ranks. The memory is shared with
 * the node's peers of comm (they may read it during this rank's calls), is
 * zeroed, page-aligned, and lives until coll_mem_free or coll_comm_destroy.
 * coll_mem_free of a pointer that coll_mem_alloc did not return for comm is
 * COLL_ERR_INVALID_ARG; NULL is a no-op. */
coll_result_t coll_mem_alloc(coll_comm_t comm, size_t bytes, void **ptr);
coll_result_t coll_mem_free(coll_comm_t comm, void *ptr);

/* The node's view of coll_mem_alloc buffers, as MPI_Win_shared_query gives
 * for a shared window (and nvshmem_ptr on a GPU node). Collective over
 * comm: each rank passes one of its coll_mem_alloc buffers, or a pointer
 * into one, or NULL; peers (size(comm) entries) receives, for every rank q,
 * a pointer valid in this process to what q passed, or NULL where q passed
 * NULL or its memory cannot be mapped here (comm spans nodes, or shared
 * memory is unavailable: coll_comm_local_size(comm) < size). peers[rank] is
 * ptr. The views are mapped read-write and live until coll_comm_destroy; a
 * rank must not free a buffer that peers still use. Accesses through them
 * are ordinary memory accesses, ordered by the caller with a collective
 * (coll_barrier, or any call that needs every rank's data). A ptr that
 * coll_mem_alloc did not allocate on comm is COLL_ERR_INVALID_ARG on every
 * rank (naming the rank); a view that cannot be mapped is an error on the
 * rank that tried. */
coll_result_t coll_mem_map_peers(coll_comm_t comm, void *ptr, void **peers);

/* Algorithm for later calls on this comm (overrides COLL_ALGO). */
coll_result_t coll_comm_set_algorithm(coll_comm_t comm, coll_algo_t algo);
coll_result_t coll_comm_get_algorithm(coll_comm_t comm, coll_algo_t *algo);
/* Seconds a wait may block before COLL_ERR_TIMEOUT (0 = forever). */
coll_result_t coll_comm_set_timeout(coll_comm_t comm, double seconds);

/* Device buffers (GPU memory, recognised with cudaPointerGetAttributes when
 * the program has loaded the CUDA runtime before coll_comm_init or this
 * call). `cuda_stream` is a cudaStream_t: later collectives with device
 * buffers start after the work queued on it when they are called, as NCCL's
 * stream argument orders them, so a caller need not synchronise its GPU
 * before handing over a gradient. NULL: the inputs must be ready when the
 * call is made. Every call still completes on the host (coll_wait returns
 * when the results are in place). COLL_ALGO_NCCL runs NCCL; the other
 * algorithms run on device buffers by staging them through page-locked host
 * memory; `auto` picks NCCL when every rank has its own GPU. */
coll_result_t coll_comm_set_stream(coll_comm_t comm, void *cuda_stream);

/* Blocking collectives. */
coll_result_t coll_allreduce(const void *sendbuf, void *recvbuf, size_t count,
                             coll_dtype_t dtype, coll_op_t op, coll_comm_t comm);
coll_result_t coll_reduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                  coll_dtype_t dtype, coll_op_t op, coll_comm_t comm);
coll_result_t coll_allgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                             coll_dtype_t dtype, coll_comm_t comm);
coll_result_t coll_broadcast(void *buf, size_t count, coll_dtype_t dtype, int root,
                             coll_comm_t comm);
coll_result_t coll_reduce(const void *sendbuf, void *recvbuf, size_t count,
                          coll_dtype_t dtype, coll_op_t op, int root, coll_comm_t comm);
coll_result_t coll_barrier(coll_comm_t comm);

/* Non-blocking collectives: same arguments, plus *req, which stays valid
 * until coll_wait (or a coll_test that reports done) frees it. Buffers must
 * not be touched until then. */
coll_result_t coll_iallreduce(const void *sendbuf, void *recvbuf, size_t count,
                              coll_dtype_t dtype, coll_op_t op, coll_comm_t comm,
                              coll_request_t *req);
coll_result_t coll_ireduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                   coll_dtype_t dtype, coll_op_t op, coll_comm_t comm,
                                   coll_request_t *req);
coll_result_t coll_iallgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                              coll_dtype_t dtype, coll_comm_t comm, coll_request_t *req);
coll_result_t coll_ibroadcast(void *buf, size_t count, coll_dtype_t dtype, int root,
                              coll_comm_t comm, coll_request_t *req);
coll_result_t coll_ireduce(const void *sendbuf, void *recvbuf, size_t count,
                           coll_dtype_t dtype, coll_op_t op, int root, coll_comm_t comm,
                           coll_request_t *req);

/* Blocks until req is complete, frees it and returns the operation's result. */
coll_result_t coll_wait(coll_request_t req);
/* As coll_wait, and reports when the operation started and finished
 * executing (CLOCK_MONOTONIC seconds; either pointer may be NULL): the time
 * it really occupied, as opposed to the time the caller waited for it. */
coll_result_t coll_wait_timed(coll_request_t req, double *start_s, double *end_s);
/* Sets *done; when it is 1, req has been freed and the return value is the
 * operation's result. */
coll_result_t coll_test(coll_request_t req, int *done);

const char *coll_strerror(coll_result_t r);
/* Text of the last failure on this comm ("" when none; for an invalid comm,
 * the text of the last failure that had no valid comm to attach to). */
const char *coll_last_error(coll_comm_t comm);

/* Names used by tools and the environment: "float32", "sum", "ring", ...
 * The parse functions return -1 for an unknown name. */
const char *coll_dtype_name(coll_dtype_t dtype);
const char *coll_op_name(coll_op_t op);
const char *coll_algo_name(coll_algo_t algo);
size_t coll_dtype_size(coll_dtype_t dtype); /* 0 for an unknown dtype */
int coll_dtype_parse(const char *name);
int coll_op_parse(const char *name);
int coll_algo_parse(const char *name);

#ifdef __cplusplus
}
#endif
#endif /* COLL_H */
