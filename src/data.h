/* Datasets held in memory as normalised float32 samples plus int labels:
 * Fashion-MNIST from IDX files (gzipped or not), or a synthetic set of any
 * shape. Sampling is by index permutations, seeded per epoch. */
#ifndef DDP_DATA_H
#define DDP_DATA_H

#include <stddef.h>
#include <stdint.h>

typedef struct dataset {
    int n;        /* samples */
    int shape[3]; /* C, H, W of one sample */
    int classes;
    float *x;     /* n x C*H*W */
    int32_t *y;   /* n labels in [0, classes) */
    /* a token stream instead (x, y NULL): sample i is the window of `block`
     * tokens from i x stride, its labels the `block` tokens one further on */
    uint8_t *tokens;
    size_t ntokens;
    int block, stride;
    uint8_t byte_of[256]; /* text: the byte each token id stands for */
} dataset_t;

#define FMNIST_DEFAULT_DIR "/usr/share/datasets/fashion-mnist"
#define FMNIST_PACKAGE "dataset-fashion-mnist"

static inline size_t dataset_sample_size(const dataset_t *d) {
    return (size_t)d->shape[0] * d->shape[1] * d->shape[2];
}

/* Reads an IDX file of unsigned bytes with `ndim` dimensions (1 for labels,
 * 3 for images). On success *data (malloc'd) holds the elements and dims[]
 * the sizes. On failure returns -1 with "PATH: problem" in err. */
int idx_read(const char *path, int ndim, uint8_t **data, uint32_t dims[3], char *err, size_t errlen);

/* Loads the four Fashion-MNIST files from dir (each as NAME or NAME.gz),
 * normalises every pixel position by the training set's mean and standard
 * deviation, and checks labels against images. */
int fmnist_load(const char *dir, dataset_t *train, dataset_t *test, char *err, size_t errlen);

/* A learnable synthetic problem: x ~ N(0, 1), label = argmax of a fixed
 * random linear map of x. Deterministic in seed. */
int synthetic_make(dataset_t *train, dataset_t *test, const int shape[3], int classes, int ntrain,
                   int ntest, uint64_t seed, char *err, size_t errlen);

/* A text file (or a directory's text files, in name order) as a byte-level
 * token stream (text.c): the vocabulary is the
 * bytes that occur, in byte order; the first 1 - val_fraction of the file
 * trains (every window of block + 1 bytes, stride 1), the rest validates
 * (disjoint windows, stride block). Errors name the file and what is short. */
int text_load(const char *path, int block, double val_fraction, dataset_t *train, dataset_t *val, char *err,
              size_t errlen);

/* A learnable synthetic token stream of ntokens over `classes` tokens (a
 * fixed random bigram chain, deterministic in seed), split as text_load. */
int text_synthetic(int classes, long ntokens, int block, double val_fraction, uint64_t seed, dataset_t *train,
                   dataset_t *val, char *err, size_t errlen);

/* Labels per sample: block for a token stream, else 1. */
static inline int dataset_positions(const dataset_t *d) { return d->tokens ? d->block : 1; }

void dataset_free(dataset_t *d);

/* perm = a permutation of 0..n-1 that depends only on (seed, epoch). */
void data_permutation(uint32_t *perm, int n, uint64_t seed, long epoch);

/* Copies samples idx[0..n) into x (n x sample floats) and y (n x positions). */
void data_gather(const dataset_t *d, const uint32_t *idx, int n, float *x, int32_t *y);
/* The same for samples lo .. lo + n - 1. */
void data_gather_range(const dataset_t *d, int lo, int n, float *x, int32_t *y);

#endif
