/* Logging: silent unless COLL_DEBUG is set; lines are prefixed
 * "host:pid rank N" like NCCL's, and formatted only after the level check
 * (done by the COLL_LOG macro). */
#include <stdio.h>
#include <unistd.h>

#include "coll_internal.h"

void coll_log(const struct coll_comm *comm, int level, const char *fmt, ...) {
    static const char *names[] = {"", "WARN", "INFO", "TRACE"};
    char line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    char host[64] = "?";
    if (comm) snprintf(host, sizeof host, "%s", comm->host);
    else gethostname(host, sizeof host - 1);
    /* One fprintf per line so lines of different ranks do not interleave. */
    fprintf(stderr, "%s:%d rank %d COLL %s %s\n", host, (int)getpid(), comm ? comm->rank : -1,
            names[level], line);
}
