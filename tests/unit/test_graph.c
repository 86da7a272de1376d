/* The graph and every op against finite differences, the flat buffer layout,
 * the gradient-ready callback, gradient accumulation, and "a training step
 * allocates nothing".
 *
 * Gradient checks: the analytic float32 gradients of forward/backward are
 * compared with central differences of an independent double-precision
 * reference forward (naive loops below, h = 1e-6), at odd shapes with a
 * partial batch. Bound: |analytic - numeric| <= GRAD_TOL x max(|analytic|,
 * |numeric|, 1e-3 x the largest numeric entry of that tensor), GRAD_TOL = 1e-3.
 * A wrong index, transpose or missing term gives errors of order 1. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fastmath.h"
#include "graph.h"
#include "ops.h"
#include "ops_cpu.h"
#include "optim.h"
#include "rng.h"

#define GRAD_TOL 1e-3
#define FD_H 1e-6

/* ---- allocation counting (the binary links with --wrap for these) ---- */
static long allocs;
static int counting;
void *__real_malloc(size_t);
void *__real_calloc(size_t, size_t);
void *__real_realloc(void *, size_t);
int __real_posix_memalign(void **, size_t, size_t);
void *__wrap_malloc(size_t s) { allocs += counting; return __real_malloc(s); }
void *__wrap_calloc(size_t n, size_t s) { allocs += counting; return __real_calloc(n, s); }
void *__wrap_realloc(void *p, size_t s) { allocs += counting; return __real_realloc(p, s); }
int __wrap_posix_memalign(void **p, size_t a, size_t s) { allocs += counting; return __real_posix_memalign(p, a, s); }

/* ---- the double-precision reference forward ---- */

static const tensor_t *in_of(const graph_t *g, const node_t *nd) {
    return nd->input < 0 ? &g->input : &g->nodes[nd->input].out;
}

static double ref_loss(const graph_t *g, const double *P, const double *X, int n) {
    double **act = calloc((size_t)g->nnodes, sizeof *act);
    double loss = 0.0;
    for (int k = 0; k < g->nnodes; k++) {
        const int id = g->order[k];
        const node_t *nd = &g->nodes[id];
        const tensor_t *it = in_of(g, nd);
        const double *x = nd->input < 0 ? X : act[nd->input];
        const double *x2 = nd->ninputs < 2 ? NULL : nd->input2 < 0 ? X : act[nd->input2];
        const size_t is = tensor_sample_size(it), os = tensor_sample_size(&nd->out);
        double *y = act[id] = calloc((size_t)n * os + 1, sizeof *y);
        const double *W = nd->nparam ? P + g->param[nd->param[0]].offset : NULL;
        const double *b = nd->nparam > 1 ? P + g->param[nd->param[1]].offset : NULL;
        switch (nd->spec.kind) {
        case OP_LINEAR: { /* a sequence's positions are rows */
            const size_t T = it->ndim == 3 ? (size_t)it->dim[1] : 1, F = is / T, N = os / T;
            for (size_t i = 0; i < n * T; i++)
                for (size_t j = 0; j < N; j++) {
                    double a = nd->spec.nobias ? 0 : b[j];
                    for (size_t f = 0; f < F; f++) a += x[i * F + f] * W[j * F + f];
                    y[i * N + j] = a;
                }
            break;
        }
        case OP_EMBED: {
            const size_t C = (size_t)nd->spec.n;
            for (size_t i = 0; i < n * is; i++)
                for (size_t c = 0; c < C; c++) y[i * C + c] = W[(size_t)lround(x[i]) * C + c];
            break;
        }
        case OP_POS_EMBED:
            for (size_t i = 0; i < n * is; i++) y[i] = x[i] + W[i % is];
            break;
        case OP_LAYERNORM: {
            const size_t C = (size_t)it->dim[2];
            for (size_t r = 0; r < n * is / C; r++) {
                double m = 0, v = 0;
                for (size_t c = 0; c < C; c++) m += x[r * C + c] / C;
                for (size_t c = 0; c < C; c++) v += (x[r * C + c] - m) * (x[r * C + c] - m) / C;
                for (size_t c = 0; c < C; c++) y[r * C + c] = (x[r * C + c] - m) / sqrt(v + 1e-5) * W[c] + b[c];
            }
            break;
        }
        case OP_ATTENTION: {
            const int T = it->dim[1], C = it->dim[2] / 3, H = nd->spec.n, hs = C / H;
            double *p = calloc((size_t)T, sizeof *p);
            for (int i = 0; i < n; i++)
                for (int h = 0; h < H; h++)
                    for (int t = 0; t < T; t++) {
                        const double *q = x + (size_t)i * is + (size_t)t * 3 * C + h * hs;
                        double mx = -INFINITY, sum = 0;
                        for (int j = 0; j <= t; j++) {
                            const double *k = x + (size_t)i * is + (size_t)j * 3 * C + C + h * hs;
                            double d = 0;
                            for (int e = 0; e < hs; e++) d += q[e] * k[e];
                            p[j] = d / sqrt((double)hs);
                            mx = fmax(mx, p[j]);
                        }
                        for (int j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
                        for (int e = 0; e < hs; e++) {
                            double a = 0;
                            for (int j = 0; j <= t; j++) a += p[j] / sum * x[(size_t)i * is + (size_t)j * 3 * C + 2 * C + h * hs + e];
                            y[(size_t)i * os + (size_t)t * C + h * hs + e] = a;
                        }
                    }
            free(p);
            break;
        }
        case OP_MATMUL: {
            const int M = it->dim[1], K = it->dim[2], N = nd->out.dim[2], bt = nd->spec.k == 1;
            const size_t bs = (size_t)K * N;
            for (int i = 0; i < n; i++)
                for (int r = 0; r < M; r++)
                    for (int c = 0; c < N; c++) {
                        double a = 0;
                        for (int e = 0; e < K; e++)
                            a += x[i * is + (size_t)r * K + e] * x2[i * bs + (bt ? (size_t)c * K + e : (size_t)e * N + c)];
                        y[i * os + (size_t)r * N + c] = a;
                    }
            break;
        }
        case OP_RELU:
            for (size_t i = 0; i < n * is; i++) y[i] = x[i] > 0 ? x[i] : 0;
            break;
        case OP_TANH:
            for (size_t i = 0; i < n * is; i++) y[i] = tanh(x[i]);
            break;
        case OP_GELU:
            for (size_t i = 0; i < n * is; i++)
                y[i] = 0.5 * x[i] * (1 + tanh(sqrt(2 / M_PI) * (x[i] + 0.044715 * x[i] * x[i] * x[i])));
            break;
        case OP_DROPOUT:
            for (size_t i = 0; i < n * is; i++) y[i] = x[i] * nd->scratch[i];
            break;
        case OP_FLATTEN:
            memcpy(y, x, n * is * sizeof *y);
            break;
        case OP_ADD:
            for (size_t i = 0; i < n * is; i++) y[i] = x[i] + x2[i];
            break;
        case OP_CONV2D: {
            const int C = it->dim[1], H = it->dim[2], Wd = it->dim[3], OC = nd->out.dim[1];
            const int OH = nd->out.dim[2], OW = nd->out.dim[3], K = nd->spec.k, S = nd->spec.stride, pd = nd->spec.pad;
            for (int i = 0; i < n; i++)
                for (int o = 0; o < OC; o++)
                    for (int oh = 0; oh < OH; oh++)
                        for (int ow = 0; ow < OW; ow++) {
                            double a = b[o];
                            for (int c = 0; c < C; c++)
                                for (int ki = 0; ki < K; ki++)
                                    for (int kj = 0; kj < K; kj++) {
                                        const int ih = oh * S - pd + ki, iw = ow * S - pd + kj;
                                        if (ih >= 0 && ih < H && iw >= 0 && iw < Wd)
                                            a += W[((o * C + c) * K + ki) * K + kj] * x[i * is + (c * H + ih) * Wd + iw];
                                    }
                            y[i * os + (o * OH + oh) * OW + ow] = a;
                        }
            break;
        }
        case OP_MAXPOOL: {
            const int C = it->dim[1], H = it->dim[2], Wd = it->dim[3];
            const int OH = nd->out.dim[2], OW = nd->out.dim[3], K = nd->spec.k, S = nd->spec.stride;
            for (int i = 0; i < n; i++)
                for (int c = 0; c < C; c++)
                    for (int oh = 0; oh < OH; oh++)
                        for (int ow = 0; ow < OW; ow++) {
                            double m = -INFINITY;
                            for (int ki = 0; ki < K; ki++)
                                for (int kj = 0; kj < K; kj++) {
                                    const double v = x[i * is + (c * H + oh * S + ki) * Wd + ow * S + kj];
                                    m = v > m ? v : m;
                                }
                            y[i * os + (c * OH + oh) * OW + ow] = m;
                        }
            break;
        }
        case OP_SOFTMAX_CE: { /* every position of a sequence, classes at a time */
            const size_t V = (size_t)g->classes, rows = (size_t)n * g->positions;
            for (size_t i = 0; i < rows; i++) {
                double mx = -INFINITY, s = 0;
                for (size_t c = 0; c < V; c++) mx = fmax(mx, x[i * V + c]);
                for (size_t c = 0; c < V; c++) s += exp(x[i * V + c] - mx);
                loss += log(s) + mx - x[i * V + g->labels[i]];
            }
            loss /= (double)rows;
            break;
        }
        default:
            fail_msg("no reference for op %d", nd->spec.kind);
        }
    }
    for (int k = 0; k < g->nnodes; k++) free(act[k]);
    free(act);
    return loss;
}

/* ---- the check ---- */

/* Parses `layers` and builds a graph for C x H x W inputs: NULL with the
 * message in err when either step fails. */
static graph_t *build(const char *layers, int C, int H, int W, int classes, int batch, char *err, size_t errlen) {
    layer_spec_t specs[LAYERS_MAX];
    graph_t *g;
    const int ns = layers_parse(layers, specs, LAYERS_MAX, err, errlen);
    if (ns < 0 || graph_create(&g, specs, ns, (int[]){C, H, W}, classes, batch, DEV_CPU, err, errlen)) return NULL;
    return g;
}

/* build() that must succeed */
static graph_t *must_build(const char *layers, int C, int H, int W, int classes, int batch) {
    char err[256];
    graph_t *g = build(layers, C, H, W, classes, batch, err, sizeof err);
    if (!g) fail_msg("%s: %s", layers, err);
    return g;
}

static double worst; /* largest error seen in the current test, for the log */

/* compares analytic[idx] with central differences of the reference in v[idx] */
static void check_entries(const char *what, const graph_t *g, double *P, double *X, double *v, const float *analytic,
                          size_t count, int n, rng_t *r) {
    const size_t samples = count < 40 ? count : 40;
    size_t idx[40];
    double num[40], nmax = 0;
    for (size_t s = 0; s < samples; s++) {
        idx[s] = count <= 40 ? s : (size_t)rng_below(r, count);
        const double keep = v[idx[s]];
        v[idx[s]] = keep + FD_H;
        const double lp = ref_loss(g, P, X, n);
        v[idx[s]] = keep - FD_H;
        const double lm = ref_loss(g, P, X, n);
        v[idx[s]] = keep;
        num[s] = (lp - lm) / (2 * FD_H);
        nmax = fmax(nmax, fabs(num[s]));
    }
    for (size_t s = 0; s < samples; s++) {
        const double a = analytic[idx[s]];
        const double den = fmax(fmax(fabs(a), fabs(num[s])), 1e-3 * nmax);
        const double err = den > 0 ? fabs(a - num[s]) / den : 0;
        worst = fmax(worst, err);
        if (err > GRAD_TOL)
            fail_msg("%s[%zu]: analytic %.8g, numeric %.8g, relative error %.3g > %g", what, idx[s], a, num[s], err, GRAD_TOL);
    }
}

/* Runs forward+backward of g on random data with n of batch rows, and
 * checks the loss, every parameter and the input gradient. */
static void gradcheck_graph(graph_t *g, const char *layers, int classes, int batch, int n) {
    const int C = g->input.dim[1], H = g->input.dim[2], W = g->input.dim[3];
    assert_int_equal(graph_enable_input_grad(g), 0);
    graph_init_params(g, 7);
    rng_t r;
    rng_seed(&r, 42, (uint64_t)n, (uint64_t)C * H * W);
    const int ids = g->nodes[g->order[0]].spec.kind == OP_EMBED; /* token ids, not features */
    for (size_t i = 0; i < g->input.size; i++)
        g->input.data[i] = ids ? (float)rng_below(&r, (uint64_t)classes) : rng_normal(&r);
    for (int i = 0; i < batch * g->positions; i++) g->labels[i] = (int32_t)rng_below(&r, (uint64_t)classes);
    g->training = 1;
    g->seed = 3;
    const float loss = graph_forward(g, n);
    graph_backward(g);

    double *P = malloc((g->nweights + 1) * sizeof *P), *X = malloc(g->input.size * sizeof *X);
    for (size_t i = 0; i < g->nweights; i++) P[i] = g->params[i];
    for (size_t i = 0; i < g->input.size; i++) X[i] = g->input.data[i];
    const double lref = ref_loss(g, P, X, n);
    if (fabs(loss - lref) > 1e-5 * fmax(1.0, fabs(lref))) fail_msg("%s: loss %.8g, reference %.8g", layers, loss, lref);
    worst = 0;
    for (int p = 0; p < g->nparam; p++)
        check_entries(g->param[p].name, g, P, X, P + g->param[p].offset, g->grads + g->param[p].offset,
                      g->param[p].count, n, &r);
    check_entries("input", g, P, X, X, g->dinput, (size_t)n * tensor_sample_size(&g->input), n, &r);
    print_message("%-60s n=%d/%d  max relative error %.2e\n", layers, n, batch, worst);
    free(P);
    free(X);
    graph_destroy(g);
}

static void gradcheck(const char *layers, int C, int H, int W, int classes, int batch, int n) {
    gradcheck_graph(must_build(layers, C, H, W, classes, batch), layers, classes, batch, n);
}

/* a graph from specs written out (DAG edges and ties the syntax cannot say) */
static graph_t *must_create(const layer_spec_t *specs, int ns, int F, int classes, int batch) {
    char err[256];
    graph_t *g;
    if (graph_create(&g, specs, ns, (int[]){1, 1, F}, classes, batch, DEV_CPU, err, sizeof err)) fail_msg("%s", err);
    return g;
}

static void grad_linear(void **s) { (void)s; gradcheck("linear(5)", 1, 1, 7, 5, 4, 3); }
static void grad_relu(void **s) { (void)s; gradcheck("relu", 1, 1, 6, 6, 3, 3); }
static void grad_gelu(void **s) { (void)s; gradcheck("gelu", 1, 1, 6, 6, 3, 2); }
/* GELU's values from -30 to 30 against the tanh form in double (the CPU
 * computes it as x sigmoid(2u)): absolute error within 1e-6 (1 + |x|), no
 * overflow in the tails */
static void gelu_values(void **s) {
    (void)s;
    enum { F = 601 };
    graph_t *g = must_build("gelu", 1, 1, F, F, 1);
    for (int i = 0; i < F; i++) g->input.data[i] = -30.0f + 0.1f * (float)i;
    g->labels[0] = 0;
    graph_forward(g, 1);
    for (int i = 0; i < F; i++) {
        const double x = g->input.data[i], want = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
        const double got = g->nodes[0].out.data[i];
        if (!(fabs(got - want) <= 1e-6 * (1 + fabs(x)))) fail_msg("gelu(%g) = %.9g, want %.9g", x, got, want);
    }
    graph_destroy(g);
}
static void grad_tanh(void **s) { (void)s; gradcheck("tanh", 3, 1, 3, 9, 5, 5); }
static void grad_dropout(void **s) { (void)s; gradcheck("dropout(0.3)", 1, 1, 11, 11, 5, 5); }
static void grad_conv_strided(void **s) { (void)s; gradcheck("conv(2,3,2,1) flatten", 3, 7, 7, 32, 3, 2); }
static void grad_conv_same(void **s) { (void)s; gradcheck("conv(3,5)", 2, 5, 6, 90, 2, 2); }
static void grad_maxpool(void **s) { (void)s; gradcheck("maxpool(2) flatten", 2, 5, 5, 8, 3, 3); }
static void grad_maxpool_overlap(void **s) { (void)s; gradcheck("maxpool(3,2)", 1, 7, 7, 9, 4, 3); }
static void grad_softmax_ce(void **s) { (void)s; gradcheck("flatten", 1, 1, 5, 5, 7, 7); }
static void grad_whole_cnn(void **s) {
    (void)s;
    gradcheck("conv(3,3) relu maxpool(2) conv(4,3,2,1) gelu flatten linear(7) tanh dropout(0.3) linear(5)", 2, 9, 9, 5, 4, 3);
}
/* the convolution's sample chunks: one sample per product, then 2 + 1 of a partial batch of 3 */
static void grad_conv_chunks(void **s) {
    (void)s;
    const size_t keep = ops_conv_chunk_bytes;
    ops_conv_chunk_bytes = 1;
    gradcheck("conv(3,3) relu conv(2,3,2,1)", 2, 6, 6, 18, 4, 3);
    ops_conv_chunk_bytes = (size_t)(2 * 3 * 3 + 3) * 36 * sizeof(float) * 2; /* 2 samples of the first conv */
    gradcheck("conv(3,3) relu conv(2,3,2,1)", 2, 6, 6, 18, 4, 3);
    ops_conv_chunk_bytes = keep;
}
/* The direct convolution (ops_conv.c: 16-channel output blocks, stride 1):
 * forward and input gradient at same, valid and full padding, rows that
 * are not a multiple of its 6-position tiles, 16 and 32 channels. */
static void grad_conv_direct(void **s) {
    (void)s;
    if (!conv_direct_usable(16, 3, 1, 1)) skip(); /* no AVX2 and FMA here: only the im2col path exists */
    gradcheck("conv(16,3) relu conv(32,5) flatten", 16, 5, 7, 32 * 5 * 7, 3, 3);
    gradcheck("conv(16,3,1,0) tanh conv(16,3,1,2) flatten", 16, 6, 5, 16 * 6 * 5, 2, 2);
}

/* Forward, backward and input gradient once through graph g on the input
 * and labels drawn from seed; returns the loss. */
static float pass(graph_t *g, int classes, int n) {
    graph_init_params(g, 5);
    rng_t r;
    rng_seed(&r, 11, 0, 0);
    for (size_t i = 0; i < g->input.size; i++) g->input.data[i] = rng_normal(&r);
    for (int i = 0; i < g->batch; i++) g->labels[i] = (int32_t)rng_below(&r, (uint64_t)classes);
    g->training = 1;
    const float loss = graph_forward(g, n);
    graph_backward(g);
    return loss;
}

static double max_abs_diff(const float *a, const float *b, size_t n, double *scale) {
    double d = 0;
    *scale = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i])), *scale = fmax(*scale, fabs((double)b[i]));
    return d;
}

/* The tutorial CNN's convolutions, and odd ones: the direct path gives the
 * im2col path's loss, gradients and input gradient (to float rounding: the
 * sums run in another order). */
static void conv_direct_matches_im2col(void **s) {
    (void)s;
    if (!conv_direct_usable(16, 5, 1, 2)) skip();
    /* 7 of a batch of 9: the weight gradient's sample groups (384 KB: 3 + 3 + 1
     * of the first convolution's, 4 + 3 of the second's) */
    const struct { const char *layers; int C, H, W, classes, batch, n; } cases[] = {
        {"conv(32,5) relu maxpool(2) conv(64,5) flatten", 1, 28, 28, 64 * 14 * 14, 9, 7},
        {"conv(16,3,1,0) relu conv(48,5,1,1) flatten", 16, 9, 7, 48 * 5 * 3, 3, 3},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int B = cases[c].batch, n = cases[c].n;
        graph_t *a = must_build(cases[c].layers, cases[c].C, cases[c].H, cases[c].W, cases[c].classes, B);
        graph_t *b = must_build(cases[c].layers, cases[c].C, cases[c].H, cases[c].W, cases[c].classes, B);
        assert_int_equal(graph_enable_input_grad(a), 0);
        assert_int_equal(graph_enable_input_grad(b), 0);
        const float la = pass(a, cases[c].classes, n);
        ops_conv_direct = 0;
        const float lb = pass(b, cases[c].classes, n);
        ops_conv_direct = 1;
        double scale, d = max_abs_diff(a->grads, b->grads, a->nweights, &scale);
        print_message("%-48s loss %.6f / %.6f, gradients differ by %.2e of %.2e\n", cases[c].layers, la, lb, d, scale);
        assert_true(fabs(la - lb) <= 1e-5 * fmax(1.0, fabs(lb)));
        assert_true(d <= 1e-4 * scale && scale > 0);
        d = max_abs_diff(a->dinput, b->dinput, (size_t)n * tensor_sample_size(&a->input), &scale);
        assert_true(d <= 1e-4 * scale && scale > 0);
        graph_destroy(a);
        graph_destroy(b);
    }
}
static void grad_whole_mlp(void **s) { (void)s; gradcheck("linear(13) relu linear(11) tanh linear(3)", 1, 1, 17, 3, 5, 5); }

/* ---- layout and callback ---- */

typedef struct seen { int n; int param[16]; size_t off[16], cnt[16]; float *snap[16]; const graph_t *g; } seen_t;

static void on_grad(void *user, int param, size_t off, size_t cnt) {
    seen_t *s = user;
    assert_true(s->n < 16);
    s->param[s->n] = param;
    s->off[s->n] = off;
    s->cnt[s->n] = cnt;
    s->snap[s->n] = malloc(cnt * sizeof(float));
    memcpy(s->snap[s->n], s->g->grads + off, cnt * sizeof(float));
    s->n++;
}

static void layout_and_callback(void **st) {
    (void)st;
    graph_t *g = must_build("linear(7) relu linear(3) relu linear(4)", 1, 1, 5, 4, 6);
    /* last layer first, weight then bias, packed */
    const size_t want_cnt[6] = {4 * 3, 4, 3 * 7, 3, 7 * 5, 7};
    const char *want_name[6] = {"linear4.weight", "linear4.bias", "linear2.weight", "linear2.bias", "linear0.weight", "linear0.bias"};
    assert_int_equal(g->nparam, 6);
    size_t off = 0;
    for (int p = 0; p < 6; p++) {
        assert_string_equal(g->param[p].name, want_name[p]);
        assert_int_equal(g->param[p].offset, off);
        assert_int_equal(g->param[p].count, want_cnt[p]);
        off += want_cnt[p];
    }
    assert_int_equal(g->nweights, off);
    graph_init_params(g, 1);
    rng_t r;
    rng_seed(&r, 5, 0, 0);
    for (size_t i = 0; i < g->input.size; i++) g->input.data[i] = rng_normal(&r);
    for (int i = 0; i < 6; i++) g->labels[i] = i % 4;
    seen_t s = {.g = g};
    g->on_grad = on_grad;
    g->on_grad_user = &s;
    graph_forward(g, 6);
    graph_backward(g);
    /* once each, in layout order, and already final when announced */
    assert_int_equal(s.n, 6);
    for (int p = 0; p < 6; p++) {
        assert_int_equal(s.param[p], p);
        assert_int_equal(s.off[p], g->param[p].offset);
        assert_int_equal(s.cnt[p], g->param[p].count);
        assert_memory_equal(s.snap[p], g->grads + s.off[p], s.cnt[p] * sizeof(float));
        free(s.snap[p]);
    }
    graph_destroy(g);
}


/* ---- the graph as a DAG: residuals, shared outputs, tied weights ---- */

static void grad_residual(void **s) { (void)s; gradcheck("linear(6) residual(linear(6) relu linear(6)) tanh linear(4)", 1, 1, 5, 4, 5, 4); }
/* the graph input feeds the block and the add: its gradient is a sum too */
static void grad_residual_of_input(void **s) { (void)s; gradcheck("residual(linear(7) tanh) linear(3)", 1, 1, 7, 3, 4, 3); }
static void grad_residual_nested(void **s) {
    (void)s;
    gradcheck("residual(residual(linear(5) gelu) linear(5)) relu residual(linear(5)) linear(3)", 1, 1, 5, 3, 4, 4);
}
/* a flatten whose input feeds another layer is a copy, not a view */
static void grad_residual_flatten(void **s) { (void)s; gradcheck("conv(2,3) residual(flatten) linear(3)", 1, 4, 4, 3, 3, 2); }

#define L(k, ...) ((layer_spec_t){.kind = (k), __VA_ARGS__})

/* node 0's output feeds three nodes (relu, tanh and the second add) */
static void grad_three_consumers(void **st) {
    (void)st;
    const layer_spec_t l[] = {
        L(OP_LINEAR, .n = 6),
        L(OP_RELU, .nsrc = 1, .src = {0}),
        L(OP_TANH, .nsrc = 1, .src = {0}),
        L(OP_ADD, .nsrc = 2, .src = {1, 2}),
        L(OP_ADD, .nsrc = 2, .src = {3, 0}),
        L(OP_LINEAR, .n = 4),
    };
    graph_t *g = must_create(l, 6, 5, 4, 5);
    assert_int_equal(g->nodes[1].din_add[0] + g->nodes[2].din_add[0] + g->nodes[4].din_add[1], 2);
    gradcheck_graph(g, "linear(6) -> {relu, tanh, add}", 4, 5, 5);
}

/* add(x, x): both inputs of one node are the same output */
static void grad_add_self(void **st) {
    (void)st;
    const layer_spec_t l[] = {L(OP_LINEAR, .n = 4), L(OP_ADD, .nsrc = 2, .src = {0, 0}), L(OP_GELU)};
    gradcheck_graph(must_create(l, 3, 3, 4, 3), "linear(4) add(x, x) gelu", 4, 3, 3);
}

/* layer 2 uses layer 0's weight: one parameter, its gradient the sum of
 * both uses; placed and announced where backward finishes it (layer 0) */
static void tied_weight(void **st) {
    (void)st;
    const layer_spec_t l[] = {L(OP_LINEAR, .n = 6), L(OP_TANH), L(OP_LINEAR, .n = 6, .tie = 1), L(OP_RELU),
                              L(OP_LINEAR, .n = 3)};
    graph_t *g = must_create(l, 5, 6, 3, 4);
    assert_int_equal(g->nparam, 5); /* 2 weights (one used by layers 1 and 3) + 3 biases */
    assert_int_equal(g->nodes[0].param[0], g->nodes[2].param[0]);
    const char *want[5] = {"linear4.weight", "linear4.bias", "linear2.bias", "linear0.weight", "linear0.bias"};
    for (int p = 0; p < 5; p++) assert_string_equal(g->param[p].name, want[p]);
    assert_int_equal(g->nweights, 3 * 6 + 3 + 6 + 6 * 6 + 6);
    gradcheck_graph(g, "linear(6) tanh linear(6, tied to layer 1) relu linear(3)", 3, 4, 4);

    /* announced once each, in layout order, final when announced; again with accumulation */
    g = must_create(l, 5, 6, 3, 4);
    graph_init_params(g, 1);
    for (size_t i = 0; i < g->input.size; i++) g->input.data[i] = (float)((i * 5) % 7) - 3.0f;
    for (int i = 0; i < 4; i++) g->labels[i] = i % 3;
    for (int acc = 0; acc < 2; acc++) {
        seen_t sn = {.g = g};
        g->on_grad = on_grad;
        g->on_grad_user = &sn;
        g->accumulate = acc;
        graph_forward(g, 4);
        float *before = malloc(g->nweights * sizeof *before);
        memcpy(before, g->grads, g->nweights * sizeof *before);
        graph_backward(g);
        assert_int_equal(sn.n, 5);
        for (int p = 0; p < 5; p++) {
            assert_int_equal(sn.param[p], p);
            assert_memory_equal(sn.snap[p], g->grads + sn.off[p], sn.cnt[p] * sizeof(float));
            free(sn.snap[p]);
        }
        if (acc) /* accumulation doubles: same batch, same parameters */
            for (size_t i = 0; i < g->nweights; i++)
                assert_float_equal(g->grads[i], 2 * before[i], 1e-5f * (1 + fabsf(before[i])));
        free(before);
    }
    graph_destroy(g);
}

/* DAG errors name the layer */
static void dag_errors(void **st) {
    (void)st;
    char err[256];
    graph_t *g;
    assert_null(build("linear(4) residual(linear(3))", 1, 1, 5, 3, 2, err, sizeof err));
    assert_non_null(strstr(err, "layer 3 (add) adds 4 features to 3: a residual block must keep its input's size"));
    const struct { layer_spec_t l[3]; int n; const char *needle; } cases[] = {
        {{L(OP_LINEAR, .n = 3), L(OP_RELU, .nsrc = 1, .src = {2}), L(OP_LINEAR, .n = 3)}, 3,
         "layer 2 (relu) reads layer 3, which does not come before it"},
        {{L(OP_LINEAR, .n = 3), L(OP_ADD, .nsrc = 1, .src = {0})}, 2, "layer 2 (add) takes 2 inputs, given 1"},
        {{L(OP_LINEAR, .n = 3), L(OP_RELU, .nsrc = 2, .src = {0, 0})}, 2, "layer 2 (relu) takes 1 input, given 2"},
        {{L(OP_LINEAR, .n = 3), L(OP_LINEAR, .n = 3, .nsrc = 1, .src = {-1})}, 2, "layer 1 (linear): its output feeds no layer"},
        {{L(OP_LINEAR, .n = 4), L(OP_LINEAR, .n = 3, .tie = 1)}, 2, "layer 2 (linear) ties its weight to layer 1's, which is not 3 x 4"},
        {{L(OP_LINEAR, .n = 3, .tie = 1)}, 1, "only a linear layer may tie its weight, to an earlier layer's"},
        {{L(OP_RELU, .tie = 1), L(OP_LINEAR, .n = 3)}, 2, "layer 1 (relu): only a linear layer may tie"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(graph_create(&g, cases[i].l, cases[i].n, (int[]){1, 1, 3}, 3, 2, DEV_CPU, err, sizeof err), -1);
        if (!strstr(err, cases[i].needle)) fail_msg("case %zu: got '%s'", i, err);
    }
}

/* the vectorisable expf and tanhf against libm, over their whole useful range */
static void fast_math(void **st) {
    (void)st;
    double worst_e = 0, worst_t = 0;
    for (float x = -87.0f; x <= 88.0f; x += 0.001f) {
        const double e = fabs((double)fast_expf(x) - exp((double)x)) / exp((double)x);
        worst_e = fmax(worst_e, e);
    }
    for (float x = -20.0f; x <= 20.0f; x += 0.0001f) worst_t = fmax(worst_t, fabs((double)fast_tanhf(x) - tanh((double)x)));
    print_message("fast_expf: max relative error %.2e; fast_tanhf: max absolute error %.2e\n", worst_e, worst_t);
    assert_true(worst_e < 5e-7);
    assert_true(worst_t < 5e-7);
    assert_true(fast_expf(-200.0f) < 1e-37f && fast_expf(200.0f) > 1e38f); /* clamped, finite */
    assert_true(fast_tanhf(1e30f) == 1.0f && fast_tanhf(-1e30f) == -1.0f && fast_tanhf(0.0f) == 0.0f);
}

/* ---- sequence ops: token ids [T] in, logits [T, V] out, a loss per position ---- */

static void grad_embed(void **st) {
    (void)st;
    const layer_spec_t l[] = {L(OP_EMBED, .n = 5), L(OP_LINEAR, .n = 7)};
    gradcheck_graph(must_create(l, 2, 4, 7, 3), "embed(5) linear(7), T=4", 7, 3, 2);
}
static void grad_pos_embed(void **st) {
    (void)st;
    const layer_spec_t l[] = {L(OP_EMBED, .n = 5), L(OP_POS_EMBED), L(OP_LINEAR, .n = 6, .nobias = 1)};
    gradcheck_graph(must_create(l, 3, 4, 6, 3), "embed(5) pos_embed linear(6, no bias)", 6, 3, 3);
}
static void grad_layernorm(void **st) {
    (void)st;
    const layer_spec_t l[] = {L(OP_EMBED, .n = 6, .init_std = 0.5f), L(OP_LINEAR, .n = 6), L(OP_LAYERNORM),
                              L(OP_LINEAR, .n = 5)};
    graph_t *g = must_create(l, 4, 3, 5, 4);
    gradcheck_graph(g, "embed(6) linear(6) layernorm linear(5)", 5, 4, 3);
}
static void grad_attention(void **st) {
    (void)st;
    const layer_spec_t l[] = {L(OP_EMBED, .n = 12, .init_std = 0.5f), L(OP_LINEAR, .n = 36), L(OP_ATTENTION, .n = 3),
                              L(OP_LINEAR, .n = 5)};
    gradcheck_graph(must_create(l, 4, 5, 5, 3), "embed(12) linear(36) attention(3 heads) linear(5), T=5", 5, 3, 2);
}
static void grad_matmul(void **st) {
    (void)st;
    /* a [4 x 3] b^T [3 x 4] -> [4 x 4]; then c [4 x 4] d [4 x 5] */
    const layer_spec_t l[] = {L(OP_EMBED, .n = 6, .init_std = 0.5f), L(OP_LINEAR, .n = 3), L(OP_LINEAR, .n = 3, .nsrc = 1, .src = {0}),
                              L(OP_MATMUL, .k = 1, .nsrc = 2, .src = {1, 2}), L(OP_LINEAR, .n = 5, .nsrc = 1, .src = {0}),
                              L(OP_MATMUL, .nsrc = 2, .src = {3, 4}), L(OP_LINEAR, .n = 6)};
    gradcheck_graph(must_create(l, 7, 4, 6, 3), "matmul(a, b^T) then matmul(., c)", 6, 3, 3);
}

static graph_t *gpt(int n_layer, int n_head, int n_embd, int T, int V, int tie, int batch) {
    layer_spec_t l[LAYERS_MAX];
    const int n = layers_gpt(n_layer, n_head, n_embd, V, tie, 0.0f, l, LAYERS_MAX);
    assert_true(n > 0);
    return must_create(l, n, T, V, batch);
}

/* one transformer block, untied; then two blocks with the head tied to the embedding */
static void grad_gpt_block(void **st) {
    (void)st;
    gradcheck_graph(gpt(1, 2, 8, 5, 7, 0, 3), "gpt: 1 block, 2 heads, C=8, T=5, V=7", 7, 3, 2);
}
/* with dropout (GPT-2's: embeddings and residual branches); the reference replays the masks */
static void grad_gpt_dropout(void **st) {
    (void)st;
    layer_spec_t l[LAYERS_MAX];
    const int n = layers_gpt(1, 2, 8, 7, 1, 0.25f, l, LAYERS_MAX);
    assert_int_equal(n, 2 + 1 + 12 + 2);
    gradcheck_graph(must_create(l, n, 5, 7, 3), "gpt with dropout 0.25", 7, 3, 3);
}

static void grad_gpt_tied(void **st) {
    (void)st;
    graph_t *g = gpt(2, 2, 8, 4, 6, 1, 2);
    int head = g->nnodes - 2;
    assert_int_equal(g->nodes[head].param[0], g->nodes[0].param[0]);
    gradcheck_graph(g, "gpt: 2 blocks, tied embedding, C=8, T=4, V=6", 6, 2, 2);
}

/* no position sees the future: changing token t0 leaves every output before t0 as it was */
static void causal_mask(void **st) {
    (void)st;
    const int T = 9, V = 11, t0 = 5;
    graph_t *g = gpt(2, 4, 16, T, V, 1, 2);
    graph_init_params(g, 3);
    for (int i = 0; i < 2 * T; i++) g->input.data[i] = (float)((i * 7) % V);
    graph_forward(g, 2);
    float *before = malloc((size_t)2 * T * V * sizeof *before);
    memcpy(before, graph_probs(g), (size_t)2 * T * V * sizeof *before);
    g->input.data[T + t0] = (float)(((int)g->input.data[T + t0] + 3) % V); /* sample 1 */
    graph_forward(g, 2);
    const float *after = graph_probs(g);
    assert_memory_equal(before, after, (size_t)(T + t0) * V * sizeof *before); /* sample 0, and sample 1 before t0 */
    int changed = 0;
    for (int i = (T + t0) * V; i < 2 * T * V; i++) changed += before[i] != after[i];
    assert_true(changed > (T - t0) * V / 2);
    free(before);
    graph_destroy(g);
}

/* a GPT step (forward, backward, AdamW) allocates nothing either */
static void gpt_step_allocates_nothing(void **st) {
    (void)st;
    graph_t *g = gpt(2, 2, 16, 8, 13, 1, 4);
    graph_init_params(g, 2);
    for (size_t i = 0; i < g->input.size; i++) g->input.data[i] = (float)(i % 13);
    for (int i = 0; i < 4 * 8; i++) g->labels[i] = (i * 5) % 13;
    optim_t o;
    const optim_cfg_t oc = {.kind = OPTIM_ADAMW, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    assert_int_equal(optim_init(&o, &oc, g->nweights), 0);
    g->training = 1;
    float first = 0, last = 0;
    for (int step = 0; step < 20; step++) {
        counting = step > 0;
        last = graph_forward(g, 4);
        graph_backward(g);
        optim_step(&o, g->params, g->grads, 1e-2f);
        counting = 0;
        if (!step) first = last;
    }
    assert_int_equal(allocs, 0);
    assert_true(last < 0.5f * first); /* and it learns the fixed batch */
    optim_free(&o);
    graph_destroy(g);
}

/* accumulate = 1 adds into the gradients; loss_scale scales them */
static void accumulation_of(const char *layers) {
    graph_t *g = must_build(layers, 1, 4, 4, 3, 3);
    graph_init_params(g, 2);
    for (size_t i = 0; i < g->input.size; i++) g->input.data[i] = (float)((i * 7) % 11) - 5.0f;
    for (int i = 0; i < 3; i++) g->labels[i] = i;
    graph_forward(g, 3);
    graph_backward(g);
    float *once = malloc(g->nweights * sizeof *once);
    memcpy(once, g->grads, g->nweights * sizeof *once);
    g->loss_scale = 0.5f;
    graph_backward(g); /* overwrites: half */
    for (size_t i = 0; i < g->nweights; i++) assert_float_equal(g->grads[i], 0.5f * once[i], 1e-6f * (1 + fabsf(once[i])));
    g->accumulate = 1;
    graph_backward(g); /* adds another half */
    for (size_t i = 0; i < g->nweights; i++) assert_float_equal(g->grads[i], once[i], 1e-5f * (1 + fabsf(once[i])));
    free(once);
    graph_destroy(g);
}
static void accumulation(void **st) {
    (void)st;
    accumulation_of("conv(2,3) relu flatten linear(3)");  /* im2col + sgemm */
    accumulation_of("conv(16,3) relu flatten linear(3)"); /* direct, where the CPU has it */
}

/* forward + backward + optimiser step: no heap allocation after the first */
static void step_allocates_nothing(void **st) {
    (void)st;
    graph_t *g = must_build("conv(4,3) relu maxpool(2) conv(16,3) flatten linear(16) gelu dropout(0.2) "
                            "residual(linear(16) relu residual(linear(16))) linear(10)", 1, 8, 8, 10, 8);
    graph_init_params(g, 2);
    optim_t o;
    const optim_cfg_t oc = {.kind = OPTIM_ADAMW, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    assert_int_equal(optim_init(&o, &oc, g->nweights), 0);
    g->training = 1;
    for (int step = 0; step < 3; step++) {
        counting = step > 0;
        graph_forward(g, 8);
        graph_backward(g);
        optim_step(&o, g->params, g->grads, optim_lr(&oc, step, 3));
        counting = 0;
    }
    assert_int_equal(allocs, 0);
    optim_free(&o);
    graph_destroy(g);
}

/* shape errors name the layer */
static void shape_errors(void **st) {
    (void)st;
    char err[256];
    assert_null(build("linear(10) conv(3,3)", 1, 28, 28, 10, 4, err, sizeof err));
    assert_non_null(strstr(err, "layer 2 (conv) needs an image input"));
    assert_null(build("maxpool(5)", 1, 3, 3, 10, 4, err, sizeof err));
    assert_non_null(strstr(err, "kernel 5 is larger than its 3x3 input"));
    assert_null(build("linear(7)", 1, 1, 4, 10, 4, err, sizeof err));
    assert_non_null(strstr(err, "produces 7 outputs but the data has 10 classes"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(grad_linear),         cmocka_unit_test(grad_relu),
        cmocka_unit_test(grad_gelu),           cmocka_unit_test(grad_tanh),
        cmocka_unit_test(grad_dropout),        cmocka_unit_test(grad_conv_strided),
        cmocka_unit_test(grad_conv_same),      cmocka_unit_test(grad_maxpool),
        cmocka_unit_test(grad_maxpool_overlap), cmocka_unit_test(grad_softmax_ce),
        cmocka_unit_test(grad_whole_cnn),      cmocka_unit_test(grad_conv_chunks), cmocka_unit_test(gelu_values), cmocka_unit_test(grad_conv_direct), cmocka_unit_test(conv_direct_matches_im2col),      cmocka_unit_test(grad_whole_mlp),
        cmocka_unit_test(layout_and_callback), cmocka_unit_test(accumulation),
        cmocka_unit_test(step_allocates_nothing), cmocka_unit_test(shape_errors),
        cmocka_unit_test(grad_residual),       cmocka_unit_test(grad_residual_of_input),
        cmocka_unit_test(grad_residual_nested), cmocka_unit_test(grad_residual_flatten),
        cmocka_unit_test(grad_three_consumers), cmocka_unit_test(grad_add_self),
        cmocka_unit_test(tied_weight),         cmocka_unit_test(dag_errors),
        cmocka_unit_test(grad_embed),          cmocka_unit_test(grad_pos_embed),
        cmocka_unit_test(grad_layernorm),      cmocka_unit_test(grad_attention),
        cmocka_unit_test(grad_matmul),         cmocka_unit_test(grad_gpt_block),
        cmocka_unit_test(grad_gpt_tied),       cmocka_unit_test(causal_mask),
        cmocka_unit_test(grad_gpt_dropout),
        cmocka_unit_test(gpt_step_allocates_nothing), cmocka_unit_test(fast_math),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
