/* Algorithm choice (nothing here runs anything: run.c does). `auto` uses
 * the latency-optimal algorithms below a size threshold and the ring above
 * it, shared memory on one node and the hierarchical algorithms across
 * nodes where they measured faster; the thresholds were measured on the
 * development machine (below). COLL_RD_MAX_BYTES overrides them: rd up to
 * that size, ring above. */
#include "coll_internal.h"

/* Bytes a rank contributes to or receives from the whole operation. */
static size_t op_bytes(int size, const coll_args_t *a) {
    size_t b = a->count * coll_dtype_size(a->dtype);
    if (a->kind == COLL_K_REDUCE_SCATTER || a->kind == COLL_K_ALLGATHER) b *= (size_t)size;
    return b;
}

/* Thresholds measured with `coll-bench -a ring -x rd` and `-a rd -x native`
 * at 2, 3 and 4 ranks (docs/COLLECTIVES.md, "How auto chooses"):
 *  - up to 2 KiB the log(P) rounds of rd win everywhere;
 *  - at 2-4 KiB a whole-buffer message crosses Open MPI's shared-memory
 *    eager limit (4 KiB with its header) and pays a rendezvous round trip,
 *    while the ring's per-block messages stay eager: ring;
 *  - above that rd wins again up to 16 KiB at 2 ranks and 64 KiB at 3-4,
 *    where the ring's 2(P-1) steps cost more than rd's extra bytes. */
#define EAGER_SPLIT_MIN 2048
#define EAGER_SPLIT_MAX 4096

static size_t rd_max_bytes(int size, coll_kind_t k) {
    if (coll_tun.rd_max_bytes) return coll_tun.rd_max_bytes;
    switch (k) {
    case COLL_K_ALLREDUCE:
    case COLL_K_ALLGATHER: return size <= 2 ? 16384 : 65536;
    /* rd reduce-scatter is a whole all-reduce: worth it only when tiny */
    case COLL_K_REDUCE_SCATTER: return 1024;
    case COLL_K_BROADCAST:
    case COLL_K_REDUCE: return 65536;
    default: return (size_t)-1;
    }
}

/* The point-to-point choice at `size` ranks (also where shm was asked for
 * and the communicator has no shared memory: it spans nodes, or has one
 * rank; and across the nodes of a hierarchical collective). */
coll_algo_t coll_p2p_algo(int size, const coll_args_t *a) {
    if (a->kind == COLL_K_BARRIER) return COLL_ALGO_RD;
    size_t b = op_bytes(size, a);
    if (!coll_tun.rd_max_bytes && a->kind == COLL_K_ALLREDUCE && b > EAGER_SPLIT_MIN && b <= EAGER_SPLIT_MAX)
        return COLL_ALGO_RING;
    return b <= rd_max_bytes(size, a->kind) ? COLL_ALGO_RD : COLL_ALGO_RING;
}

/* Where shared memory beats the point-to-point choice, from `coll-bench -a
 * shm -x auto` at 2 and 4 ranks, alternating runs of 8 B-64 MiB
 * (docs/COLLECTIVES.md, "How auto chooses"). At 2 ranks shm wins at every
 * size: 2-3x up to 32 KiB, 1.3-2.2x from 256 KiB for all-reduce,
 * reduce-scatter, all-gather and broadcast since its copies stopped going
 * through the stack (2026-12-06; before, the ring's single CMA copy won
 * above 64 KiB-1 MiB). At 4 ranks on two cores it wins from 512 B to
 * 64 MiB, 2x and more. Below 512 B the all-reduce (every stage waits for
 * a rank to be scheduled) went through the regions and beat rd at 4 ranks
 * only (1.08-1.48x; 0.83-0.99x at 3, a tie at 5); through the eager slots
 * (one hand-off, one line per 56 bytes) it beats or ties rd at 3, 4 and 5
 * ranks at 8 B-4 KiB (3: 1.00-1.30x, 4: 0.99-1.37x, 5: 1.01-1.28x, three
 * alternating runs each, 2026-12-06), so shm takes every size; broadcast
 * and reduce, whose writers run ahead through the eager slots (shm_internal.h), beat
 * the tree at every count (2.3-4.3x and 1.04-1.11x at 4-256 B). */
static int shm_wins(coll_kind_t k) { return k != COLL_K_BARRIER; }

coll_algo_t coll_select(const struct coll_comm *c, const coll_args_t *a) {
    if (c->algo != COLL_ALGO_AUTO) return c->algo;
    if (c->sync.shm && !coll_tun.rd_max_bytes && shm_wins(a->kind)) return COLL_ALGO_SHM;
    /* across nodes with several ranks on each, hier from 1 KiB to 64 MiB: all-reduce 1.2-4x the flat
     * choice at 1 and 10 Gbit/s (2 vcluster nodes x 2 ranks), broadcast and reduce 1.0-1.3x
     * (docs/COLLECTIVES.md); one rank per node gains nothing from it */
    if (!coll_tun.rd_max_bytes && coll_hier_auto(&c->sync, a->kind)) return COLL_ALGO_HIER;
    return coll_p2p_algo(c->size, a);
}

/* What runs a on ctx: a's algorithm, or its fallback where ctx cannot run
 * it (hier on what it does not cover, or with unequal nodes: shm on one
 * node, else the point-to-point choice; shm without shared memory). */
coll_algo_t coll_select_on(const coll_ctx_t *ctx, const coll_args_t *a) {
    coll_algo_t algo = a->algo;
    if (algo == COLL_ALGO_HIER && !coll_hier_runs(ctx, a->kind)) algo = ctx->shm ? COLL_ALGO_SHM : COLL_ALGO_AUTO;
    if (algo == COLL_ALGO_AUTO || (algo == COLL_ALGO_SHM && !ctx->shm)) algo = coll_p2p_algo(ctx->size, a);
    return algo;
}
