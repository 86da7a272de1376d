/* Output paths: the directories a job writes into are created as needed
 * (mkdir -p), so a fresh shared file system works as a user expects. */
#ifndef DDP_PATHS_H
#define DDP_PATHS_H

#include <stddef.h>

/* Creates dir and its missing parents. 0, or -1 with "what: cannot create
 * PATH: reason" in err. */
int path_make_dir(const char *dir, const char *what, char *err, size_t errlen);
/* Creates the missing parent directories of file. 0, or -1 with err. */
int path_make_parents(const char *file, const char *what, char *err, size_t errlen);

#endif
