/* Byte-level token streams for sequence models: a text file, or a synthetic
 * stream for benchmarks. Tokens are ids of the bytes that occur. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data.h"
#include "rng.h"

/* Splits ids[0..len) (ours to free) into the two streams. */
static int split(uint8_t *ids, size_t len, int vocab, int block, double val_fraction, const char *what,
                 dataset_t *train, dataset_t *val, char *err, size_t errlen) {
    const size_t nval = (size_t)((double)len * val_fraction), ntrain = len - nval;
    const size_t need = (size_t)block + 1;
    if (ntrain < need || nval < need) {
        snprintf(err, errlen, "%s: %zu bytes is too short for block_size %d: the %s split (%zu bytes, val_fraction %g) "
                 "needs at least block_size + 1 = %zu", what, len, block, ntrain < need ? "training" : "validation",
                 ntrain < need ? ntrain : nval, val_fraction, need);
        free(ids);
        return -1;
    }
    memset(train, 0, sizeof *train);
    memset(val, 0, sizeof *val);
    uint8_t *v = malloc(nval);
    if (!v) {
        free(ids);
        return snprintf(err, errlen, "%s: out of memory", what), -1;
    }
    memcpy(v, ids + ntrain, nval);
    *train = (dataset_t){.tokens = ids, .ntokens = ntrain, .block = block, .stride = 1, .classes = vocab,
                         .n = (int)(ntrain - (size_t)block), .shape = {1, 1, block}};
    *val = (dataset_t){.tokens = v, .ntokens = nval, .block = block, .stride = block, .classes = vocab,
                       .n = (int)((nval - 1) / (size_t)block), .shape = {1, 1, block}};
    return 0;
}

/* Appends the file's bytes to *buf; 0, or -1 with err. */
static int append_file(const char *path, uint8_t **buf, size_t *len, size_t *cap, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) return snprintf(err, errlen, "%s: %s", path, strerror(errno)), -1;
    for (size_t r;;) {
        if (*len == *cap) {
            uint8_t *b = *cap < ((size_t)1 << 30) ? realloc(*buf, *cap = *cap ? 2 * *cap : 1 << 20) : NULL;
            if (!b) {
                fclose(f);
                return snprintf(err, errlen, "%s: out of memory (a corpus is limited to 1 GiB)", path), -1;
            }
            *buf = b;
        }
        if (!(r = fread(*buf + *len, 1, *cap - *len, f))) break;
        *len += r;
    }
    const int bad = ferror(f);
    fclose(f);
    if (bad) return snprintf(err, errlen, "%s: read error", path), -1;
    return 0;
}

/* The corpus: the file, or a directory's regular files in name order,
 * leaving out any with a NUL byte (binary indexes such as fortune's .dat) */
static int read_corpus(const char *path, uint8_t **buf, size_t *len, char *err, size_t errlen) {
    struct stat st;
    size_t cap = 0;
    *buf = NULL, *len = 0;
    if (stat(path, &st)) return snprintf(err, errlen, "%s: %s", path, strerror(errno)), -1;
    if (!S_ISDIR(st.st_mode)) return append_file(path, buf, len, &cap, err, errlen);
    struct dirent **ent;
    const int n = scandir(path, &ent, NULL, alphasort);
    if (n < 0) return snprintf(err, errlen, "%s: %s", path, strerror(errno)), -1;
    int rc = 0, files = 0;
    for (int i = 0; i < n; i++) {
        char file[4096];
        snprintf(file, sizeof file, "%s/%s", path, ent[i]->d_name);
        if (!rc && !lstat(file, &st) && S_ISREG(st.st_mode)) {
            const size_t at = *len;
            rc = append_file(file, buf, len, &cap, err, errlen);
            if (!rc && memchr(*buf + at, 0, *len - at)) *len = at; /* not text */
            else files += !rc;
        }
        free(ent[i]);
    }
    free(ent);
    if (!rc && !files) rc = -1, snprintf(err, errlen, "%s: no text files in this directory", path);
    return rc;
}

int text_load(const char *path, int block, double val_fraction, dataset_t *train, dataset_t *val, char *err,
              size_t errlen) {
    uint8_t *buf;
    size_t len;
    if (read_corpus(path, &buf, &len, err, errlen)) {
        free(buf);
        return -1;
    }
    int id[256], vocab = 0;
    uint8_t byte_of[256] = {0};
    memset(id, -1, sizeof id);
    for (size_t i = 0; i < len; i++) id[buf[i]] = 0;
    for (int b = 0; b < 256; b++)
        if (!id[b]) byte_of[vocab] = (uint8_t)b, id[b] = vocab++;
    for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)id[buf[i]];
    if (vocab < 2) {
        free(buf);
        return snprintf(err, errlen, "%s: %d distinct bytes; a language needs at least 2", path, vocab), -1;
    }
    if (split(buf, len, vocab, block, val_fraction, path, train, val, err, errlen)) return -1;
    memcpy(train->byte_of, byte_of, sizeof byte_of);
    memcpy(val->byte_of, byte_of, sizeof byte_of);
    return 0;
}

int text_synthetic(int classes, long ntokens, int block, double val_fraction, uint64_t seed, dataset_t *train,
                   dataset_t *val, char *err, size_t errlen) {
    if (classes < 2 || classes > 256 || ntokens < 1)
        return snprintf(err, errlen, "synthetic tokens: classes %d (2..256), %ld tokens", classes, ntokens), -1;
    uint8_t *ids = malloc((size_t)ntokens);
    if (!ids) return snprintf(err, errlen, "synthetic tokens: out of memory"), -1;
    /* each token picks its successor among 4 favourites, 90% of the time */
    rng_t r;
    rng_seed(&r, seed ^ 0x746f6b656e73ULL, 0, 0);
    uint8_t fav[256][4];
    for (int a = 0; a < classes; a++)
        for (int k = 0; k < 4; k++) fav[a][k] = (uint8_t)rng_below(&r, (uint64_t)classes);
    uint8_t cur = 0;
    for (long i = 0; i < ntokens; i++) {
        ids[i] = cur;
        cur = rng_uniform(&r) < 0.9f ? fav[cur][rng_below(&r, 4)] : (uint8_t)rng_below(&r, (uint64_t)classes);
    }
    if (split(ids, (size_t)ntokens, classes, block, val_fraction, "synthetic tokens", train, val, err, errlen)) return -1;
    for (int b = 0; b < 256; b++) train->byte_of[b] = val->byte_of[b] = (uint8_t)b;
    return 0;
}
