/* Shared-memory collectives: setting up the workspaces (and whether ranks
 * may copy between each other's memory), mapping the peers' coll_mem_alloc
 * buffers, and the barrier. shm_internal.h describes the workspace and
 * holds what every algorithm shares; the algorithms are in shm_allreduce.c,
 * shm_reduce.c, shm_gather.c (reduce-scatter, all-gather), shm_broadcast.c
 * and shm_pair.c (2-rank single copies). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "shm_internal.h"

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

/* Where the cores are close, two-shot copy-ins and the 2-rank reduce's
 * stream use non-temporal stores up to this size (COLL_SHM_NT_MAX_BYTES
 * replaces it): 128 KiB on AMD CPUs, where the peer's reads of lines left
 * in this core's L2 were the slow part (copy_in); none elsewhere. On the
 * Intel host (Xeon under KVM, 2 MiB L2 per core; 2026-12-07, three
 * alternating rounds) they cost: 2-rank all-reduce 128 KiB 25.5-27.9 us with
 * them, 16.7-18.6 without (0.90-1.01x Open MPI -> 1.43-1.52x); reduce 64 /
 * 128 KiB 9.0-9.9 / 13.1-18.8 us against 7.4-9.3 / 9.3-9.5; 16-32 KiB alike.
 * Other CPUs than these two are unmeasured: ordinary stores, the plain choice. */
#define NT_MAX_AMD_BYTES ((size_t)128 << 10)
static size_t nt_max_default(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, id[3];
    char vendor[13] = {0}; /* cpuid 0: the vendor's name in ebx, edx, ecx */
    if (__get_cpuid(0, &a, &id[0], &id[2], &id[1]) && (memcpy(vendor, id, 12), strcmp(vendor, "AuthenticAMD") == 0))
        return NT_MAX_AMD_BYTES;
#endif
    return 0;
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
char *coll_shm_peer_buffer(coll_ctx_t *ctx, int q, int fd, uint64_t id, size_t bytes) {
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
    s->nt_max = coll_tun.shm_nt_max_bytes != SIZE_MAX ? coll_tun.shm_nt_max_bytes : nt_max_default();
    COLL_LOG(c, COLL_LOG_INFO, "shared memory: single copies between ranks (CMA) %s", s->cma ? "on" : "off");
    ctx->shm = s;
    return COLL_SUCCESS;
}

void coll_shm_ctx_free(coll_ctx_t *ctx) {
    if (ctx->shm) unmap_all(ctx->shm);
    ctx->shm = NULL;
}
