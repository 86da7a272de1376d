/* Unit tests of the API's contracts in one process (an MPI singleton): every
 * bad argument returns an error code and a message naming it, nothing
 * crashes; names, strerror, and the communicator lifecycle.
 *
 *   test_api            the cmocka suite
 *   test_api env-error  run with COLL_ALGO=bogus (or a bad COLL_NET_CHUNK_BYTES or COLL_SHM_FAR):
 *                       coll_comm_init must refuse, naming it
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coll.h"

static coll_comm_t comm;

#define EXPECT_ERR(call, code, needle)                                                      \
    do {                                                                                    \
        coll_result_t rc_ = (call);                                                         \
        assert_int_equal(rc_, (code));                                                      \
        const char *m_ = coll_last_error(coll_comm_size(comm) > 0 ? comm : NULL);           \
        if (!strstr(m_, (needle))) fail_msg("error text '%s' does not name '%s'", m_, (needle)); \
    } while (0)

static int setup(void **state) {
    (void)state;
    return coll_comm_init(&comm, MPI_COMM_WORLD) == COLL_SUCCESS ? 0 : -1;
}
static int teardown(void **state) {
    (void)state;
    return coll_comm_destroy(comm) == COLL_SUCCESS ? 0 : -1;
}

static void lifecycle(void **state) {
    (void)state;
    assert_int_equal(coll_comm_rank(comm), 0);
    assert_int_equal(coll_comm_size(comm), 1);
    assert_int_equal(coll_comm_local_size(comm), 1);
    assert_int_equal(coll_comm_destroy(NULL), COLL_SUCCESS); /* NULL-safe */
    coll_comm_t c;
    assert_int_equal(coll_comm_init(&c, MPI_COMM_WORLD), COLL_SUCCESS);
    assert_int_equal(coll_comm_destroy(c), COLL_SUCCESS);
    /* a destroyed communicator is recognised, not dereferenced */
    float x = 1, y;
    assert_int_equal(coll_allreduce(&x, &y, 1, COLL_FLOAT32, COLL_SUM, c), COLL_ERR_INVALID_ARG);
    assert_non_null(strstr(coll_last_error(c), "comm"));
    assert_int_equal(coll_comm_destroy(c), COLL_ERR_INVALID_ARG);
    assert_int_equal(coll_comm_rank(c), -1);
    assert_int_equal(coll_comm_size(NULL), -1);
    assert_int_equal(coll_comm_local_size(NULL), -1);
    assert_int_equal(coll_comm_init(NULL, MPI_COMM_WORLD), COLL_ERR_INVALID_ARG);
    assert_int_equal(coll_comm_init(&c, MPI_COMM_NULL), COLL_ERR_INVALID_ARG);
    assert_non_null(strstr(coll_last_error(NULL), "MPI_COMM_NULL"));
}

static void null_comm(void **state) {
    (void)state;
    float x = 1, y;
    assert_int_equal(coll_allreduce(&x, &y, 1, COLL_FLOAT32, COLL_SUM, NULL), COLL_ERR_INVALID_ARG);
    assert_non_null(strstr(coll_last_error(NULL), "coll_allreduce: comm is NULL"));
    assert_int_equal(coll_barrier(NULL), COLL_ERR_INVALID_ARG);
    assert_int_equal(coll_broadcast(&x, 1, COLL_FLOAT32, 0, NULL), COLL_ERR_INVALID_ARG);
    coll_request_t r;
    assert_int_equal(coll_iallreduce(&x, &y, 1, COLL_FLOAT32, COLL_SUM, NULL, &r), COLL_ERR_INVALID_ARG);
}

static void null_buffers(void **state) {
    (void)state;
    float x[4] = {0}, y[4];
    EXPECT_ERR(coll_allreduce(NULL, y, 4, COLL_FLOAT32, COLL_SUM, comm), COLL_ERR_INVALID_ARG, "sendbuf is NULL");
    EXPECT_ERR(coll_allreduce(x, NULL, 4, COLL_FLOAT32, COLL_SUM, comm), COLL_ERR_INVALID_ARG, "recvbuf is NULL");
    EXPECT_ERR(coll_reduce_scatter(NULL, y, 4, COLL_FLOAT32, COLL_SUM, comm), COLL_ERR_INVALID_ARG, "sendbuf");
    EXPECT_ERR(coll_allgather(x, NULL, 4, COLL_FLOAT32, comm), COLL_ERR_INVALID_ARG, "recvbuf");
    EXPECT_ERR(coll_broadcast(NULL, 4, COLL_FLOAT32, 0, comm), COLL_ERR_INVALID_ARG, "buf is NULL");
    EXPECT_ERR(coll_reduce(x, NULL, 4, COLL_FLOAT32, COLL_SUM, 0, comm), COLL_ERR_INVALID_ARG, "recvbuf");
    /* count 0: NULL is fine */
    assert_int_equal(coll_allreduce(NULL, NULL, 0, COLL_FLOAT32, COLL_SUM, comm), COLL_SUCCESS);
    assert_int_equal(coll_broadcast(NULL, 0, COLL_FLOAT32, 0, comm), COLL_SUCCESS);
}

static void bad_enums(void **state) {
    (void)state;
    float x[4] = {0}, y[4];
    EXPECT_ERR(coll_allreduce(x, y, 4, COLL_NUM_DTYPES, COLL_SUM, comm), COLL_ERR_INVALID_ARG, "dtype=7");
    EXPECT_ERR(coll_allreduce(x, y, 4, (coll_dtype_t)-1, COLL_SUM, comm), COLL_ERR_INVALID_ARG, "dtype=-1");
    EXPECT_ERR(coll_allreduce(x, y, 4, COLL_FLOAT32, COLL_NUM_OPS, comm), COLL_ERR_INVALID_ARG, "op=5");
    EXPECT_ERR(coll_reduce(x, y, 4, COLL_FLOAT32, (coll_op_t)99, 0, comm), COLL_ERR_INVALID_ARG, "op=99");
    EXPECT_ERR(coll_allgather(x, y, 1, (coll_dtype_t)42, comm), COLL_ERR_INVALID_ARG, "dtype=42");
    EXPECT_ERR(coll_comm_set_algorithm(comm, COLL_NUM_ALGOS), COLL_ERR_INVALID_ARG, "algo");
    EXPECT_ERR(coll_comm_set_timeout(comm, -1), COLL_ERR_INVALID_ARG, "seconds");
}

static void bad_root(void **state) {
    (void)state;
    float x[4] = {0}, y[4];
    EXPECT_ERR(coll_broadcast(x, 4, COLL_FLOAT32, 1, comm), COLL_ERR_INVALID_ARG, "root=1");
    EXPECT_ERR(coll_broadcast(x, 4, COLL_FLOAT32, -1, comm), COLL_ERR_INVALID_ARG, "root=-1");
    EXPECT_ERR(coll_reduce(x, y, 4, COLL_FLOAT32, COLL_SUM, 3, comm), COLL_ERR_INVALID_ARG, "root=3");
}

static void overlapping_buffers(void **state) {
    (void)state;
    float b[16] = {0};
    EXPECT_ERR(coll_allreduce(b, b + 1, 8, COLL_FLOAT32, COLL_SUM, comm), COLL_ERR_INVALID_ARG, "overlaps");
    EXPECT_ERR(coll_reduce(b + 2, b, 8, COLL_FLOAT32, COLL_SUM, 0, comm), COLL_ERR_INVALID_ARG, "overlaps");
    /* size 1: the in-place forms are recvbuf == sendbuf (+ rank*count = 0) */
    EXPECT_ERR(coll_reduce_scatter(b, b + 1, 4, COLL_FLOAT32, COLL_SUM, comm), COLL_ERR_INVALID_ARG,
               "recvbuf == sendbuf + rank*recvcount");
    EXPECT_ERR(coll_allgather(b + 1, b, 4, COLL_FLOAT32, comm), COLL_ERR_INVALID_ARG,
               "sendbuf == recvbuf + rank*sendcount");
    /* the in-place forms and disjoint buffers are accepted */
    assert_int_equal(coll_allreduce(b, b, 8, COLL_FLOAT32, COLL_SUM, comm), COLL_SUCCESS);
    assert_int_equal(coll_allreduce(b, b + 8, 8, COLL_FLOAT32, COLL_SUM, comm), COLL_SUCCESS);
    assert_int_equal(coll_reduce_scatter(b, b, 4, COLL_FLOAT32, COLL_SUM, comm), COLL_SUCCESS);
    assert_int_equal(coll_allgather(b, b, 4, COLL_FLOAT32, comm), COLL_SUCCESS);
}

static void huge_count(void **state) {
    (void)state;
    float x = 0;
    EXPECT_ERR(coll_allreduce(&x, &x, SIZE_MAX / 2, COLL_FLOAT32, COLL_SUM, comm), COLL_ERR_INVALID_ARG, "too large");
}

static void requests(void **state) {
    (void)state;
    float x[4] = {1, 2, 3, 4}, y[4];
    EXPECT_ERR(coll_iallreduce(x, y, 4, COLL_FLOAT32, COLL_SUM, comm, NULL), COLL_ERR_INVALID_ARG, "req is NULL");
    assert_int_equal(coll_wait(NULL), COLL_ERR_INVALID_ARG);
    int done = 0;
    assert_int_equal(coll_test(NULL, &done), COLL_ERR_INVALID_ARG);
    coll_request_t r;
    assert_int_equal(coll_iallreduce(x, y, 4, COLL_FLOAT32, COLL_SUM, comm, &r), COLL_SUCCESS);
    assert_int_equal(coll_test(r, NULL), COLL_ERR_INVALID_ARG);
    assert_int_equal(coll_wait(r), COLL_SUCCESS);
    assert_true(y[3] == 4);
    /* a completed request is no longer pending */
    assert_int_equal(coll_wait(r), COLL_ERR_INVALID_ARG);
    assert_non_null(strstr(coll_last_error(NULL), "not a pending request"));
    /* a bad argument fails at once, not at the wait */
    assert_int_equal(coll_iallreduce(NULL, y, 4, COLL_FLOAT32, COLL_SUM, comm, &r), COLL_ERR_INVALID_ARG);
    /* coll_test polls to completion */
    assert_int_equal(coll_ibroadcast(x, 4, COLL_FLOAT32, 0, comm, &r), COLL_SUCCESS);
    for (done = 0; !done;) assert_int_equal(coll_test(r, &done), COLL_SUCCESS);
    /* a stale handle whose request memory was reused for a new call: the
     * second wait is an error, and the new call is untouched */
    coll_request_t old = r, fresh;
    assert_int_equal(coll_iallreduce(x, y, 4, COLL_FLOAT32, COLL_MAX, comm, &fresh), COLL_SUCCESS);
    assert_true(fresh != old);
    assert_int_equal(coll_wait(old), COLL_ERR_INVALID_ARG);
    assert_non_null(strstr(coll_last_error(NULL), "not a pending request"));
    assert_int_equal(coll_wait(fresh), COLL_SUCCESS);
    /* a made-up handle is refused, not dereferenced */
    assert_int_equal(coll_wait((coll_request_t)(uintptr_t)0xdead0000), COLL_ERR_INVALID_ARG);
}

static void names_and_strerror(void **state) {
    (void)state;
    for (int r = 0; r < COLL_NUM_RESULTS; r++) {
        assert_true(strlen(coll_strerror((coll_result_t)r)) > 0);
        for (int q = 0; q < r; q++) assert_string_not_equal(coll_strerror((coll_result_t)r), coll_strerror((coll_result_t)q));
    }
    assert_string_equal(coll_strerror((coll_result_t)1234), "unknown coll_result_t");
    for (int d = 0; d < COLL_NUM_DTYPES; d++) assert_int_equal(coll_dtype_parse(coll_dtype_name((coll_dtype_t)d)), d);
    for (int o = 0; o < COLL_NUM_OPS; o++) assert_int_equal(coll_op_parse(coll_op_name((coll_op_t)o)), o);
    for (int a = 0; a < COLL_NUM_ALGOS; a++) assert_int_equal(coll_algo_parse(coll_algo_name((coll_algo_t)a)), a);
    assert_int_equal(coll_dtype_parse("float128"), -1);
    assert_int_equal(coll_op_parse(NULL), -1);
    assert_int_equal(coll_dtype_size(COLL_BFLOAT16), 2);
    assert_int_equal(coll_dtype_size((coll_dtype_t)77), 0);
    coll_algo_t a;
    assert_int_equal(coll_comm_set_algorithm(comm, COLL_ALGO_RD), COLL_SUCCESS);
    assert_int_equal(coll_comm_get_algorithm(comm, &a), COLL_SUCCESS);
    assert_int_equal(a, COLL_ALGO_RD);
    assert_int_equal(coll_comm_get_algorithm(comm, NULL), COLL_ERR_INVALID_ARG);
    assert_int_equal(coll_comm_set_algorithm(comm, COLL_ALGO_AUTO), COLL_SUCCESS);
}

/* one rank: every collective is a copy (or nothing), and AVG divides by 1 */
static void single_rank_results(void **state) {
    (void)state;
    double s[5] = {1, 2, 3, 4, 5}, d[5] = {0};
    for (int a = 0; a < COLL_ALGO_NCCL; a++) {
        coll_comm_set_algorithm(comm, (coll_algo_t)a);
        memset(d, 0, sizeof d);
        assert_int_equal(coll_allreduce(s, d, 5, COLL_FLOAT64, COLL_AVG, comm), COLL_SUCCESS);
        assert_memory_equal(s, d, sizeof s);
        memset(d, 0, sizeof d);
        assert_int_equal(coll_reduce_scatter(s, d, 5, COLL_FLOAT64, COLL_MAX, comm), COLL_SUCCESS);
        assert_memory_equal(s, d, sizeof s);
        memset(d, 0, sizeof d);
        assert_int_equal(coll_allgather(s, d, 5, COLL_FLOAT64, comm), COLL_SUCCESS);
        assert_memory_equal(s, d, sizeof s);
        memset(d, 0, sizeof d);
        assert_int_equal(coll_reduce(s, d, 5, COLL_FLOAT64, COLL_PROD, 0, comm), COLL_SUCCESS);
        assert_memory_equal(s, d, sizeof s);
        assert_int_equal(coll_barrier(comm), COLL_SUCCESS);
    }
    coll_comm_set_algorithm(comm, COLL_ALGO_AUTO);
}

static int env_error(void) {
    /* ranks run with COLL_ALGO=bogus refuse; every other rank refuses too,
     * naming the first bad rank, instead of waiting in the set-up */
    const char *algo = getenv("COLL_ALGO"), *net = getenv("COLL_NET_CHUNK_BYTES"), *far = getenv("COLL_SHM_FAR");
    /* COLL_NET_CHUNK_BYTES and COLL_SHM_FAR are only ever set bad here */
    const int bad = (algo && !strcmp(algo, "bogus")) || net || far;
    const char *named = net ? "COLL_NET_CHUNK_BYTES=" : far ? "COLL_SHM_FAR=" : "COLL_ALGO=bogus";
    coll_comm_t c = NULL;
    coll_result_t rc = coll_comm_init(&c, MPI_COMM_WORLD);
    int ok = rc == COLL_ERR_INVALID_ARG && c == NULL &&
             strstr(coll_last_error(NULL), bad ? named : "rank 0 could not set up");
    printf("%s: coll_comm_init %s returns '%s'\n", ok ? "ok" : "FAILED",
           bad ? "with a bad variable" : "beside a rank with a bad variable", coll_last_error(NULL));
    printf("test_api env-error: %d passed, %d failed\n", ok, !ok);
    return ok ? 0 : 1;
}

/* This process never loaded CUDA: NCCL on host memory and a CUDA stream
 * are refused with a reason, and every host algorithm is unaffected. */
/* coll_mem_alloc / coll_mem_free: what they give, and what they refuse */
static void shared_memory_buffers(void **state) {
    (void)state;
    void *p = NULL, *q = NULL;
    assert_int_equal(coll_mem_alloc(comm, 1000, &p), COLL_SUCCESS);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 4096, 0);
    for (int i = 0; i < 1000; i++) assert_int_equal(((unsigned char *)p)[i], 0);
    assert_int_equal(coll_mem_alloc(comm, 0, &q), COLL_SUCCESS); /* zero bytes: still a distinct buffer */
    assert_ptr_not_equal(p, q);
    float *f = p, out[4];
    for (int i = 0; i < 4; i++) f[i] = (float)i;
    assert_int_equal(coll_allreduce(f, out, 4, COLL_FLOAT32, COLL_SUM, comm), COLL_SUCCESS);
    assert_true(out[3] == 3.0f);
    int on_stack;
    EXPECT_ERR(coll_mem_free(comm, &on_stack), COLL_ERR_INVALID_ARG, "not returned by coll_mem_alloc");
    EXPECT_ERR(coll_mem_free(comm, (char *)p + 8), COLL_ERR_INVALID_ARG, "not returned by coll_mem_alloc");
    assert_int_equal(coll_mem_free(comm, p), COLL_SUCCESS);
    EXPECT_ERR(coll_mem_free(comm, p), COLL_ERR_INVALID_ARG, "or was freed");
    assert_int_equal(coll_mem_free(comm, NULL), COLL_SUCCESS);
    EXPECT_ERR(coll_mem_alloc(comm, 8, NULL), COLL_ERR_INVALID_ARG, "ptr (the output pointer) is NULL");
    EXPECT_ERR(coll_mem_alloc(comm, (size_t)1 << 50, &p), COLL_ERR_INVALID_ARG, "bytes");
    assert_int_equal(coll_mem_alloc(NULL, 8, &p), COLL_ERR_INVALID_ARG);
    /* q is left to coll_comm_destroy, which frees what is left */
}

static void device_paths_without_gpu(void **state) {
    (void)state;
    float s[3] = {1, 2, 3}, d[3] = {0};
    coll_comm_set_algorithm(comm, COLL_ALGO_NCCL);
    EXPECT_ERR(coll_allreduce(s, d, 3, COLL_FLOAT32, COLL_SUM, comm), COLL_ERR_UNSUPPORTED, "device (GPU) buffers");
    coll_request_t req = NULL;
    EXPECT_ERR(coll_iallgather(s, d, 3, COLL_FLOAT32, comm, &req), COLL_ERR_UNSUPPORTED, "nccl");
    assert_null(req);
    /* zero elements need no NCCL */
    assert_int_equal(coll_allreduce(s, d, 0, COLL_FLOAT32, COLL_SUM, comm), COLL_SUCCESS);
    assert_int_equal(coll_algo_parse("nccl"), COLL_ALGO_NCCL);
    coll_comm_set_algorithm(comm, COLL_ALGO_AUTO);
    assert_int_equal(coll_comm_set_stream(comm, NULL), COLL_SUCCESS); /* "no stream" is always fine */
    int dummy;
    EXPECT_ERR(coll_comm_set_stream(comm, &dummy), COLL_ERR_UNSUPPORTED, "CUDA");
    EXPECT_ERR(coll_comm_set_stream(NULL, &dummy), COLL_ERR_INVALID_ARG, "comm");
    assert_int_equal(coll_allreduce(s, d, 3, COLL_FLOAT32, COLL_SUM, comm), COLL_SUCCESS);
    assert_memory_equal(s, d, sizeof s);
}

int main(int argc, char **argv) {
    /* before MPI_Init: a clear error, not a crash */
    coll_comm_t early;
    int pre_ok = coll_comm_init(&early, MPI_COMM_WORLD) == COLL_ERR_INVALID_ARG &&
                 strstr(coll_last_error(NULL), "MPI is not initialised");
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int rc;
    if (argc > 1 && !strcmp(argv[1], "env-error")) {
        rc = env_error();
    } else {
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(lifecycle),         cmocka_unit_test(null_comm),
            cmocka_unit_test(null_buffers),      cmocka_unit_test(bad_enums),
            cmocka_unit_test(bad_root),          cmocka_unit_test(overlapping_buffers),
            cmocka_unit_test(huge_count),        cmocka_unit_test(requests),
            cmocka_unit_test(names_and_strerror), cmocka_unit_test(single_rank_results),
            cmocka_unit_test(device_paths_without_gpu), cmocka_unit_test(shared_memory_buffers),
        };
        rc = cmocka_run_group_tests_name("api", tests, setup, teardown);
        if (!pre_ok) {
            printf("[  FAILED  ] 1 test(s): coll_comm_init before MPI_Init\n");
            rc = 1;
        }
    }
    MPI_Finalize();
    return rc;
}
