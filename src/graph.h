/* The computational graph: op nodes built from layer specs, forward in
 * topological order, reverse-mode autodiff in reverse order. Each op owns its
 * forward and backward (ops.h); this file owns shapes, memory and order.
 *
 * Memory: every activation, its gradient and every scratch buffer is
 * allocated by graph_create for the batch capacity; forward and backward
 * allocate nothing. Parameters live in one flat buffer and gradients in
 * another with the same layout, ordered as backward produces them (last
 * layer first; within a layer weight, then bias), so a contiguous range is a
 * gradient bucket and a ZeRO shard is an offset pair. */
#ifndef DDP_GRAPH_H
#define DDP_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#include "layers.h"
#include "tensor.h"

/* Called by backward the moment parameter `param`'s gradient is final:
 * grads[offset, offset + count) will not be written again this backward. */
typedef void (*grad_ready_fn)(void *user, int param, size_t offset, size_t count);

typedef struct node {
    layer_spec_t spec;
    int input;        /* index of the producing node, -1 for the graph input */
    int needs_dinput; /* backward must produce the input's gradient */
    tensor_t out;     /* activation, [batch, ...] */
    tensor_t dout;    /* its gradient, same shape */
    int nparam;
    int param[2]; /* weight, bias: indices into graph.param */
    float *scratch; /* im2col columns, dropout scale mask, softmax probs */
    int32_t *index; /* max-pool argmax */
    int views_input; /* out/dout alias the input's (flatten) */
} node_t;

typedef struct param_info {
    char name[32];
    size_t offset, count;
    int node;
    int fan_in;
} param_info_t;

typedef struct graph {
    device_t dev;
    int batch;     /* capacity */
    int n;         /* rows in the current forward/backward, <= batch */
    int classes;
    tensor_t input;  /* the caller fills input.data[0 .. n * sample) */
    int32_t *labels; /* and labels[0 .. n) */
    int nnodes;
    node_t *nodes;
    int *order; /* topological order of nodes */
    int nparam;
    param_info_t *param;
    size_t nweights; /* floats of parameters in params (and grads) */
    size_t nalloc;   /* floats allocated: nweights rounded up by graph_pad_params; the tail stays 0 */
    float *params, *grads;
    float loss;       /* mean loss of the last forward */
    float loss_scale; /* multiplies the loss gradient (1/K for K accumulation steps) */
    int accumulate;   /* backward adds into grads instead of overwriting them */
    int training;     /* dropout active */
    uint64_t seed, step; /* dropout streams derive from (seed, step, node, rank) */
    int rank;
    float *dinput; /* gradient of the input, when graph_enable_input_grad was called */
    grad_ready_fn on_grad;
    void *on_grad_user;
} graph_t;

/* Builds a graph for inputs of shape in[0..2] = C, H, W (an MLP sees C*H*W
 * features), `classes` outputs and at most `batch` rows. Returns 0, or -1
 * with a message in err (shape errors name the layer). */
int graph_create(graph_t **g, const layer_spec_t *specs, int nspecs, const int in[3], int classes,
                 int batch, device_t dev, char *err, size_t errlen);
void graph_destroy(graph_t *g);

/* PyTorch's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
void graph_init_params(graph_t *g, uint64_t seed);

/* Forward over the first n rows of input; returns the mean loss. */
float graph_forward(graph_t *g, int n);
/* Gradients of loss_scale x the last forward's loss, into grads. */
void graph_backward(graph_t *g);
/* Rows of the last forward whose arg-max output equals the label. */
int graph_correct(const graph_t *g);
/* The model's output probabilities, [n, classes]. */
const float *graph_probs(const graph_t *g);

/* Reallocates params and grads (zeroed, before graph_init_params) so their
 * length is a multiple of `multiple` (ZeRO shards and reduce-scatter need
 * equal pieces). 0, or -1 when out of memory. */
int graph_pad_params(graph_t *g, size_t multiple);

/* Makes backward also produce the gradient of the input (g->dinput), for
 * gradient checks and input attributions. 0, or -1 when out of memory. */
int graph_enable_input_grad(graph_t *g);

/* Used by ops: tells the callback that a parameter's gradient is final. */
void graph_grad_ready(graph_t *g, int param);

#endif
