#include "tensor.h"

#include <stdlib.h>
#include <string.h>

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
