/* Internal interfaces of libcoll. Nothing here is exported: every symbol
 * that must be visible across files but not to users is marked COLL_HIDDEN. */
#ifndef COLL_INTERNAL_H
#define COLL_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "coll.h"

#define COLL_HIDDEN __attribute__((visibility("hidden")))

/* ---- tunables (tunables.c): read once from the environment ---- */
typedef enum { COLL_LOG_NONE = 0, COLL_LOG_WARN, COLL_LOG_INFO, COLL_LOG_TRACE } coll_log_level_t;

typedef struct {
    coll_algo_t algo;     /* COLL_ALGO */
    int debug;            /* COLL_DEBUG, a coll_log_level_t */
    int check;            /* COLL_CHECK */
    double timeout;       /* COLL_TIMEOUT, seconds, 0 = none */
    size_t chunk_bytes;   /* COLL_CHUNK_BYTES: ring pipeline chunk */
    size_t net_chunk_bytes; /* COLL_NET_CHUNK_BYTES: the same, communicators spanning nodes */
    int depth;            /* COLL_PIPELINE_DEPTH: chunks in flight per direction */
    size_t rd_max_bytes;  /* COLL_RD_MAX_BYTES: auto uses rd up to this size */
    size_t max_msg_bytes; /* COLL_MAX_MSG_BYTES: largest single MPI message */
    int spin;             /* COLL_SPIN: polls before a wait starts yielding */
    int spin_oversub;     /* COLL_SPIN_OVERSUBSCRIBED: the same, more ranks than cores */
    int shm_spin_oversub; /* COLL_SHM_SPIN_OVERSUBSCRIBED: the same in shared-memory waits */
    int trace;            /* COLL_TRACE: flight recorder entries per comm, 0 = off */
    size_t shm_chunk_bytes;   /* COLL_SHM_CHUNK_BYTES: a shared-memory round's region */
    size_t shm_oneshot_bytes; /* COLL_SHM_ONESHOT_BYTES: one-shot all-reduce up to this */
    int shm_cma;              /* COLL_SHM_CMA: single copies between ranks where allowed */
    size_t shm_nt_max_bytes;  /* COLL_SHM_NT_MAX_BYTES: cores close, two-shot copy-ins and the 2-rank
                                 reduce's stream up to this use non-temporal stores (SIZE_MAX,
                                 the default: by the CPU, struct coll_shm's nt_max) */
    size_t shm_bcast_nt_min_bytes; /* COLL_SHM_BCAST_NT_MIN_BYTES: a broadcast root copies in at least this
                                      with non-temporal stores (0: an eighth of the shared L3, at least 4 MiB) */
    int shm_far;              /* COLL_SHM_FAR: -1 measure whether the cores are far apart, 0 no, 1 yes,
                                 2 (tests) yes and no by turns, each rank at its own pace */
    size_t shm_cma_min_bytes; /* COLL_SHM_CMA_MIN_BYTES: 2-rank broadcast and all-gather above it copy
                                 between the ranks' buffers */
    int node_size;            /* COLL_NODE_SIZE: ranks per node for `hier` (0: the real nodes) */
    size_t hier_segment_bytes; /* COLL_HIER_SEGMENT_BYTES: hier all-reduce pipeline segment, 0 = none */
} coll_tunables_t;

COLL_HIDDEN extern coll_tunables_t coll_tun;
/* Reads the environment once; returns an error text for a bad value. */
COLL_HIDDEN const char *coll_tunables_load(void);

/* ---- operation descriptors ---- */
typedef enum {
    COLL_K_ALLREDUCE = 0,
    COLL_K_REDUCE_SCATTER,
    COLL_K_ALLGATHER,
    COLL_K_BROADCAST,
    COLL_K_REDUCE,
    COLL_K_BARRIER,
    COLL_NUM_KINDS
} coll_kind_t;

typedef struct {
    coll_kind_t kind;
    const void *sendbuf;
    void *recvbuf; /* broadcast: the buffer */
    size_t count;  /* reduce_scatter: recvcount; allgather: sendcount */
    coll_dtype_t dtype;
    coll_op_t op;
    int root;
    coll_algo_t algo; /* resolved: never AUTO */
    int device;       /* a buffer is in GPU memory (cuda.c) */
    void *ready;      /* device: event marking the inputs ready, or NULL */
    struct coll_trace_entry *tr; /* its flight-recorder entry, or NULL (trace.c) */
} coll_args_t;

COLL_HIDDEN const char *coll_kind_name(coll_kind_t k);

/* ---- point-to-point transport (the only thing algorithms talk to) ----
 * A transport moves bytes between two ranks of a context. Each context
 * picks one per peer when it is opened (coll_ctx_open: the first transport
 * of coll_transports that reaches the peer), and algorithms post through
 * coll_tp_isend/irecv, which go to the peer's transport; a request then
 * remembers its transport for test and cancel. Requests are caller-owned
 * structs so that posting allocates nothing; what a transport keeps per
 * request lives in the opaque `priv` (no MPI type here). A transport may
 * split one request into several messages (MPI: int counts), but sender and
 * receiver must split the same byte count the same way. Pieces are posted
 * one after another, so a caller must not have two requests longer than
 * COLL_MAX_MSG_BYTES in flight in the same direction between the same two
 * ranks (their pieces would interleave); the pipelined algorithms keep their
 * chunks below that size. */
struct coll_ctx;
struct coll_transport;

#define COLL_MAX_CHANNELS 4

typedef struct coll_treq {
    const struct coll_transport *tp; /* set when posted */
    char *ptr;   /* next byte to move */
    size_t left; /* bytes not yet posted */
    int peer;
    int chan;
    int is_send;
    int active;
    _Alignas(16) unsigned char priv[32]; /* the transport's own request */
} coll_treq_t;

typedef struct coll_transport {
    const char *name;
    /* Sets up (collectively over the context's ranks) and tears down the
     * transport's state on a context; either may be NULL. */
    coll_result_t (*init)(struct coll_ctx *ctx);
    void (*finalize)(struct coll_ctx *ctx);
    /* Whether this transport carries messages between ctx's rank and peer. */
    int (*reaches)(const struct coll_ctx *ctx, int peer);
    /* chan (0..COLL_MAX_CHANNELS-1) separates message streams on one link:
     * messages match in order within a channel, not across channels. */
    coll_result_t (*isend)(struct coll_ctx *ctx, const void *buf, size_t bytes, int peer, int chan,
                           coll_treq_t *req);
    coll_result_t (*irecv)(struct coll_ctx *ctx, void *buf, size_t bytes, int peer, int chan,
                           coll_treq_t *req);
    /* Advances req; *done = 1 when all its bytes have moved. */
    coll_result_t (*test)(struct coll_ctx *ctx, coll_treq_t *req, int *done);
    /* Abandons an active request after a failure. */
    void (*cancel)(struct coll_ctx *ctx, coll_treq_t *req);
} coll_transport_t;

COLL_HIDDEN extern const coll_transport_t coll_transport_mpi;
#define COLL_MAX_TRANSPORTS 4
/* The transports a context may use, in order of preference (ctx.c). */
COLL_HIDDEN extern const coll_transport_t *const coll_transports[];

/* An execution context: one per thread that runs algorithms on a comm (the
 * caller's thread and the progress thread), each with its own duplicate of
 * the MPI communicator so their messages never match each other's. MPI
 * stays the bootstrap of every context (set-up, the COLL_CHECK agreement,
 * the native algorithms), whatever transport carries its messages. */
typedef struct coll_ctx {
    struct coll_comm *comm;
    const coll_transport_t **peer_tp; /* per peer rank; NULL for itself */
    unsigned tp_ready;                /* bit i: coll_transports[i]'s init ran here */
    MPI_Comm mpi;
    int rank, size;
    char *scratch; /* grown on demand, kept for reuse */
    size_t scratch_bytes;
    struct coll_trace_entry *cur; /* the flight-recorder entry of the operation running here */
    struct coll_shm *shm;         /* shared-memory workspaces (shm*.c), or NULL */
    struct coll_hier *hier;       /* hierarchical: this node's and the cross-node contexts (hier.c), or NULL */
    int hier_local;               /* with hier: ranks per node */
    const int *world;             /* a hier child: its ranks' numbers on the comm (NULL: the same) */
} coll_ctx_t;

/* ctx.c. Opens ctx on mpi (taken over: freed by coll_ctx_close, also on
 * failure), whose ranks world numbers as the comm does (NULL: the same):
 * picks and initialises each peer's transport. Collective over mpi. */
COLL_HIDDEN coll_result_t coll_ctx_open(struct coll_comm *c, coll_ctx_t *ctx, MPI_Comm mpi, const int *world);
/* Finalises its transports, frees its MPI communicator and scratch
 * (shared-memory and hierarchical state belong to whoever attached them). */
COLL_HIDDEN void coll_ctx_close(coll_ctx_t *ctx);

static inline coll_result_t coll_tp_isend(coll_ctx_t *ctx, const void *buf, size_t bytes, int peer, int chan,
                                          coll_treq_t *r) {
    r->tp = ctx->peer_tp[peer];
    return r->tp->isend(ctx, buf, bytes, peer, chan, r);
}
static inline coll_result_t coll_tp_irecv(coll_ctx_t *ctx, void *buf, size_t bytes, int peer, int chan,
                                          coll_treq_t *r) {
    r->tp = ctx->peer_tp[peer];
    return r->tp->irecv(ctx, buf, bytes, peer, chan, r);
}
static inline coll_result_t coll_tp_test(coll_ctx_t *ctx, coll_treq_t *r, int *done) {
    return r->tp->test(ctx, r, done);
}
/* a request never posted (zeroed) or already finished: nothing to cancel */
static inline void coll_tp_cancel(coll_ctx_t *ctx, coll_treq_t *r) {
    if (r->active) r->tp->cancel(ctx, r);
}

/* A rank of ctx as the comm numbers it (errors and per-peer waits name
 * the comm's ranks, also from a hierarchical collective's stages). */
static inline int coll_world_rank(const coll_ctx_t *ctx, int r) { return ctx->world && r >= 0 ? ctx->world[r] : r; }

/* Returns a scratch area of at least bytes (64-byte aligned). */
COLL_HIDDEN coll_result_t coll_ctx_scratch(coll_ctx_t *ctx, size_t bytes, void **out);

/* p2p.c: waiting, with yielding and the timeout, written once for all
 * transports. */
COLL_HIDDEN coll_result_t coll_p2p_wait(coll_ctx_t *ctx, coll_treq_t *req);
COLL_HIDDEN coll_result_t coll_p2p_waitall(coll_ctx_t *ctx, coll_treq_t *reqs, int n);
COLL_HIDDEN coll_result_t coll_p2p_sendrecv(coll_ctx_t *ctx, const void *sbuf, size_t sbytes,
                                            int dst, void *rbuf, size_t rbytes, int src);
COLL_HIDDEN void coll_p2p_cancel_all(coll_ctx_t *ctx, coll_treq_t *reqs, int n);
/* Waits for an MPI request of a collective that cannot name a peer (what
 * says which), with the same yielding and timeout. */
COLL_HIDDEN coll_result_t coll_p2p_wait_mpi(coll_ctx_t *ctx, MPI_Request *rq, const char *what);

/* ---- reduction kernels (reduce.c) ---- */
/* dst[i] = a[i] op b[i]; dst may equal a exactly, no other overlap. AVG
 * reduces as SUM; coll_avg_finish divides once at the end. */
COLL_HIDDEN void coll_reduce_kernel(coll_dtype_t dt, coll_op_t op, void *dst, const void *a,
                                    const void *b, size_t n);
COLL_HIDDEN void coll_avg_finish(coll_dtype_t dt, void *buf, size_t n, int nranks);
/* the kernel for a call's last reduction step: with AVG it also divides by
 * nranks (one pass for float32/float64; bitwise as the kernel, then coll_avg_finish) */
COLL_HIDDEN void coll_reduce_last(coll_dtype_t dt, coll_op_t op, void *dst, const void *a, const void *b, size_t n,
                                  int nranks);
COLL_HIDDEN float coll_half_to_float(uint16_t h);
COLL_HIDDEN uint16_t coll_float_to_half(float f);
COLL_HIDDEN float coll_bf16_to_float(uint16_t h);
COLL_HIDDEN uint16_t coll_float_to_bf16(float f);

/* ---- flight recorder (trace.c) ---- */
enum { COLL_TS_EMPTY = 0, COLL_TS_QUEUED, COLL_TS_RUNNING, COLL_TS_DONE, COLL_TS_FAILED };
#define COLL_TRACE_STEPS 16 /* waits kept per entry (more are only summed) */

typedef struct coll_trace_entry {
    uint64_t seq; /* issue order on the comm: the same call has the same seq on every rank */
    coll_kind_t kind;
    coll_dtype_t dtype;
    coll_op_t op;
    coll_algo_t algo;
    int root, result;
    size_t count;
    char tag[32];
    double t_enq, t_start, t_end; /* CLOCK_REALTIME seconds */
    atomic_int state;
    int nsteps;    /* transfer waits seen */
    double wait_s; /* their total */
    struct {
        int32_t peer; /* -1: a wait inside MPI's own collective */
        int8_t send;
        float wait_s;
    } step[COLL_TRACE_STEPS];
} coll_trace_entry_t;

COLL_HIDDEN coll_result_t coll_trace_init(struct coll_comm *c);
COLL_HIDDEN void coll_trace_free(struct coll_comm *c);
/* on the issuing thread, in issue order; NULL when recording is off */
COLL_HIDDEN coll_trace_entry_t *coll_trace_begin(struct coll_comm *c, const coll_args_t *a);
COLL_HIDDEN void coll_trace_run(coll_ctx_t *ctx, coll_trace_entry_t *e);
COLL_HIDDEN void coll_trace_end(coll_ctx_t *ctx, coll_trace_entry_t *e, coll_result_t rc);
/* the same for operations that run on no context (NCCL's) */
COLL_HIDDEN void coll_trace_started(coll_trace_entry_t *e);
COLL_HIDDEN void coll_trace_finished(coll_trace_entry_t *e, coll_result_t rc);
/* a transfer wait of `seconds` on peer (send or receive), on ctx's running operation */
COLL_HIDDEN void coll_trace_wait(coll_ctx_t *ctx, int peer, int send, double seconds);
/* adds the waits recorded in from (another thread's, of the same call) to e */
COLL_HIDDEN void coll_trace_add_waits(coll_trace_entry_t *e, const coll_trace_entry_t *from);
/* the comm failed: its record is written once (reason: what happened) */
COLL_HIDDEN void coll_trace_failure(struct coll_comm *c, const char *reason);

/* ---- algorithms: each runs one whole operation on a context ---- */
typedef coll_result_t (*coll_algo_fn)(coll_ctx_t *ctx, const coll_args_t *a);

COLL_HIDDEN coll_result_t coll_ring_allreduce(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_ring_reduce_scatter(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_ring_allgather(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_chain_broadcast(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_chain_reduce(coll_ctx_t *ctx, const coll_args_t *a);

COLL_HIDDEN coll_result_t coll_rd_allreduce(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_rd_reduce_scatter(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_bruck_allgather(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_tree_broadcast(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_tree_reduce(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_dissemination_barrier(coll_ctx_t *ctx, const coll_args_t *a);

COLL_HIDDEN coll_result_t coll_native_run(coll_ctx_t *ctx, const coll_args_t *a);

/* mem.c: coll_mem_alloc's allocations. Finds the allocation holding
 * [p, p + bytes): its identity for peers (fd in this process, id unique on
 * this comm) and p's offset in it; returns 0 when there is none. */
typedef struct {
    int fd;
    uint64_t id;
    size_t bytes, off;
} coll_mem_ref_t;
COLL_HIDDEN int coll_mem_find(struct coll_comm *c, const void *p, size_t bytes, coll_mem_ref_t *ref);
COLL_HIDDEN void coll_mem_free_all(struct coll_comm *c);
/* coll_mem_map_peers' exchange: what a peer needs to map the allocation
 * holding ptr (pid, fd, size, ptr's offset, state: 0 ptr NULL, 1 found,
 * -1 not coll_mem_alloc's); and the mapping of rank q's, at its offset
 * (kept until coll_comm_destroy), or NULL with the error set. */
enum { COLL_MEM_DESC = 5 };
COLL_HIDDEN void coll_mem_describe(struct coll_comm *c, const void *ptr, int64_t d[COLL_MEM_DESC]);
COLL_HIDDEN char *coll_mem_map_peer(struct coll_comm *c, int q, const int64_t d[COLL_MEM_DESC]);

/* shm*.c: node-local communicators (ctx->shm set) */
COLL_HIDDEN coll_result_t coll_shm_ctx_init(coll_ctx_t *ctx);
COLL_HIDDEN void coll_shm_ctx_free(coll_ctx_t *ctx);
COLL_HIDDEN coll_result_t coll_shm_allreduce(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_shm_reduce_scatter(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_shm_allgather(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_shm_broadcast(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_shm_reduce(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_shm_barrier(coll_ctx_t *ctx, const coll_args_t *a);
/* Over a balanced partition of n elements into blocks, one per rank
 * (coll_block_offset/count): reduce-scatter reduces block `me` of every
 * rank's in (op a->op; AVG divides by the node's ranks only if avg) into
 * out (the block's length; out may be in + its offset); all-gather copies
 * each rank's block of buf into every rank's buf. */
COLL_HIDDEN coll_result_t coll_shm_reduce_scatter_blocks(coll_ctx_t *ctx, const coll_args_t *a, const char *in, size_t n,
                                                         char *out, int avg);
COLL_HIDDEN coll_result_t coll_shm_allgather_blocks(coll_ctx_t *ctx, const coll_args_t *a, char *buf, size_t n);

/* hier.c: communicators spanning nodes with equal ranks per node */
COLL_HIDDEN coll_result_t coll_hier_ctx_init(coll_ctx_t *ctx, int local_size);
COLL_HIDDEN void coll_hier_ctx_free(coll_ctx_t *ctx);
static inline int coll_hier_runs(const coll_ctx_t *ctx, coll_kind_t k) {
    return ctx->hier &&
           (k == COLL_K_ALLREDUCE || k == COLL_K_BROADCAST || k == COLL_K_REDUCE || k == COLL_K_BARRIER);
}
/* auto's choice: hier runs k and the nodes have several ranks each */
static inline int coll_hier_auto(const coll_ctx_t *ctx, coll_kind_t k) {
    return coll_hier_runs(ctx, k) && ctx->hier_local > 1 && k != COLL_K_BARRIER;
}
COLL_HIDDEN coll_result_t coll_hier_allreduce(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_hier_broadcast(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_hier_reduce(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_hier_barrier(coll_ctx_t *ctx, const coll_args_t *a);
/* COLL_ALGO_NCCL never reaches coll_run: api.c hands it to cuda.c */
COLL_HIDDEN void coll_native_release(void);

/* cuda.c: device buffers (staged through host memory, or NCCL) */
struct coll_cuda;
COLL_HIDDEN int coll_cuda_available(void);
COLL_HIDDEN int coll_buffers_on_device(const struct coll_comm *c, const coll_args_t *a);
COLL_HIDDEN int coll_cuda_distinct_gpus(struct coll_comm *c);
COLL_HIDDEN coll_result_t coll_cuda_mark_ready(struct coll_comm *c, void **ev);
COLL_HIDDEN coll_result_t coll_cuda_staged(coll_ctx_t *ctx, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_nccl_start(struct coll_comm *c, const coll_args_t *a, void **done);
COLL_HIDDEN coll_result_t coll_cuda_event_wait(struct coll_comm *c, void *ev, int block, int *done);
COLL_HIDDEN void coll_cuda_event_free(void *ev);
COLL_HIDDEN void coll_cuda_comm_free(struct coll_comm *c);

/* select.c: the choice of algorithm (it runs nothing). */
COLL_HIDDEN coll_algo_t coll_select(const struct coll_comm *comm, const coll_args_t *a);
/* What runs a (a->algo chosen) on ctx, which may lack what a->algo needs. */
COLL_HIDDEN coll_algo_t coll_select_on(const coll_ctx_t *ctx, const coll_args_t *a);
/* The point-to-point algorithm auto picks for a at size ranks (ring or rd). */
COLL_HIDDEN coll_algo_t coll_p2p_algo(int size, const coll_args_t *a);

/* run.c: a whole call on ctx, its algorithm chosen (COLL_CHECK's
 * agreement, the zero-count shortcut, device staging, the flight recorder,
 * failing the comm after an MPI error or timeout). */
COLL_HIDDEN coll_result_t coll_execute(coll_ctx_t *ctx, const coll_args_t *a, coll_result_t local);
/* algos.c: the algorithm alone (also hierarchical stages, device staging). */
COLL_HIDDEN coll_result_t coll_run(coll_ctx_t *ctx, const coll_args_t *a);
/* NCCL's calls: started (after the agreement) with an event completing with
 * them; coll_run_nccl also waits for it. */
COLL_HIDDEN coll_result_t coll_run_nccl_start(struct coll_comm *c, const coll_args_t *a, void **done);
COLL_HIDDEN coll_result_t coll_run_nccl(struct coll_comm *c, const coll_args_t *a);
/* Bytes a ring would send from this rank for a: what is counted for MPI's
 * and NCCL's own collectives, whose messages libcoll does not see. */
COLL_HIDDEN uint64_t coll_nominal_bytes(const coll_args_t *a, int nranks);

/* ---- the communicator ---- */
#define COLL_ERRLEN 512

struct coll_comm {
    int rank, size;
    coll_algo_t algo;
    double timeout;
    int thread_multiple; /* MPI_THREAD_MULTIPLE available */
    int local_size;      /* ranks of this comm on this node */
    int oversubscribed;  /* more local ranks than cores: spin less before yielding */
    char host[64];
    coll_ctx_t sync;  /* blocking calls, on the caller's thread */
    coll_ctx_t async; /* non-blocking calls, on the progress thread */
    atomic_int failed; /* set after a timeout or MPI error: no further calls */
    _Atomic uint64_t bytes_sent; /* coll_comm_bytes_sent: by either context's thread */
    /* flight recorder (trace.c) */
    coll_trace_entry_t *trace; /* ring of trace_n entries, or NULL */
    size_t trace_n;
    uint64_t trace_seq; /* calls issued (the caller's thread) */
    int trace_id;       /* this process's comm number, in creation order */
    char tag[32];       /* coll_comm_set_tag */
    atomic_int trace_dumped;
    _Atomic uint64_t *peer_wait_ns; /* coll_comm_peer_waits: ns waited on each peer */
    _Atomic uint64_t *peer_send_ns; /* ... of which on sends to it (back-pressure of that hop) */
    pthread_mutex_t err_lock;
    char last_error[COLL_ERRLEN];
    char first_error[COLL_ERRLEN]; /* the failure that made the comm unusable */
    /* progress thread and its FIFO of requests (progress.c) */
    pthread_mutex_t q_lock;
    pthread_cond_t q_cond;    /* work arrived / stop */
    pthread_cond_t done_cond; /* a request finished */
    struct coll_request *q_head, *q_tail, *free_reqs;
    struct coll_request *all_reqs; /* every request allocated, freed at destroy */
    int outstanding;
    int stop;
    int thread_started;
    pthread_t thread;
    struct coll_cuda *cuda; /* device-buffer state, made at the first device call */
    pthread_mutex_t mem_lock;        /* coll_mem_alloc's list (mem.c) */
    struct coll_mem *mem;            /* ... its allocations */
    struct coll_mem *peer_maps;      /* coll_mem_map_peers' views of peers' allocations */
    uint64_t mem_next_id;
    void *sync_ready;       /* blocking device calls' inputs-ready event */
    void *sync_done;        /* blocking NCCL calls' completion event */
};

/* The ring's and chain's chunk on c: COLL_NET_CHUNK_BYTES where c spans
 * nodes (docs/COLLECTIVES.md), COLL_CHUNK_BYTES inside one. */
static inline size_t coll_chunk_bytes(const struct coll_comm *c) {
    return c && c->local_size < c->size ? coll_tun.net_chunk_bytes : coll_tun.chunk_bytes;
}

struct coll_request {
    uint32_t magic;
    uint32_t gen;  /* bumped at every reuse: the handle carries it (progress.c) */
    uint32_t slot; /* index in the process's request table */
    struct coll_comm *comm;
    coll_args_t args;
    coll_result_t local; /* validation result, for COLL_CHECK's agreement */
    coll_result_t result;
    int ghost; /* runs only for the agreement; freed by the progress thread */
    double t_start, t_end; /* CLOCK_MONOTONIC seconds around its execution */
    void *cuda_ready;      /* event: the user's stream reached the call (kept for reuse) */
    void *cuda_done;       /* NCCL: event completing with the operation (kept for reuse) */
    int by_event;          /* completes through cuda_done, not the progress thread */
    atomic_int done;
    struct coll_request *next;
    struct coll_request *all_next;
};

/* error.c: the registry of live communicators, and errors */
COLL_HIDDEN int coll_registry_add(coll_comm_t comm); /* 0, or -1 without memory */
/* returns the number of communicators still alive after the removal */
COLL_HIDDEN size_t coll_registry_remove(coll_comm_t comm);
COLL_HIDDEN int coll_comm_valid(coll_comm_t comm);
/* Records an error on comm (or globally when comm is NULL), logs it at
 * WARN, and returns code. */
COLL_HIDDEN coll_result_t coll_error(coll_comm_t comm, coll_result_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
COLL_HIDDEN coll_result_t coll_mpi_error(coll_comm_t comm, int mpi_rc, const char *what);
/* fail.c. Marks comm failed with code (after its error was recorded): every queued
 * and later call then fails at once with code, and the first failure's text
 * is kept for their messages. Returns code. */
COLL_HIDDEN coll_result_t coll_comm_fail(coll_comm_t comm, coll_result_t code);

/* log.c */
COLL_HIDDEN void coll_log(const struct coll_comm *comm, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define COLL_LOG(comm, level, ...)                                                          \
    do {                                                                                    \
        if (coll_tun.debug >= (level)) coll_log((comm), (level), __VA_ARGS__);              \
    } while (0)

/* progress.c */
COLL_HIDDEN coll_result_t coll_progress_submit(coll_comm_t comm, const coll_args_t *a,
                                               coll_result_t local, coll_request_t *req);
/* A request that completes through a CUDA event (NCCL), not the thread. */
COLL_HIDDEN coll_result_t coll_progress_event_request(coll_comm_t comm, const coll_args_t *a,
                                                      coll_request_t *req);
COLL_HIDDEN void coll_progress_shutdown(coll_comm_t comm);
COLL_HIDDEN void coll_request_forget(struct coll_request *r);

/* check.c: argument validation (of a call on a live comm: the caller looks
 * it up) and the optional cross-rank agreement. */
COLL_HIDDEN coll_result_t coll_check_args(coll_comm_t comm, const coll_args_t *a);
COLL_HIDDEN coll_result_t coll_check_agree(coll_ctx_t *ctx, const coll_args_t *a,
                                           coll_result_t local);
/* Propagates a failure from an algorithm to its caller. */
#define COLL_TRY(expr)                                                                      \
    do {                                                                                    \
        coll_result_t coll_try_rc_ = (expr);                                                \
        if (coll_try_rc_ != COLL_SUCCESS) {                                                 \
            rc = coll_try_rc_;                                                              \
            goto fail;                                                                      \
        }                                                                                   \
    } while (0)

/* Balanced partition of n elements into p blocks: block i has n/p elements,
 * plus one for the first n%p blocks. */
static inline size_t coll_block_count(size_t n, int p, int i) {
    return n / (size_t)p + ((size_t)i < n % (size_t)p ? 1 : 0);
}
static inline size_t coll_block_offset(size_t n, int p, int i) {
    size_t q = n / (size_t)p, r = n % (size_t)p;
    return q * (size_t)i + ((size_t)i < r ? (size_t)i : r);
}
static inline int coll_mod(int a, int p) { return ((a % p) + p) % p; }
/* The one-rank (and out-of-place) starting copy; a no-op in place. */
static inline void coll_copy(void *dst, const void *src, size_t bytes) {
    if (dst != src && bytes) memcpy(dst, src, bytes);
}

#endif /* COLL_INTERNAL_H */
