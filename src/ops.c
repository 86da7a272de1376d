#include "ops.h"

#include <stddef.h>

size_t ops_conv_chunk_bytes = 1u << 20;

const op_impl_t *ops_impl(device_t dev, op_kind_t kind) {
    const op_impl_t *col = dev == DEV_CPU ? ops_cpu : dev == DEV_CUDA ? device_cuda_ops() : NULL;
    if (!col || (unsigned)kind >= OP_COUNT) return NULL;
    return &col[kind];
}
