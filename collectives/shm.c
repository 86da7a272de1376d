/* Shared-memory collectives, for communicators whose ranks share one node.
 *
 * Each rank of a context owns a workspace that every peer maps: a header of
 * three counters (each on its own 128-byte line, written by its owner only)
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
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "coll_internal.h"

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
    char *unpacked; /* P x EAGER_BYTES: the eager slots' data, contiguous (eager_get) */
    float line_ns[LINE_SAMPLES]; /* the last loads of a peer's freshly written counter (far_apart) */
    unsigned nline;
    int far_said; /* far_apart as last written to this rank's header */
};

static double now_s(void) {
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
static void copy_bytes(void *dst, const void *src, size_t bytes) {
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
static void copy_nt(void *dst, const void *src, size_t bytes) {
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

static shm_hdr_t *hdr(const struct coll_shm *s, int r) { return (shm_hdr_t *)s->base[r]; }
/* region which (0: A, 1: B) of slot t % 2 of rank r */
static char *region(const struct coll_shm *s, int r, uint64_t t, int which) {
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
static int far_apart(const struct coll_shm *s) {
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
static void (*copy_far(const struct coll_shm *s))(void *, const void *, size_t) {
    return far_apart(s) ? copy_nt : copy_bytes;
}

/* ... by this rank's samples or the peer's */
static int far_either(const struct coll_shm *s) {
    if (coll_tun.shm_far >= 0) return coll_tun.shm_far;
    return far_apart(s) || atomic_load_explicit(&hdr(s, 1 - s->me)->far.v, memory_order_relaxed);
}

static void sample_line(struct coll_shm *s, _Atomic uint64_t *v) {
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

static void publish(struct coll_shm *s, int f, uint64_t t) {
    atomic_store_explicit(&hdr(s, s->me)->f[f].v, t, memory_order_release);
}

static const char *stage_name[F_NUM] = {"its input", "its reduced shard", "the end of the round", "its input"};

/* Waits until peer's counter v reaches t: spins with pause for COLL_SPIN
 * polls (COLL_SPIN_OVERSUBSCRIBED when ranks outnumber cores), then yields
 * at every poll; after COLL_TIMEOUT without it, an error naming that peer. */
static coll_result_t wait_value(coll_ctx_t *ctx, int peer, _Atomic uint64_t *v, uint64_t t, const char *what,
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

static coll_result_t wait_peer(coll_ctx_t *ctx, int peer, int f, uint64_t t, const char *what) {
    return wait_value(ctx, peer, &hdr(ctx->shm, peer)->f[f].v, t, what, stage_name[f]);
}

static coll_result_t wait_all(coll_ctx_t *ctx, int f, uint64_t t, const char *what) {
    for (int q = 0; q < ctx->shm->P; q++) {
        if (q == ctx->shm->me) continue;
        coll_result_t rc = wait_peer(ctx, q, f, t, what);
        if (rc != COLL_SUCCESS) return rc;
    }
    return COLL_SUCCESS;
}

/* Starts a round: its number, once every peer is done with the round that
 * last used its slot. */
static coll_result_t begin_round(coll_ctx_t *ctx, uint64_t *t, const char *what) {
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
static coll_result_t begin_eager_round(coll_ctx_t *ctx, uint64_t *t, const char *what) {
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

static eager_t *eager_slot(const struct coll_shm *s, int r, uint64_t t) { return &hdr(s, r)->eager[t % EAGER_SLOTS]; }

static unsigned eager_lines(size_t bytes) { return bytes ? (unsigned)((bytes + EAGER_DATA - 1) / EAGER_DATA) : 1; }

/* Whether this CPU has CLDEMOTE (Intel, from Sapphire Rapids): it moves a
 * line from this core's caches to the shared L3 (on other CPUs the same
 * bytes are a no-op hint, but the loop is skipped there). */
static int have_cldemote(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c >> 25 & 1);
#else
    return 0;
#endif
}

/* Writes `bytes` of data into this rank's slot of round t, then the round
 * number into the last line it used. `demote`: push the slot's lines to
 * the shared L3, where the peer's loads find them sooner than in this
 * core's L2 (a 2-rank all-reduce on the Intel host, 64 B-2 KiB: 10-15%
 * faster; 4 KiB, and a broadcast's or reduce's run-ahead writer: slower). */
static void eager_put(struct coll_shm *s, uint64_t t, const char *data, size_t bytes, int demote) {
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
static coll_result_t eager_get(coll_ctx_t *ctx, int peer, uint64_t t, char *out, size_t bytes, const char *what) {
    eager_t *e = eager_slot(ctx->shm, peer, t);
    const unsigned full = (unsigned)(bytes / EAGER_DATA), lines = eager_lines(bytes);
    coll_result_t rc = wait_value(ctx, peer, &e->line[lines - 1].t, t, what, stage_name[F_COPIED]);
    if (rc != COLL_SUCCESS) return rc;
    for (unsigned i = 0; i < full; i++) memcpy(out + (size_t)i * EAGER_DATA, e->line[i].data, EAGER_DATA);
    memcpy(out + (size_t)full * EAGER_DATA, e->line[lines - 1].data, bytes - (size_t)full * EAGER_DATA);
    return COLL_SUCCESS;
}

/* Where rank q's data of an eager call is unpacked (eager_get). */
static char *unpacked(const struct coll_shm *s, int q) { return s->unpacked + (size_t)q * EAGER_BYTES; }

/* dst[0, n) = src[0] op src[1] op ... op src[P-1], in that order (dst may
 * be src[0], the only overlap the kernels allow), divided by P for
 * COLL_AVG where avg says so (the hierarchical reduce-scatter divides
 * later, once for every rank). */
static void reduce_srcs(const coll_args_t *a, void *dst, const char *const *src, int P, size_t n, int avg) {
    if (!n) return;
    const coll_op_t op = avg ? a->op : a->op == COLL_AVG ? COLL_SUM : a->op; /* (P >= 2: shm needs a peer) */
    for (int q = 1; q < P - 1; q++) coll_reduce_kernel(a->dtype, a->op, dst, q == 1 ? src[0] : dst, src[q], n);
    coll_reduce_last(a->dtype, op, dst, P == 2 ? src[0] : dst, src[P - 1], n, P);
}

/* reduce_srcs into a workspace shard for the peers, copying each piece to
 * this rank's output while it is still in L1 (rather than reading the
 * whole shard back from L2/L3 with the peers' shards). */
static void reduce_keep(const coll_args_t *a, char *shard, char *out, const char *const *src, int P, size_t n) {
    const size_t es = coll_dtype_size(a->dtype), per = KEEP_PIECE_BYTES / es;
    const char *at[MAX_RANKS];
    for (size_t i = 0; i < n; i += per) {
        const size_t k = n - i < per ? n - i : per;
        for (int q = 0; q < P; q++) at[q] = src[q] + i * es;
        reduce_srcs(a, shard + i * es, at, P, k, 1);
        copy_bytes(out + i * es, shard + i * es, k * es);
    }
}

/* Copies a two-shot call's input into this rank's region, all but
 * [skip_lo, skip_hi) (the shard this rank reduces from its own input); up
 * to COLL_SHM_NT_MAX_BYTES a call with non-temporal stores. The peers then
 * read the lines from memory, with the prefetchers' help, where ordinary
 * stores left them in this core's L2 for the peers to take one at a time
 * (2 ranks, 32-128 KiB: reduce 1.2-1.3x faster, all-reduce 1.1x; at 512
 * KiB-2 MiB the lines leave this L2 for the shared L3 anyway, and the
 * all-reduce was 1.3-1.6x slower with them). Not with ranks outnumbering
 * cores: a peer on this core would have read them from this L2 (4 ranks on
 * 2 cores: all-reduce 1.15-1.4x slower with them). At every size where the
 * cores are far apart (4 ranks on 2 cores: reduce 1.8x faster). */
static void copy_in(const coll_ctx_t *ctx, const coll_args_t *a, char *dst, const char *in, size_t n,
                    size_t skip_lo, size_t skip_hi) {
    const size_t es = coll_dtype_size(a->dtype);
    void (*copy)(void *, const void *, size_t) =
        !ctx->comm->oversubscribed && a->count * es <= coll_tun.shm_nt_max_bytes ? copy_nt : copy_far(ctx->shm);
    copy(dst, in, skip_lo * es);
    copy(dst + skip_hi * es, in + skip_hi * es, (n - skip_hi) * es);
}

/* Maps a shared memfd (a workspace or a coll_mem_alloc buffer) of the given size. */
static char *map_fd(int fd, size_t bytes) {
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return NULL;
    madvise(p, bytes, MADV_HUGEPAGE); /* where the system allows it; refused silently otherwise */
    return p;
}

/* A peer's coll_mem_alloc buffer, mapped here on first use (kept for
 * later calls; the oldest is unmapped when the cache is full). */
static char *peer_buffer(coll_ctx_t *ctx, int q, int fd, uint64_t id, size_t bytes) {
    struct coll_shm *s = ctx->shm;
    for (int i = 0; i < s->nmap; i++)
        if (s->map[i].rank == q && s->map[i].id == id) return s->map[i].base;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)hdr(s, q)->pid, fd);
    int pfd = open(path, O_RDWR | O_CLOEXEC);
    char *p = pfd >= 0 ? map_fd(pfd, bytes) : NULL;
    if (pfd >= 0) close(pfd);
    if (!p) {
        coll_error(ctx->comm, COLL_ERR_INTERNAL, "shared memory: cannot map rank %d's coll_mem_alloc buffer (%s): %s", q,
                   path, strerror(errno));
        return NULL;
    }
    int i;
    if (s->nmap < MAP_CACHE) i = s->nmap++;
    else i = s->evict++ % MAP_CACHE, munmap(s->map[i].base, s->map[i].bytes);
    s->map[i].rank = q, s->map[i].id = id, s->map[i].base = p, s->map[i].bytes = bytes;
    return p;
}

/* Where rank q's input (which 0) or reduced values (1) for round t start,
 * the round starting at_bytes into the call's buffers. */
static const char *peer_data(coll_ctx_t *ctx, int q, uint64_t t, int which, size_t at_bytes) {
    const shm_desc_t *d = &hdr(ctx->shm, q)->desc[t & 1].d;
    const int fd = which ? d->out_fd : d->in_fd;
    if (fd < 0) return region(ctx->shm, q, t, which);
    char *base = peer_buffer(ctx, q, fd, which ? d->out_id : d->in_id, which ? d->out_bytes : d->in_bytes);
    return base ? base + (which ? d->out_off : d->in_off) + at_bytes : NULL;
}

/* Every rank's descriptor of this round points at coll_mem_alloc buffers
 * (its input; and its output where `out` asks). */
static int all_zero_copy(const struct coll_shm *s, int out) {
    const uint64_t t = s->round;
    for (int q = 0; q < s->P; q++) {
        const shm_desc_t *d = &hdr(s, q)->desc[t & 1].d;
        if (d->in_fd < 0 || (out && d->out_fd < 0)) return 0;
    }
    return 1;
}

/* Publishes this round's input: a coll_mem_alloc buffer peers read in
 * place (ref, or NULL: the workspace's region, which the caller fills). */
static void describe_input(struct coll_shm *s, uint64_t t, const coll_mem_ref_t *ref) {
    shm_desc_t *d = &hdr(s, s->me)->desc[t & 1].d;
    if (ref) *d = (shm_desc_t){ref->fd, -1, ref->id, 0, ref->bytes, 0, ref->off, 0, 0, 0};
    else d->in_fd = d->out_fd = -1;
}

/* Rank q's input for round t: at byte `at` of its zero-copy buffer, or
 * at `in_region` bytes into its region; NULL when a buffer cannot be mapped. */
static const char *peer_input(coll_ctx_t *ctx, int q, uint64_t t, size_t at, size_t in_region) {
    if (hdr(ctx->shm, q)->desc[t & 1].d.in_fd >= 0) return peer_data(ctx, q, t, 0, at);
    return region(ctx->shm, q, t, 0) + in_region;
}

/* Elements of a stream's piece: STREAM_PIECE_BYTES, or a whole region where regions are smaller. */
static size_t stream_piece(const struct coll_shm *s, size_t es) {
    return (s->region < STREAM_PIECE_BYTES ? s->region : STREAM_PIECE_BYTES) / es;
}

/* Whether a 2-rank all-reduce streams through memory (allreduce_stream)
 * or takes the two-shot: the stream where either rank finds the cores far
 * apart, with coll_mem_alloc buffers on either rank only up to
 * ZC_STREAM_MAX_BYTES (far apart, the zero-copy two-shot's reads from the
 * peer's cache took 1.1-1.9x the stream's time at 64 KiB-16 MiB, but from
 * 64 MiB, where both run at memory's pace, the stream's extra copies took
 * 1.6-2x). A round of its own, as every rank must take the same path; its
 * hand-off is also a sample. */
#define ZC_STREAM_MAX_BYTES ((size_t)16 << 20)
static coll_result_t allreduce_pick(coll_ctx_t *ctx, int zc, size_t bytes, int *stream) {
    struct coll_shm *s = ctx->shm;
    const int peer = 1 - s->me;
    uint64_t t;
    coll_result_t rc = begin_round(ctx, &t, "allreduce");
    if (rc != COLL_SUCCESS) return rc;
    hdr(s, s->me)->desc[t & 1].d.far = (far_apart(s) ? 1 : 0) | (zc ? 2 : 0); /* (both read both votes) */
    publish(s, F_COPIED, t);
    sample_line(s, &hdr(s, peer)->f[F_COPIED].v);
    rc = wait_peer(ctx, peer, F_COPIED, t, "allreduce");
    if (rc != COLL_SUCCESS) return rc;
    const int votes = hdr(s, s->me)->desc[t & 1].d.far | hdr(s, peer)->desc[t & 1].d.far;
    *stream = (votes & 1) && (!(votes & 2) || bytes <= ZC_STREAM_MAX_BYTES);
    publish(s, F_DONE, t);
    return COLL_SUCCESS;
}

/* 2-rank all-reduce through memory (as reduce_stream, both ways), for cores
 * far apart: each rank streams its input into its regions with
 * non-temporal stores, piece by piece, one piece ahead, and reduces each of
 * the peer's pieces as it lands, in rank order. */
static coll_result_t allreduce_stream(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_shm *s = ctx->shm;
    const size_t es = coll_dtype_size(a->dtype), per_round = s->region / es;
    const size_t per = stream_piece(s, es);
    const int me = s->me, peer = 1 - me;
    const char *in = a->sendbuf;
    char *out = a->recvbuf;
    coll_result_t rc = COLL_SUCCESS;
    size_t n;
    for (size_t at = 0; at < a->count; at += n) {
        n = a->count - at < per_round ? a->count - at : per_round;
        uint64_t t;
        COLL_TRY(begin_round(ctx, &t, "allreduce"));
        const uint64_t k0 = t << 20;
        char *mine = region(s, me, t, 0);
        const char *theirs = region(s, peer, t, 0);
        uint64_t sent = k0;
        for (size_t j = 0, k = k0 + 1; j < n; j += per, k++) {
            /* this piece and the next out before waiting for the peer's */
            for (size_t next = (sent - k0) * per; next < n && sent < k + 1; next += per) {
                const size_t m = n - next < per ? n - next : per;
                copy_nt(mine + next * es, in + (at + next) * es, m * es);
                publish(s, F_PIECES, ++sent);
            }
            const size_t m = n - j < per ? n - j : per;
            sample_line(s, &hdr(s, peer)->f[F_PIECES].v);
            COLL_TRY(wait_value(ctx, peer, &hdr(s, peer)->f[F_PIECES].v, k, "allreduce", stage_name[F_PIECES]));
            const char *src[2];
            src[me] = in + (at + j) * es, src[peer] = theirs + j * es;
            if (me == 1 && in == out) { /* the kernels allow dst == src[0] only */
                char *tmp = region(s, me, t, 1) + j * es;
                reduce_srcs(a, tmp, src, 2, m, 1);
                copy_bytes(out + (at + j) * es, tmp, m * es);
            } else reduce_srcs(a, out + (at + j) * es, src, 2, m, 1);
        }
        publish(s, F_DONE, t);
    }
fail:
    return rc;
}

/* Two-shot: each rank reduces its shard of the round, then copies the
 * others'. With both buffers from coll_mem_alloc (zero-copy) a rank's input
 * and results stay in its own buffers: the peers read them there, and the
 * call returns only when every peer is done with them. */
coll_result_t coll_shm_allreduce(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_shm *s = ctx->shm;
    const size_t es = coll_dtype_size(a->dtype), per_round = s->region / es, bytes = a->count * es;
    const int P = s->P, me = s->me;
    const int oneshot = bytes <= coll_tun.shm_oneshot_bytes;
    coll_mem_ref_t rin, rout;
    /* (one-shot has every rank read every input while writing its own
     * result: a zero-copy buffer in place would be overwritten too early) */
    const int zc = !oneshot && P <= ZC_MAX_RANKS && coll_mem_find(ctx->comm, a->sendbuf, bytes, &rin) &&
                   coll_mem_find(ctx->comm, a->recvbuf, bytes, &rout);
    const char *in = a->sendbuf;
    char *out = a->recvbuf;
    const char *src[MAX_RANKS];
    coll_result_t rc = COLL_SUCCESS;
    uint64_t t = 0;
    size_t n;
    if (P == 2 && !oneshot && !ctx->comm->oversubscribed && bytes > EAGER_BYTES) {
        int stream;
        COLL_TRY(allreduce_pick(ctx, zc, bytes, &stream));
        if (stream) return allreduce_stream(ctx, a);
    }
    if (bytes <= EAGER_BYTES) { /* every rank reduces every slot, in rank order: the same result everywhere */
        COLL_TRY(begin_eager_round(ctx, &t, "allreduce"));
        eager_put(s, t, in, bytes, P == 2 && !ctx->comm->oversubscribed && bytes <= EAGER_DEMOTE_BYTES);
        for (int q = 0; q < P; q++) {
            if (q != me) COLL_TRY(eager_get(ctx, q, t, unpacked(s, q), bytes, "allreduce"));
            src[q] = q != me ? unpacked(s, q) : in;
        }
        if (in == out && me > 0) src[me] = memcpy(unpacked(s, me), in, bytes); /* the kernels allow dst == src[0] only */
        reduce_srcs(a, out, src, P, a->count, 1);
        publish(s, F_DONE, t);
        return COLL_SUCCESS;
    }
    for (size_t at = 0; at < a->count; at += n) {
        n = a->count - at < per_round ? a->count - at : per_round;
        COLL_TRY(begin_round(ctx, &t, "allreduce"));
        shm_desc_t *d = &hdr(s, me)->desc[t & 1].d;
        if (zc) *d = (shm_desc_t){rin.fd, rout.fd, rin.id, rout.id, rin.bytes, rout.bytes, rin.off, rout.off, 0, 0};
        else describe_input(s, t, NULL);
        if (!zc && oneshot) copy_bytes(region(s, me, t, 0), in + at * es, n * es);
        else if (!zc) { /* only the shards the peers reduce: this rank reads its own from its input */
            const size_t mlo = coll_block_offset(n, P, me);
            copy_in(ctx, a, region(s, me, t, 0), in + at * es, n, mlo, mlo + coll_block_count(n, P, me));
        }
        publish(s, F_COPIED, t);
        COLL_TRY(wait_all(ctx, F_COPIED, t, "allreduce"));
        /* every rank zero-copy (each sees every descriptor, so all decide
         * alike): no region is used, so this round takes the whole rest
         * (the rounds' hand-offs cost 2-2.5x at 512 KiB-8 MiB) */
        if (zc && at == 0 && all_zero_copy(s, 1)) n = a->count;
        if (oneshot) {
            for (int q = 0; q < P; q++) src[q] = region(s, q, t, 0); /* rank order: the same result everywhere */
            reduce_srcs(a, out + at * es, src, P, n, 1);
            publish(s, F_DONE, t);
            continue;
        }
        const size_t lo = coll_block_offset(n, P, me), len = coll_block_count(n, P, me);
        /* this rank's input first, so that in place the first operand is
         * the destination (the kernels allow only that overlap) */
        src[0] = in + (at + lo) * es;
        for (int q = 1; q < P; q++) {
            const char *from = peer_data(ctx, q <= me ? q - 1 : q, t, 0, at * es);
            if (!from) COLL_TRY(coll_comm_fail(ctx->comm, COLL_ERR_INTERNAL));
            src[q] = from + lo * es;
        }
        if (zc) reduce_srcs(a, out + (at + lo) * es, src, P, len, 1);
        else reduce_keep(a, region(s, me, t, 1) + lo * es, out + (at + lo) * es, src, P, len);
        publish(s, F_REDUCED, t);
        COLL_TRY(wait_all(ctx, F_REDUCED, t, "allreduce"));
        for (int q = 0; q < P; q++) {
            if (q == me) continue; /* already in place */
            const size_t qlo = coll_block_offset(n, P, q);
            const char *from = peer_data(ctx, q, t, 1, at * es);
            if (!from) COLL_TRY(coll_comm_fail(ctx->comm, COLL_ERR_INTERNAL));
            const size_t qb = coll_block_count(n, P, q) * es;
            if (qb >= NT_MIN_BYTES) copy_nt(out + (at + qlo) * es, from + qlo * es, qb);
            else copy_bytes(out + (at + qlo) * es, from + qlo * es, qb);
        }
        publish(s, F_DONE, t);
    }
    if (zc && t) COLL_TRY(wait_all(ctx, F_DONE, t, "allreduce"));
fail:
    return rc;
}

/* Elements of block q (of n over P) in the round starting j into every block. */
static size_t piece(size_t n, int P, int q, size_t j, size_t per) {
    const size_t left = coll_block_count(n, P, q) - j; /* j <= the shortest block: blocks differ by one at most */
    return left < per ? left : per;
}

/* Rounds carry up to `per` elements of every rank's block (blocks differ
 * by one element at most, so every rank counts the same rounds). An input
 * from coll_mem_alloc is read by the peers in place (zero-copy: the call
 * returns once they are done with it); when every rank's is, one round
 * takes the whole buffer. */
coll_result_t coll_shm_reduce_scatter_blocks(coll_ctx_t *ctx, const coll_args_t *a, const char *in, size_t n, char *out,
                                             int avg) {
    struct coll_shm *s = ctx->shm;
    const int P = s->P, me = s->me;
    const size_t es = coll_dtype_size(a->dtype), per = s->region / (es * (size_t)P);
    const size_t longest = coll_block_count(n, P, 0), lo = coll_block_offset(n, P, me);
    coll_mem_ref_t ref;
    const int zc = P <= ZC_MAX_RANKS && coll_mem_find(ctx->comm, in, n * es, &ref);
    const char *src[MAX_RANKS];
    coll_result_t rc = COLL_SUCCESS;
    uint64_t t = 0;
    for (size_t j = 0, step = per; j < longest; j += step) {
        COLL_TRY(begin_round(ctx, &t, "reduce-scatter"));
        describe_input(s, t, zc ? &ref : NULL);
        for (int q = 0; q < P && !zc; q++) { /* the peers' parts of this round; this rank reads its own from in */
            if (q != me)
                copy_far(s)(region(s, me, t, 0) + (size_t)q * per * es, in + (coll_block_offset(n, P, q) + j) * es,
                            piece(n, P, q, j, per) * es);
        }
        publish(s, F_COPIED, t);
        COLL_TRY(wait_all(ctx, F_COPIED, t, "reduce-scatter"));
        if (zc && j == 0 && all_zero_copy(s, 0)) step = longest;
        const size_t len = piece(n, P, me, j, step);
        /* this rank's input first: in place, out is that operand exactly */
        src[0] = in + (lo + j) * es;
        for (int q = 1; q < P; q++) {
            const int peer = q <= me ? q - 1 : q;
            src[q] = peer_input(ctx, peer, t, (lo + j) * es, (size_t)me * per * es);
            if (!src[q]) COLL_TRY(coll_comm_fail(ctx->comm, COLL_ERR_INTERNAL));
        }
        reduce_srcs(a, out + j * es, src, P, len, avg);
        publish(s, F_DONE, t);
    }
    if (zc && t) COLL_TRY(wait_all(ctx, F_DONE, t, "reduce-scatter"));
fail:
    return rc;
}

coll_result_t coll_shm_reduce_scatter(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t P = (size_t)ctx->shm->P;
    return coll_shm_reduce_scatter_blocks(ctx, a, a->sendbuf, a->count * P, a->recvbuf, 1);
}

/* A buf from coll_mem_alloc is read by the peers in place, as above. */
coll_result_t coll_shm_allgather_blocks(coll_ctx_t *ctx, const coll_args_t *a, char *buf, size_t n) {
    struct coll_shm *s = ctx->shm;
    const int P = s->P, me = s->me;
    const size_t es = coll_dtype_size(a->dtype), per = s->region / es;
    const size_t longest = coll_block_count(n, P, 0), lo = coll_block_offset(n, P, me);
    coll_mem_ref_t ref;
    const int zc = P <= ZC_MAX_RANKS && coll_mem_find(ctx->comm, buf, n * es, &ref);
    coll_result_t rc = COLL_SUCCESS;
    uint64_t t = 0;
    for (size_t j = 0, step = per; j < longest; j += step) {
        COLL_TRY(begin_round(ctx, &t, "allgather"));
        describe_input(s, t, zc ? &ref : NULL);
        if (!zc) copy_far(s)(region(s, me, t, 0), buf + (lo + j) * es, piece(n, P, me, j, per) * es);
        publish(s, F_COPIED, t);
        COLL_TRY(wait_all(ctx, F_COPIED, t, "allgather"));
        if (zc && j == 0 && all_zero_copy(s, 0)) step = longest;
        for (int q = 0; q < P; q++) {
            if (q == me) continue;
            const size_t qlo = coll_block_offset(n, P, q), qb = piece(n, P, q, j, step) * es;
            const char *from = peer_input(ctx, q, t, (qlo + j) * es, 0);
            if (!from) COLL_TRY(coll_comm_fail(ctx->comm, COLL_ERR_INTERNAL));
            if (qb >= NT_MIN_BYTES) copy_nt(buf + (qlo + j) * es, from, qb);
            else copy_bytes(buf + (qlo + j) * es, from, qb);
        }
        publish(s, F_DONE, t);
    }
    if (zc && t) COLL_TRY(wait_all(ctx, F_DONE, t, "allgather"));
fail:
    return rc;
}

/* Moves bytes between this process and rank q's memory at `remote`, with
 * the kernel's single copy (as Open MPI's CMA does); `write` sends. */
static coll_result_t cma_copy(coll_ctx_t *ctx, int q, char *local, uint64_t remote, size_t bytes, int write,
                              const char *what) {
    const pid_t pid = (pid_t)hdr(ctx->shm, q)->pid;
    while (bytes > 0) {
        struct iovec l = {local, bytes}, r = {(void *)(uintptr_t)remote, bytes};
        ssize_t got = write ? process_vm_writev(pid, &l, 1, &r, 1, 0) : process_vm_readv(pid, &l, 1, &r, 1, 0);
        if (got <= 0) {
            if (got < 0 && errno == EINTR) continue;
            const int w = coll_world_rank(ctx, q);
            if (got < 0 && errno == ESRCH) { /* killed: reported as the waits report a lost rank */
                coll_error(ctx->comm, COLL_ERR_TIMEOUT,
                           "no progress from rank %d in a shared-memory %s: its process is gone (rank %d lost)", w,
                           what, w);
                return coll_comm_fail(ctx->comm, COLL_ERR_TIMEOUT);
            }
            coll_error(ctx->comm, COLL_ERR_INTERNAL, "shared-memory %s: cannot %s rank %d's buffer: %s", what,
                       write ? "write" : "read", w, got < 0 ? strerror(errno) : "nothing moved");
            return coll_comm_fail(ctx->comm, COLL_ERR_INTERNAL);
        }
        local += got, remote += (uint64_t)got, bytes -= (size_t)got;
    }
    return COLL_SUCCESS;
}

/* Single copies between the two ranks' buffers (broadcast_pair): with a
 * core each, above 16 KiB (at 8 KiB the workspace took 1.0 us, this 2.4) */
static int use_cma(const coll_ctx_t *ctx, size_t bytes) {
    return ctx->shm->cma && ctx->shm->P == 2 && !ctx->comm->oversubscribed && bytes > coll_tun.shm_cma_min_bytes;
}

/* Starts a 2-rank round whose data stays in the ranks' buffers: publishes
 * where this rank's `bytes` at `buf` are (its address here, and its memfd
 * where coll_mem_alloc made it), then waits for the peer's. */
static coll_result_t pair_begin(coll_ctx_t *ctx, uint64_t *t, const void *buf, size_t bytes, const char *what) {
    struct coll_shm *s = ctx->shm;
    coll_mem_ref_t ref;
    coll_result_t rc = begin_round(ctx, t, what);
    if (rc != COLL_SUCCESS) return rc;
    describe_input(s, *t, coll_mem_find(ctx->comm, buf, bytes, &ref) ? &ref : NULL);
    hdr(s, s->me)->desc[*t & 1].d.user = (uint64_t)(uintptr_t)buf;
    publish(s, F_COPIED, *t);
    return wait_peer(ctx, 1 - s->me, F_COPIED, *t, what);
}

/* Copies `bytes` between `local` and the peer's published buffer, `off`
 * bytes into it (`write`: to the peer): through the mapping where the
 * peer's buffer is coll_mem_alloc's (no system call: 4-16 MiB all-gathers
 * took 0.65-0.9x the time), with the kernel's single copy otherwise. */
static coll_result_t pair_copy(coll_ctx_t *ctx, uint64_t t, char *local, size_t off, size_t bytes, int write,
                               const char *what) {
    const int peer = 1 - ctx->shm->me;
    const shm_desc_t *d = &hdr(ctx->shm, peer)->desc[t & 1].d;
    if (d->in_fd < 0) return cma_copy(ctx, peer, local, d->user + off, bytes, write, what);
    char *mapped = (char *)peer_data(ctx, peer, t, 0, off);
    if (!mapped) return coll_comm_fail(ctx->comm, COLL_ERR_INTERNAL);
    if (write) copy_bytes(mapped, local, bytes);
    else if (bytes >= NT_MIN_BYTES) copy_nt(local, mapped, bytes);
    else copy_bytes(local, mapped, bytes);
    return COLL_SUCCESS;
}

/* 2-rank all-gather in one round: each rank reads the peer's block from
 * the peer's send buffer while it copies its own. */
static coll_result_t allgather_pair(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t bytes = a->count * coll_dtype_size(a->dtype);
    const int me = ctx->shm->me, peer = 1 - me;
    char *buf = a->recvbuf;
    uint64_t t;
    coll_result_t rc = COLL_SUCCESS;
    COLL_TRY(pair_begin(ctx, &t, a->sendbuf, bytes, "allgather"));
    coll_copy(buf + (size_t)me * bytes, a->sendbuf, bytes);
    COLL_TRY(pair_copy(ctx, t, buf + (size_t)peer * bytes, 0, bytes, 0, "allgather"));
    publish(ctx->shm, F_DONE, t);
    COLL_TRY(wait_peer(ctx, peer, F_DONE, t, "allgather"));
fail:
    return rc;
}

coll_result_t coll_shm_allgather(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t P = (size_t)ctx->shm->P, es = coll_dtype_size(a->dtype);
    char *buf = a->recvbuf;
    if (use_cma(ctx, a->count * es * P)) return allgather_pair(ctx, a);
    coll_copy(buf + (size_t)ctx->shm->me * a->count * es, a->sendbuf, a->count * es);
    return coll_shm_allgather_blocks(ctx, a, buf, a->count * P);
}

/* 2-rank broadcast, each rank on its own core, in one round: the reader
 * reads the first half of the root's buffer while the root writes the
 * second half into the reader's, so each copies half, where through the
 * workspace the root copied all of it in and the reader all of it out
 * (0.6-0.9x Open MPI's single copy at 64 KiB-2 MiB; this: 1.35-2.2x).
 * Each returns once the other is done with its buffer. (Readers of the
 * root's buffer at 4 ranks on 2 cores measured 1.0-1.2x Open MPI, the
 * workspace 1.1-2.5x: more ranks keep to the workspace.) */
static coll_result_t broadcast_pair(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t bytes = a->count * coll_dtype_size(a->dtype);
    const size_t lines = (bytes / 2 + 63) & ~(size_t)63, half = lines < bytes ? lines : bytes; /* the reader's part */
    char *buf = a->recvbuf;
    uint64_t t;
    coll_result_t rc = COLL_SUCCESS;
    COLL_TRY(pair_begin(ctx, &t, buf, bytes, "broadcast"));
    if (ctx->shm->me == a->root) COLL_TRY(pair_copy(ctx, t, buf + half, half, bytes - half, 1, "broadcast"));
    else COLL_TRY(pair_copy(ctx, t, buf, 0, half, 0, "broadcast"));
    publish(ctx->shm, F_DONE, t);
    COLL_TRY(wait_peer(ctx, 1 - ctx->shm->me, F_DONE, t, "broadcast"));
fail:
    return rc;
}

coll_result_t coll_shm_broadcast(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_shm *s = ctx->shm;
    if (use_cma(ctx, a->count * coll_dtype_size(a->dtype))) return broadcast_pair(ctx, a);
    const size_t es = coll_dtype_size(a->dtype), per_round = s->region / es;
    char *buf = a->recvbuf;
    /* measured at 2 ranks: 16 MiB in 2.4-2.7 ms with non-temporal stores,
     * 5.4-6.6 ms without; no gain below a few MiB (the peers read the data
     * from memory instead of a cache) */
    const int nt = a->count * es >= s->bcast_nt_min || far_apart(s);
    coll_result_t rc = COLL_SUCCESS;
    if (a->count * es <= EAGER_BYTES) {
        uint64_t t;
        if (s->me == a->root) {
            COLL_TRY(begin_eager_round(ctx, &t, "broadcast"));
            eager_put(s, t, buf, a->count * es, 0);
        } else {
            /* (a reader's slot is not read by anyone: nothing to wait for) */
            t = ++s->round;
            COLL_TRY(eager_get(ctx, a->root, t, buf, a->count * es, "broadcast"));
        }
        publish(s, F_DONE, t);
        return COLL_SUCCESS;
    }
    for (size_t at = 0; at < a->count; at += per_round) {
        const size_t n = a->count - at < per_round ? a->count - at : per_round;
        uint64_t t;
        COLL_TRY(begin_round(ctx, &t, "broadcast"));
        if (s->me == a->root) {
            if (nt) copy_nt(region(s, s->me, t, 0), buf + at * es, n * es);
            else copy_bytes(region(s, s->me, t, 0), buf + at * es, n * es);
            publish(s, F_COPIED, t);
        } else {
            COLL_TRY(wait_peer(ctx, a->root, F_COPIED, t, "broadcast"));
            copy_bytes(buf + at * es, region(s, a->root, t, 0), n * es);
        }
        publish(s, F_DONE, t);
    }
fail:
    return rc;
}

/* 2-rank reduce, each rank on its own core, above the one-shot size: the
 * non-root streams its input into its regions, publishing every
 * STREAM_PIECE_BYTES, while the root reduces each piece as it lands
 * (one-shot, pipelined). With non-temporal stores no data line moves from
 * one core's cache to the other's: they meet in memory. Where the cores are
 * far apart (far_apart) the two-shot, whose reduced shard the root reads
 * back from the peer's cache, ran 0.22-0.61x Open MPI at 32 KiB-32 MiB, this
 * 1.1-3.0x; where they are close, 0.99-3.6x against the two-shot's
 * 0.86-2.6x. The root's operand comes first. */
static coll_result_t reduce_stream(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_shm *s = ctx->shm;
    const size_t es = coll_dtype_size(a->dtype), per_round = s->region / es;
    const size_t per = stream_piece(s, es);
    const int me = s->me, root = a->root, peer = 1 - me;
    const char *in = a->sendbuf;
    char *out = a->recvbuf;
    /* non-temporal stores where the cores are far apart, and up to
     * COLL_SHM_NT_MAX_BYTES where they are close (128 KiB: 12.8-14.8 us
     * against 14.5-18.9 with ordinary stores; 512 KiB: 37-40 against 18-20) */
    const int nt = a->count * es <= coll_tun.shm_nt_max_bytes || far_either(s);
    coll_result_t rc = COLL_SUCCESS;
    size_t n;
    for (size_t at = 0; at < a->count; at += n) {
        n = a->count - at < per_round ? a->count - at : per_round;
        uint64_t t;
        COLL_TRY(begin_round(ctx, &t, "reduce"));
        uint64_t k = t << 20; /* + pieces of round t published (fewer than 2^20: a region is at most 1 GiB) */
        for (size_t j = 0; j < n; j += per) {
            const size_t m = n - j < per ? n - j : per;
            if (me != root) {
                if (nt) copy_nt(region(s, me, t, 0) + j * es, in + (at + j) * es, m * es);
                else copy_bytes(region(s, me, t, 0) + j * es, in + (at + j) * es, m * es);
                publish(s, F_PIECES, ++k);
            } else {
                sample_line(s, &hdr(s, peer)->f[F_PIECES].v);
                COLL_TRY(wait_value(ctx, peer, &hdr(s, peer)->f[F_PIECES].v, ++k, "reduce", stage_name[F_PIECES]));
                const char *src[2] = {in + (at + j) * es, region(s, peer, t, 0) + j * es};
                reduce_srcs(a, out + (at + j) * es, src, 2, m, 1);
            }
        }
        publish(s, F_DONE, t);
    }
fail:
    return rc;
}

/* One-shot up to COLL_SHM_ONESHOT_BYTES (the root reduces from every
 * peer's input); two-shot above: every rank reduces its shard of the
 * round, the root gathers. As in the all-reduce, a rank copies in only the shards its peers reduce
 * (its own it reads from its input), and the root reduces its shard
 * straight into its output. */
coll_result_t coll_shm_reduce(coll_ctx_t *ctx, const coll_args_t *a) {
    struct coll_shm *s = ctx->shm;
    const size_t es = coll_dtype_size(a->dtype), per_round = s->region / es;
    const int P = s->P, me = s->me, root = a->root, oneshot = a->count * es <= coll_tun.shm_oneshot_bytes;
    const char *in = a->sendbuf;
    char *out = a->recvbuf;
    const char *src[MAX_RANKS];
    coll_result_t rc = COLL_SUCCESS;
    if (P == 2 && !ctx->comm->oversubscribed && !oneshot && a->count * es > EAGER_BYTES) return reduce_stream(ctx, a);
    if (a->count * es <= EAGER_BYTES) {
        uint64_t t;
        if (me != root) {
            COLL_TRY(begin_eager_round(ctx, &t, "reduce"));
            eager_put(s, t, in, a->count * es, 0);
        } else {
            t = ++s->round; /* the root's slot is not read */
            src[0] = in;
            for (int q = 1; q < P; q++) {
                const int peer = q <= me ? q - 1 : q;
                COLL_TRY(eager_get(ctx, peer, t, unpacked(s, peer), a->count * es, "reduce"));
                src[q] = unpacked(s, peer);
            }
            reduce_srcs(a, out, src, P, a->count, 1);
        }
        publish(s, F_DONE, t);
        return COLL_SUCCESS;
    }
    for (size_t at = 0; at < a->count; at += per_round) {
        const size_t n = a->count - at < per_round ? a->count - at : per_round;
        uint64_t t;
        COLL_TRY(begin_round(ctx, &t, "reduce"));
        if (oneshot) { /* one hand-off: the root reduces straight from the peers' inputs */
            if (me != root) copy_bytes(region(s, me, t, 0), in + at * es, n * es), publish(s, F_COPIED, t);
            else {
                COLL_TRY(wait_all(ctx, F_COPIED, t, "reduce"));
                src[0] = in + at * es;
                for (int q = 1; q < P; q++) src[q] = region(s, q <= me ? q - 1 : q, t, 0);
                reduce_srcs(a, out + at * es, src, P, n, 1);
            }
            publish(s, F_DONE, t);
            continue;
        }
        const size_t lo = coll_block_offset(n, P, me), len = coll_block_count(n, P, me);
        copy_in(ctx, a, region(s, me, t, 0), in + at * es, n, lo, lo + len);
        publish(s, F_COPIED, t);
        COLL_TRY(wait_all(ctx, F_COPIED, t, "reduce"));
        /* this rank's input first: at an in-place root, out is that operand exactly */
        src[0] = in + (at + lo) * es;
        for (int q = 1; q < P; q++) src[q] = region(s, q <= me ? q - 1 : q, t, 0) + lo * es;
        char *mine = me == root ? out + (at + lo) * es : region(s, me, t, 1) + lo * es;
        reduce_srcs(a, mine, src, P, len, 1);
        publish(s, F_REDUCED, t);
        if (me == root) {
            COLL_TRY(wait_all(ctx, F_REDUCED, t, "reduce"));
            for (int q = 0; q < P; q++) {
                if (q == me) continue;
                const size_t qlo = coll_block_offset(n, P, q);
                copy_bytes(out + (at + qlo) * es, region(s, q, t, 1) + qlo * es, coll_block_count(n, P, q) * es);
            }
        }
        publish(s, F_DONE, t);
    }
fail:
    return rc;
}

coll_result_t coll_shm_barrier(coll_ctx_t *ctx, const coll_args_t *a) {
    (void)a;
    const uint64_t t = ++ctx->shm->round;
    publish(ctx->shm, F_DONE, t); /* done with every round before this one */
    return wait_all(ctx, F_DONE, t, "barrier");
}

/* ---- set-up ---- */

static void unmap_all(struct coll_shm *s) {
    for (int i = 0; i < s->nmap; i++) munmap(s->map[i].base, s->map[i].bytes);
    for (int r = 0; r < s->P; r++)
        if (s->base[r] && s->base[r] != MAP_FAILED) munmap(s->base[r], s->seg);
    free(s->base);
    free(s->unpacked);
    free(s);
}

coll_result_t coll_shm_ctx_init(coll_ctx_t *ctx) {
    const coll_comm_t c = ctx->comm;
    const int P = ctx->size;
    ctx->shm = NULL;
    struct coll_shm *s = calloc(1, sizeof *s);
    int ok = s != NULL, fd = -1;
    const char *why = "out of memory";
    if (s) {
        s->P = P;
        s->me = ctx->rank;
        s->region = coll_tun.shm_chunk_bytes & ~(size_t)63;
        s->seg = HDR_BYTES + 4 * s->region;
        s->base = calloc((size_t)P, sizeof *s->base);
        s->unpacked = aligned_alloc(64, (size_t)P * EAGER_BYTES);
        ok = s->base != NULL && s->unpacked != NULL && s->region >= (size_t)P * 16 && P <= MAX_RANKS; /* a reduce-scatter round moves one element per rank */
        if (s->base && s->unpacked && !ok) why = P > MAX_RANKS ? "more than 256 ranks on the node" : "COLL_SHM_CHUNK_BYTES below 16 bytes per rank";
    }
    if (ok) {
        fd = (int)memfd_create("coll-shm", MFD_CLOEXEC);
        ok = fd >= 0 && ftruncate(fd, (off_t)s->seg) == 0 && (s->base[s->me] = map_fd(fd, s->seg)) != NULL;
        if (!ok) why = strerror(errno);
        else hdr(s, s->me)->pid = (int32_t)getpid(), hdr(s, s->me)->self = (uint64_t)(uintptr_t)s->base[s->me];
    }
    int mine[2] = {ok ? (int)getpid() : -1, fd}, *all = malloc(2 * sizeof(int) * (size_t)P);
    int rc = all ? MPI_Allgather(mine, 2, MPI_INT, all, 2, MPI_INT, ctx->mpi) : MPI_ERR_NO_MEM;
    for (int q = 0; ok && rc == MPI_SUCCESS && q < P; q++) {
        if (q == s->me) continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/fd/%d", all[2 * q], all[2 * q + 1]);
        int pfd = all[2 * q] > 0 ? open(path, O_RDWR | O_CLOEXEC) : -1;
        ok = pfd >= 0 && (s->base[q] = map_fd(pfd, s->seg)) != NULL;
        if (!ok) why = all[2 * q] > 0 ? strerror(errno) : "a peer could not create its workspace";
        if (pfd >= 0) close(pfd);
    }
    free(all);
    /* single copies between ranks' memory: allowed where a rank may ptrace
     * its peers (same user, Yama permitting, no seccomp filter against it) */
    int cma = ok && coll_tun.shm_cma;
    for (int q = 0; cma && q < P; q++) {
        int32_t pid = 0;
        struct iovec l = {&pid, sizeof pid}, r = {(void *)(uintptr_t)(hdr(s, q)->self + offsetof(shm_hdr_t, pid)), sizeof pid};
        cma = q == s->me || (process_vm_readv((pid_t)hdr(s, q)->pid, &l, 1, &r, 1, 0) == (ssize_t)sizeof pid &&
                             pid == hdr(s, q)->pid);
    }
    int mine2[2] = {ok, cma}, every2[2] = {0, 0};
    if (rc == MPI_SUCCESS) rc = MPI_Allreduce(mine2, every2, 2, MPI_INT, MPI_MIN, ctx->mpi);
    const int every = every2[0];
    if (fd >= 0) close(fd); /* every peer has mapped it, or none will */
    if (rc != MPI_SUCCESS) {
        if (s && s->base) unmap_all(s);
        else free(s);
        return coll_mpi_error(NULL, rc, "coll_comm_init: exchanging shared-memory workspaces");
    }
    if (!every) {
        COLL_LOG(c, COLL_LOG_INFO, "shared memory unavailable (%s): point-to-point algorithms instead",
                 ok ? "on another rank" : why);
        if (s && s->base) unmap_all(s);
        else free(s);
        return COLL_SUCCESS;
    }
    /* fault the headers in now (the eager slots span several pages), not
     * in the first calls: they are what small calls touch */
    memset(hdr(s, s->me)->eager, 0, sizeof hdr(s, s->me)->eager); /* (round 0: no data) */
    for (int q = 0; q < P; q++)
        for (size_t o = 0; o < HDR_BYTES; o += 4096) (void)*(volatile char *)(s->base[q] + o);
    s->cma = every2[1];
    s->cldemote = have_cldemote();
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE); /* 0 or -1 where unknown */
    s->bcast_nt_min = coll_tun.shm_bcast_nt_min_bytes       ? coll_tun.shm_bcast_nt_min_bytes
                : l3 > 0 && (size_t)l3 / 8 > NT_MIN_BYTES ? (size_t)l3 / 8
                                                          : NT_MIN_BYTES;
    COLL_LOG(c, COLL_LOG_INFO, "shared memory: single copies between ranks (CMA) %s", s->cma ? "on" : "off");
    ctx->shm = s;
    return COLL_SUCCESS;
}

void coll_shm_ctx_free(coll_ctx_t *ctx) {
    if (ctx->shm) unmap_all(ctx->shm);
    ctx->shm = NULL;
}
