/* 2-rank shared-memory rounds whose data stays in the ranks' own buffers:
 * each reads (or writes) the peer's directly, through the mapping of a
 * coll_mem_alloc buffer or with the kernel's single copy (process_vm_readv/
 * writev, as Open MPI's CMA does). */
#include <errno.h>
#include <stdio.h>
#include <sys/uio.h>

#include "shm_internal.h"

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

/* Starts a 2-rank round whose data stays in the ranks' buffers: publishes
 * where this rank's `bytes` at `buf` are (its address here, and its memfd
 * where coll_mem_alloc made it), then waits for the peer's. */
coll_result_t coll_shm_pair_begin(coll_ctx_t *ctx, uint64_t *t, const void *buf, size_t bytes, const char *what) {
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
coll_result_t coll_shm_pair_copy(coll_ctx_t *ctx, uint64_t t, char *local, size_t off, size_t bytes, int write,
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
