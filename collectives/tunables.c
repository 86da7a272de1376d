/* Tunables: one table, read once from the environment (first coll_comm_init).
 * Defaults come from measurements on the 2-core machine kind this project is
 * developed on; docs/COLLECTIVES.md says how each was found. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "coll_internal.h"

coll_tunables_t coll_tun = {
    .algo = COLL_ALGO_AUTO,
    .debug = COLL_LOG_NONE,
    .check = 0,
    .timeout = 0.0,
    .chunk_bytes = 2 * 1024 * 1024,
    /* under Open MPI's TCP eager limit (64 KiB with its header): a larger
     * chunk's rendezvous waits for the peer's progress thread and its reply
     * queues behind bulk data (docs/COLLECTIVES.md) */
    .net_chunk_bytes = 60 * 1024,
    .depth = 4,
    .rd_max_bytes = 0, /* 0: per-rank-count table in select.c */
    .max_msg_bytes = (size_t)1 << 30,
    .spin = 2000,
    .spin_oversub = 100,
    .shm_spin_oversub = 0,
    .trace = 2000,
    .shm_chunk_bytes = 512 * 1024,
    .shm_oneshot_bytes = 16 * 1024,
    .shm_nt_max_bytes = SIZE_MAX, /* by the CPU (shm.c) */
    .shm_far = -1,
    .shm_cma = 1,
    .shm_cma_min_bytes = 16384,
    .node_size = 0,
    .hier_segment_bytes = 2 * 1024 * 1024,
};

typedef enum { T_ALGO, T_DEBUG, T_BOOL, T_SECONDS, T_BYTES, T_INT } tun_type_t;

static const struct {
    const char *env;
    tun_type_t type;
    void *ptr;
    double lo, hi; /* accepted range for numbers */
} tun_table[] = {
    {"COLL_ALGO", T_ALGO, &coll_tun.algo, 0, 0},
    {"COLL_DEBUG", T_DEBUG, &coll_tun.debug, 0, 0},
    {"COLL_CHECK", T_BOOL, &coll_tun.check, 0, 1},
    {"COLL_TIMEOUT", T_SECONDS, &coll_tun.timeout, 0, 1e9},
    {"COLL_CHUNK_BYTES", T_BYTES, &coll_tun.chunk_bytes, 64, 1u << 30},
    {"COLL_NET_CHUNK_BYTES", T_BYTES, &coll_tun.net_chunk_bytes, 64, 1u << 30},
    {"COLL_PIPELINE_DEPTH", T_INT, &coll_tun.depth, 1, 64},
    {"COLL_RD_MAX_BYTES", T_BYTES, &coll_tun.rd_max_bytes, 0, 1u << 30},
    /* The MPI transport splits larger messages; lowering it lets the tests
     * exercise the splitting that counts above INT_MAX need. */
    {"COLL_MAX_MSG_BYTES", T_BYTES, &coll_tun.max_msg_bytes, 8, 2147483647.0},
    {"COLL_SPIN", T_INT, &coll_tun.spin, 0, 1e9},
    {"COLL_SPIN_OVERSUBSCRIBED", T_INT, &coll_tun.spin_oversub, 0, 1e9},
    {"COLL_SHM_SPIN_OVERSUBSCRIBED", T_INT, &coll_tun.shm_spin_oversub, 0, 1e9},
    {"COLL_TRACE", T_INT, &coll_tun.trace, 0, 1e7},
    {"COLL_SHM_CHUNK_BYTES", T_BYTES, &coll_tun.shm_chunk_bytes, 256, 1u << 30},
    {"COLL_SHM_ONESHOT_BYTES", T_BYTES, &coll_tun.shm_oneshot_bytes, 0, 1u << 30},
    {"COLL_SHM_NT_MAX_BYTES", T_BYTES, &coll_tun.shm_nt_max_bytes, 0, 1u << 30},
    {"COLL_SHM_BCAST_NT_MIN_BYTES", T_BYTES, &coll_tun.shm_bcast_nt_min_bytes, 0, 1e15},
    {"COLL_SHM_FAR", T_INT, &coll_tun.shm_far, -1, 2},
    {"COLL_SHM_CMA", T_BOOL, &coll_tun.shm_cma, 0, 1},
    {"COLL_SHM_CMA_MIN_BYTES", T_BYTES, &coll_tun.shm_cma_min_bytes, 0, 1e15},
    {"COLL_NODE_SIZE", T_INT, &coll_tun.node_size, 0, 1 << 20},
    {"COLL_HIER_SEGMENT_BYTES", T_BYTES, &coll_tun.hier_segment_bytes, 0, 1u << 30},
};

/* "64K", "1M", "2G", plain bytes */
static int parse_bytes(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0) return -1;
    switch (*end) {
    case 'k': case 'K': v *= 1024.0; end++; break;
    case 'm': case 'M': v *= 1024.0 * 1024.0; end++; break;
    case 'g': case 'G': v *= 1024.0 * 1024.0 * 1024.0; end++; break;
    default: break;
    }
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return -1;
    *out = v;
    return 0;
}

static char tun_err[256];

static const char *load(void) {
    for (size_t i = 0; i < sizeof tun_table / sizeof tun_table[0]; i++) {
        const char *s = getenv(tun_table[i].env);
        if (!s || !*s) continue;
        double v;
        char *end;
        switch (tun_table[i].type) {
        case T_ALGO: {
            int a = coll_algo_parse(s);
            if (a < 0) goto bad;
            *(coll_algo_t *)tun_table[i].ptr = (coll_algo_t)a;
            continue;
        }
        case T_DEBUG:
            if (!strcasecmp(s, "WARN")) coll_tun.debug = COLL_LOG_WARN;
            else if (!strcasecmp(s, "INFO")) coll_tun.debug = COLL_LOG_INFO;
            else if (!strcasecmp(s, "TRACE")) coll_tun.debug = COLL_LOG_TRACE;
            else if (!strcasecmp(s, "NONE") || !strcmp(s, "0")) coll_tun.debug = COLL_LOG_NONE;
            else goto bad;
            continue;
        case T_BYTES:
            if (parse_bytes(s, &v)) goto bad;
            break;
        default:
            errno = 0;
            v = strtod(s, &end);
            if (errno || end == s || *end) goto bad;
            break;
        }
        if (v < tun_table[i].lo || v > tun_table[i].hi) goto bad;
        switch (tun_table[i].type) {
        case T_SECONDS: *(double *)tun_table[i].ptr = v; break;
        case T_BYTES: *(size_t *)tun_table[i].ptr = (size_t)v; break;
        default: *(int *)tun_table[i].ptr = (int)v; break;
        }
        continue;
    bad:
        snprintf(tun_err, sizeof tun_err, "environment variable %s=%s is not valid%s",
                 tun_table[i].env, s,
                 tun_table[i].type == T_ALGO    ? " (expected auto|ring|rd|native|nccl)"
                 : tun_table[i].type == T_DEBUG ? " (expected WARN|INFO|TRACE)"
                                                : " (out of range or not a number)");
        return tun_err;
    }
    return NULL;
}

static pthread_once_t tun_once = PTHREAD_ONCE_INIT;
static const char *tun_result;
static void load_once(void) { tun_result = load(); }

const char *coll_tunables_load(void) {
    pthread_once(&tun_once, load_once);
    return tun_result;
}
