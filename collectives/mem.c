/* coll_mem_alloc: buffers the node's peers can map (include/coll.h). Each
 * allocation is its own memfd, kept open while it lives so that a peer can
 * open it through /proc/PID/fd/N the first time a collective hands it over
 * (shm*.c), and mapped shared. Nothing is named anywhere, so nothing is left
 * behind when a rank dies. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "coll_internal.h"

struct coll_mem {
    char *ptr;
    size_t bytes; /* mapped (rounded up to pages) */
    int fd;
    uint64_t id;
    struct coll_mem *next;
};

coll_result_t coll_mem_alloc(coll_comm_t c, size_t bytes, void **ptr) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_mem_alloc: comm is not a live communicator");
    if (!ptr) return coll_error(c, COLL_ERR_INVALID_ARG, "coll_mem_alloc: ptr (the output pointer) is NULL");
    *ptr = NULL;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (bytes > ((size_t)1 << 46))
        return coll_error(c, COLL_ERR_INVALID_ARG, "coll_mem_alloc: bytes = %zu is more than this library maps", bytes);
    const size_t len = bytes ? (bytes + page - 1) / page * page : page;
    struct coll_mem *m = calloc(1, sizeof *m);
    if (!m) return coll_error(c, COLL_ERR_NO_MEMORY, "coll_mem_alloc: %zu bytes", bytes);
    m->fd = (int)memfd_create("coll-mem", MFD_CLOEXEC);
    if (m->fd < 0 || ftruncate(m->fd, (off_t)len) != 0 ||
        (m->ptr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0)) == MAP_FAILED) {
        const int e = errno;
        if (m->fd >= 0) close(m->fd);
        free(m);
        return coll_error(c, COLL_ERR_NO_MEMORY, "coll_mem_alloc: %zu bytes of shared memory: %s", bytes, strerror(e));
    }
    madvise(m->ptr, len, MADV_HUGEPAGE); /* where the system allows it */
    m->bytes = len;
    pthread_mutex_lock(&c->mem_lock);
    m->id = ++c->mem_next_id;
    m->next = c->mem;
    c->mem = m;
    pthread_mutex_unlock(&c->mem_lock);
    *ptr = m->ptr;
    return COLL_SUCCESS;
}

coll_result_t coll_mem_free(coll_comm_t c, void *ptr) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_mem_free: comm is not a live communicator");
    if (!ptr) return COLL_SUCCESS;
    pthread_mutex_lock(&c->mem_lock);
    struct coll_mem **at = &c->mem;
    while (*at && (*at)->ptr != ptr) at = &(*at)->next;
    struct coll_mem *m = *at;
    if (m) *at = m->next;
    pthread_mutex_unlock(&c->mem_lock);
    if (!m)
        return coll_error(c, COLL_ERR_INVALID_ARG,
                          "coll_mem_free: ptr %p was not returned by coll_mem_alloc on this communicator (or was freed)", ptr);
    munmap(m->ptr, m->bytes);
    close(m->fd);
    free(m);
    return COLL_SUCCESS;
}

int coll_mem_find(struct coll_comm *c, const void *p, size_t bytes, coll_mem_ref_t *ref) {
    const char *q = p;
    int found = 0;
    pthread_mutex_lock(&c->mem_lock);
    for (struct coll_mem *m = c->mem; m && !found; m = m->next)
        if (q >= m->ptr && q < m->ptr + m->bytes && bytes <= (size_t)(m->ptr + m->bytes - q)) {
            *ref = (coll_mem_ref_t){m->fd, m->id, m->bytes, (size_t)(q - m->ptr)};
            found = 1;
        }
    pthread_mutex_unlock(&c->mem_lock);
    return found;
}

static void free_list(struct coll_mem **list) {
    while (*list) {
        struct coll_mem *m = *list;
        *list = m->next;
        munmap(m->ptr, m->bytes);
        if (m->fd >= 0) close(m->fd);
        free(m);
    }
}

void coll_mem_free_all(struct coll_comm *c) {
    free_list(&c->mem);
    free_list(&c->peer_maps);
}

void coll_mem_describe(struct coll_comm *c, const void *ptr, int64_t d[COLL_MEM_DESC]) {
    coll_mem_ref_t ref = {.fd = -1};
    const int found = ptr && coll_mem_find(c, ptr, 1, &ref);
    d[0] = getpid(), d[1] = ref.fd, d[2] = (int64_t)ref.bytes, d[3] = (int64_t)ref.off;
    d[4] = !ptr ? 0 : found ? 1 : -1;
}

char *coll_mem_map_peer(struct coll_comm *c, int q, const int64_t at[COLL_MEM_DESC]) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%lld/fd/%lld", (long long)at[0], (long long)at[1]);
    const int fd = open(path, O_RDWR | O_CLOEXEC);
    struct coll_mem *m = fd >= 0 ? calloc(1, sizeof *m) : NULL;
    char *p = m ? mmap(NULL, (size_t)at[2], PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    const int e = errno;
    if (fd >= 0) close(fd);
    if (p == MAP_FAILED) {
        free(m);
        coll_error(c, COLL_ERR_INTERNAL, "coll_mem_map_peers: cannot map rank %d's buffer (%s): %s", q, path, strerror(e));
        return NULL;
    }
    madvise(p, (size_t)at[2], MADV_HUGEPAGE);
    *m = (struct coll_mem){.ptr = p, .bytes = (size_t)at[2], .fd = -1};
    pthread_mutex_lock(&c->mem_lock);
    m->next = c->peer_maps;
    c->peer_maps = m;
    pthread_mutex_unlock(&c->mem_lock);
    return p + at[3];
}
