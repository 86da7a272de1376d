/* Communicator lifecycle, the registry of live communicators (so a destroyed
 * or foreign handle is reported, not dereferenced), errors and names. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#include "coll_internal.h"

/* ---- registry of live communicators ---- */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static coll_comm_t *reg;
static size_t reg_n, reg_cap;

static int reg_add(coll_comm_t c) {
    pthread_mutex_lock(&reg_lock);
    if (reg_n == reg_cap) {
        size_t cap = reg_cap ? 2 * reg_cap : 8;
        coll_comm_t *n = realloc(reg, cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&reg_lock);
            return -1;
        }
        reg = n;
        reg_cap = cap;
    }
    reg[reg_n++] = c;
    pthread_mutex_unlock(&reg_lock);
    return 0;
}

/* Returns the number of communicators still alive after the removal. */
static size_t reg_remove(coll_comm_t c) {
    pthread_mutex_lock(&reg_lock);
    for (size_t i = 0; i < reg_n; i++)
        if (reg[i] == c) {
            reg[i] = reg[--reg_n];
            break;
        }
    size_t left = reg_n;
    if (!left) {
        free(reg);
        reg = NULL;
        reg_cap = 0;
    }
    pthread_mutex_unlock(&reg_lock);
    return left;
}

int coll_comm_valid(coll_comm_t c) {
    if (!c) return 0;
    int found = 0;
    pthread_mutex_lock(&reg_lock);
    for (size_t i = 0; i < reg_n && !found; i++) found = reg[i] == c;
    pthread_mutex_unlock(&reg_lock);
    return found;
}

/* ---- errors ---- */
static _Thread_local char orphan_error[COLL_ERRLEN]; /* failures without a valid comm */

coll_result_t coll_error(coll_comm_t comm, coll_result_t code, const char *fmt, ...) {
    char msg[COLL_ERRLEN];
    int n = snprintf(msg, sizeof msg, "%s: ", coll_strerror(code));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
    va_end(ap);
    if (comm) {
        pthread_mutex_lock(&comm->err_lock);
        memcpy(comm->last_error, msg, sizeof msg);
        pthread_mutex_unlock(&comm->err_lock);
    } else {
        memcpy(orphan_error, msg, sizeof msg);
    }
    COLL_LOG(comm, COLL_LOG_WARN, "%s", msg);
    return code;
}

coll_result_t coll_mpi_error(coll_comm_t comm, int mpi_rc, const char *what) {
    char s[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(mpi_rc, s, &len);
    return coll_error(comm, COLL_ERR_MPI, "%s failed: %s", what, s);
}

const char *coll_strerror(coll_result_t r) {
    static const char *text[COLL_NUM_RESULTS] = {
        [COLL_SUCCESS] = "success",
        [COLL_ERR_INVALID_ARG] = "invalid argument",
        [COLL_ERR_MPI] = "MPI error",
        [COLL_ERR_NO_MEMORY] = "out of memory",
        [COLL_ERR_TIMEOUT] = "timeout",
        [COLL_ERR_MISMATCH] = "arguments differ between ranks",
        [COLL_ERR_UNSUPPORTED] = "unsupported",
        [COLL_ERR_INTERNAL] = "internal error",
    };
    if ((unsigned)r >= COLL_NUM_RESULTS) return "unknown coll_result_t";
    return text[r];
}

coll_result_t coll_comm_fail(coll_comm_t c, coll_result_t code) {
    int none = 0;
    if (atomic_compare_exchange_strong(&c->failed, &none, (int)code)) {
        pthread_mutex_lock(&c->err_lock);
        memcpy(c->first_error, c->last_error, sizeof c->first_error);
        pthread_mutex_unlock(&c->err_lock);
        coll_trace_failure(c, coll_strerror(code));
    }
    return code;
}

/* A copy taken under the lock: the progress thread may record an error while
 * the caller reads it. The copy is per thread, valid until its next call. */
const char *coll_last_error(coll_comm_t comm) {
    static _Thread_local char copy[COLL_ERRLEN];
    if (!coll_comm_valid(comm)) return orphan_error;
    pthread_mutex_lock(&comm->err_lock);
    memcpy(copy, comm->last_error, sizeof copy);
    pthread_mutex_unlock(&comm->err_lock);
    return copy;
}

/* ---- names ---- */
static const char *dtype_names[COLL_NUM_DTYPES] = {"float32", "float64", "float16", "bfloat16",
                                                   "int32",   "int64",   "uint8"};
static const size_t dtype_sizes[COLL_NUM_DTYPES] = {4, 8, 2, 2, 4, 8, 1};
static const char *op_names[COLL_NUM_OPS] = {"sum", "prod", "min", "max", "avg"};
static const char *algo_names[COLL_NUM_ALGOS] = {"auto", "ring", "rd", "native", "nccl", "shm", "hier"};
static const char *kind_names[COLL_NUM_KINDS] = {"allreduce", "reduce_scatter", "allgather",
                                                 "broadcast", "reduce",         "barrier"};

#define NAME_OF(table, n, v) ((unsigned)(v) < (n) ? table[v] : "unknown")
const char *coll_dtype_name(coll_dtype_t d) { return NAME_OF(dtype_names, COLL_NUM_DTYPES, d); }
const char *coll_op_name(coll_op_t o) { return NAME_OF(op_names, COLL_NUM_OPS, o); }
const char *coll_algo_name(coll_algo_t a) { return NAME_OF(algo_names, COLL_NUM_ALGOS, a); }
const char *coll_kind_name(coll_kind_t k) { return NAME_OF(kind_names, COLL_NUM_KINDS, k); }
size_t coll_dtype_size(coll_dtype_t d) { return (unsigned)d < COLL_NUM_DTYPES ? dtype_sizes[d] : 0; }

static int parse_name(const char *s, const char *const *table, int n) {
    if (!s) return -1;
    for (int i = 0; i < n; i++)
        if (!strcasecmp(s, table[i])) return i;
    return -1;
}
int coll_dtype_parse(const char *s) { return parse_name(s, dtype_names, COLL_NUM_DTYPES); }
int coll_op_parse(const char *s) { return parse_name(s, op_names, COLL_NUM_OPS); }
int coll_algo_parse(const char *s) { return parse_name(s, algo_names, COLL_NUM_ALGOS); }

/* ---- lifecycle ---- */
static coll_result_t ctx_init(coll_comm_t c, coll_ctx_t *ctx, MPI_Comm parent) {
    ctx->comm = c;
    ctx->tp = &coll_transport_mpi;
    ctx->rank = c->rank;
    ctx->size = c->size;
    int rc = MPI_Comm_dup(parent, &ctx->mpi);
    if (rc != MPI_SUCCESS) {
        ctx->mpi = MPI_COMM_NULL;
        return coll_mpi_error(NULL, rc, "MPI_Comm_dup");
    }
    /* Errors come back as return codes, turned into coll_result_t. */
    MPI_Comm_set_errhandler(ctx->mpi, MPI_ERRORS_RETURN);
    ctx->shm = NULL;
    ctx->hier = NULL;
    coll_result_t crc = c->local_size == c->size && c->size > 1 ? coll_shm_ctx_init(ctx) : COLL_SUCCESS;
    return crc == COLL_SUCCESS && c->size > 1 ? coll_hier_ctx_init(ctx, c->local_size) : crc;
}

static void ctx_free(coll_ctx_t *ctx) {
    coll_hier_ctx_free(ctx);
    coll_shm_ctx_free(ctx);
    if (ctx->mpi != MPI_COMM_NULL) MPI_Comm_free(&ctx->mpi);
    free(ctx->scratch);
    ctx->scratch = NULL;
    ctx->scratch_bytes = 0;
}

coll_result_t coll_ctx_scratch(coll_ctx_t *ctx, size_t bytes, void **out) {
    if (bytes > ctx->scratch_bytes) {
        /* Large scratch areas are 2 MiB aligned and backed by huge pages
         * where the kernel allows: peers copy into them with process-to-
         * process copies (CMA), which pin pages one at a time. */
        const size_t huge = (size_t)2 << 20;
        size_t want = bytes < 4096 ? 4096 : (bytes + 4095) & ~(size_t)4095;
        if (want >= huge) want = (want + huge - 1) & ~(huge - 1);
        void *p = NULL;
        if (posix_memalign(&p, want >= huge ? huge : 64, want))
            return coll_error(ctx->comm, COLL_ERR_NO_MEMORY, "scratch buffer of %zu bytes", want);
        if (want >= huge) madvise(p, want, MADV_HUGEPAGE);
        free(ctx->scratch);
        ctx->scratch = p;
        ctx->scratch_bytes = want;
    }
    *out = ctx->scratch;
    return COLL_SUCCESS;
}

/* Ranks sharing this node, to know whether the cores are oversubscribed. */
static int local_ranks(MPI_Comm comm) {
    MPI_Comm node;
    int n = 1;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_size(node, &n);
        MPI_Comm_free(&node);
    }
    return n;
}

coll_result_t coll_comm_init(coll_comm_t *out, MPI_Comm mpi_comm) {
    if (!out) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_init: comm (the output pointer) is NULL");
    *out = NULL;
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (!inited || finalized)
        return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_init: MPI is not initialised (call MPI_Init first)");
    if (mpi_comm == MPI_COMM_NULL)
        return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_init: mpi_comm is MPI_COMM_NULL");
    const char *terr = coll_tunables_load();
    coll_comm_t c = terr ? NULL : calloc(1, sizeof *c);
    /* Every rank learns whether one failed here (a bad COLL_* variable in
     * one rank's environment, say) before the collective set-up below, so
     * none is left waiting in it. */
    /* The same all-reduce checks that COLL_NODE_SIZE agrees (hier's node
     * split would hang otherwise), so the set-up adds no collective for it. */
    int me = 0;
    MPI_Comm_rank(mpi_comm, &me);
    int mine[3] = {c ? INT_MAX : me, coll_tun.node_size, -coll_tun.node_size}, agreed[3] = {INT_MAX, 0, 0};
    int mrc = MPI_Allreduce(mine, agreed, 3, MPI_INT, MPI_MIN, mpi_comm);
    const int first = agreed[0], k_differs = agreed[1] != -agreed[2];
    if (mrc != MPI_SUCCESS || !c || first != INT_MAX || (!terr && k_differs)) free(c);
    if (mrc != MPI_SUCCESS) return coll_mpi_error(NULL, mrc, "coll_comm_init: agreeing on the set-up (MPI_Allreduce)");
    if (terr) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_init: %s", terr);
    if (!c) return coll_error(NULL, COLL_ERR_NO_MEMORY, "coll_comm_init: communicator");
    if (first != INT_MAX)
        return coll_error(NULL, COLL_ERR_INVALID_ARG,
                          "coll_comm_init: rank %d could not set up its communicator (see its error), so no rank has one",
                          first);
    if (k_differs)
        return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_init: COLL_NODE_SIZE differs between ranks (%d to %d)",
                          agreed[1], -agreed[2]);
    c->sync.mpi = c->async.mpi = MPI_COMM_NULL;
    pthread_mutex_init(&c->err_lock, NULL);
    pthread_mutex_init(&c->mem_lock, NULL);
    pthread_mutex_init(&c->q_lock, NULL);
    pthread_cond_init(&c->q_cond, NULL);
    pthread_cond_init(&c->done_cond, NULL);
    MPI_Comm_rank(mpi_comm, &c->rank);
    MPI_Comm_size(mpi_comm, &c->size);
    gethostname(c->host, sizeof c->host - 1);
    c->algo = coll_tun.algo;
    c->timeout = coll_tun.timeout;
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    c->thread_multiple = level >= MPI_THREAD_MULTIPLE;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    c->local_size = local_ranks(mpi_comm);
    c->oversubscribed = c->local_size > (cores > 0 ? cores : 1);

    coll_result_t rc = ctx_init(c, &c->sync, mpi_comm);
    if (rc == COLL_SUCCESS) rc = ctx_init(c, &c->async, mpi_comm);
    if (rc == COLL_SUCCESS && coll_trace_init(c) != COLL_SUCCESS)
        rc = coll_error(NULL, COLL_ERR_NO_MEMORY, "coll_comm_init: flight recorder (COLL_TRACE=%d entries)", coll_tun.trace);
    if (rc == COLL_SUCCESS && reg_add(c)) rc = coll_error(NULL, COLL_ERR_NO_MEMORY, "coll_comm_init: registry");
    if (rc != COLL_SUCCESS) {
        ctx_free(&c->sync);
        ctx_free(&c->async);
        coll_trace_free(c);
        free(c);
        return rc;
    }
    coll_cuda_available(); /* device buffers are recognised if the program loaded CUDA */
    COLL_LOG(c, COLL_LOG_INFO, "init: %d ranks, algo=%s, thread_multiple=%d, oversubscribed=%d, chunk=%zu depth=%d",
             c->size, coll_algo_name(c->algo), c->thread_multiple, c->oversubscribed,
             coll_tun.chunk_bytes, coll_tun.depth);
    if (!c->thread_multiple)
        COLL_LOG(c, COLL_LOG_WARN, "MPI thread level below MPI_THREAD_MULTIPLE: non-blocking calls will complete inside the call that starts them");
    *out = c;
    return COLL_SUCCESS;
}

coll_result_t coll_comm_destroy(coll_comm_t c) {
    if (!c) return COLL_SUCCESS;
    if (!coll_comm_valid(c))
        return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_destroy: comm is not a live communicator (destroyed twice?)");
    coll_progress_shutdown(c);
    size_t left = reg_remove(c);
    coll_trace_free(c);
    coll_cuda_comm_free(c);
    coll_cuda_event_free(c->sync_ready);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        ctx_free(&c->sync);
        ctx_free(&c->async);
        if (!left) coll_native_release();
    }
    /* requests never waited for are freed too; their handles die with comm */
    while (c->all_reqs) {
        struct coll_request *r = c->all_reqs;
        c->all_reqs = r->all_next;
        coll_cuda_event_free(r->cuda_ready);
        coll_cuda_event_free(r->cuda_done);
        coll_request_forget(r);
        free(r);
    }
    coll_mem_free_all(c);
    pthread_mutex_destroy(&c->mem_lock);
    pthread_mutex_destroy(&c->err_lock);
    pthread_mutex_destroy(&c->q_lock);
    pthread_cond_destroy(&c->q_cond);
    pthread_cond_destroy(&c->done_cond);
    free(c);
    return COLL_SUCCESS;
}

int coll_comm_rank(coll_comm_t c) { return coll_comm_valid(c) ? c->rank : -1; }
int coll_comm_size(coll_comm_t c) { return coll_comm_valid(c) ? c->size : -1; }
uint64_t coll_comm_bytes_sent(coll_comm_t c) {
    return coll_comm_valid(c) ? atomic_load_explicit(&c->bytes_sent, memory_order_relaxed) : 0;
}

coll_result_t coll_comm_set_algorithm(coll_comm_t c, coll_algo_t algo) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_set_algorithm: comm is NULL or destroyed");
    if ((unsigned)algo >= COLL_NUM_ALGOS)
        return coll_error(c, COLL_ERR_INVALID_ARG, "coll_comm_set_algorithm: algo=%d is not a coll_algo_t", (int)algo);
    c->algo = algo;
    return COLL_SUCCESS;
}

coll_result_t coll_comm_get_algorithm(coll_comm_t c, coll_algo_t *algo) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_get_algorithm: comm is NULL or destroyed");
    if (!algo) return coll_error(c, COLL_ERR_INVALID_ARG, "coll_comm_get_algorithm: algo is NULL");
    *algo = c->algo;
    return COLL_SUCCESS;
}

coll_result_t coll_comm_set_timeout(coll_comm_t c, double seconds) {
    if (!coll_comm_valid(c)) return coll_error(NULL, COLL_ERR_INVALID_ARG, "coll_comm_set_timeout: comm is NULL or destroyed");
    if (!(seconds >= 0))
        return coll_error(c, COLL_ERR_INVALID_ARG, "coll_comm_set_timeout: seconds=%g must be >= 0", seconds);
    c->timeout = seconds;
    return COLL_SUCCESS;
}
