/* Errors and the registry of live communicators: every entry point checks
 * its handle here, so a destroyed or foreign handle is reported, not
 * dereferenced; each communicator keeps its last error's text (and a
 * thread-local one holds failures without a valid communicator). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coll_internal.h"

/* ---- registry of live communicators ---- */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static coll_comm_t *reg;
static size_t reg_n, reg_cap;

int coll_registry_add(coll_comm_t c) {
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
size_t coll_registry_remove(coll_comm_t c) {
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

