/* libFuzzer: the checkpoint loader (find = verify, then load). The input is
 * a checkpoint file; when its first byte is odd the harness first writes the
 * right CRC into it, so mutations also reach the code past the checksum. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "checkpoint.h"

static uint64_t rd(const uint8_t *b, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = v << 8 | b[i];
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
    static char dir[64], file[128];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/fuzz-ckpt-XXXXXX");
        if (!mkdtemp(dir)) abort();
        snprintf(file, sizeof file, "%s/ckpt-00000001.bin", dir);
    }
    uint8_t *buf = malloc(n + 1);
    memcpy(buf, d, n);
    if (n >= 96 && (d[0] & 1)) {
        memset(buf + 88, 0, 4);
        uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf, (uInt)n);
        for (int i = 0; i < 4; i++) buf[88 + i] = (uint8_t)(crc >> (8 * i));
    }
    FILE *f = fopen(file, "wb");
    if (!f) abort();
    fwrite(buf, 1, n, f);
    fclose(f);
    char path[4300], err[1024];
    if (ckpt_find(dir, path, sizeof path, err, sizeof err) == 1 && n >= 96) {
        /* load as a run whose model and sizes match the header, when small */
        const uint64_t nw = rd(buf + 16, 8), ns = rd(buf + 12, 4), tl = rd(buf + 48, 8);
        if (nw <= (1u << 16) && ns <= 2 && tl < n - 96) {
            char *text = strndup((const char *)buf + 96, tl);
            float *p = malloc((nw + 1) * sizeof *p), *s0 = malloc((nw + 1) * sizeof *s0), *s1 = malloc((nw + 1) * sizeof *s1);
            float *x0 = malloc((nw + 1) * sizeof *x0);
            float *state[2] = {s0, s1}, *extra[1] = {x0};
            ckpt_meta_t m = {.nweights = nw, .state_arrays = (int)ns, .extra_arrays = 1};
            ckpt_load(path, &m, text, p, state, extra, err, sizeof err);
            free(text), free(p), free(s0), free(s1), free(x0);
        }
    }
    free(buf);
    unlink(file);
    return 0;
}
