/* Op implementations, dispatched by (device, kind) in one table (ops.c). A
 * GPU build adds a column to that table; graph.c never changes. */
#ifndef DDP_OPS_H
#define DDP_OPS_H

#include "graph.h"

typedef struct op_impl {
    /* out = f(in) for rows [0, g->n) */
    void (*forward)(graph_t *g, node_t *nd, const tensor_t *in);
    /* parameter gradients (calling graph_grad_ready for each), then din when
     * nd->needs_dinput; din is overwritten */
    void (*backward)(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din);
    /* optional: per-node state (nd->aux) made once by graph_create, for
     * the full batch, so that steps allocate nothing (cuDNN descriptors,
     * workspaces); 0, or -1 with err */
    int (*setup)(graph_t *g, node_t *nd, const tensor_t *in, char *err, size_t errlen);
    void (*release)(graph_t *g, node_t *nd);
} op_impl_t;

const op_impl_t *ops_impl(device_t dev, op_kind_t kind);

/* Samples per matrix product in the CPU convolution: as many as keep the
 * chunk's columns and product within ops_conv_chunk_bytes (default 1 MiB;
 * tests lower it to split batches), at least 1, at most the batch. On the
 * tutorial CNN (docs/PERFORMANCE.md) the whole batch in one product was 5-8%
 * slower than a sample at a time (40 MB of columns leave the cache), 1-4
 * MiB chunks the same as one sample. Graphs built before a change keep
 * theirs. */
extern size_t ops_conv_chunk_bytes;
static inline int conv_chunk(int ckk, int oc, int positions, int batch) {
    const size_t per = (size_t)(ckk + oc) * (size_t)positions * sizeof(float);
    size_t g = ops_conv_chunk_bytes / (per ? per : 1);
    return g < 1 ? 1 : g > (size_t)batch ? batch : (int)g;
}

/* Floats of scratch the CPU's direct convolution (ops_conv.c) needs for a
 * C x H x W input, OC outputs, K x K kernel, padding P and the batch. */
size_t conv_direct_scratch(int C, int H, int W, int OC, int K, int P, int batch);

/* Floats of the im2col path's scratch: a chunk's columns and its product. */
static inline size_t conv_chunk_floats(int ckk, int oc, int positions, int batch) {
    return (size_t)(ckk + oc) * (size_t)positions * (size_t)conv_chunk(ckk, oc, positions, batch);
}

extern const op_impl_t ops_cpu[OP_COUNT];
/* The CUDA column, once device_open(DEV_CUDA) loaded it; else NULL. */
const op_impl_t *device_cuda_ops(void);

#endif
