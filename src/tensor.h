/* Tensors: float32, contiguous, row-major (NCHW for images), tagged with the
 * device that owns the memory. The tag selects the op implementations (see
 * ops.c); nothing else looks at it. */
#ifndef DDP_TENSOR_H
#define DDP_TENSOR_H

#include <stddef.h>

typedef enum { DEV_CPU = 0, DEV_CUDA, DEV_COUNT } device_t;

#define TENSOR_MAX_DIMS 4

typedef struct tensor {
    float *data;
    int ndim;
    int dim[TENSOR_MAX_DIMS]; /* dim[0] is the batch for activations */
    size_t size;              /* product of dims, at the full batch */
    device_t dev;
} tensor_t;

/* Elements of one sample (all dims but the first). */
static inline size_t tensor_sample_size(const tensor_t *t) {
    size_t s = 1;
    for (int i = 1; i < t->ndim; i++) s *= (size_t)t->dim[i];
    return s;
}

/* Sets shape and size; data is untouched. */
void tensor_shape(tensor_t *t, int ndim, const int *dim);
/* 64-byte aligned, zeroed allocation for n floats; NULL on failure. */
float *tensor_alloc(size_t n);
void tensor_free(float *p);
/* As tensor_alloc, but 2 MiB aligned and backed by transparent huge pages
 * when large: cross-process copies (CMA) of such buffers run ~35% faster. */
float *tensor_alloc_huge(size_t n);

#endif
