/* Shared-memory collectives, for communicators whose ranks share one node:
 * the workspace's layout and what every algorithm (shm_*.c) shares.
 *
 * Each rank of a context owns a workspace that every peer maps: a header of
 * counters (each on its own 128-byte line, written by its owner only)
 * and two slots of two regions each (A: this rank's input for the round, B:
 * what it reduced). An operation runs in rounds of at most one region
 * (COLL_SHM_CHUNK_BYTES, default 512 KiB: fewer rounds, so fewer hand-offs,
 * than 256 KiB, whose working set stayed in a 1 MiB L2, and faster by
 * measurement); round t uses slot t % 2, so a rank copies round t + 1's input
 * in while its peers still read round t's results, and waits only for the
 * peers to be done with round t - 1 before reusing that slot. Round numbers
 * are the same on every rank (every rank runs the same operations with the
 * same counts), so a counter holding t says "round t reached this stage" and
 * no state is ever reset: no barrier at entry or exit.
 *
 * All-reduce is one-shot up to COLL_SHM_ONESHOT_BYTES (every rank reduces
 * the whole vector from every peer's input), two-shot above (each rank
 * reduces its shard of the round, then copies the others' reduced shards).
 * Reductions run in rank order, so every rank's result is bitwise the same.
 * A 2-rank reduce above the one-shot size streams instead (reduce_stream),
 * and so does a 2-rank all-reduce where the cores are far apart (far_apart).
 * At 2 ranks, broadcast and all-gather skip the regions: the ranks copy
 * between each other's buffers with process_vm_readv/writev (broadcast_pair).
 *
 * The workspace is a memfd, which peers open through /proc/PID/fd/N and
 * map; the owner's descriptor is closed once every peer has mapped it, so
 * nothing is left behind in /dev/shm or anywhere else when a rank is
 * killed. Where that is not allowed (another PID namespace, a hardened
 * /proc), the communicator runs the point-to-point algorithms instead. */
#ifndef COLL_SHM_INTERNAL_H
#define COLL_SHM_INTERNAL_H

#include <sched.h>
#include <time.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "coll_internal.h"

/* The helpers below are static (a file that does not use one is fine), and
 * SHM_OUTLINE ones are never inlined: GCC kept those out of line when the
 * algorithms were one file, as each had several callers there; in a file of
 * its own a collective would take its one caller's copy inline, and the
 * code of the calls that measured as they do would change under them (the
 * eager path inlined into each collective: 8-512 B calls 1.0-1.2x as long,
 * within the host's noise, 2026-12-07). */
#define SHM_HELPER static __attribute__((unused))
#define SHM_OUTLINE static __attribute__((unused, noinline))


#define LINE 128
#define HDR_BYTES (20 * 4096) /* the header's pages: regions start page-aligned */
/* Calls of at most EAGER_BYTES use a ring of EAGER_SLOTS small slots in
 * the header instead of the regions, so that a writer (the root of a
 * broadcast, the non-roots of a reduce) runs up to EAGER_SLOTS calls ahead
 * of its readers, as eager point-to-point messages let a tree run ahead:
 * with ranks outnumbering cores every hand-off otherwise waits for a
 * descheduled rank (4 ranks on 2 cores: 0.4-0.7x Open MPI at 8-64 B). A
 * slot's 64-byte lines carry 56 bytes of data each beside a round number,
 * and a call's round goes into the last line it uses, after the data: the
 * reader polls that line, so the line it waits for carries data too, and the
 * writer does not come back to a line the reader polls. With the round in
 * the first line, written after the whole slot's data, a 2-rank all-reduce
 * of 8 B-2 KiB took 1.2-1.4x as long on the Intel host (likely that line
 * going back and forth between the cores while the reader polled it). */
#define EAGER_SLOTS 16
#define EAGER_BYTES 4096
#define EAGER_LINE 64
#define EAGER_DATA (EAGER_LINE - 8)
#define EAGER_LINES ((EAGER_BYTES + EAGER_DATA - 1) / EAGER_DATA)
#define EAGER_DEMOTE_BYTES 2048 /* eager_put */
/* Copies of at least NT_MIN_BYTES out of a peer's buffer use non-temporal
 * stores. The broadcast root's copy-in does from bcast_nt_min bytes
 * (coll_shm): COLL_SHM_BCAST_NT_MIN_BYTES, by default an eighth of the shared
 * L3, at least NT_MIN_BYTES. Data that large would leave the cache before
 * its readers came to it; smaller, they find it there (a 4-rank broadcast
 * of 8-128 MiB on the Intel host, 300 MiB of L3: 5-14% faster with
 * ordinary stores; the AMD host's 32 MiB L3: 4 MiB, as measured there).
 * The copies out of a peer's coll_mem_alloc buffer keep 4 MiB: on the
 * Intel host a 2-rank zero-copy all-reduce of 8-64 MiB was 5-30% faster
 * with them out of place, 15-20% slower in place (2026-12-07). */
#define NT_MIN_BYTES ((size_t)4 << 20)
#define KEEP_PIECE_BYTES ((size_t)16 << 10)
#define STREAM_PIECE_BYTES ((size_t)64 << 10) /* a 2-rank stream's hand-off (reduce_stream) */
#define LINE_SAMPLES 15

enum { F_COPIED, F_REDUCED, F_DONE, F_PIECES, F_NUM };

/* Where a rank's input and reduced shard are in a round (per slot, written
 * before its COPIED counter): its workspace (fd -1), or a coll_mem_alloc
 * buffer that peers map (zero-copy). */
typedef struct {
    int32_t in_fd, out_fd;
    uint64_t in_id, out_id, in_bytes, out_bytes, in_off, out_off;
    uint64_t user; /* a 2-rank round's buffer, at this address in its owner (pair_begin) */
    int32_t far;   /* a 2-rank all-reduce's votes: cores far apart (1), coll_mem_alloc buffers (2) */
} shm_desc_t;

typedef struct {
    struct {
        _Alignas(EAGER_LINE) _Atomic uint64_t t; /* in a call's last line: its round, written after the data */
        char data[EAGER_DATA];
    } line[EAGER_LINES];
} eager_t;

typedef struct {
    struct {
        _Atomic uint64_t v;
        char pad[LINE - sizeof(uint64_t)];
    } f[F_NUM];
    int32_t pid;
    uint64_t self; /* where the owner maps this header: peers check they can read it */
    char pad[LINE - sizeof(int32_t) - sizeof(uint64_t)];
    struct {
        shm_desc_t d;
        char pad[LINE - sizeof(shm_desc_t)];
    } desc[2];
    struct {
        _Atomic int32_t v; /* this rank's far_apart, written when it changes */
        char pad[LINE - sizeof(int32_t)];
    } far;
    eager_t eager[EAGER_SLOTS]; /* slot t % EAGER_SLOTS */
} shm_hdr_t;

_Static_assert(sizeof(shm_hdr_t) <= HDR_BYTES, "the header fits its pages");
_Static_assert(sizeof(shm_desc_t) <= LINE, "a descriptor fits its line");

#define MAP_CACHE 64 /* peers' coll_mem_alloc buffers kept mapped */
/* a call maps at most 2 buffers of each peer: they must all fit at once */
#define ZC_MAX_RANKS (MAP_CACHE / 2)
#define MAX_RANKS 256 /* ranks of a node-local communicator with shared memory */

struct coll_shm {
    int P, me;
    size_t region;   /* bytes of one region */
    size_t seg;      /* bytes of one rank's workspace */
    char **base;     /* every rank's workspace, mapped here */
    uint64_t round;  /* rounds run on this context */
    uint64_t done_seen[MAX_RANKS]; /* each peer's DONE counter when last read */
    struct {
        int rank;
        uint64_t id;
        char *base;
        size_t bytes;
    } map[MAP_CACHE]; /* peers' buffers mapped here (zero-copy) */
    int nmap, evict;
    int cma; /* every rank can read and write its peers' memory (process_vm_readv/writev) */
    int cldemote; /* have_cldemote() */
    size_t bcast_nt_min; /* a broadcast root copies in with non-temporal stores from this size (NT_MIN_BYTES) */
    size_t nt_max; /* copy_in and reduce_stream, cores close: non-temporal stores up to this size (nt_max_default) */
    char *unpacked; /* P x EAGER_BYTES: the eager slots' data, contiguous (eager_get) */
    float line_ns[LINE_SAMPLES]; /* the last loads of a peer's freshly written counter (far_apart) */
    unsigned nline;
    int far_said; /* far_apart as last written to this rank's header */
    int pair_far; /* 2 ranks: either rank's far_apart in the last all-reduce round (pair_tally) */
};

SHM_HELPER double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* memcpy of a round's data. glibc's memcpy uses `rep movsb` for copies
 * this large, which on this machine kind (AMD EPYC, virtualised) ran at
 * 1-2 GB/s between a workspace and a user's buffer (69% of an all-reduce's
 * time by perf); plain vector moves run at the memory's pace. 16-byte
 * vectors: the baseline ISA has them, where 32-byte ones built without AVX
 * went through the stack (perf: the spills cost as much as the copy). */
typedef char vec16 __attribute__((vector_size(16), aligned(1), may_alias));
SHM_HELPER void copy_bytes(void *dst, const void *src, size_t bytes) {
    char *d = dst;
    const char *s = src;
    size_t i = 0;
    for (; i + 64 <= bytes; i += 64) {
        vec16 a = *(const vec16 *)(s + i), b = *(const vec16 *)(s + i + 16);
        vec16 c = *(const vec16 *)(s + i + 32), e = *(const vec16 *)(s + i + 48);
        *(vec16 *)(d + i) = a, *(vec16 *)(d + i + 16) = b, *(vec16 *)(d + i + 32) = c, *(vec16 *)(d + i + 48) = e;
    }
    if (i < bytes) memcpy(d + i, s + i, bytes - i);
}

/* The same with non-temporal stores, for copies into a workspace: its
 * lines were last read by the peers' cores, and ordinary stores would first
 * take each line back from them. Ends with a store fence, so the data is
 * visible before the counter that publishes it. */
SHM_OUTLINE void copy_nt(void *dst, const void *src, size_t bytes) {
#if defined(__SSE2__)
    char *d = dst;
    const char *s = src;
    size_t head = (16 - ((uintptr_t)d & 15)) & 15;
    if (head > bytes) head = bytes;
    memcpy(d, s, head);
    size_t i = head;
    for (; i + 64 <= bytes; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(s + i)), b = _mm_loadu_si128((const __m128i *)(s + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32)), e = _mm_loadu_si128((const __m128i *)(s + i + 48));
        _mm_stream_si128((__m128i *)(d + i), a);
        _mm_stream_si128((__m128i *)(d + i + 16), b);
        _mm_stream_si128((__m128i *)(d + i + 32), c);
        _mm_stream_si128((__m128i *)(d + i + 48), e);
    }
    if (i < bytes) memcpy(d + i, s + i, bytes - i);
    _mm_sfence();
#else
    copy_bytes(dst, src, bytes);
#endif
}

SHM_HELPER shm_hdr_t *hdr(const struct coll_shm *s, int r) { return (shm_hdr_t *)s->base[r]; }
/* region which (0: A, 1: B) of slot t % 2 of rank r */
SHM_HELPER char *region(const struct coll_shm *s, int r, uint64_t t, int which) {
    return s->base[r] + HDR_BYTES + ((t & 1) * 2 + (size_t)which) * s->region;
}

/* Whether this rank's core and its peers' are far apart, from how long a
 * load of a counter line a peer has written since this rank last read it
 * takes: about 50 ns between cores that share a cache, 140-600 ns between
 * cores that do not (this VM's host moves its vCPUs between both within
 * seconds: docs/PERFORMANCE.md, "The host moves the VM's two vCPUs"). Loads
 * that hit (the line not written since, or written from this core) are left
 * out; the median of the last LINE_SAMPLES decides. Far apart, data meet
 * best in memory (non-temporal stores), close, in a cache. */
#define LINE_HIT_NS 40.0
#define LINE_FAR_NS 130.0
#define FAR_SAMPLE_RANKS 8 /* begin_round samples every peer up to this many ranks */
SHM_HELPER int far_apart(const struct coll_shm *s) {
    if (coll_tun.shm_far == 2) return (int)(s->round / (3 + (unsigned)s->me)) & 1; /* ranks disagreeing, changing */
    if (coll_tun.shm_far >= 0) return coll_tun.shm_far; /* COLL_SHM_FAR: the user knows, or a test chooses */
    const unsigned n = s->nline < LINE_SAMPLES ? s->nline : LINE_SAMPLES;
    unsigned above = 0;
    for (unsigned i = 0; i < n; i++) above += s->line_ns[i] > LINE_FAR_NS;
    return n > 0 && 2 * above > n;
}

/* How data this rank writes into its workspace for the peers is copied:
 * far apart, with non-temporal stores, so the peers read it from memory
 * rather than line by line out of this core's far cache (2 ranks, far
 * apart: reduce-scatter 256 KiB-8 MiB 1.4-5.3x faster with them); close, with
 * ordinary ones (the peers read it from the shared cache). */
SHM_HELPER void (*copy_far(const struct coll_shm *s))(void *, const void *, size_t) {
    return far_apart(s) ? copy_nt : copy_bytes;
}

/* ... by this rank's samples or the peer's */
SHM_HELPER int far_either(const struct coll_shm *s) {
    if (coll_tun.shm_far == 0 || coll_tun.shm_far == 1) return coll_tun.shm_far;
    return far_apart(s) || atomic_load_explicit(&hdr(s, 1 - s->me)->far.v, memory_order_relaxed);
}

SHM_HELPER void sample_line(struct coll_shm *s, _Atomic uint64_t *v) {
    if (coll_tun.shm_far >= 0) return; /* COLL_SHM_FAR decides: nothing to measure */
    const double t0 = now_s();
    (void)atomic_load_explicit(v, memory_order_acquire);
    const double ns = (now_s() - t0) * 1e9;
    if (ns <= LINE_HIT_NS) return;
    s->line_ns[s->nline++ % LINE_SAMPLES] = (float)ns;
    const int far = far_apart(s);
    if (far != s->far_said) /* for a peer with fewer samples (a reduce's non-root) */
        s->far_said = far, atomic_store_explicit(&hdr(s, s->me)->far.v, far, memory_order_relaxed);
}

SHM_HELPER void publish(struct coll_shm *s, int f, uint64_t t) {
    atomic_store_explicit(&hdr(s, s->me)->f[f].v, t, memory_order_release);
}

static const char *const stage_name[F_NUM] = {"its input", "its reduced shard", "the end of the round", "its input"};

/* Waits until peer's counter v reaches t: spins with pause for COLL_SPIN
 * polls (COLL_SPIN_OVERSUBSCRIBED when ranks outnumber cores), then yields
 * at every poll; after COLL_TIMEOUT without it, an error naming that peer. */
SHM_OUTLINE coll_result_t wait_value(coll_ctx_t *ctx, int peer, _Atomic uint64_t *v, uint64_t t, const char *what,
                                     const char *stage) {
    if (atomic_load_explicit(v, memory_order_acquire) >= t) return COLL_SUCCESS;
    const coll_comm_t c = ctx->comm;
    /* oversubscribed: yield at once (COLL_SHM_SPIN_OVERSUBSCRIBED 0; 4 ranks
     * on 2 cores, 8-64 B: broadcast 0.87 -> 1.43x Open MPI, reduce 0.87 ->
     * 1.63x, all-reduce 1.24 -> 1.85x against 100 polls first): the peer a
     * hand-off waits for is usually off the cores, and spinning delays it */
    const long spin = c->oversubscribed ? coll_tun.shm_spin_oversub : coll_tun.spin;
    /* The clock is read only once the wait outlasts QUICK_POLLS pauses (or
     * is about to yield): a small call's hand-off usually arrives sooner,
     * and two clock reads per wait were 10% of its time (perf). Such waits
     * (about a microsecond) are not counted in the per-peer wait times. */
    enum { QUICK_POLLS = 64 };
    double t0 = 0;
    for (long polls = 1; atomic_load_explicit(v, memory_order_acquire) < t; polls++) {
        if (t0 == 0 && (polls >= QUICK_POLLS || polls >= spin)) t0 = now_s();
        if (polls < spin) cpu_relax();
        else sched_yield();
        /* the clock every 1024 pauses, but every 16 yields: a yield beside
         * busy threads can take a time slice, and 1024 of them made a
         * timeout half a second late (TSan, 2 ranks with progress threads) */
        if ((polls & (polls < spin ? 1023 : 15)) == 0 && c->timeout > 0 && now_s() - t0 > c->timeout) {
            if (coll_tun.trace > 0) coll_trace_wait(ctx, peer, 0, now_s() - t0);
            const int w = coll_world_rank(ctx, peer);
            coll_error(c, COLL_ERR_TIMEOUT,
                       "no progress from rank %d for %.1f s in a shared-memory %s (waiting for %s; rank %d lost "
                       "or not calling the same collective?)",
                       w, c->timeout, what, stage, w);
            return coll_comm_fail(c, COLL_ERR_TIMEOUT);
        }
    }
    if (coll_tun.trace > 0 && t0 > 0) coll_trace_wait(ctx, peer, 0, now_s() - t0);
    return COLL_SUCCESS;
}

SHM_HELPER coll_result_t wait_peer(coll_ctx_t *ctx, int peer, int f, uint64_t t, const char *what) {
    return wait_value(ctx, peer, &hdr(ctx->shm, peer)->f[f].v, t, what, stage_name[f]);
}

SHM_HELPER coll_result_t wait_all(coll_ctx_t *ctx, int f, uint64_t t, const char *what) {
    for (int q = 0; q < ctx->shm->P; q++) {
        if (q == ctx->shm->me) continue;
        coll_result_t rc = wait_peer(ctx, q, f, t, what);
        if (rc != COLL_SUCCESS) return rc;
    }
    return COLL_SUCCESS;
}

/* Starts a round: its number, once every peer is done with the round that
 * last used its slot. */
SHM_OUTLINE coll_result_t begin_round(coll_ctx_t *ctx, uint64_t *t, const char *what) {
    *t = ++ctx->shm->round;
    /* (each peer has written its DONE counter since this rank last read it,
     * at the end of a round: samples of how far apart the cores are; a peer
     * sharing this core hits, and is left out) */
    if (ctx->shm->P <= FAR_SAMPLE_RANKS)
        for (int q = 0; q < ctx->shm->P; q++)
            if (q != ctx->shm->me) sample_line(ctx->shm, &hdr(ctx->shm, q)->f[F_DONE].v);
    return *t > 2 ? wait_all(ctx, F_DONE, *t - 2, what) : COLL_SUCCESS;
}

/* Starts a round in the eager slots: its number, once every peer is done
 * with the round that last used this rank's slot. Every peer, not only this
 * call's readers: the slot's last reader may have been another rank (a
 * reduce's previous root, still behind). A peer's DONE counter is read
 * only when the value last seen is too old: read, it is usually a round or
 * two behind, good for the next EAGER_SLOTS - 2 calls without touching the
 * peer's line (which it writes every round). */
SHM_OUTLINE coll_result_t begin_eager_round(coll_ctx_t *ctx, uint64_t *t, const char *what) {
    struct coll_shm *s = ctx->shm;
    *t = ++s->round;
    if (*t <= EAGER_SLOTS) return COLL_SUCCESS;
    for (int q = 0; q < s->P; q++) {
        if (q == s->me || s->done_seen[q] >= *t - EAGER_SLOTS) continue;
        coll_result_t rc = wait_peer(ctx, q, F_DONE, *t - EAGER_SLOTS, what);
        if (rc != COLL_SUCCESS) return rc;
        s->done_seen[q] = atomic_load_explicit(&hdr(s, q)->f[F_DONE].v, memory_order_acquire);
    }
    return COLL_SUCCESS;
}

SHM_HELPER eager_t *eager_slot(const struct coll_shm *s, int r, uint64_t t) { return &hdr(s, r)->eager[t % EAGER_SLOTS]; }

SHM_HELPER unsigned eager_lines(size_t bytes) { return bytes ? (unsigned)((bytes + EAGER_DATA - 1) / EAGER_DATA) : 1; }

/* Writes `bytes` of data into this rank's slot of round t, then the round
 * number into the last line it used. `demote`: push the slot's lines to
 * the shared L3, where the peer's loads find them sooner than in this
 * core's L2 (a 2-rank all-reduce on the Intel host, 64 B-2 KiB: 10-15%
 * faster; 4 KiB, and a broadcast's or reduce's run-ahead writer: slower). */
SHM_HELPER void eager_put(struct coll_shm *s, uint64_t t, const char *data, size_t bytes, int demote) {
    eager_t *e = eager_slot(s, s->me, t);
    const unsigned full = (unsigned)(bytes / EAGER_DATA), lines = eager_lines(bytes);
    for (unsigned i = 0; i < full; i++) /* (a constant size: inlined) */
        memcpy(e->line[i].data, data + (size_t)i * EAGER_DATA, EAGER_DATA);
    memcpy(e->line[lines - 1].data, data + (size_t)full * EAGER_DATA, bytes - (size_t)full * EAGER_DATA);
    atomic_store_explicit(&e->line[lines - 1].t, t, memory_order_release);
#if defined(__x86_64__) || defined(__i386__)
    if (demote && s->cldemote)
        for (unsigned i = 0; i < lines; i++) __asm__ volatile("cldemote %0" ::"m"(e->line[i]));
#else
    (void)demote;
#endif
}

/* Waits for peer's data of round t in its slot and copies it, contiguous, to out. */
SHM_OUTLINE coll_result_t eager_get(coll_ctx_t *ctx, int peer, uint64_t t, char *out, size_t bytes, const char *what) {
    eager_t *e = eager_slot(ctx->shm, peer, t);
    const unsigned full = (unsigned)(bytes / EAGER_DATA), lines = eager_lines(bytes);
    coll_result_t rc = wait_value(ctx, peer, &e->line[lines - 1].t, t, what, stage_name[F_COPIED]);
    if (rc != COLL_SUCCESS) return rc;
    for (unsigned i = 0; i < full; i++) memcpy(out + (size_t)i * EAGER_DATA, e->line[i].data, EAGER_DATA);
    memcpy(out + (size_t)full * EAGER_DATA, e->line[lines - 1].data, bytes - (size_t)full * EAGER_DATA);
    return COLL_SUCCESS;
}

/* Where rank q's data of an eager call is unpacked (eager_get). */
SHM_HELPER char *unpacked(const struct coll_shm *s, int q) { return s->unpacked + (size_t)q * EAGER_BYTES; }

/* dst[0, n) = src[0] op src[1] op ... op src[P-1], in that order (dst may
 * be src[0], the only overlap the kernels allow), divided by P for
 * COLL_AVG where avg says so (the hierarchical reduce-scatter divides
 * later, once for every rank). */
SHM_HELPER void reduce_srcs(const coll_args_t *a, void *dst, const char *const *src, int P, size_t n, int avg) {
    if (!n) return;
    const coll_op_t op = avg ? a->op : a->op == COLL_AVG ? COLL_SUM : a->op; /* (P >= 2: shm needs a peer) */
    for (int q = 1; q < P - 1; q++) coll_reduce_kernel(a->dtype, a->op, dst, q == 1 ? src[0] : dst, src[q], n);
    coll_reduce_last(a->dtype, op, dst, P == 2 ? src[0] : dst, src[P - 1], n, P);
}

/* Copies a two-shot call's input into this rank's region, all but
 * [skip_lo, skip_hi) (the shard this rank reduces from its own input); up
 * to nt_max bytes a call with non-temporal stores. On the AMD host the peers
 * then read the lines from memory, with the prefetchers' help, where ordinary
 * stores left them in this core's L2 for the peers to take one at a time
 * (2 ranks, 32-128 KiB: reduce 1.2-1.3x faster, all-reduce 1.1x; at 512
 * KiB-2 MiB the lines leave this L2 for the shared L3 anyway, and the
 * all-reduce was 1.3-1.6x slower with them); on the Intel host the peer's
 * reads out of this L2 were the faster (nt_max_default). Not with ranks outnumbering
 * cores: a peer on this core would have read them from this L2 (4 ranks on
 * 2 cores: all-reduce 1.15-1.4x slower with them). At every size where the
 * cores are far apart (4 ranks on 2 cores: reduce 1.8x faster). */
SHM_OUTLINE void copy_in(const coll_ctx_t *ctx, const coll_args_t *a, char *dst, const char *in, size_t n,
                         size_t skip_lo, size_t skip_hi) {
    const size_t es = coll_dtype_size(a->dtype);
    void (*copy)(void *, const void *, size_t) =
        !ctx->comm->oversubscribed && a->count * es <= ctx->shm->nt_max ? copy_nt : copy_far(ctx->shm);
    copy(dst, in, skip_lo * es);
    copy(dst + skip_hi * es, in + skip_hi * es, (n - skip_hi) * es);
}

/* A peer's coll_mem_alloc buffer, mapped here on first use (kept for
 * later calls; the oldest is unmapped when the cache is full); NULL, with
 * the error set, where it cannot be mapped. */
COLL_HIDDEN char *coll_shm_peer_buffer(coll_ctx_t *ctx, int q, int fd, uint64_t id, size_t bytes);

/* Where rank q's input (which 0) or reduced values (1) for round t start,
 * the round starting at_bytes into the call's buffers. */
SHM_HELPER const char *peer_data(coll_ctx_t *ctx, int q, uint64_t t, int which, size_t at_bytes) {
    const shm_desc_t *d = &hdr(ctx->shm, q)->desc[t & 1].d;
    const int fd = which ? d->out_fd : d->in_fd;
    if (fd < 0) return region(ctx->shm, q, t, which);
    char *base = coll_shm_peer_buffer(ctx, q, fd, which ? d->out_id : d->in_id, which ? d->out_bytes : d->in_bytes);
    return base ? base + (which ? d->out_off : d->in_off) + at_bytes : NULL;
}

/* Every rank's descriptor of this round points at coll_mem_alloc buffers
 * (its input; and its output where `out` asks). */
SHM_HELPER int all_zero_copy(const struct coll_shm *s, int out) {
    const uint64_t t = s->round;
    for (int q = 0; q < s->P; q++) {
        const shm_desc_t *d = &hdr(s, q)->desc[t & 1].d;
        if (d->in_fd < 0 || (out && d->out_fd < 0)) return 0;
    }
    return 1;
}

/* Publishes this round's input: a coll_mem_alloc buffer peers read in
 * place (ref, or NULL: the workspace's region, which the caller fills). */
SHM_HELPER void describe_input(struct coll_shm *s, uint64_t t, const coll_mem_ref_t *ref) {
    shm_desc_t *d = &hdr(s, s->me)->desc[t & 1].d;
    if (ref) *d = (shm_desc_t){ref->fd, -1, ref->id, 0, ref->bytes, 0, ref->off, 0, 0, 0};
    else d->in_fd = d->out_fd = -1;
}

/* Rank q's input for round t: at byte `at` of its zero-copy buffer, or
 * at `in_region` bytes into its region; NULL when a buffer cannot be mapped. */
SHM_HELPER const char *peer_input(coll_ctx_t *ctx, int q, uint64_t t, size_t at, size_t in_region) {
    if (hdr(ctx->shm, q)->desc[t & 1].d.in_fd >= 0) return peer_data(ctx, q, t, 0, at);
    return region(ctx->shm, q, t, 0) + in_region;
}

/* Elements of a stream's piece: STREAM_PIECE_BYTES, or a whole region where regions are smaller. */
SHM_HELPER size_t stream_piece(const struct coll_shm *s, size_t es) {
    return (s->region < STREAM_PIECE_BYTES ? s->region : STREAM_PIECE_BYTES) / es;
}

/* Single copies between the two ranks' buffers (broadcast_pair): with a
 * core each, above 16 KiB (at 8 KiB the workspace took 1.0 us, this 2.4) */
SHM_HELPER int use_cma(const coll_ctx_t *ctx, size_t bytes) {
    return ctx->shm->cma && ctx->shm->P == 2 && !ctx->comm->oversubscribed && bytes > coll_tun.shm_cma_min_bytes;
}

/* shm_pair.c: 2-rank rounds whose data stays in the ranks' buffers */
COLL_HIDDEN coll_result_t coll_shm_pair_begin(coll_ctx_t *ctx, uint64_t *t, const void *buf, size_t bytes,
                                              const char *what);
COLL_HIDDEN coll_result_t coll_shm_pair_copy(coll_ctx_t *ctx, uint64_t t, char *local, size_t off, size_t bytes,
                                             int write, const char *what);

#endif
