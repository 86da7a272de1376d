#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "faults.h"
#include "hash.h"
#include "paths.h"

#define CKPT_MAGIC "DDPCKPT1"
#define CKPT_VERSION 3 /* 3: extra arrays (compression state); 2 is read too */
#define CKPT_KEEP 2

/* The header in memory; on disk it is HDR_BYTES little-endian bytes at the
 * offsets below, whatever the host (encode/decode). */
typedef struct ckpt_header {
    char magic[8];
    uint32_t version, state_arrays;
    uint64_t nweights, step, seed, optim_t, text_len;
    uint64_t epoch, batch_in_epoch, global_batch;
    uint64_t model_hash; /* FNV-1a of the model text (which follows the header) */
    uint32_t crc; /* zlib crc32 of the header (crc = 0) and everything after it */
    uint32_t extra_arrays; /* version 3: arrays of nweights floats after the state (version 2: 0) */
} ckpt_header_t;

enum {
    OFF_MAGIC = 0, OFF_VERSION = 8, OFF_STATE_ARRAYS = 12, OFF_NWEIGHTS = 16, OFF_STEP = 24, OFF_SEED = 32,
    OFF_OPTIM_T = 40, OFF_TEXT_LEN = 48, OFF_EPOCH = 56, OFF_BATCH_IN_EPOCH = 64, OFF_GLOBAL_BATCH = 72,
    OFF_MODEL_HASH = 80, OFF_CRC = 88, OFF_EXTRA = 92, HDR_BYTES = 96
};
_Static_assert(OFF_MODEL_HASH + 8 == OFF_CRC && OFF_CRC + 4 == OFF_EXTRA && OFF_EXTRA + 4 == HDR_BYTES,
               "the checkpoint header's fields must tile its 96 bytes");
/* the parameters and state follow as raw float32: little-endian hosts only */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "checkpoint payloads are little-endian float32");
_Static_assert(sizeof(float) == 4, "float must be IEEE binary32");

static void le32(unsigned char *b, uint32_t v) {
    for (int i = 0; i < 4; i++) b[i] = (unsigned char)(v >> (8 * i));
}
static void le64(unsigned char *b, uint64_t v) {
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t rd32(const unsigned char *b) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = v << 8 | b[i];
    return v;
}
static uint64_t rd64(const unsigned char *b) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | b[i];
    return v;
}

static void encode(const ckpt_header_t *h, unsigned char b[HDR_BYTES]) {
    memset(b, 0, HDR_BYTES);
    memcpy(b + OFF_MAGIC, h->magic, 8);
    le32(b + OFF_VERSION, h->version);
    le32(b + OFF_STATE_ARRAYS, h->state_arrays);
    le64(b + OFF_NWEIGHTS, h->nweights);
    le64(b + OFF_STEP, h->step);
    le64(b + OFF_SEED, h->seed);
    le64(b + OFF_OPTIM_T, h->optim_t);
    le64(b + OFF_TEXT_LEN, h->text_len);
    le64(b + OFF_EPOCH, h->epoch);
    le64(b + OFF_BATCH_IN_EPOCH, h->batch_in_epoch);
    le64(b + OFF_GLOBAL_BATCH, h->global_batch);
    le64(b + OFF_MODEL_HASH, h->model_hash);
    le32(b + OFF_CRC, h->crc);
    le32(b + OFF_EXTRA, h->extra_arrays);
}

static void decode(const unsigned char b[HDR_BYTES], ckpt_header_t *h) {
    memcpy(h->magic, b + OFF_MAGIC, 8);
    h->version = rd32(b + OFF_VERSION);
    h->state_arrays = rd32(b + OFF_STATE_ARRAYS);
    h->nweights = rd64(b + OFF_NWEIGHTS);
    h->step = rd64(b + OFF_STEP);
    h->seed = rd64(b + OFF_SEED);
    h->optim_t = rd64(b + OFF_OPTIM_T);
    h->text_len = rd64(b + OFF_TEXT_LEN);
    h->epoch = rd64(b + OFF_EPOCH);
    h->batch_in_epoch = rd64(b + OFF_BATCH_IN_EPOCH);
    h->global_batch = rd64(b + OFF_GLOBAL_BATCH);
    h->model_hash = rd64(b + OFF_MODEL_HASH);
    h->crc = rd32(b + OFF_CRC);
    h->extra_arrays = rd32(b + OFF_EXTRA);
}

typedef struct wfile {
    FILE *f;
    uLong crc;
    int ok;
} wfile_t;

static void put(wfile_t *w, const void *p, size_t n) {
    const unsigned char *b = p;
    while (n && w->ok) { /* crc32 takes uInt lengths */
        const size_t k = n > (1u << 30) ? (1u << 30) : n;
        w->crc = crc32(w->crc, b, (uInt)k);
        if (fwrite(b, 1, k, w->f) != k) w->ok = 0;
        b += k;
        n -= k;
    }
}

static int fsync_dir(const char *dir) {
    const int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    const int rc = fsync(fd);
    close(fd);
    return rc;
}

/* steps of dir's checkpoints, newest first; returns the count (<= max) */
static int list_steps(const char *dir, long *steps, int max) {
    DIR *dd = opendir(dir);
    if (!dd) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dd))) {
        long s;
        char tail[8];
        if (sscanf(e->d_name, "ckpt-%ld.%7s", &s, tail) == 2 && !strcmp(tail, "bin") && n < max) steps[n++] = s;
    }
    closedir(dd);
    for (int i = 1; i < n; i++) /* insertion sort, descending */
        for (int j = i; j > 0 && steps[j] > steps[j - 1]; j--) {
            const long t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    return n;
}

/* Temporary files of writes that were killed: nobody will finish them. */
static void remove_stale_tmp(const char *dir) {
    DIR *dd = opendir(dir);
    if (!dd) return;
    struct dirent *e;
    while ((e = readdir(dd))) {
        long s;
        char tail[8];
        if (sscanf(e->d_name, ".ckpt-%ld.%7s", &s, tail) == 2 && !strcmp(tail, "tmp")) {
            char p[4400];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    }
    closedir(dd);
}

int ckpt_save(const char *dir, const ckpt_meta_t *m, const char *model_text, const float *params,
              const float *const *state, const float *const *extra, char *err, size_t errlen) {
    char tmp[4200], final[4200];
    if (path_make_dir(dir, "[checkpoint] dir", err, errlen)) return -1;
    remove_stale_tmp(dir);
    snprintf(tmp, sizeof tmp, "%s/.ckpt-%08ld.tmp", dir, m->step);
    snprintf(final, sizeof final, "%s/ckpt-%08ld.bin", dir, m->step);
    wfile_t w = {.f = fopen(tmp, "wb"), .crc = crc32(0L, Z_NULL, 0), .ok = 1};
    if (!w.f) {
        snprintf(err, errlen, "checkpoint: cannot write %s: %s", tmp, strerror(errno));
        return -1;
    }
    ckpt_header_t h = {.version = CKPT_VERSION, .state_arrays = (uint32_t)m->state_arrays, .nweights = m->nweights,
                       .step = (uint64_t)m->step, .seed = m->seed, .optim_t = (uint64_t)m->optim_t,
                       .text_len = strlen(model_text), .epoch = (uint64_t)m->epoch,
                       .batch_in_epoch = (uint64_t)m->batch_in_epoch, .global_batch = (uint64_t)m->global_batch,
                       .model_hash = fnv1a(model_text, strlen(model_text)), .extra_arrays = (uint32_t)m->extra_arrays};
    memcpy(h.magic, CKPT_MAGIC, 8);
    /* the crc is stored in the header, so it is computed over the header with
     * crc = 0 and written last, in place */
    unsigned char hb[HDR_BYTES];
    encode(&h, hb);
    put(&w, hb, sizeof hb);
    put(&w, model_text, h.text_len);
    const size_t half = m->nweights / 2 * sizeof(float);
    put(&w, params, half);
    FAULT_HOOK_CHECKPOINT_HALF_WAY(m->step, w.f);
    put(&w, (const char *)params + half, m->nweights * sizeof(float) - half);
    for (int k = 0; k < m->state_arrays; k++) put(&w, state[k], m->nweights * sizeof(float));
    for (int k = 0; k < m->extra_arrays; k++) put(&w, extra[k], m->nweights * sizeof(float));
    unsigned char crc[4];
    le32(crc, (uint32_t)w.crc);
    if (w.ok && (fseek(w.f, OFF_CRC, SEEK_SET) || fwrite(crc, sizeof crc, 1, w.f) != 1)) w.ok = 0;
    if (w.ok && (fflush(w.f) || fsync(fileno(w.f)))) w.ok = 0;
    const int saved_errno = errno;
    if (fclose(w.f)) w.ok = 0;
    if (!w.ok) {
        snprintf(err, errlen, "checkpoint: writing %s failed: %s", tmp, strerror(saved_errno ? saved_errno : errno));
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, final) || fsync_dir(dir)) {
        snprintf(err, errlen, "checkpoint: cannot rename %s to %s: %s", tmp, final, strerror(errno));
        return -1;
    }
    long steps[4096];
    const int n = list_steps(dir, steps, 4096);
    for (int i = CKPT_KEEP; i < n; i++) {
        char old[4200];
        snprintf(old, sizeof old, "%s/ckpt-%08ld.bin", dir, steps[i]);
        unlink(old);
    }
    return 0;
}

enum { READ_HEADER, READ_VERIFY, READ_LOAD };

/* Reads a checkpoint: its header and model text only (READ_HEADER), or the
 * whole file with its checksum, into scratch (READ_VERIFY) or into params,
 * state and the first extra_cap extra arrays (READ_LOAD; the others are
 * only checksummed). */
static int read_ckpt(const char *path, int how, ckpt_header_t *h, char **text, float *params, float *const *state,
                     float *const *extra, int extra_cap, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    *text = NULL;
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int rc = -1;
    float *scratch = NULL;
    unsigned char hb[HDR_BYTES];
    if (fread(hb, sizeof hb, 1, f) != 1 || (decode(hb, h), memcmp(h->magic, CKPT_MAGIC, 8))) {
        snprintf(err, errlen, "%s: not a checkpoint (bad header)", path);
        goto out;
    }
    if ((h->version != CKPT_VERSION && h->version != 2) || (h->version == 2 && h->extra_arrays) || h->state_arrays > 2 ||
        h->extra_arrays > (1u << 20) || h->text_len > (1u << 20) || h->nweights > ((uint64_t)1 << 34)) {
        snprintf(err, errlen, "%s: unsupported checkpoint (version %u)", path, h->version);
        goto out;
    }
    le32(hb + OFF_CRC, 0);
    uLong crc = crc32(crc32(0L, Z_NULL, 0), hb, sizeof hb);
    *text = calloc(h->text_len + 1, 1);
    if (!*text || fread(*text, 1, h->text_len, f) != h->text_len) {
        snprintf(err, errlen, "%s: truncated", path);
        goto out;
    }
    crc = crc32(crc, (const Bytef *)*text, (uInt)h->text_len);
    if (how == READ_HEADER) {
        rc = 0;
        goto out;
    }
    const size_t bytes = h->nweights * sizeof(float);
    /* the size the header promises, before reading (or allocating) anything */
    struct stat st;
    const uint64_t want = HDR_BYTES + h->text_len + (uint64_t)(h->state_arrays + 1 + h->extra_arrays) * bytes;
    if (fstat(fileno(f), &st) || (uint64_t)st.st_size != want) {
        snprintf(err, errlen, "%s: %s (%lld bytes, the header says %llu)", path,
                 (uint64_t)st.st_size < want ? "truncated" : "unexpected bytes at the end", (long long)st.st_size,
                 (unsigned long long)want);
        goto out;
    }
    /* verifying streams through a small buffer; loading reads in place */
    const size_t chunk = (size_t)1 << 20;
    if (!(scratch = malloc(chunk))) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    for (uint32_t k = 0; k <= h->state_arrays + h->extra_arrays; k++) {
        const uint32_t x = k - h->state_arrays - 1; /* extra array index, when k is past the state */
        char *dst = how != READ_LOAD                ? NULL
                    : k == 0                        ? (char *)params
                    : k <= h->state_arrays          ? (char *)state[k - 1]
                    : x < (uint32_t)extra_cap       ? (char *)extra[x]
                                                    : NULL;
        for (size_t o = 0; o < bytes;) {
            const size_t n = dst ? (bytes - o < (1u << 30) ? bytes - o : (1u << 30)) : (bytes - o < chunk ? bytes - o : chunk);
            unsigned char *p = dst ? (unsigned char *)dst + o : (unsigned char *)scratch;
            if (fread(p, 1, n, f) != n) {
                snprintf(err, errlen, "%s: truncated", path);
                goto out;
            }
            crc = crc32(crc, p, (uInt)n);
            o += n;
        }
    }
    if (fgetc(f) != EOF) {
        snprintf(err, errlen, "%s: unexpected bytes at the end", path);
        goto out;
    }
    if ((uint32_t)crc != h->crc) {
        snprintf(err, errlen, "%s: checksum mismatch (corrupt file)", path);
        goto out;
    }
    rc = 0;
out:
    free(scratch);
    fclose(f);
    if (rc) {
        free(*text);
        *text = NULL;
    }
    return rc;
}

int ckpt_find(const char *dir, char *path, size_t len, char *err, size_t errlen) {
    long steps[4096];
    const int n = list_steps(dir, steps, 4096);
    if (n < 0) {
        if (errno == ENOENT) return 0;
        snprintf(err, errlen, "[checkpoint] dir: cannot read %s: %s", dir, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        ckpt_header_t h;
        char *text, e[512];
        snprintf(path, len, "%s/ckpt-%08ld.bin", dir, steps[i]);
        if (read_ckpt(path, READ_VERIFY, &h, &text, NULL, NULL, NULL, 0, e, sizeof e) == 0) {
            free(text);
            return 1;
        }
        fprintf(stderr, "ddp-train: skipping checkpoint: %s\n", e);
    }
    return 0;
}

/* The first line where a and b differ, for the refusal message. */
static void first_difference(const char *a, const char *b, char *out, size_t len) {
    const char *la = a, *lb = b;
    while (*la || *lb) {
        const size_t na = strcspn(la, "\n"), nb = strcspn(lb, "\n");
        if (na != nb || strncmp(la, lb, na)) {
            snprintf(out, len, "it has '%.*s', this run has '%.*s'", (int)na, la, (int)nb, lb);
            return;
        }
        la += na + (la[na] ? 1 : 0);
        lb += nb + (lb[nb] ? 1 : 0);
    }
    snprintf(out, len, "the model configurations differ");
}

int ckpt_load(const char *path, ckpt_meta_t *m, const char *model_text, float *params, float *const *state,
              float *const *extra, char *err, size_t errlen) {
    ckpt_header_t h;
    char *text;
    /* the header first, so a refused file leaves params alone (ckpt_find has
     * verified the checksum; the load below checks it again as it reads) */
    if (read_ckpt(path, READ_HEADER, &h, &text, NULL, NULL, NULL, 0, err, errlen)) return -1;
    if (h.model_hash != fnv1a(model_text, strlen(model_text)) || strcmp(text, model_text)) {
        char d[600];
        first_difference(text, model_text, d, sizeof d);
        snprintf(err, errlen, "%s was written for a different model: %s (use another [checkpoint] dir, or resume = never)",
                 path, d);
        free(text);
        return -1;
    }
    free(text);
    if (h.nweights != m->nweights || (int)h.state_arrays != m->state_arrays) {
        snprintf(err, errlen, "%s holds %llu parameters and %u optimiser state arrays; this run has %zu and %d (another optimiser?)",
                 path, (unsigned long long)h.nweights, h.state_arrays, m->nweights, m->state_arrays);
        return -1;
    }
    if (read_ckpt(path, READ_LOAD, &h, &text, params, state, extra, m->extra_arrays, err, errlen)) return -1;
    free(text);
    m->step = (long)h.step;
    m->epoch = (long)h.epoch;
    m->batch_in_epoch = (long)h.batch_in_epoch;
    m->global_batch = (long)h.global_batch;
    m->seed = h.seed;
    m->optim_t = (long)h.optim_t;
    m->extra_arrays = (int)h.extra_arrays;
    return 0;
}
