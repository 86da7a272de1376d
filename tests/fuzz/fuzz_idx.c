/* libFuzzer: the IDX reader, plain and gzip (zlib tells them apart by the
 * gzip magic; seeds of both kinds are in the corpus). The input is the file. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "data.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("idx", 0);
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) || pwrite(fd, d, n, 0) != (ssize_t)n) return 0;
    for (int ndim = 1; ndim <= 3; ndim += 2) {
        uint8_t *data;
        uint32_t dims[3];
        char err[512];
        if (idx_read(path, ndim, &data, dims, err, sizeof err) == 0) free(data);
    }
    return 0;
}
