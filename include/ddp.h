/*
 * ddp.h - data-parallel gradient synchronisation over libcoll.
 *
 * A model's parameters and gradients live in two flat float32 buffers of the
 * same layout, ordered as backward produces the gradients. The engine cuts
 * the gradient buffer into buckets (contiguous ranges of bucket_mb each) and
 * averages each across ranks with a non-blocking all-reduce that starts the
 * moment backward has finished the bucket's last gradient, while backward
 * goes on with earlier layers. Every rank issues the buckets in the same
 * order, so the collectives match without any coordination.
 *
 * With zero = 1 (ZeRO stage 1) the buckets are reduce-scattered instead:
 * each rank receives the average of its 1/P slice of every bucket, updates
 * only those parameters (keeping optimiser state only for them), and
 * ddp_gather all-gathers the updated parameters.
 *
 * One step:
 *   ddp_backward_begin(d, sync)   sync = 0 for micro-batches that only accumulate
 *   backward, calling ddp_grad_ready(d, ...) as each parameter's gradient is final
 *   ddp_sync(d)                   waits until the gradients are averaged
 *   ddp_update(d, fn, u)          the optimiser, over this rank's ranges
 *   ddp_gather(d)                 ZeRO-1: every rank gets the new parameters
 *
 * Fused update (opt.fuse with zero = 0, where ddp_share_buffers shared the
 * buffers: every rank on one node, no compression, host memory): nothing is
 * sent. ddp_sync waits until every rank's backward is done (a barrier),
 * averages this rank's 1/P of the gradients in place from every rank's
 * buffer (coll_mem_map_peers), and waits for the others' 1/P; ddp_update
 * then gives the optimiser each range's mean in its owner's buffer (the
 * all-gather, read in place, with no copy), and the next ddp_backward_begin
 * waits until every rank is past its update. The means are summed in rank
 * order and divided by P (shared memory's AVG at 2 ranks: the same bits).
 * Nothing overlaps backward, which costs nothing where the ranks fill the
 * cores: there an overlapped collective only takes turns with the GEMMs
 * (docs/PERFORMANCE.md). ZeRO-1 keeps the collectives: the same fusion
 * there measured no faster (its cross-core bytes are the same).
 *
 * Compression (opt.compress, PyTorch DDP's communication hooks):
 *   bf16 / fp16  each bucket travels as 16-bit values (scaled by 1/P first,
 *                so fp16's sum cannot overflow where float32's would not),
 *                reduced with float32 accumulation and widened back; with
 *                ZeRO-1 the reduce-scatter is 16-bit likewise.
 *   powersgd     each weight matrix M (rows x cols) is sent as two thin
 *                matrices: P = M Q (all-reduced, orthonormalised) and
 *                Q = M^T P (all-reduced), M ~ P Q^T, with error feedback
 *                (what was not sent is added to the next step's gradient)
 *                and warm start (Q kept). Vectors and matrices too small to
 *                gain are all-reduced uncompressed in the same collective
 *                as the P's. Buckets then end at parameter boundaries. The
 *                first powersgd_start synchronised steps are uncompressed.
 *                Not with zero = 1. Host buffers only.
 *
 * Errors: functions return 0, or -1 with ddp_error(d) naming what failed
 * (and the rank, for a peer that died or stopped answering within
 * timeout_s). After an error the engine is unusable; the program should
 * exit (MPI_Abort), which is what ddp-train does.
 */
#ifndef DDP_H
#define DDP_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "coll.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ddp ddp_t; /* opaque */

typedef enum { DDP_COMPRESS_NONE = 0, DDP_COMPRESS_BF16, DDP_COMPRESS_FP16, DDP_COMPRESS_POWERSGD } ddp_compress_t;

/* One parameter in the flat layout: rows x cols floats at offset (a weight
 * as PyTorch's view(out, -1); a bias is rows x 1). */
typedef struct ddp_tensor {
    size_t offset, rows, cols;
} ddp_tensor_t;

typedef struct ddp_options {
    double bucket_mb;      /* bucket size in MiB (> 0) */
    int overlap;           /* 1: reduce buckets during backward; 0: one reduction after it */
    int zero;              /* 0: all-reduce; 1: ZeRO-1 */
    coll_algo_t algorithm; /* passed to libcoll */
    double timeout_s;      /* a wait longer than this fails naming the silent rank; 0 = never */
    void *cuda_stream;     /* GPU buffers: the cudaStream_t computing the gradients (a bucket's
                              reduction starts after the work queued there when it became
                              ready, with no host synchronisation); NULL for host buffers */
    ddp_compress_t compress;
    int powersgd_rank;     /* columns of P and Q (1..64) */
    long powersgd_start;   /* synchronised steps before PowerSGD starts */
    uint64_t seed;         /* PowerSGD's first Q (the same on every rank) */
    const ddp_tensor_t *tensors; /* powersgd: every parameter, in increasing offset order (read by ddp_create only) */
    int ntensors;
    int fuse;              /* 1: the fused update where it applies (zero = 0, shared buffers) */
} ddp_options_t;

/* Collective over comm. params and grads hold `padded` floats, a multiple of
 * the number of ranks, of which the first `count` are the model's (the tail
 * is zero). The buffers stay the caller's and must outlive the engine. */
int ddp_create(ddp_t **d, MPI_Comm comm, float *params, float *grads, size_t count, size_t padded,
               const ddp_options_t *opt, char *err, size_t errlen);
void ddp_destroy(ddp_t *d); /* NULL-safe; before MPI_Finalize */
/* Collective; host buffers only. Where shared memory can read the gradient
 * buckets in place (every rank on one node, ddp.zero = 0, no compression,
 * algorithm auto or shm), allocates `padded` floats each for parameters and
 * gradients with coll_mem_alloc on the engine's communicator (the node's
 * peers map them: zero-copy all-reduce), uses them from now on instead of
 * the caller's, and runs shm (auto's choice there). The caller copies its
 * contents over and uses them too; they live until ddp_destroy. 0; 1: not
 * shared (not useful here, or a rank could not); -1: this rank could not
 * allocate (ddp_error says why). The caller's buffers stay in use unless 0.
 * With opt.fuse and zero = 0 it also maps every peer's gradient buffer for
 * the fused update (every rank, or none, keeps it). */
int ddp_share_buffers(ddp_t *d, float **params, float **grads);
int ddp_rank(const ddp_t *d);
int ddp_size(const ddp_t *d);
const char *ddp_error(const ddp_t *d);

/* Rank 0's buffer to every rank (start-up: identical replicas). */
int ddp_broadcast(ddp_t *d, void *buf, size_t count, coll_dtype_t dtype);
/* Waits for every rank, allowing `timeout_s` (instead of the engine's) for
 * the slowest, e.g. while rank 0 writes a checkpoint; 0 = forever. */
int ddp_barrier(ddp_t *d, double timeout_s);

/* A phase in which ranks may wait long for each other (rank 0 writing a
 * checkpoint to a slow file system) but a rank that stops answering must
 * still be caught within the engine's timeout. Between begin and end every
 * rank answers liveness pings from a helper thread; end waits for every rank
 * for up to max_s, and while it waits it pings the others whenever
 * timeout_s passes without the wait completing: a rank that does not answer
 * within timeout_s fails the wait, named. Needs MPI_THREAD_MULTIPLE (without
 * it, end is ddp_barrier(max_s)). */
int ddp_slow_phase_begin(ddp_t *d);
int ddp_slow_phase_end(ddp_t *d, double max_s);
/* v[0..n) reduced over ranks with op, in place, on every rank. */
int ddp_allreduce_double(ddp_t *d, double *v, int n, coll_op_t op);

int ddp_backward_begin(ddp_t *d, int sync);
/* The backward callback (user = the ddp_t): parameter `param` occupies
 * [offset, offset + count) and its gradient is final. Announcements must come
 * in increasing offset order, as the graph makes them. */
void ddp_grad_ready(void *d, int param, size_t offset, size_t count);
int ddp_sync(ddp_t *d);
/* The optimiser's step over what this rank updates: update(u, grads, lo,
 * hi, state_at) for each range [lo, hi) of the flat buffers, whose averaged
 * gradients are grads[0, hi - lo) (in this rank's buffer, or with the fused
 * update in the range's owner's) and whose optimiser state
 * starts at state_at in this rank's (sharded, with ZeRO-1) state. */
typedef void (*ddp_update_fn)(void *u, const float *grads, size_t lo, size_t hi, size_t state_at);
int ddp_update(ddp_t *d, ddp_update_fn update, void *u);
int ddp_gather(ddp_t *d);

/* Slices [lo[i], hi[i]) of the flat buffers whose update is this rank's:
 * all of [0, padded) normally, its shard under ZeRO-1. Returns the count. */
int ddp_shard(const ddp_t *d, const size_t **lo, const size_t **hi);
/* ZeRO-1: assembles on rank 0 a full-length array (padded floats, flat
 * layout) from each rank's shard array (its slices end to end), e.g. the
 * optimiser state for a checkpoint; `full` is used on rank 0 only (NULL
 * elsewhere), and no other rank holds more than one bucket of it. Without
 * ZeRO it copies on rank 0. Exact: the bits move unchanged. */
int ddp_gather_shards(ddp_t *d, const float *shard, float *full);
/* The reverse (resume): every rank's shard from rank 0's full array. */
int ddp_scatter_shards(ddp_t *d, const float *full, float *shard);
/* Floats in this rank's slices together (the optimiser state it needs). */
size_t ddp_shard_size(const ddp_t *d);

/* The last step's communication, in ms: comm = time a gradient or parameter
 * collective was executing; exposed = time the caller was blocked on one;
 * compress = time in compression kernels (casts, PowerSGD's products,
 * orthogonalisation and reconstruction), on the caller's thread; wire_bytes
 * = bytes this rank sent (coll_comm_bytes_sent over the step). */
typedef struct ddp_stats {
    double comm_ms, exposed_ms, compress_ms;
    uint64_t wire_bytes;
} ddp_stats_t;
ddp_stats_t ddp_last_stats(const ddp_t *d);
/* 1: the fused update runs (opt.fuse, zero = 0, and ddp_share_buffers mapped every peer's buffer) */
int ddp_fused(const ddp_t *d);
/* With DDP_FUSED_ALTERNATE=1 in the environment the fused update runs in
 * blocks of this many steps, the collectives in the blocks between: an A/B
 * inside one run, so that both see the same phase of a noisy host (the first
 * step of a block pays for the switch, and is left out of the comparison). */
#define DDP_ALTERNATE_BLOCK 10
int ddp_alternating(const ddp_t *d); /* 1: this run alternates so */

/* Straggler probe of the last synchronised step (src/straggler.h): when this
 * rank launched the step's first gradient collective, counted back from when
 * its last collective of the step was done (minus the time it spent in the
 * step's collectives: every rank leaves them within a hop of the others, so
 * the last to arrive spends the least, and no clocks need agreeing), how
 * long its transfers waited in all, the peer its sends waited on most (the
 * slowest hop out of it), and how long (seconds). */
void ddp_probe(ddp_t *d, double probe[4]);
/* The hop into this rank from its ring predecessor (rank - 1), timed: 2 MiB
 * sent around the ring at once, three times, after a one-byte exchange lines
 * the neighbours up; the fastest receive's seconds, or -1 when an exchange
 * did not complete within timeout_s. Collective (every rank), on a communicator of
 * its own; for straggler attribution, once per step record. */
double ddp_hop_probe(ddp_t *d);
/* all[r * n + i] = rank r's mine[i], on every rank. */
int ddp_allgather_double(ddp_t *d, const double *mine, double *all, size_t n);
/* Writes libcoll's flight recorder (coll.h) now, unless a failure inside
 * libcoll has written it already. */
void ddp_trace_dump(ddp_t *d, const char *reason);

/* Synchronised steps done so far (PowerSGD starts at powersgd_start): set
 * when resuming. */
void ddp_set_steps(ddp_t *d, long steps);
/* PowerSGD's state for checkpoints: Q (ddp_compress_q_len floats, the same
 * on every rank) and each rank's residual (count floats). 0 for the other
 * modes, which keep no state. */
size_t ddp_compress_q_len(const ddp_t *d);
/* Collective. Rank 0 receives Q in q and rank r's residual in resid[r]
 * (for every r < size; the arguments are ignored elsewhere). */
int ddp_compress_save(ddp_t *d, float *q, float *const *resid);
/* Collective. Every rank gets rank 0's q, and rank r its residual resid[r]
 * from rank 0 (q and resid are read on rank 0 only); with_resid = 0 on
 * every rank sets the residuals to zero instead (a checkpoint written by
 * another number of ranks). */
int ddp_compress_load(ddp_t *d, const float *q, float *const *resid, int with_resid);

#ifdef __cplusplus
}
#endif
#endif
