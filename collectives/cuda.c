/* Device buffers: where a buffer lives, the host-staged path that runs our
 * own algorithms on device memory, and the NCCL backend.
 *
 * libcoll never links CUDA. It looks for the CUDA runtime that the program
 * itself loaded (dlopen with RTLD_NOLOAD, at coll_comm_init and
 * coll_comm_set_stream): a program that never loaded CUDA cannot hold device
 * buffers, pays nothing, and needs no GPU stack. NCCL is loaded (dlopen) at
 * the first collective that uses it.
 *
 * Staged path: the operation is turned into its in-place form on one pinned
 * host buffer (copy in, the host algorithm, copy out), so ring.c and rd.c
 * never see device memory. NCCL path: the call is queued on the
 * communicator's NCCL stream after the work already on the user's stream
 * (coll_comm_set_stream), and completes through an event. */
#include <dlfcn.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coll_internal.h"

#ifndef HAVE_CUDA

int coll_cuda_available(void) { return 0; }
int coll_buffers_on_device(const struct coll_comm *c, const coll_args_t *a) { (void)c, (void)a; return 0; }
void coll_cuda_comm_free(coll_comm_t c) { (void)c; }
int coll_cuda_distinct_gpus(coll_comm_t c) { (void)c; return 0; }
coll_result_t coll_cuda_mark_ready(coll_comm_t c, void **ev) { (void)c, *ev = NULL; return COLL_SUCCESS; }
coll_result_t coll_cuda_staged(coll_ctx_t *ctx, const coll_args_t *a) {
    return coll_error(ctx->comm, COLL_ERR_UNSUPPORTED, "%s: libcoll was built without CUDA", coll_kind_name(a->kind));
}
coll_result_t coll_nccl_start(coll_comm_t c, const coll_args_t *a, void **done) {
    (void)done;
    return coll_error(c, COLL_ERR_UNSUPPORTED, "%s: libcoll was built without CUDA (no NCCL backend)",
                      coll_kind_name(a->kind));
}
coll_result_t coll_cuda_event_wait(coll_comm_t c, void *ev, int block, int *done) {
    (void)c, (void)ev, (void)block;
    *done = 1;
    return COLL_SUCCESS;
}
void coll_cuda_event_free(void *ev) { (void)ev; }
coll_result_t coll_comm_set_stream(coll_comm_t c, void *stream) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_set_stream: comm is NULL or destroyed");
    if (!stream) return COLL_SUCCESS;
    return coll_error(c, COLL_ERR_UNSUPPORTED, "coll_comm_set_stream: libcoll was built without CUDA");
}

#else

#include <cuda_runtime_api.h>
#include <nccl.h>

/* ---- the CUDA runtime, as the program loaded it ---- */
#define CUDA_FNS(X)                                                                                                    \
    X(cudaPointerGetAttributes) X(cudaGetDevice) X(cudaSetDevice) X(cudaStreamCreateWithFlags) X(cudaStreamDestroy)     \
    X(cudaStreamSynchronize) X(cudaEventCreateWithFlags) X(cudaEventRecord) X(cudaEventQuery) X(cudaEventDestroy)      \
    X(cudaEventElapsedTime) X(cudaStreamWaitEvent) X(cudaMemcpyAsync) X(cudaMallocHost) X(cudaFreeHost) X(cudaMalloc)  \
    X(cudaFree) X(cudaGetErrorString) X(cudaDeviceGetPCIBusId) X(cudaGetDeviceCount)
#define NCCL_FNS(X)                                                                                                    \
    X(ncclGetUniqueId) X(ncclCommInitRank) X(ncclCommDestroy) X(ncclCommAbort) X(ncclAllReduce) X(ncclReduceScatter)  \
    X(ncclAllGather) X(ncclBroadcast) X(ncclReduce) X(ncclGetErrorString) X(ncclGetLastError)

#define DECLARE(f) static __typeof__(&f) p_##f;
CUDA_FNS(DECLARE)
NCCL_FNS(DECLARE)

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static int cuda_ok, cuda_absent, nccl_tried, nccl_ok;
static char nccl_why[256];

int coll_cuda_available(void) {
    pthread_mutex_lock(&load_lock);
    if (!cuda_ok && !cuda_absent) {
        void *h = dlopen("libcudart.so.13", RTLD_NOW | RTLD_NOLOAD);
        if (!h) h = dlopen("libcudart.so", RTLD_NOW | RTLD_NOLOAD);
        int ok = h != NULL;
#define RESOLVE(f) if (ok && !(p_##f = (__typeof__(&f))dlsym(h, #f))) ok = 0;
        CUDA_FNS(RESOLVE)
        /* loaded but no usable GPU (no driver, as on CI): nothing can be
         * device memory, so never ask again */
        int n = 0;
        if (ok && (p_cudaGetDeviceCount(&n) != cudaSuccess || n < 1)) ok = 0, cuda_absent = 1;
        cuda_ok = ok;
    }
    pthread_mutex_unlock(&load_lock);
    return cuda_ok;
}

static int nccl_load(void) {
    pthread_mutex_lock(&load_lock);
    if (!nccl_tried) {
        nccl_tried = 1;
        void *h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_GLOBAL);
        if (!h) snprintf(nccl_why, sizeof nccl_why, "cannot load NCCL: %s", dlerror());
        int ok = h != NULL;
        NCCL_FNS(RESOLVE)
        if (h && !ok) snprintf(nccl_why, sizeof nccl_why, "libnccl.so.2 lacks a function libcoll needs");
        nccl_ok = ok;
    }
    pthread_mutex_unlock(&load_lock);
    return nccl_ok;
}

/* ---- per-communicator state ---- */
typedef struct stage {
    void *buf; /* pinned */
    size_t bytes;
    cudaStream_t stream;
} stage_t;

struct coll_cuda {
    int device;            /* the GPU of the thread that made the comm's first device call */
    cudaStream_t user;     /* coll_comm_set_stream */
    cudaEvent_t sync_ready; /* blocking calls' "inputs are ready" marker */
    int topo_known, distinct;
    stage_t stage[2];      /* sync, async context */
    ncclComm_t nccl;
    cudaStream_t nccl_stream;
    int *barrier_word;
};

#define CUDA_TRY(comm, call)                                                                                           \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess)                                                                                         \
            return coll_error((comm), COLL_ERR_INTERNAL, "%s: %s", #call, p_cudaGetErrorString(e_));                   \
    } while (0)

static coll_result_t cuda_state(coll_comm_t c, struct coll_cuda **out) {
    if (!c->cuda) {
        struct coll_cuda *s = calloc(1, sizeof *s);
        if (!s) return coll_error(c, COLL_ERR_NO_MEMORY, "CUDA state");
        p_cudaGetDevice(&s->device);
        c->cuda = s;
    }
    *out = c->cuda;
    return COLL_SUCCESS;
}

void coll_cuda_comm_free(coll_comm_t c) {
    struct coll_cuda *s = c->cuda;
    if (!s) return;
    p_cudaSetDevice(s->device);
    if (s->nccl) p_ncclCommDestroy(s->nccl);
    if (s->nccl_stream) p_cudaStreamDestroy(s->nccl_stream);
    if (s->barrier_word) p_cudaFree(s->barrier_word);
    if (s->sync_ready) p_cudaEventDestroy(s->sync_ready);
    for (int i = 0; i < 2; i++) {
        if (s->stage[i].buf) p_cudaFreeHost(s->stage[i].buf);
        if (s->stage[i].stream) p_cudaStreamDestroy(s->stage[i].stream);
    }
    free(s);
    c->cuda = NULL;
}

coll_result_t coll_comm_set_stream(coll_comm_t c, void *stream) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_set_stream: comm is NULL or destroyed");
    if (!stream) {
        if (c->cuda) c->cuda->user = NULL;
        return COLL_SUCCESS;
    }
    if (!coll_cuda_available())
        return coll_error(c, COLL_ERR_UNSUPPORTED, "coll_comm_set_stream: the program has not loaded the CUDA runtime (or no GPU is usable)");
    struct coll_cuda *s = NULL;
    coll_result_t rc = cuda_state(c, &s);
    if (rc != COLL_SUCCESS) return rc;
    s->user = (cudaStream_t)stream;
    return COLL_SUCCESS;
}

static int on_device(const void *p) {
    struct cudaPointerAttributes at;
    if (!p || p_cudaPointerGetAttributes(&at, p) != cudaSuccess) return 0;
    return at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged;
}

int coll_buffers_on_device(const struct coll_comm *c, const coll_args_t *a) {
    (void)c;
    if (!cuda_ok || a->kind == COLL_K_BARRIER) return 0;
    return on_device(a->sendbuf) || on_device(a->recvbuf);
}

/* NCCL needs one GPU per rank (NCCL 2.28 refuses two ranks on one GPU):
 * compare every rank's (host, PCI bus id). Collective, on the caller's
 * thread, at the first device call; the same answer on every rank. */
int coll_cuda_distinct_gpus(coll_comm_t c) {
    struct coll_cuda *s = NULL;
    if (cuda_state(c, &s) != COLL_SUCCESS) return 0;
    if (s->topo_known) return s->distinct;
    char me[96] = "";
    char bus[32] = "?";
    p_cudaDeviceGetPCIBusId(bus, sizeof bus, s->device);
    snprintf(me, sizeof me, "%.60s/%s", c->host, bus);
    char *all = calloc((size_t)c->size, sizeof me);
    int distinct = 0;
    if (all && MPI_Allgather(me, sizeof me, MPI_CHAR, all, sizeof me, MPI_CHAR, c->sync.mpi) == MPI_SUCCESS) {
        distinct = 1;
        for (int i = 0; i < c->size && distinct; i++)
            for (int j = i + 1; j < c->size && distinct; j++) distinct = strcmp(all + i * sizeof me, all + j * sizeof me) != 0;
    }
    free(all);
    s->topo_known = 1;
    s->distinct = distinct;
    return distinct;
}

void coll_cuda_event_free(void *ev) {
    if (ev) p_cudaEventDestroy((cudaEvent_t)ev);
}

/* Records "the inputs are ready" on the user's stream into *ev (created on
 * first use and kept by the caller); NULL stream: nothing to wait for. */
coll_result_t coll_cuda_mark_ready(coll_comm_t c, void **ev) {
    struct coll_cuda *s = c->cuda;
    if (!s || !s->user) return COLL_SUCCESS;
    if (!*ev) CUDA_TRY(c, p_cudaEventCreateWithFlags((cudaEvent_t *)ev, cudaEventDisableTiming));
    CUDA_TRY(c, p_cudaEventRecord((cudaEvent_t)*ev, s->user));
    return COLL_SUCCESS;
}

/* Waits for ev with yielding and the comm's timeout (block = 0: tests once). */
coll_result_t coll_cuda_event_wait(coll_comm_t c, void *ev, int block, int *done) {
    *done = 0;
    if (!ev) return *done = 1, COLL_SUCCESS;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        cudaError_t e = p_cudaEventQuery((cudaEvent_t)ev);
        if (e == cudaSuccess) return *done = 1, COLL_SUCCESS;
        if (e != cudaErrorNotReady) return coll_error(c, COLL_ERR_INTERNAL, "waiting for the GPU: %s", p_cudaGetErrorString(e));
        if (!block) return COLL_SUCCESS;
        clock_gettime(CLOCK_MONOTONIC, &t);
        const double waited = (double)(t.tv_sec - t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - t0.tv_nsec);
        if (c->timeout > 0 && waited > c->timeout) {
            if (c->cuda && c->cuda->nccl) p_ncclCommAbort(c->cuda->nccl), c->cuda->nccl = NULL;
            coll_error(c, COLL_ERR_TIMEOUT,
                       "a device collective did not complete within %.3g s (a peer stopped or died; NCCL "
                       "does not say which; the communicator was aborted)",
                       c->timeout);
            return coll_comm_fail(c, COLL_ERR_TIMEOUT);
        }
        sched_yield();
    }
}

/* ---- the staged path: device buffers through pinned host memory ---- */

coll_result_t coll_cuda_staged(coll_ctx_t *ctx, const coll_args_t *a) {
    coll_comm_t c = ctx->comm;
    struct coll_cuda *s = c->cuda;
    stage_t *st = &s->stage[ctx == &c->sync ? 0 : 1];
    p_cudaSetDevice(s->device); /* the progress thread's device too */
    int done;
    coll_result_t rc = coll_cuda_event_wait(c, a->ready, 1, &done);
    if (rc != COLL_SUCCESS) return rc;
    /* the in-place form: one buffer holds both sides */
    const size_t es = coll_dtype_size(a->dtype), n = a->count * es, P = (size_t)ctx->size, r = (size_t)ctx->rank;
    size_t total = n, in_off = 0, out_off = 0, in_len = n, out_len = n;
    switch (a->kind) {
    case COLL_K_REDUCE_SCATTER: total = n * P, in_len = n * P, out_off = r * n; break;
    case COLL_K_ALLGATHER: total = n * P, in_off = r * n, out_len = n * P; break;
    default: break;
    }
    const int has_out = a->kind != COLL_K_REDUCE || ctx->rank == a->root;
    if (!st->stream) CUDA_TRY(c, p_cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking));
    if (total > st->bytes) {
        if (st->buf) p_cudaFreeHost(st->buf), st->buf = NULL, st->bytes = 0;
        CUDA_TRY(c, p_cudaMallocHost(&st->buf, total));
        st->bytes = total;
    }
    char *h = st->buf;
    const void *src = a->kind == COLL_K_BROADCAST ? a->recvbuf : a->sendbuf;
    /* broadcast: only the root's data matters, but every rank copies in
     * so that the staged buffer is defined */
    CUDA_TRY(c, p_cudaMemcpyAsync(h + in_off, src, in_len, cudaMemcpyDefault, st->stream));
    CUDA_TRY(c, p_cudaStreamSynchronize(st->stream));
    coll_args_t host = *a;
    host.device = 0;
    host.ready = NULL;
    host.sendbuf = h + in_off;
    host.recvbuf = a->kind == COLL_K_REDUCE_SCATTER ? h + out_off : h;
    if (a->kind == COLL_K_REDUCE && !has_out) host.recvbuf = NULL;
    rc = coll_run(ctx, &host);
    if (rc != COLL_SUCCESS || !has_out) return rc;
    CUDA_TRY(c, p_cudaMemcpyAsync(a->recvbuf, h + out_off, out_len, cudaMemcpyDefault, st->stream));
    CUDA_TRY(c, p_cudaStreamSynchronize(st->stream));
    return COLL_SUCCESS;
}

/* ---- NCCL: whole collectives on the communicator's NCCL stream ---- */

static coll_result_t nccl_error(coll_comm_t c, ncclResult_t r, const char *what) {
    const char *last = c->cuda && c->cuda->nccl ? p_ncclGetLastError(c->cuda->nccl) : "";
    coll_result_t code = r == ncclInvalidArgument || r == ncclInvalidUsage ? COLL_ERR_INVALID_ARG : COLL_ERR_INTERNAL;
    if (r == ncclSystemError || r == ncclRemoteError) code = COLL_ERR_MPI;
    return coll_error(c, code, "%s: %s%s%s", what, p_ncclGetErrorString(r), last && *last ? ": " : "", last ? last : "");
}

static coll_result_t nccl_setup(coll_comm_t c, struct coll_cuda *s) {
    if (s->nccl) return COLL_SUCCESS;
    if (!nccl_load()) return coll_error(c, COLL_ERR_UNSUPPORTED, "the NCCL backend: %s", nccl_why);
    ncclUniqueId id;
    ncclResult_t r = ncclSuccess;
    if (c->rank == 0) r = p_ncclGetUniqueId(&id);
    /* the id, or rank 0's failure, goes to everyone: nobody waits alone */
    int ok = r == ncclSuccess;
    int mrc = MPI_Bcast(&ok, 1, MPI_INT, 0, c->sync.mpi);
    if (mrc == MPI_SUCCESS && ok) mrc = MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, c->sync.mpi);
    if (mrc != MPI_SUCCESS) return coll_mpi_error(c, mrc, "MPI_Bcast of the NCCL unique id");
    if (!ok) return c->rank == 0 ? nccl_error(c, r, "ncclGetUniqueId")
                                 : coll_error(c, COLL_ERR_INTERNAL, "ncclGetUniqueId failed on rank 0");
    p_cudaSetDevice(s->device);
    CUDA_TRY(c, p_cudaStreamCreateWithFlags(&s->nccl_stream, cudaStreamNonBlocking));
    CUDA_TRY(c, p_cudaMalloc((void **)&s->barrier_word, sizeof(int)));
    if ((r = p_ncclCommInitRank(&s->nccl, c->size, id, c->rank)) != ncclSuccess) {
        s->nccl = NULL;
        return nccl_error(c, r, "ncclCommInitRank");
    }
    COLL_LOG(c, COLL_LOG_INFO, "NCCL communicator ready: %d ranks, GPU %d", c->size, s->device);
    return COLL_SUCCESS;
}

static ncclDataType_t nccl_type(coll_dtype_t d) {
    static const ncclDataType_t t[COLL_NUM_DTYPES] = {ncclFloat32, ncclFloat64, ncclFloat16, ncclBfloat16,
                                                      ncclInt32,   ncclInt64,   ncclUint8};
    return t[d];
}

static ncclRedOp_t nccl_op(coll_op_t o) {
    static const ncclRedOp_t t[COLL_NUM_OPS] = {ncclSum, ncclProd, ncclMin, ncclMax, ncclAvg};
    return t[o];
}

/* Queues a on the NCCL stream after the user's stream; *done gets an event
 * that completes with it (created when NULL, kept and freed by the caller). */
coll_result_t coll_nccl_start(coll_comm_t c, const coll_args_t *a, void **done) {
    struct coll_cuda *s = NULL;
    coll_result_t rc = cuda_state(c, &s);
    if (rc == COLL_SUCCESS) rc = nccl_setup(c, s);
    if (rc != COLL_SUCCESS) return rc;
    if (s->user) {
        cudaEvent_t ready = NULL;
        CUDA_TRY(c, p_cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
        p_cudaEventRecord(ready, s->user);
        p_cudaStreamWaitEvent(s->nccl_stream, ready, 0);
        p_cudaEventDestroy(ready); /* destroyed once the wait is resolved: allowed */
    }
    const ncclDataType_t T = nccl_type(a->dtype);
    const ncclRedOp_t O = nccl_op(a->op);
    atomic_fetch_add_explicit(&c->bytes_sent, coll_nominal_bytes(a, c->size), memory_order_relaxed);
    ncclResult_t r;
    const char *what;
    switch (a->kind) {
    case COLL_K_ALLREDUCE:
        what = "ncclAllReduce", r = p_ncclAllReduce(a->sendbuf, a->recvbuf, a->count, T, O, s->nccl, s->nccl_stream);
        break;
    case COLL_K_REDUCE_SCATTER:
        what = "ncclReduceScatter",
        r = p_ncclReduceScatter(a->sendbuf, a->recvbuf, a->count, T, O, s->nccl, s->nccl_stream);
        break;
    case COLL_K_ALLGATHER:
        what = "ncclAllGather", r = p_ncclAllGather(a->sendbuf, a->recvbuf, a->count, T, s->nccl, s->nccl_stream);
        break;
    case COLL_K_BROADCAST:
        what = "ncclBroadcast",
        r = p_ncclBroadcast(a->recvbuf, a->recvbuf, a->count, T, a->root, s->nccl, s->nccl_stream);
        break;
    case COLL_K_REDUCE:
        what = "ncclReduce",
        r = p_ncclReduce(a->sendbuf, a->recvbuf, a->count, T, O, a->root, s->nccl, s->nccl_stream);
        break;
    default: /* barrier: NCCL has none; a one-word all-reduce is one */
        what = "ncclAllReduce (barrier)",
        r = p_ncclAllReduce(s->barrier_word, s->barrier_word, 1, ncclInt32, ncclSum, s->nccl, s->nccl_stream);
        break;
    }
    if (r != ncclSuccess) return nccl_error(c, r, what);
    if (!*done) CUDA_TRY(c, p_cudaEventCreateWithFlags((cudaEvent_t *)done, cudaEventDisableTiming));
    CUDA_TRY(c, p_cudaEventRecord((cudaEvent_t)*done, s->nccl_stream));
    return COLL_SUCCESS;
}

#endif
