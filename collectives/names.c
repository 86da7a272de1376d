/* Names of dtypes, ops, algorithms and operations, and their parsing. */
#include <strings.h>

#include "coll_internal.h"

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

