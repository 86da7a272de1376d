/* Latency-optimal algorithms for small messages: log2(P) rounds instead of
 * the ring's 2(P-1) steps.
 *  - all-reduce: recursive doubling; for a non-power-of-two P the first
 *    2*rem ranks pair up first (even ranks hand their data to the odd ones
 *    and get the result back at the end), as in MPICH.
 *  - reduce-scatter: the recursive-doubling all-reduce, keeping one block.
 *  - all-gather: Bruck's algorithm (any P).
 *  - broadcast and reduce: binomial trees.
 *  - barrier: dissemination.
 * In every pairwise combination the data of the lower rank is the left
 * operand, so both partners compute bitwise the same value even for the
 * non-commutative corners of min/max (signed zeros, NaN). */
#include <string.h>

#include "coll_internal.h"

#define SWAP(x, y)                                                                          \
    do {                                                                                    \
        char *t_ = (x);                                                                     \
        (x) = (y);                                                                          \
        (y) = t_;                                                                           \
    } while (0)

/* All-reduce of n elements held in cur, using oth as receive space (both n
 * elements); *result is whichever of the two holds the result. */
static coll_result_t rd_core(coll_ctx_t *ctx, char *cur, char *oth, size_t n, coll_dtype_t dt,
                             coll_op_t op, char **result) {
    const int P = ctx->size, r = ctx->rank;
    const size_t bytes = n * coll_dtype_size(dt);
    coll_result_t rc = COLL_SUCCESS;
    int pof2 = 1;
    while (pof2 * 2 <= P) pof2 *= 2;
    const int rem = P - pof2;
    int newr;
    coll_treq_t req;

    if (r < 2 * rem) {
        if (r % 2 == 0) {
            COLL_TRY(coll_tp_isend(ctx, cur, bytes, r + 1, 0, &req));
            COLL_TRY(coll_p2p_wait(ctx, &req));
            newr = -1;
        } else {
            COLL_TRY(coll_tp_irecv(ctx, oth, bytes, r - 1, 0, &req));
            COLL_TRY(coll_p2p_wait(ctx, &req));
            coll_reduce_kernel(dt, op, oth, oth, cur, n); /* lower rank's data first */
            SWAP(cur, oth);
            newr = r / 2;
        }
    } else {
        newr = r - rem;
    }
    if (newr >= 0) {
        for (int mask = 1; mask < pof2; mask <<= 1) {
            int np = newr ^ mask;
            int peer = np < rem ? np * 2 + 1 : np + rem;
            COLL_TRY(coll_p2p_sendrecv(ctx, cur, bytes, peer, oth, bytes, peer));
            if (peer < r) {
                coll_reduce_kernel(dt, op, oth, oth, cur, n);
                SWAP(cur, oth);
            } else {
                coll_reduce_kernel(dt, op, cur, cur, oth, n);
            }
        }
    }
    if (r < 2 * rem) {
        if (r % 2) COLL_TRY(coll_tp_isend(ctx, cur, bytes, r - 1, 0, &req));
        else COLL_TRY(coll_tp_irecv(ctx, cur, bytes, r + 1, 0, &req));
        COLL_TRY(coll_p2p_wait(ctx, &req));
    }
    if (op == COLL_AVG) coll_avg_finish(dt, cur, n, P);
    *result = cur;
    return COLL_SUCCESS;
fail:
    return rc;
}

coll_result_t coll_rd_allreduce(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t bytes = a->count * coll_dtype_size(a->dtype);
    coll_copy(a->recvbuf, a->sendbuf, bytes);
    if (ctx->size == 1) return COLL_SUCCESS;
    void *tmp;
    coll_result_t rc = coll_ctx_scratch(ctx, bytes, &tmp);
    if (rc != COLL_SUCCESS) return rc;
    char *res;
    rc = rd_core(ctx, a->recvbuf, tmp, a->count, a->dtype, a->op, &res);
    if (rc == COLL_SUCCESS && res != a->recvbuf) memcpy(a->recvbuf, res, bytes);
    return rc;
}

coll_result_t coll_rd_reduce_scatter(coll_ctx_t *ctx, const coll_args_t *a) {
    const size_t es = coll_dtype_size(a->dtype), n = a->count * (size_t)ctx->size;
    if (ctx->size == 1) {
        coll_copy(a->recvbuf, a->sendbuf, a->count * es);
        return COLL_SUCCESS;
    }
    char *tmp, *res;
    coll_result_t rc = coll_ctx_scratch(ctx, 2 * n * es, (void **)&tmp);
    if (rc != COLL_SUCCESS) return rc;
    memcpy(tmp, a->sendbuf, n * es);
    rc = rd_core(ctx, tmp, tmp + n * es, n, a->dtype, a->op, &res);
    if (rc == COLL_SUCCESS) memcpy(a->recvbuf, res + (size_t)ctx->rank * a->count * es, a->count * es);
    return rc;
}

coll_result_t coll_bruck_allgather(coll_ctx_t *ctx, const coll_args_t *a) {
    const int P = ctx->size, r = ctx->rank;
    const size_t blk = a->count * coll_dtype_size(a->dtype);
    char *out = a->recvbuf;
    coll_copy(out + (size_t)r * blk, a->sendbuf, blk);
    if (P == 1) return COLL_SUCCESS;
    char *tmp;
    coll_result_t rc = coll_ctx_scratch(ctx, (size_t)P * blk, (void **)&tmp);
    if (rc != COLL_SUCCESS) return rc;
    /* tmp block i holds the block of rank r+i */
    memcpy(tmp, out + (size_t)r * blk, blk);
    for (int k = 1; k < P; k <<= 1) {
        int cnt = k < P - k ? k : P - k;
        rc = coll_p2p_sendrecv(ctx, tmp, (size_t)cnt * blk, coll_mod(r - k, P), tmp + (size_t)k * blk,
                               (size_t)cnt * blk, coll_mod(r + k, P));
        if (rc != COLL_SUCCESS) return rc;
    }
    for (int i = 1; i < P; i++) memcpy(out + (size_t)coll_mod(r + i, P) * blk, tmp + (size_t)i * blk, blk);
    return COLL_SUCCESS;
}

coll_result_t coll_tree_broadcast(coll_ctx_t *ctx, const coll_args_t *a) {
    const int P = ctx->size, vr = coll_mod(ctx->rank - a->root, P);
    const size_t bytes = a->count * coll_dtype_size(a->dtype);
    coll_treq_t req[64];
    int nreq = 0, mask = 1;
    coll_result_t rc = COLL_SUCCESS;
    for (; mask < P; mask <<= 1)
        if (vr & mask) {
            COLL_TRY(coll_tp_irecv(ctx, a->recvbuf, bytes, coll_mod(vr - mask + a->root, P), 0, &req[0]));
            COLL_TRY(coll_p2p_wait(ctx, &req[0]));
            break;
        }
    for (mask >>= 1; mask > 0; mask >>= 1)
        if (vr + mask < P)
            COLL_TRY(coll_tp_isend(ctx, a->recvbuf, bytes, coll_mod(vr + mask + a->root, P), 0, &req[nreq++]));
    return coll_p2p_waitall(ctx, req, nreq);
fail:
    coll_p2p_cancel_all(ctx, req, nreq);
    return rc;
}

coll_result_t coll_tree_reduce(coll_ctx_t *ctx, const coll_args_t *a) {
    const int P = ctx->size, vr = coll_mod(ctx->rank - a->root, P);
    const size_t n = a->count, bytes = n * coll_dtype_size(a->dtype);
    coll_result_t rc = COLL_SUCCESS;
    char *s, *cur, *tmp;
    COLL_TRY(coll_ctx_scratch(ctx, 2 * bytes, (void **)&s));
    /* the root accumulates in recvbuf, the others in scratch */
    cur = vr == 0 ? (char *)a->recvbuf : s;
    tmp = s + bytes;
    coll_copy(cur, a->sendbuf, bytes);
    coll_treq_t req;
    for (int mask = 1; mask < P; mask <<= 1) {
        if (!(vr & mask)) {
            int src = vr | mask;
            if (src >= P) continue;
            COLL_TRY(coll_tp_irecv(ctx, tmp, bytes, coll_mod(src + a->root, P), 0, &req));
            COLL_TRY(coll_p2p_wait(ctx, &req));
            coll_reduce_kernel(a->dtype, a->op, cur, cur, tmp, n);
        } else {
            COLL_TRY(coll_tp_isend(ctx, cur, bytes, coll_mod((vr & ~mask) + a->root, P), 0, &req));
            COLL_TRY(coll_p2p_wait(ctx, &req));
            break;
        }
    }
    if (vr == 0 && a->op == COLL_AVG) coll_avg_finish(a->dtype, cur, n, P);
    return COLL_SUCCESS;
fail:
    return rc;
}

coll_result_t coll_dissemination_barrier(coll_ctx_t *ctx, const coll_args_t *a) {
    (void)a;
    const int P = ctx->size, r = ctx->rank;
    char s = 0, t;
    for (int k = 1; k < P; k <<= 1) {
        coll_result_t rc = coll_p2p_sendrecv(ctx, &s, 0, coll_mod(r + k, P), &t, 0, coll_mod(r - k, P));
        if (rc != COLL_SUCCESS) return rc;
    }
    return COLL_SUCCESS;
}
