#include "data.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "rng.h"

static uint32_t be32(const uint8_t *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* gzread that loops past its unsigned-int length limit; returns bytes read or -1 */
static long long read_all(gzFile f, uint8_t *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        const unsigned chunk = len - got > (1u << 30) ? (1u << 30) : (unsigned)(len - got);
        const int r = gzread(f, buf + got, chunk);
        if (r < 0) return -1;
        if (r == 0) break;
        got += (size_t)r;
    }
    return (long long)got;
}

static const char *gz_problem(gzFile f) {
    int code;
    const char *m = gzerror(f, &code);
    return code == Z_ERRNO ? strerror(errno) : m;
}

int idx_read(const char *path, int ndim, uint8_t **data, uint32_t dims[3], char *err, size_t errlen) {
    *data = NULL;
    gzFile f = gzopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, errno ? strerror(errno) : "cannot open");
        return -1;
    }
    uint8_t head[4 + 4 * 3];
    long long r = read_all(f, head, 4);
    int rc = -1;
    if (r < 0) {
        snprintf(err, errlen, "%s: corrupt gzip data (%s)", path, gz_problem(f));
        goto out;
    }
    if (r < 4) {
        snprintf(err, errlen, "%s: truncated: %lld bytes, shorter than an IDX header", path, r);
        goto out;
    }
    if (head[0] || head[1] || head[3] < 1 || head[3] > 3) {
        snprintf(err, errlen, "%s: bad magic number 0x%08x (not an IDX file)", path, be32(head));
        goto out;
    }
    if (head[2] != 0x08) {
        snprintf(err, errlen, "%s: element type 0x%02x not supported (expected 0x08, unsigned byte)", path, head[2]);
        goto out;
    }
    if (head[3] != ndim) {
        snprintf(err, errlen, "%s: has %d dimensions, expected %d (%s)", path, head[3], ndim,
                 ndim == 1 ? "labels" : "images");
        goto out;
    }
    r = read_all(f, head + 4, 4 * (size_t)ndim);
    if (r != 4 * ndim) {
        snprintf(err, errlen, "%s: truncated header (%s)", path, r < 0 ? gz_problem(f) : "end of file");
        goto out;
    }
    size_t total = 1;
    for (int i = 0; i < ndim; i++) {
        dims[i] = be32(head + 4 + 4 * i);
        if (dims[i] == 0 || dims[i] > (1u << 28)) {
            snprintf(err, errlen, "%s: dimension %d is %u", path, i, dims[i]);
            goto out;
        }
        total *= dims[i];
        if (total > ((size_t)1 << 36)) {
            snprintf(err, errlen, "%s: dimensions too large", path);
            goto out;
        }
    }
    /* One byte more than expected: finding it means trailing garbage. The
     * buffer grows with the data actually read, so a 16-byte file whose header
     * promises gigabytes costs a megabyte, not the promise. */
    size_t cap = total + 1 < ((size_t)1 << 20) ? total + 1 : (size_t)1 << 20, got = 0;
    for (;;) {
        uint8_t *grown = realloc(*data, cap);
        if (!grown) {
            snprintf(err, errlen, "%s: out of memory for %zu bytes", path, cap);
            goto out;
        }
        *data = grown;
        r = read_all(f, *data + got, cap - got);
        if (r < 0) {
            snprintf(err, errlen, "%s: corrupt gzip data (%s)", path, gz_problem(f));
            goto out;
        }
        got += (size_t)r;
        if (got < cap || cap == total + 1) break;
        cap = cap > (total + 1) / 2 ? total + 1 : 2 * cap;
    }
    r = (long long)got;
    if ((size_t)r < total) {
        snprintf(err, errlen, "%s: truncated: header promises %zu bytes of data, file has %lld", path, total, r);
        goto out;
    }
    if ((size_t)r > total) {
        snprintf(err, errlen, "%s: unexpected bytes after the %zu bytes the header promises", path, total);
        goto out;
    }
    rc = 0;
out:
    gzclose(f);
    if (rc) {
        free(*data);
        *data = NULL;
    }
    return rc;
}

/* dir/name, else dir/name.gz; NULL (with err) when neither exists */
static int find_file(const char *dir, const char *name, char *path, size_t len) {
    struct stat st;
    snprintf(path, len, "%s/%s", dir, name);
    if (stat(path, &st) == 0) return 0;
    snprintf(path, len, "%s/%s.gz", dir, name);
    return stat(path, &st) == 0 ? 0 : -1;
}

static int load_split(const char *dir, const char *img_name, const char *lab_name, dataset_t *d, char *err,
                      size_t errlen) {
    char ip[4096], lp[4096];
    if (find_file(dir, img_name, ip, sizeof ip) || find_file(dir, lab_name, lp, sizeof lp)) {
        snprintf(err, errlen,
                 "Fashion-MNIST not found: no %s/%s[.gz]; install Debian's package %s "
                 "(apt-get install %s) or point data.dir at the IDX files",
                 dir, find_file(dir, img_name, ip, sizeof ip) ? img_name : lab_name, FMNIST_PACKAGE, FMNIST_PACKAGE);
        return -1;
    }
    uint8_t *img = NULL, *lab = NULL;
    uint32_t idim[3], ldim[3];
    int rc = -1;
    if (idx_read(ip, 3, &img, idim, err, errlen) || idx_read(lp, 1, &lab, ldim, err, errlen)) goto out;
    if (ldim[0] != idim[0]) {
        snprintf(err, errlen, "%s has %u labels but %s has %u images", lp, ldim[0], ip, idim[0]);
        goto out;
    }
    for (uint32_t i = 0; i < ldim[0]; i++)
        if (lab[i] >= 10) {
            snprintf(err, errlen, "%s: label %u of sample %u is outside 0..9", lp, lab[i], i);
            goto out;
        }
    *d = (dataset_t){.n = (int)idim[0], .shape = {1, (int)idim[1], (int)idim[2]}, .classes = 10};
    const size_t s = dataset_sample_size(d), total = s * d->n;
    d->x = malloc(total * sizeof(float));
    d->y = malloc((size_t)d->n * sizeof(int32_t));
    if (!d->x || !d->y) {
        snprintf(err, errlen, "out of memory for %s", ip);
        goto out;
    }
    for (size_t i = 0; i < total; i++) d->x[i] = img[i] * (1.0f / 255.0f);
    for (int i = 0; i < d->n; i++) d->y[i] = lab[i];
    rc = 0;
out:
    free(img);
    free(lab);
    if (rc) dataset_free(d);
    return rc;
}

int fmnist_load(const char *dir, dataset_t *train, dataset_t *test, char *err, size_t errlen) {
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    if (load_split(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", train, err, errlen)) return -1;
    if (load_split(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", test, err, errlen)) {
        dataset_free(train);
        return -1;
    }
    if (test->shape[1] != train->shape[1] || test->shape[2] != train->shape[2]) {
        snprintf(err, errlen, "%s: test images are %dx%d but training images are %dx%d", dir, test->shape[1],
                 test->shape[2], train->shape[1], train->shape[2]);
        dataset_free(train);
        dataset_free(test);
        return -1;
    }
    /* per-pixel standardisation with the training set's statistics; pixels
     * that never vary (std ~ 0) are only centred */
    const size_t s = dataset_sample_size(train);
    double *mean = calloc(s, sizeof *mean), *var = calloc(s, sizeof *var);
    if (!mean || !var) {
        free(mean);
        free(var);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < train->n; i++)
        for (size_t j = 0; j < s; j++) mean[j] += train->x[i * s + j];
    for (size_t j = 0; j < s; j++) mean[j] /= train->n;
    for (int i = 0; i < train->n; i++)
        for (size_t j = 0; j < s; j++) {
            const double d = train->x[i * s + j] - mean[j];
            var[j] += d * d;
        }
    for (size_t j = 0; j < s; j++) {
        const double sd = sqrt(var[j] / train->n);
        var[j] = sd > 1e-3 ? 1.0 / sd : 1.0;
    }
    dataset_t *sets[2] = {train, test};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < sets[k]->n; i++)
            for (size_t j = 0; j < s; j++) {
                float *v = &sets[k]->x[i * s + j];
                *v = (float)((*v - mean[j]) * var[j]);
            }
    free(mean);
    free(var);
    return 0;
}

static int synth_split(dataset_t *d, const float *teacher, const int shape[3], int classes, int n, uint64_t seed,
                       uint64_t split) {
    *d = (dataset_t){.n = n, .shape = {shape[0], shape[1], shape[2]}, .classes = classes};
    const size_t s = dataset_sample_size(d);
    d->x = malloc((size_t)n * s * sizeof(float) + 1);
    d->y = malloc((size_t)n * sizeof(int32_t) + 1);
    if (!d->x || !d->y) return -1;
    rng_t r;
    rng_seed(&r, seed ^ 0x73796e7468ULL, split, 0);
    for (int i = 0; i < n; i++) {
        float *x = d->x + (size_t)i * s;
        for (size_t j = 0; j < s; j++) x[j] = rng_normal(&r);
        int best = 0;
        float bv = -INFINITY;
        for (int c = 0; c < classes; c++) {
            float acc = 0.0f;
            for (size_t j = 0; j < s; j++) acc += teacher[(size_t)c * s + j] * x[j];
            if (acc > bv) bv = acc, best = c;
        }
        d->y[i] = best;
    }
    return 0;
}

int synthetic_make(dataset_t *train, dataset_t *test, const int shape[3], int classes, int ntrain, int ntest,
                   uint64_t seed, char *err, size_t errlen) {
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    const size_t s = (size_t)shape[0] * shape[1] * shape[2];
    float *teacher = malloc((size_t)classes * s * sizeof(float));
    rng_t r;
    rng_seed(&r, seed ^ 0x746561636865ULL, 0, 0);
    int rc = teacher ? 0 : -1;
    for (size_t i = 0; !rc && i < (size_t)classes * s; i++) teacher[i] = rng_normal(&r);
    if (!rc) rc = synth_split(train, teacher, shape, classes, ntrain, seed, 1);
    if (!rc) rc = synth_split(test, teacher, shape, classes, ntest, seed, 2);
    free(teacher);
    if (rc) {
        dataset_free(train);
        dataset_free(test);
        snprintf(err, errlen, "out of memory for the synthetic dataset (%d + %d samples of %zu floats)", ntrain, ntest, s);
    }
    return rc;
}

void dataset_free(dataset_t *d) {
    free(d->x);
    free(d->y);
    free(d->tokens);
    d->x = NULL;
    d->y = NULL;
    d->tokens = NULL;
}

void data_permutation(uint32_t *perm, int n, uint64_t seed, long epoch) {
    rng_t r;
    rng_seed(&r, seed ^ 0x73687566666c65ULL, (uint64_t)epoch, 0);
    for (int i = 0; i < n; i++) perm[i] = (uint32_t)i;
    for (int i = n - 1; i > 0; i--) {
        const uint32_t j = (uint32_t)rng_below(&r, (uint64_t)i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* one sample: an image and its label, or a window and the next tokens */
static void gather_one(const dataset_t *d, size_t i, size_t j, float *x, int32_t *y) {
    if (d->tokens) {
        const size_t T = (size_t)d->block;
        const uint8_t *w = d->tokens + i * (size_t)d->stride;
        for (size_t t = 0; t < T; t++) {
            x[j * T + t] = (float)w[t];
            y[j * T + t] = w[t + 1];
        }
        return;
    }
    const size_t s = dataset_sample_size(d);
    memcpy(x + j * s, d->x + i * s, s * sizeof(float));
    y[j] = d->y[i];
}

void data_gather(const dataset_t *d, const uint32_t *idx, int n, float *x, int32_t *y) {
    for (int j = 0; j < n; j++) gather_one(d, idx[j], (size_t)j, x, y);
}

void data_gather_range(const dataset_t *d, int lo, int n, float *x, int32_t *y) {
    for (int j = 0; j < n; j++) gather_one(d, (size_t)lo + (size_t)j, (size_t)j, x, y);
}
