/* A failed communicator: after a timeout or an MPI error no further call
 * may run against the lost peer, and the flight recorder writes its record
 * once. */
#include "coll_internal.h"

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

