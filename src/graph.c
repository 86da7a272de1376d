#include "graph.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "device.h"
#include "ops.h"
#include "rng.h"
#include "simd.h"

static int add_param(graph_t *g, node_t *nd, int node, const char *what, size_t rows, size_t cols, int fan_in) {
    param_info_t *p = &g->param[g->nparam];
    snprintf(p->name, sizeof p->name, "%s%d.%s", layers_op_name(nd->spec.kind), node, what);
    p->count = rows * cols;
    p->rows = rows;
    p->cols = cols;
    p->node = node;
    p->fan_in = fan_in;
    p->std = 0;
    p->fill = 0;
    nd->param[nd->nparam++] = g->nparam;
    return g->nparam++;
}

/* a parameter filled with a constant (LayerNorm's 1 and 0, GPT-2's zero biases) */
static void add_const(graph_t *g, node_t *nd, int node, const char *what, size_t rows, float fill) {
    g->param[add_param(g, nd, node, what, rows, 1, 0)].fill = fill;
}

/* a weight drawn from N(0, std) */
static void add_normal(graph_t *g, node_t *nd, int node, const char *what, size_t rows, size_t cols, float std) {
    g->param[add_param(g, nd, node, what, rows, cols, 0)].std = std;
}

/* the last dimension: C of a sequence [batch, T, C] */
static int last_dim(const tensor_t *t) { return t->dim[t->ndim - 1]; }

/* Output shape of node i from its input's; params registered (unplaced). */
static int infer(graph_t *g, int i, const tensor_t *in, char *err, size_t errlen) {
    node_t *nd = &g->nodes[i];
    const layer_spec_t *l = &nd->spec;
    const int B = g->batch;
    const int F = (int)tensor_sample_size(in);
    const char *nm = layers_op_name(l->kind);
    switch (l->kind) {
    case OP_LINEAR: {
        /* a sequence [B, T, C] keeps its positions: the layer acts on C */
        const int seq = in->ndim == 3;
        const int F_ = seq ? last_dim(in) : F;
        if (seq) tensor_shape(&nd->out, 3, (int[]){B, in->dim[1], l->n});
        else tensor_shape(&nd->out, 2, (int[]){B, l->n});
        if (l->tie) {
            /* the owner's weight: same rows x cols (PyTorch's weight tying) */
            const node_t *o = &g->nodes[l->tie - 1];
            const param_info_t *w = o->nparam ? &g->param[o->param[0]] : NULL;
            if (!w || w->rows != (size_t)l->n || w->cols != (size_t)F_) {
                snprintf(err, errlen, "layer %d (%s) ties its weight to layer %d's, which is not %d x %d", i + 1, nm,
                         l->tie, l->n, F_);
                return -1;
            }
            nd->param[nd->nparam++] = o->param[0];
        } else if (l->init_std > 0) {
            add_normal(g, nd, i, "weight", (size_t)l->n, (size_t)F_, l->init_std);
        } else {
            add_param(g, nd, i, "weight", (size_t)l->n, (size_t)F_, F_);
        }
        if (l->nobias) return 0;
        if (l->init_std > 0) add_const(g, nd, i, "bias", (size_t)l->n, 0.0f);
        else add_param(g, nd, i, "bias", (size_t)l->n, 1, F_);
        return 0;
    }
    case OP_ADD: {
        const tensor_t *b = nd->input2 < 0 ? &g->input : &g->nodes[nd->input2].out;
        if (tensor_sample_size(b) != (size_t)F) {
            snprintf(err, errlen, "layer %d (%s) adds %zu features to %d: a residual block must keep its input's size",
                     i + 1, nm, tensor_sample_size(b), F);
            return -1;
        }
        tensor_shape(&nd->out, in->ndim, in->dim);
        return 0;
    }
    case OP_RELU: case OP_GELU: case OP_TANH: case OP_DROPOUT:
        tensor_shape(&nd->out, in->ndim, in->dim);
        return 0;
    case OP_FLATTEN: /* a view of its input when it is the input's only consumer (graph_create), else a copy */
        tensor_shape(&nd->out, 2, (int[]){B, F});
        return 0;
    case OP_CONV2D: case OP_MAXPOOL: {
        if (in->ndim != 4) {
            snprintf(err, errlen, "layer %d (%s) needs an image input (C,H,W) but gets %d features", i + 1, nm, F);
            return -1;
        }
        const int pad = l->kind == OP_CONV2D ? l->pad : 0;
        const int oh = (in->dim[2] + 2 * pad - l->k) / l->stride + 1;
        const int ow = (in->dim[3] + 2 * pad - l->k) / l->stride + 1;
        if (in->dim[2] + 2 * pad < l->k || in->dim[3] + 2 * pad < l->k) {
            snprintf(err, errlen, "layer %d (%s): kernel %d is larger than its %dx%d input", i + 1, nm, l->k,
                     in->dim[2], in->dim[3]);
            return -1;
        }
        const int oc = l->kind == OP_CONV2D ? l->n : in->dim[1];
        tensor_shape(&nd->out, 4, (int[]){B, oc, oh, ow});
        if (l->kind == OP_CONV2D) {
            const int ckk = in->dim[1] * l->k * l->k;
            add_param(g, nd, i, "weight", (size_t)oc, (size_t)ckk, ckk);
            add_param(g, nd, i, "bias", (size_t)oc, 1, ckk);
        }
        return 0;
    }
    case OP_SOFTMAX_CE:
        /* any shape: the loss reads its input flat, classes at a time (a
         * sequence model's logits: one set per position) */
        if (F % g->classes || (F != g->classes && in->ndim != 3)) {
            snprintf(err, errlen, "the last layer produces %d outputs but the data has %d classes", F, g->classes);
            return -1;
        }
        g->positions = F / g->classes;
        tensor_shape(&nd->out, 2, (int[]){B, F});
        return 0;
    case OP_EMBED: {
        const int V = l->k ? l->k : g->classes;
        tensor_shape(&nd->out, 3, (int[]){B, F, l->n});
        add_normal(g, nd, i, "weight", (size_t)V, (size_t)l->n, l->init_std > 0 ? l->init_std : 1.0f);
        return 0;
    }
    case OP_POS_EMBED: case OP_LAYERNORM: case OP_ATTENTION:
        if (in->ndim != 3) {
            snprintf(err, errlen, "layer %d (%s) needs a sequence input (T, C) but gets %d features", i + 1, nm, F);
            return -1;
        }
        if (l->kind == OP_POS_EMBED) {
            tensor_shape(&nd->out, 3, in->dim);
            add_normal(g, nd, i, "weight", (size_t)in->dim[1], (size_t)in->dim[2], l->init_std > 0 ? l->init_std : 1.0f);
        } else if (l->kind == OP_LAYERNORM) {
            tensor_shape(&nd->out, 3, in->dim);
            add_const(g, nd, i, "weight", (size_t)in->dim[2], 1.0f);
            add_const(g, nd, i, "bias", (size_t)in->dim[2], 0.0f);
        } else {
            const int C3 = in->dim[2];
            if (l->n < 1 || C3 % (3 * l->n)) {
                snprintf(err, errlen, "layer %d (%s): %d heads do not divide its input of %d = 3 x C (q, k, v)",
                         i + 1, nm, l->n, C3);
                return -1;
            }
            tensor_shape(&nd->out, 3, (int[]){B, in->dim[1], C3 / 3});
        }
        return 0;
    case OP_MATMUL: {
        const tensor_t *b = nd->input2 < 0 ? &g->input : &g->nodes[nd->input2].out;
        const int bt = l->k == 1;
        if (in->ndim != 3 || b->ndim != 3 || in->dim[2] != b->dim[bt ? 2 : 1]) {
            snprintf(err, errlen, "layer %d (%s): [%d x %d] x [%d x %d]%s do not match", i + 1, nm, in->dim[1],
                     last_dim(in), b->dim[1], last_dim(b), bt ? " transposed" : "");
            return -1;
        }
        tensor_shape(&nd->out, 3, (int[]){B, in->dim[1], b->dim[bt ? 1 : 2]});
        return 0;
    }
    default:
        snprintf(err, errlen, "layer %d: unknown op %d", i + 1, (int)l->kind);
        return -1;
    }
}

static size_t scratch_floats(const node_t *nd, const tensor_t *in) {
    switch (nd->spec.kind) {
    case OP_CONV2D: { /* a chunk's columns and its product (ops.h conv_chunk), then the direct convolution's */
        const int ckk = in->dim[1] * nd->spec.k * nd->spec.k, P = nd->out.dim[2] * nd->out.dim[3];
        return conv_chunk_floats(ckk, nd->spec.n, P, in->dim[0]) +
               conv_direct_scratch(in->dim[1], in->dim[2], in->dim[3], nd->spec.n, nd->spec.k, nd->spec.pad, in->dim[0]);
    }
    case OP_DROPOUT: return nd->out.size;
    case OP_SOFTMAX_CE: return (size_t)nd->out.dim[0]; /* per-row losses (GPU) */
    case OP_LAYERNORM: return 2 * (size_t)in->dim[0] * in->dim[1]; /* mean and 1/std per row */
    case OP_ATTENTION: { /* probabilities [B, heads, T, T] for backward, and a T x T work tile */
        const size_t T = (size_t)in->dim[1];
        return ((size_t)in->dim[0] * nd->spec.n + 1) * T * T;
    }
    default: return 0;
    }
}

/* The producer of node i's input `slot`, -1 for the graph input. */
static int src_of(const node_t *nd, int slot) { return slot ? nd->input2 : nd->input; }

/* Kahn's algorithm over the input edges. */
static int topo_order(graph_t *g, char *err, size_t errlen) {
    int *done = calloc((size_t)g->nnodes, sizeof(int));
    int k = 0;
    if (!done) return snprintf(err, errlen, "out of memory"), -1;
    while (k < g->nnodes) {
        int progressed = 0;
        for (int i = 0; i < g->nnodes; i++) {
            const node_t *nd = &g->nodes[i];
            int ready = !done[i];
            for (int j = 0; ready && j < nd->ninputs; j++) ready = src_of(nd, j) < 0 || done[src_of(nd, j)];
            if (ready) {
                done[i] = 1;
                g->order[k++] = i;
                progressed = 1;
            }
        }
        if (!progressed) break;
    }
    free(done);
    if (k < g->nnodes) return snprintf(err, errlen, "the graph has a cycle"), -1;
    return 0;
}

/* Wires node i's inputs from its spec (nspecs: the loss node reads the last
 * layer); 0, or -1 naming the layer. */
static int wire(graph_t *g, int i, int nspecs, char *err, size_t errlen) {
    node_t *nd = &g->nodes[i];
    const layer_spec_t *l = &nd->spec;
    const char *nm = layers_op_name(l->kind);
    const int want = l->kind == OP_ADD || l->kind == OP_MATMUL ? 2 : 1;
    nd->input2 = -1;
    if (i == nspecs || l->nsrc == 0) {
        nd->input = i - 1;
        nd->ninputs = 1;
    } else {
        if (l->nsrc > 2) return snprintf(err, errlen, "layer %d (%s): %d inputs (at most 2)", i + 1, nm, l->nsrc), -1;
        for (int j = 0; j < l->nsrc; j++)
            if (l->src[j] < -1 || l->src[j] >= i)
                return snprintf(err, errlen, "layer %d (%s) reads layer %d, which does not come before it", i + 1,
                                nm, l->src[j] + 1), -1;
        nd->input = l->src[0];
        nd->input2 = l->nsrc > 1 ? l->src[1] : -1;
        nd->ninputs = l->nsrc;
    }
    if (nd->ninputs != want)
        return snprintf(err, errlen, "layer %d (%s) takes %d input%s, given %d", i + 1, nm, want, want > 1 ? "s" : "",
                        nd->ninputs), -1;
    if (l->tie && (l->kind != OP_LINEAR || l->tie - 1 < 0 || l->tie - 1 >= i))
        return snprintf(err, errlen, "layer %d (%s): only a linear layer may tie its weight, to an earlier layer's",
                        i + 1, nm), -1;
    return 0;
}

/* Whether node j (-1: the graph input) has a gradient backward must make. */
static int requires_grad(const graph_t *g, int j) {
    if (j < 0) return g->dinput != NULL;
    const node_t *nd = &g->nodes[j];
    return nd->nparam > 0 || nd->needs_dinput || nd->needs_dinput2;
}

static const tensor_t *input_of(const graph_t *g, const node_t *nd) {
    return nd->input < 0 ? &g->input : &g->nodes[nd->input].out;
}

/* Walks the nodes in backward order: the first consumer of an output to
 * run its backward writes the gradient, every later one adds its share
 * (din_add, through dsum: ops always overwrite their din). Sizes each slot's
 * dsum for its largest such tensor. 0, or -1 with err. */
static int plan_gradient_sums(graph_t *g, char *err, size_t errlen) {
    int *written = calloc((size_t)g->nnodes + 1, sizeof *written);
    size_t most[2] = {0, 0}; /* per input slot: the slots' sums may be live together (add(x, x)) */
    if (!written) return snprintf(err, errlen, "out of memory"), -1;
    for (int k = g->nnodes - 1; k >= 0; k--) {
        node_t *nd = &g->nodes[g->order[k]];
        for (int j = 0; j < nd->ninputs; j++) {
            const int s = src_of(nd, j);
            nd->din_add[j] = written[s + 1];
            written[s + 1] = 1;
            const size_t size = s < 0 ? g->input.size : g->nodes[s].out.size;
            if (nd->din_add[j] && size > most[j]) most[j] = size;
        }
    }
    free(written);
    if (!most[0] && !most[1]) return 0;
    if (g->dev != DEV_CPU) {
        snprintf(err, errlen, "an output feeding several layers (residuals) runs on the CPU only for now");
        return -1;
    }
    for (int j = 0; j < 2; j++)
        if (most[j] && !(g->dsum[j] = device_alloc_floats(g->dev, most[j])))
            return snprintf(err, errlen, "out of memory for gradient sums"), -1;
    return 0;
}

#define OOM(what) do { snprintf(err, errlen, "out of memory for %s", what); goto fail; } while (0)

int graph_create(graph_t **out, const layer_spec_t *specs, int nspecs, const int in[3], int classes,
                 int batch, device_t dev, char *err, size_t errlen) {
    *out = NULL;
    if (nspecs < 1 || batch < 1 || classes < 2 || in[0] < 1 || in[1] < 1 || in[2] < 1) {
        snprintf(err, errlen, "graph_create: bad arguments (layers %d, batch %d, classes %d)", nspecs, batch, classes);
        return -1;
    }
    int *consumers = NULL;
    graph_t *g = calloc(1, sizeof *g);
    if (!g) return snprintf(err, errlen, "out of memory"), -1;
    g->dev = dev;
    g->batch = batch;
    g->n = batch;
    g->classes = classes;
    g->loss_scale = 1.0f;
    g->nnodes = nspecs + 1;
    g->nodes = calloc((size_t)g->nnodes, sizeof *g->nodes);
    g->order = calloc((size_t)g->nnodes, sizeof *g->order);
    g->param = calloc((size_t)2 * g->nnodes, sizeof *g->param);
    if (!g->nodes || !g->order || !g->param) OOM("the graph");
    for (int i = 0; i < g->nnodes; i++) {
        g->nodes[i].spec = i < nspecs ? specs[i] : (layer_spec_t){.kind = OP_SOFTMAX_CE};
        if (wire(g, i, nspecs, err, errlen)) goto fail;
    }
    for (int i = 0; i < g->nnodes; i++) {
        const op_impl_t *op = ops_impl(dev, g->nodes[i].spec.kind);
        if (!op || !op->forward) {
            snprintf(err, errlen, "op %s has no implementation on this device", layers_op_name(g->nodes[i].spec.kind));
            goto fail;
        }
    }
    if (topo_order(g, err, errlen)) goto fail;
    /* consumers of each output ([0]: the graph input's) */
    if (!(consumers = calloc((size_t)g->nnodes + 1, sizeof *consumers))) OOM("the graph");
    for (int i = 0; i < g->nnodes; i++)
        for (int j = 0; j < g->nodes[i].ninputs; j++) consumers[src_of(&g->nodes[i], j) + 1]++;
    for (int i = 0; i < nspecs; i++)
        if (!consumers[i + 1]) {
            snprintf(err, errlen, "layer %d (%s): its output feeds no layer", i + 1, layers_op_name(specs[i].kind));
            goto fail;
        }

    tensor_shape(&g->input, 4, (int[]){batch, in[0], in[1], in[2]});
    g->input.dev = dev;
    if (!(g->input.data = device_alloc_floats(dev, g->input.size))) OOM("the input");
    if (!(g->loss_dev = device_alloc_floats(dev, 2))) OOM("the loss");
    for (int k = 0; k < g->nnodes; k++) {
        const int i = g->order[k];
        node_t *nd = &g->nodes[i];
        const tensor_t *x = nd->input < 0 ? &g->input : &g->nodes[nd->input].out;
        if (nd->spec.kind == OP_FLATTEN && consumers[nd->input + 1] > 1) nd->views_input = 0;
        else if (nd->spec.kind == OP_FLATTEN) nd->views_input = 1;
        if (infer(g, i, x, err, errlen)) goto fail;
        nd->out.dev = nd->dout.dev = dev;
        nd->dout.ndim = nd->out.ndim;
        memcpy(nd->dout.dim, nd->out.dim, sizeof nd->dout.dim);
        nd->dout.size = nd->out.size;
        const node_t *src = nd->input < 0 ? NULL : &g->nodes[nd->input];
        nd->needs_dinput = requires_grad(g, nd->input);
        nd->needs_dinput2 = nd->ninputs > 1 && requires_grad(g, nd->input2);
        if (nd->views_input) {
            nd->out.data = x->data;
            nd->dout.data = src ? src->dout.data : NULL;
        } else {
            if (!(nd->out.data = device_alloc_floats(dev, nd->out.size))) OOM("activations");
            if (i != g->nnodes - 1 && !(nd->dout.data = device_alloc_floats(dev, nd->dout.size))) OOM("gradients");
        }
        const size_t sc = scratch_floats(nd, x);
        if (sc && !(nd->scratch = device_alloc_floats(dev, sc))) OOM("scratch");
        if (nd->spec.kind == OP_MAXPOOL && !(nd->index = device_alloc(dev, nd->out.size * sizeof(int32_t))))
            OOM("max-pool indices");
    }
    /* ones for bias gradients as products: a batch's rows, a conv chunk's positions */
    size_t nones = (size_t)batch;
    for (int i = 0; i < g->nnodes; i++) {
        const node_t *nd = &g->nodes[i];
        if (nd->spec.kind != OP_CONV2D) continue;
        const tensor_t *x = nd->input < 0 ? &g->input : &g->nodes[nd->input].out;
        const int ckk = x->dim[1] * nd->spec.k * nd->spec.k, P = nd->out.dim[2] * nd->out.dim[3];
        const size_t L = (size_t)P * conv_chunk(ckk, nd->spec.n, P, batch); /* a chunk's positions */
        if (L > nones) nones = L;
    }
    if (!(g->ones = device_alloc_floats(dev, nones))) OOM("the ones vector");
    {
        float *one = malloc(nones * sizeof *one);
        if (!one) OOM("the ones vector");
        for (size_t i = 0; i < nones; i++) one[i] = 1.0f;
        const int rc = device_from_host(dev, g->ones, one, nones * sizeof *one);
        free(one);
        if (rc) OOM("the ones vector (copy)");
    }
    /* the loss node set g->positions */
    const size_t nlabels = (size_t)batch * g->positions;
    if (!(g->labels = device_alloc(dev, nlabels * sizeof *g->labels))) OOM("labels");
    if (dev != DEV_CPU) {
        for (int k = 0; k < 2; k++) {
            g->stage_x[k] = device_host_alloc(g->input.size * sizeof(float));
            g->stage_y[k] = device_host_alloc(nlabels * sizeof(int32_t));
            g->staged[k] = device_event_new(dev);
            if (!g->stage_x[k] || !g->stage_y[k] || !g->staged[k]) OOM("input staging");
        }
        if (!(g->probs_host = malloc(nlabels * classes * sizeof(float)))) OOM("probabilities");
    }
    /* flat layout: in the order backward finishes the gradients (a tied
     * weight at its use earliest in the graph), weight then bias */
    size_t off = 0;
    param_info_t *placed = calloc((size_t)g->nparam + 1, sizeof *placed);
    int *first = calloc((size_t)g->nparam + 1, sizeof *first), *newidx = calloc((size_t)g->nparam + 1, sizeof *newidx);
    g->puses = calloc((size_t)g->nparam + 1, sizeof *g->puses);
    g->pdone = calloc((size_t)g->nparam + 1, sizeof *g->pdone);
    if (!placed || !first || !newidx || !g->puses || !g->pdone) {
        free(placed), free(first), free(newidx);
        OOM("the parameter table");
    }
    for (int p = 0; p < g->nparam; p++) first[p] = g->nnodes, newidx[p] = -1;
    for (int k = 0; k < g->nnodes; k++)
        for (int j = 0; j < g->nodes[g->order[k]].nparam; j++) {
            const int p = g->nodes[g->order[k]].param[j];
            if (k < first[p]) first[p] = k;
        }
    int np = 0;
    for (int k = g->nnodes - 1; k >= 0; k--) {
        const node_t *nd = &g->nodes[g->order[k]];
        for (int j = 0; j < nd->nparam; j++) {
            const int p = nd->param[j];
            if (first[p] != k || newidx[p] >= 0) continue;
            placed[np] = g->param[p];
            placed[np].offset = off;
            off += placed[np].count;
            newidx[p] = np++;
        }
    }
    for (int i = 0; i < g->nnodes; i++)
        for (int j = 0; j < g->nodes[i].nparam; j++) {
            g->nodes[i].param[j] = newidx[g->nodes[i].param[j]];
            g->puses[g->nodes[i].param[j]]++;
        }
    memcpy(g->param, placed, (size_t)np * sizeof *placed);
    free(placed), free(first), free(newidx);
    g->nweights = off;
    if (graph_pad_params(g, 1)) OOM("parameters");
    if (plan_gradient_sums(g, err, errlen)) goto fail;
    for (int k = 0; k < g->nnodes; k++) {
        node_t *nd = &g->nodes[g->order[k]];
        const op_impl_t *op = ops_impl(dev, nd->spec.kind);
        if (op->setup && op->setup(g, nd, input_of(g, nd), err, errlen)) goto fail;
    }
    free(consumers);
    *out = g;
    return 0;
fail:
    free(consumers);
    graph_destroy(g);
    return -1;
}

static void free_flat(graph_t *g, float *p) {
    if (g->dev == DEV_CPU) tensor_free(p);
    else device_free(g->dev, p);
}

static float *alloc_flat(graph_t *g, size_t n) {
    return g->dev == DEV_CPU ? tensor_alloc_huge(n) : device_alloc_floats(g->dev, n);
}

void graph_use_flat(graph_t *g, float *params, float *grads) {
    memcpy(params, g->params, g->nalloc * sizeof(float));
    memcpy(grads, g->grads, g->nalloc * sizeof(float));
    if (!g->flat_lent) free_flat(g, g->params), free_flat(g, g->grads);
    g->params = params, g->grads = grads, g->flat_lent = 1;
}

int graph_pad_params(graph_t *g, size_t multiple) {
    const size_t n = (g->nweights + multiple - 1) / multiple * multiple;
    if (g->flat_lent) return -1; /* not ours to reallocate */
    free_flat(g, g->params);
    free_flat(g, g->grads);
    g->grads = NULL;
    g->nalloc = n;
    g->params = alloc_flat(g, n);
    if (g->params) g->grads = alloc_flat(g, n);
    return g->params && g->grads ? 0 : -1;
}

int graph_enable_input_grad(graph_t *g) {
    if (!g->dinput && !(g->dinput = device_alloc_floats(g->dev, g->input.size))) return -1;
    for (int k = 0; k < g->nnodes; k++) {
        node_t *nd = &g->nodes[g->order[k]];
        nd->needs_dinput = 1; /* every node is downstream of the input */
        nd->needs_dinput2 = nd->ninputs > 1;
        if (nd->views_input) nd->dout.data = nd->input < 0 ? g->dinput : g->nodes[nd->input].dout.data;
    }
    return 0;
}

void graph_destroy(graph_t *g) {
    if (!g) return;
    const device_t dev = g->dev;
    device_sync(dev);
    device_free(dev, g->dinput);
    for (int i = 0; g->nodes && i < g->nnodes; i++) {
        node_t *nd = &g->nodes[i];
        const op_impl_t *op = ops_impl(dev, nd->spec.kind);
        if (op && op->release) op->release(g, nd);
        if (!nd->views_input) {
            device_free(dev, nd->out.data);
            device_free(dev, nd->dout.data);
        }
        device_free(dev, nd->scratch);
        device_free(dev, nd->index);
    }
    device_free(dev, g->input.data);
    if (!g->flat_lent) free_flat(g, g->params), free_flat(g, g->grads);
    device_free(dev, g->labels);
    device_free(dev, g->loss_dev);
    device_free(dev, g->ones);
    for (int k = 0; k < 2; k++) {
        if (g->stage_x[k]) device_host_free(g->stage_x[k]);
        if (g->stage_y[k]) device_host_free(g->stage_y[k]);
        device_event_free(g->staged[k]);
    }
    free(g->probs_host);
    free(g->prof_ms);
    for (int j = 0; j < 2; j++) device_free(dev, g->dsum[j]);
    free(g->puses);
    free(g->pdone);
    free(g->nodes);
    free(g->order);
    free(g->param);
    free(g);
}

void graph_init_params(graph_t *g, uint64_t seed) {
    /* drawn on the host, so every device starts from the same numbers */
    float *host = g->dev == DEV_CPU ? g->params : malloc(g->nweights * sizeof(float) + 1);
    if (!host) abort();
    for (int p = 0; p < g->nparam; p++) {
        rng_t r;
        rng_seed(&r, seed ^ 0x696e6974ULL, (uint64_t)p, 0);
        const param_info_t *pi = &g->param[p];
        float *w = host + pi->offset;
        if (pi->std > 0) {
            for (size_t i = 0; i < pi->count; i++) w[i] = pi->std * rng_normal(&r);
        } else if (pi->fan_in > 0) {
            const float bound = 1.0f / sqrtf((float)pi->fan_in);
            for (size_t i = 0; i < pi->count; i++) w[i] = (2.0f * rng_uniform(&r) - 1.0f) * bound;
        } else {
            for (size_t i = 0; i < pi->count; i++) w[i] = pi->fill;
        }
    }
    if (host != g->params) {
        if (graph_params_from_host(g, host)) abort();
        free(host);
    }
}

int graph_params_to_host(graph_t *g, float *host) {
    return device_to_host(g->dev, host, g->params, g->nweights * sizeof(float));
}

int graph_params_from_host(graph_t *g, const float *host) {
    return device_from_host(g->dev, g->params, host, g->nweights * sizeof(float));
}

void graph_input_host(graph_t *g, float **x, int32_t **y) {
    if (g->dev == DEV_CPU) {
        *x = g->input.data;
        *y = g->labels;
        return;
    }
    /* the pair last used two batches ago: its copy must have finished */
    const int k = g->stage ^ 1;
    device_event_wait(g->staged[k]);
    *x = g->stage_x[k];
    *y = g->stage_y[k];
}

int graph_input_commit(graph_t *g, int n) {
    if (g->dev == DEV_CPU) return 0;
    const int k = g->stage ^= 1;
    const size_t S = tensor_sample_size(&g->input);
    if (device_from_host_async(g->dev, g->input.data, g->stage_x[k], (size_t)n * S * sizeof(float)) ||
        device_from_host_async(g->dev, g->labels, g->stage_y[k], (size_t)n * g->positions * sizeof(int32_t)))
        return -1;
    device_event_record(g->staged[k]);
    return 0;
}

void graph_loss_reset(graph_t *g) {
    g->loss_sum = 0;
    if (g->dev != DEV_CPU) device_memset0(g->dev, g->loss_dev, 2 * sizeof(float));
}

double graph_loss_sum(graph_t *g) {
    if (g->dev == DEV_CPU) return g->loss_sum;
    float l[2] = {NAN, NAN};
    device_to_host(g->dev, l, g->loss_dev, sizeof l);
    return l[1];
}


int graph_profile(graph_t *g) {
    if (!g->prof_ms && !(g->prof_ms = calloc(2 * (size_t)g->nnodes, sizeof *g->prof_ms))) return -1;
    graph_profile_reset(g);
    return 0;
}

void graph_profile_reset(graph_t *g) {
    if (g->prof_ms) memset(g->prof_ms, 0, 2 * (size_t)g->nnodes * sizeof *g->prof_ms);
    g->prof_passes = 0;
}

int graph_node_params(const graph_t *g, int k, size_t *lo, size_t *hi) {
    const node_t *nd = &g->nodes[k];
    *lo = *hi = 0;
    for (int i = 0; i < nd->nparam; i++) {
        const param_info_t *p = &g->param[nd->param[i]];
        if (i == 0 || p->offset < *lo) *lo = p->offset;
        if (p->offset + p->count > *hi) *hi = p->offset + p->count;
    }
    return nd->nparam > 0;
}

static double prof_now_ms(const graph_t *g) {
    if (g->dev != DEV_CPU) device_sync(g->dev);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

float graph_forward(graph_t *g, int n) {
    g->n = n < 0 ? 0 : n > g->batch ? g->batch : n;
    double t = g->prof_ms ? prof_now_ms(g) : 0;
    for (int k = 0; k < g->nnodes; k++) {
        node_t *nd = &g->nodes[g->order[k]];
        if (nd->ninputs > 1) nd->in2 = nd->input2 < 0 ? &g->input : &g->nodes[nd->input2].out;
        ops_impl(g->dev, nd->spec.kind)->forward(g, nd, input_of(g, nd));
        if (g->prof_ms) {
            const double u = prof_now_ms(g);
            g->prof_ms[g->order[k]] += u - t;
            t = u;
        }
    }
    g->prof_passes += g->prof_ms != NULL;
    if (g->dev != DEV_CPU) return NAN;
    g->loss_sum += g->loss;
    return g->loss;
}

float graph_train_forward(graph_t *g, int n, const graph_pass_t *p) {
    g->training = 1;
    g->step = p->step;
    g->loss_scale = p->loss_scale;
    g->accumulate = p->accumulate;
    return graph_forward(g, n);
}

float graph_eval_forward(graph_t *g, int n) {
    double *prof = g->prof_ms; /* profiles time training steps only */
    g->prof_ms = NULL;
    g->training = 0;
    const float loss = graph_forward(g, n);
    g->prof_ms = prof;
    return loss;
}

/* dst += src over the rows of the current pass (CPU: plan_gradient_sums
 * refuses sums elsewhere) */
HOT_LOOP static void add_rows(const graph_t *g, tensor_t *dst, const float *restrict src) {
    const size_t m = (size_t)g->n * tensor_sample_size(dst);
    float *restrict d = dst->data;
    for (size_t i = 0; i < m; i++) d[i] += src[i];
}

void graph_backward(graph_t *g) {
    double t = g->prof_ms ? prof_now_ms(g) : 0;
    memset(g->pdone, 0, (size_t)g->nparam * sizeof *g->pdone);
    tensor_t dx = g->input;
    dx.data = g->dinput;
    for (int k = g->nnodes - 1; k >= 0; k--) {
        node_t *nd = &g->nodes[g->order[k]];
        tensor_t *real[2], sum[2];
        tensor_t *din[2] = {NULL, NULL};
        for (int j = 0; j < nd->ninputs; j++) {
            const int s = src_of(nd, j);
            din[j] = real[j] = s < 0 ? &dx : &g->nodes[s].dout;
            if (nd->din_add[j]) {
                sum[j] = *real[j];
                sum[j].data = g->dsum[j];
                din[j] = &sum[j];
            }
        }
        if (nd->ninputs > 1) {
            nd->in2 = nd->input2 < 0 ? &g->input : &g->nodes[nd->input2].out;
            nd->din2 = din[1];
        }
        ops_impl(g->dev, nd->spec.kind)->backward(g, nd, input_of(g, nd), din[0]);
        if (nd->din_add[0] && nd->needs_dinput) add_rows(g, real[0], g->dsum[0]);
        if (nd->ninputs > 1 && nd->din_add[1] && nd->needs_dinput2) add_rows(g, real[1], g->dsum[1]);
        if (g->prof_ms) {
            const double u = prof_now_ms(g);
            g->prof_ms[g->nnodes + g->order[k]] += u - t;
            t = u;
        }
    }
}

const float *graph_probs(graph_t *g) {
    const float *p = g->nodes[g->nnodes - 1].out.data;
    if (g->dev == DEV_CPU) return p;
    device_to_host(g->dev, g->probs_host, p, (size_t)g->n * g->positions * g->classes * sizeof(float));
    return g->probs_host;
}

int graph_correct(graph_t *g) {
    const float *p = graph_probs(g);
    const int32_t *labels = g->dev == DEV_CPU ? g->labels : g->stage_y[g->stage];
    int ok = 0;
    for (int i = 0; i < g->n * g->positions; i++) {
        int best = 0;
        for (int c = 1; c < g->classes; c++)
            if (p[(size_t)i * g->classes + c] > p[(size_t)i * g->classes + best]) best = c;
        ok += best == labels[i];
    }
    return ok;
}
