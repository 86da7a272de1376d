/* The MPI library's own collectives: the baseline that the benchmarks
 * compare against, and a choice for `auto` where it measures faster.
 * float16/bfloat16 and uint8 use user-defined MPI ops built on our kernels
 * (see mpi_op); AVG is
 * MPI_SUM followed by one division. Counts above COLL_MAX_MSG_BYTES (MPI
 * counts are int) are done in pieces. */
#include <string.h>

#include "coll_internal.h"

static pthread_mutex_t ops_lock = PTHREAD_MUTEX_INITIALIZER;
static int ops_ready;
static MPI_Datatype half_type = MPI_DATATYPE_NULL;
static MPI_Op user_ops[3][4]; /* [f16, bf16, uint8][sum, prod, min, max] */
static const coll_dtype_t user_dtypes[3] = {COLL_FLOAT16, COLL_BFLOAT16, COLL_UINT8};

#define USER_OP(NAME, DT, OP)                                                               \
    static void NAME(void *in, void *inout, int *len, MPI_Datatype *t) {                    \
        (void)t;                                                                            \
        coll_reduce_kernel(DT, OP, inout, inout, in, (size_t)*len);                         \
    }
#define USER_OPS(N, DT)                                                                     \
    USER_OP(N##_sum, DT, COLL_SUM)                                                          \
    USER_OP(N##_prod, DT, COLL_PROD)                                                        \
    USER_OP(N##_min, DT, COLL_MIN)                                                          \
    USER_OP(N##_max, DT, COLL_MAX)
USER_OPS(f16, COLL_FLOAT16)
USER_OPS(b16, COLL_BFLOAT16)
USER_OPS(u8, COLL_UINT8)

static int ensure_ops(void) {
    int rc = MPI_SUCCESS;
    pthread_mutex_lock(&ops_lock);
    if (!ops_ready) {
        MPI_User_function *fns[3][4] = {{f16_sum, f16_prod, f16_min, f16_max},
                                        {b16_sum, b16_prod, b16_min, b16_max},
                                        {u8_sum, u8_prod, u8_min, u8_max}};
        rc = MPI_Type_contiguous(2, MPI_BYTE, &half_type);
        if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&half_type);
        for (int i = 0; i < 3 && rc == MPI_SUCCESS; i++)
            for (int j = 0; j < 4 && rc == MPI_SUCCESS; j++) rc = MPI_Op_create(fns[i][j], 1, &user_ops[i][j]);
        ops_ready = rc == MPI_SUCCESS;
    }
    pthread_mutex_unlock(&ops_lock);
    return rc;
}

void coll_native_release(void) {
    pthread_mutex_lock(&ops_lock);
    if (ops_ready) {
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 4; j++) MPI_Op_free(&user_ops[i][j]);
        MPI_Type_free(&half_type);
        ops_ready = 0;
    }
    pthread_mutex_unlock(&ops_lock);
}

static MPI_Datatype mpi_type(coll_dtype_t d) {
    switch (d) {
    case COLL_FLOAT32: return MPI_FLOAT;
    case COLL_FLOAT64: return MPI_DOUBLE;
    case COLL_INT32: return MPI_INT32_T;
    case COLL_INT64: return MPI_INT64_T;
    case COLL_UINT8: return MPI_UINT8_T;
    default: return half_type;
    }
}

/* MPI has no 16-bit float ops; and Open MPI 4.1's AVX kernels saturate
 * 8-bit sums and products instead of wrapping (open-mpi/ompi#8045), which
 * would be silently wrong numbers: those three dtypes use our kernels. */
static MPI_Op mpi_op(coll_dtype_t d, coll_op_t o) {
    int k = o == COLL_AVG ? 0 : (int)o;
    for (int i = 0; i < 3; i++)
        if (d == user_dtypes[i]) return user_ops[i][k];
    switch (k) {
    case 0: return MPI_SUM;
    case 1: return MPI_PROD;
    case 2: return MPI_MIN;
    default: return MPI_MAX;
    }
}

#define MPI_TRY(call, what)                                                                 \
    do {                                                                                    \
        int mrc_ = (call);                                                                  \
        if (mrc_ != MPI_SUCCESS) return coll_mpi_error(ctx->comm, mrc_, what);              \
    } while (0)

coll_result_t coll_native_run(coll_ctx_t *ctx, const coll_args_t *a) {
    MPI_TRY(ensure_ops(), "MPI_Op_create");
    const MPI_Datatype T = mpi_type(a->dtype);
    const MPI_Op O = a->kind == COLL_K_ALLGATHER || a->kind == COLL_K_BROADCAST ? MPI_OP_NULL
                                                                                 : mpi_op(a->dtype, a->op);
    const size_t es = coll_dtype_size(a->dtype), n = a->count;
    const size_t L = coll_tun.max_msg_bytes / es ? coll_tun.max_msg_bytes / es : 1;
    const int P = ctx->size, r = ctx->rank, inplace = a->sendbuf == a->recvbuf;
    const char *s = a->sendbuf;
    char *d = a->recvbuf;
    MPI_Comm C = ctx->mpi;

    switch (a->kind) {
    case COLL_K_ALLREDUCE:
        for (size_t lo = 0; lo < n; lo += L) {
            int len = (int)(n - lo < L ? n - lo : L);
            MPI_TRY(MPI_Allreduce(inplace ? MPI_IN_PLACE : s + lo * es, d + lo * es, len, T, O, C), "MPI_Allreduce");
        }
        if (a->op == COLL_AVG) coll_avg_finish(a->dtype, d, n, P);
        break;
    case COLL_K_REDUCE: {
        const int root_inplace = inplace && r == a->root;
        for (size_t lo = 0; lo < n; lo += L) {
            int len = (int)(n - lo < L ? n - lo : L);
            MPI_TRY(MPI_Reduce(root_inplace ? MPI_IN_PLACE : s + lo * es, r == a->root ? d + lo * es : NULL, len,
                               T, O, a->root, C), "MPI_Reduce");
        }
        if (a->op == COLL_AVG && r == a->root) coll_avg_finish(a->dtype, d, n, P);
        break;
    }
    case COLL_K_BROADCAST:
        for (size_t lo = 0; lo < n; lo += L) {
            int len = (int)(n - lo < L ? n - lo : L);
            MPI_TRY(MPI_Bcast(d + lo * es, len, T, a->root, C), "MPI_Bcast");
        }
        break;
    case COLL_K_ALLGATHER: {
        /* piece [lo, lo+len) of every rank's block: a receive type of len
         * elements whose extent is one whole block */
        const int ip = s == d + (size_t)r * n * es;
        for (size_t lo = 0; lo < n; lo += L) {
            int len = (int)(n - lo < L ? n - lo : L);
            MPI_Datatype blk, rt;
            MPI_TRY(MPI_Type_contiguous(len, T, &blk), "MPI_Type_contiguous");
            MPI_TRY(MPI_Type_create_resized(blk, 0, (MPI_Aint)(n * es), &rt), "MPI_Type_create_resized");
            MPI_Type_free(&blk);
            MPI_TRY(MPI_Type_commit(&rt), "MPI_Type_commit");
            int mrc = MPI_Allgather(ip ? MPI_IN_PLACE : s + lo * es, len, T, d + lo * es, 1, rt, C);
            MPI_Type_free(&rt);
            MPI_TRY(mrc, "MPI_Allgather");
        }
        break;
    }
    case COLL_K_REDUCE_SCATTER: {
        const int ip = d == s + (size_t)r * n * es;
        if (!ip && n <= L) {
            MPI_TRY(MPI_Reduce_scatter_block(s, d, (int)n, T, O, C), "MPI_Reduce_scatter_block");
        } else {
            /* MPI's in-place form has another layout, and pieces need the
             * slices of all blocks side by side: pack into scratch. */
            const size_t piece = n < L ? n : L;
            char *pack;
            coll_result_t rc = coll_ctx_scratch(ctx, ((size_t)P + 1) * piece * es, (void **)&pack);
            if (rc != COLL_SUCCESS) return rc;
            char *res = pack + (size_t)P * piece * es;
            for (size_t lo = 0; lo < n; lo += piece) {
                size_t len = n - lo < piece ? n - lo : piece;
                for (int b = 0; b < P; b++)
                    memcpy(pack + (size_t)b * len * es, s + ((size_t)b * n + lo) * es, len * es);
                MPI_TRY(MPI_Reduce_scatter_block(pack, res, (int)len, T, O, C), "MPI_Reduce_scatter_block");
                memcpy(d + lo * es, res, len * es);
            }
        }
        if (a->op == COLL_AVG) coll_avg_finish(a->dtype, d, n, P);
        break;
    }
    case COLL_K_BARRIER:
        MPI_TRY(MPI_Barrier(C), "MPI_Barrier");
        break;
    default:
        return coll_error(ctx->comm, COLL_ERR_INTERNAL, "native: unknown operation %d", (int)a->kind);
    }
    return COLL_SUCCESS;
}
