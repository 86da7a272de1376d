/* libFuzzer: coll-bench's argument parser. The input is argv: arguments
 * separated by NUL bytes (at most 64). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bench_args.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
    char *copy = malloc(n + 1), *argv[66];
    memcpy(copy, d, n);
    copy[n] = 0;
    int argc = 0;
    argv[argc++] = "coll-bench";
    for (char *p = copy; p <= copy + n && argc < 65; p += strlen(p) + 1) argv[argc++] = p;
    argv[argc] = NULL;
    bench_args_t a;
    char why[256];
    if (bench_args_parse(argc, argv, &a, why, sizeof why) == 0 && (a.minb > a.maxb || a.factor <= 1)) abort();
    free(copy);
    return 0;
}
