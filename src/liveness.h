/* Telling a slow rank from a silent one. While a rank waits for the others
 * (start-up agreements, a checkpoint being written), it pings them whenever
 * a timeout passes without the wait completing; every rank answers pings from
 * a helper thread, also while it is busy, so only a rank that is stopped,
 * dead or unreachable fails to answer, and it is named. Needs
 * MPI_THREAD_MULTIPLE; without it waits have no liveness check. */
#ifndef DDP_LIVENESS_H
#define DDP_LIVENESS_H

#include <mpi.h>
#include <stddef.h>

typedef struct liveness liveness_t;

/* Collective over comm (duplicates it). NULL when out of memory. */
liveness_t *liveness_create(MPI_Comm comm);
void liveness_destroy(liveness_t *l); /* NULL-safe; before MPI_Finalize */
/* Starts (on = 1) or stops the thread that answers pings. */
void liveness_answer(liveness_t *l, int on);
/* Waits for *req. Whenever every_s (> 0) passes without it completing,
 * pings every other rank; a rank that does not answer within every_s fails
 * the wait. max_s > 0 bounds the whole wait. 0, or -1 with "what: ..." in
 * err naming the silent ranks. */
int liveness_wait(liveness_t *l, MPI_Request *req, double every_s, double max_s, const char *what, char *err,
                  size_t errlen);
/* Guards a stretch of blocking calls that have no timeout of their own (MPI
 * collectives in a set-up, say): while it is on, a helper thread pings every
 * other rank every every_s, and a rank that does not answer within every_s
 * ends the job (MPI_Abort) after "WHAT: rank R stopped answering (...)"
 * ("ranks R1 R2" for several)
 * on stderr. every_s <= 0 or what NULL turns it off; calling it again
 * replaces the stretch's name and period. The others must be answering
 * (liveness_answer) for as long as anyone guards. */
void liveness_guard(liveness_t *l, double every_s, const char *what);
/* Pings every other rank once: the number that did not answer within
 * limit_s, named in err ("what: rank R stopped answering"). */
int liveness_census(liveness_t *l, double limit_s, const char *what, char *err, size_t errlen);

#endif
