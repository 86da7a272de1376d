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
    /* a second input (OP_ADD): its producer (-1 the graph input) and, set by
     * the graph before each call, the tensor and where its gradient goes */
    int ninputs;
    int input2;
    int needs_dinput2;
    const tensor_t *in2;
    tensor_t *din2;
    /* per input: another consumer of the same output wrote its gradient
     * earlier in backward, so this node's share is added to it (the graph
     * points din at a scratch tensor and adds that in, in a fixed order) */
    int din_add[2];
    tensor_t out;     /* activation, [batch, ...] */
    tensor_t dout;    /* its gradient, same shape */
    int nparam;
    int param[2]; /* weight, bias: indices into graph.param */
    float *scratch; /* im2col columns, dropout scale mask, softmax probs */
    int32_t *index; /* max-pool argmax */
    int views_input; /* out/dout alias the input's (flatten) */
    void *aux;       /* the op's own state on this device (ops.h setup) */
} node_t;

typedef struct param_info {
    char name[32];
    size_t offset, count;
    size_t rows, cols; /* count = rows x cols: a weight as PyTorch's view(out, -1); a bias is rows x 1 */
    int node;
    /* initial values: N(0, std) when std > 0, else U(+-1/sqrt(fan_in)) when
     * fan_in > 0 (PyTorch's default), else all `fill` */
    int fan_in;
    float std, fill;
} param_info_t;

typedef struct graph {
    device_t dev;
    int batch;     /* capacity */
    int n;         /* rows in the current forward/backward, <= batch */
    int classes;
    tensor_t input;  /* the caller fills input.data[0 .. n * sample) */
    int32_t *labels; /* and labels[0 .. n x positions) */
    int positions;   /* labels per sample: 1, or T for a sequence model's logits [T, classes] */
    int nnodes;
    node_t *nodes;
    int *order; /* topological order of nodes */
    float *dsum[2]; /* per input slot, scratch for gradients that are added (din_add); NULL when none is */
    int *puses;     /* per parameter: how many nodes use it (tied weights: several) */
    int *pdone;     /* per parameter: uses whose backward has run in this backward */
    int nparam;
    param_info_t *param;
    size_t nweights; /* floats of parameters in params (and grads) */
    size_t nalloc;   /* floats allocated: nweights rounded up by graph_pad_params; the tail stays 0 */
    float *params, *grads;
    int flat_lent;    /* params and grads belong to someone else (graph_use_flat) */
    float loss;       /* mean loss of the last forward (CPU; on a GPU see graph_loss_sum) */
    double loss_sum;  /* CPU: sum of forward losses since graph_loss_reset */
    float *loss_dev;  /* device: [0] last forward's mean loss, [1] the sum since the reset */
    float *ones;      /* ones on the device, batch or a conv's positions long (bias gradients as products) */
    float loss_scale; /* multiplies the loss gradient (1/K for K accumulation steps) */
    int accumulate;   /* backward adds into grads instead of overwriting them */
    int training;     /* dropout active */
    uint64_t seed, step; /* dropout streams derive from (seed, step, node, rank) */
    int rank;
    float *dinput; /* gradient of the input, when graph_enable_input_grad was called */
    grad_ready_fn on_grad;
    void *on_grad_user;
    /* host side of the input on a GPU: two pinned staging pairs, so the
     * next batch is gathered while the last one is still being copied */
    float *stage_x[2];
    int32_t *stage_y[2];
    struct device_event *staged[2];
    int stage;
    float *probs_host; /* GPU: probabilities read back for graph_correct */
    double *prof_ms;   /* graph_profile: per node, forward ms then backward ms (2 x nnodes), summed */
    long prof_passes;  /* forwards summed there */
} graph_t;

/* Builds a graph for inputs of shape in[0..2] = C, H, W (an MLP sees C*H*W
 * features), `classes` outputs and at most `batch` rows. The layers form a
 * DAG (layer_spec_t's src and tie); the last one's output is the logits. Returns 0, or -1
 * with a message in err (shape errors name the layer). */
int graph_create(graph_t **g, const layer_spec_t *specs, int nspecs, const int in[3], int classes,
                 int batch, device_t dev, char *err, size_t errlen);
void graph_destroy(graph_t *g);

/* Each parameter as param_info says: PyTorch's default U(-1/sqrt(fan_in),
 * 1/sqrt(fan_in)), N(0, std) where a layer asks for it, or a constant. */
void graph_init_params(graph_t *g, uint64_t seed);

/* Where the caller writes the next batch (n rows of input, and labels):
 * the graph's own input on the CPU, a free pinned staging buffer on a GPU.
 * graph_input_commit(g, n) then moves it to the device (queued). */
void graph_input_host(graph_t *g, float **x, int32_t **y);
int graph_input_commit(graph_t *g, int n);

/* Forward over the first n rows of input. Returns the mean loss on the
 * CPU; on a GPU it returns NAN without waiting (read graph_loss_sum). Uses
 * the graph's fields as they are (training, step, ...): tests set them. */
float graph_forward(graph_t *g, int n);

/* A training pass's settings, which the trainer passes per micro-batch. */
typedef struct graph_pass {
    uint64_t step;    /* dropout streams derive from (seed, step, node, rank) */
    float loss_scale; /* multiplies the loss gradient (1/K for K accumulation steps) */
    int accumulate;   /* backward adds into grads instead of overwriting them */
} graph_pass_t;

/* Forward in training mode (dropout on) under p; the next graph_backward
 * runs under p too. */
float graph_train_forward(graph_t *g, int n, const graph_pass_t *p);
/* Forward in evaluation mode (dropout off, not profiled). */
float graph_eval_forward(graph_t *g, int n);
/* The sum of the mean losses of the forwards since graph_loss_reset (on a
 * GPU this waits for them: call it only when the loss is logged). */
void graph_loss_reset(graph_t *g);
double graph_loss_sum(graph_t *g);
/* Gradients of loss_scale x the last forward's loss, into grads. */
void graph_backward(graph_t *g);
/* Predictions of the last forward (n x positions) whose arg-max equals the
 * label (the labels as given to graph_input_host). */
int graph_correct(graph_t *g);
/* The model's output probabilities, [n x positions, classes], in host memory. */
const float *graph_probs(graph_t *g);

/* Parameters (nweights floats) between the device and host memory. */
int graph_params_to_host(graph_t *g, float *host);
int graph_params_from_host(graph_t *g, const float *host);

/* Reallocates params and grads (zeroed, before graph_init_params) so their
 * length is a multiple of `multiple` (ZeRO shards and reduce-scatter need
 * equal pieces). 0, or -1 when out of memory. */
int graph_pad_params(graph_t *g, size_t multiple);

/* Moves params and grads (nalloc floats each, CPU only) into the caller's
 * buffers, which then hold their contents and which the graph will not
 * free (the data-parallel engine's coll_mem_alloc memory). */
void graph_use_flat(graph_t *g, float *params, float *grads);

/* Times every node's forward and backward from now on, summed into
 * g->prof_ms (on a GPU each node is waited for: profiling perturbs the
 * overlap it measures); graph_profile_reset zeroes the sums (after a
 * warm-up). 0, or -1 when out of memory. */
int graph_profile(graph_t *g);
void graph_profile_reset(graph_t *g);
/* The flat-buffer range [lo, hi) of node k's parameters; 0 when it has none. */
int graph_node_params(const graph_t *g, int k, size_t *lo, size_t *hi);

/* Makes backward also produce the gradient of the input (g->dinput), for
 * gradient checks and input attributions. 0, or -1 when out of memory. */
int graph_enable_input_grad(graph_t *g);

/* Used by ops: whether this use's gradient of `param` is added to what the
 * buffer holds (gradient accumulation, or a tied weight whose other use
 * already wrote it this backward) rather than overwriting it. */
static inline int graph_grad_add(const graph_t *g, int param) { return g->accumulate || g->pdone[param] > 0; }

/* Used by ops after each use's gradient of `param`: on the last use in this
 * backward, tells the callback that the gradient is final (on a GPU: that the
 * kernel producing it has been queued). */
static inline void graph_grad_ready(graph_t *g, int param) {
    if (++g->pdone[param] < g->puses[param]) return;
    if (g->on_grad) g->on_grad(g->on_grad_user, param, g->param[param].offset, g->param[param].count);
}

#endif
