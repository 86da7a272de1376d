#include "paths.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int path_make_dir(const char *dir, const char *what, char *err, size_t errlen) {
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        return snprintf(err, errlen, "%s: path too long: %.100s...", what, dir), -1;
    for (char *s = p + 1;; s++) {
        const char c = *s;
        if (c != '/' && c) continue;
        *s = 0;
        struct stat st;
        if (p[0] && mkdir(p, 0755) && errno != EEXIST)
            return snprintf(err, errlen, "%s: cannot create %s: %s", what, p, strerror(errno)), -1;
        if (p[0] && (stat(p, &st) || !S_ISDIR(st.st_mode)))
            return snprintf(err, errlen, "%s: cannot create %s: %s", what, p, "a file of that name is in the way"), -1;
        if (!c) return 0;
        *s = c;
    }
}

int path_make_parents(const char *file, const char *what, char *err, size_t errlen) {
    const char *slash = strrchr(file, '/');
    if (!slash || slash == file) return 0;
    char d[4096];
    snprintf(d, sizeof d, "%.*s", (int)(slash - file), file);
    return path_make_dir(d, what, err, errlen);
}
