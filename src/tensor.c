#include "tensor.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

void tensor_shape(tensor_t *t, int ndim, const int *dim) {
    t->ndim = ndim;
    t->size = 1;
    for (int i = 0; i < ndim; i++) {
        t->dim[i] = dim[i];
        t->size *= (size_t)dim[i];
    }
}

float *tensor_alloc(size_t n) {
    /* round up so vector loops may read whole cache lines */
    size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) return NULL;
    memset(p, 0, bytes ? bytes : 64);
    return p;
}

void tensor_free(float *p) { free(p); }

float *tensor_alloc_huge(size_t n) {
    const size_t huge = (size_t)2 << 20;
    size_t bytes = n * sizeof(float);
    if (bytes < huge) return tensor_alloc(n);
    bytes = (bytes + huge - 1) & ~(huge - 1);
    void *p = NULL;
    if (posix_memalign(&p, huge, bytes)) return NULL;
    madvise(p, bytes, MADV_HUGEPAGE); /* advisory: without THP it is plain memory */
    memset(p, 0, bytes);
    return p;
}
