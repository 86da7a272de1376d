/* CPU implementations of every op: matrix products through OpenBLAS,
 * everything else as plain loops the compiler vectorises. Rows are samples;
 * images are NCHW. */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "fastmath.h"
#include "ops_cpu.h"
#include "rng.h"
#include "simd.h"

int ops_cpu_threads(void) { return openblas_get_num_threads(); }

/* ---- linear: Y = X W^T + b, W is [out, in] as in PyTorch; on a sequence
 * [T, C] each position is a row ---- */

/* rows and features: a sample's flat input, or its positions and their last dimension */
static void linear_dims(const graph_t *g, const tensor_t *in, int *rows, int *F) {
    const int seq = in->ndim == 3;
    *F = seq ? in->dim[2] : (int)tensor_sample_size(in);
    *rows = seq ? g->n * in->dim[1] : g->n;
}

static void linear_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const int N = nd->spec.n;
    int n, F;
    linear_dims(g, in, &n, &F);
    float *Y = nd->out.data;
    if (!nd->spec.nobias) {
        const float *b = B_OF(g, nd);
        for (int i = 0; i < n; i++) memcpy(Y + (size_t)i * N, b, (size_t)N * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, N, F, 1.0f, in->data, F, W_OF(g, nd), F,
                nd->spec.nobias ? 0.0f : 1.0f, Y, N);
}

HOT_LOOP float exp_shifted(float *restrict x, int n, float shift) {
    for (int i = 0; i < n; i++) x[i] = fast_expf(x[i] - shift);
    float sum = 0.0f; /* apart: a float sum does not vectorise without reassociation */
    for (int i = 0; i < n; i++) sum += x[i];
    return sum;
}

/* Sums the rows of an n x N matrix into acc (overwritten unless add). */
HOT_LOOP void column_sums(const float *restrict m, int n, int N, float *restrict acc, int add) {
    if (!add) memset(acc, 0, (size_t)N * sizeof(float));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < N; j++) acc[j] += m[(size_t)i * N + j];
}

static void linear_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const int N = nd->spec.n;
    int n, F;
    linear_dims(g, in, &n, &F);
    const float *dY = nd->dout.data;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, F, n, 1.0f, dY, N, in->data, F,
                graph_grad_add(g, nd->param[0]) ? 1.0f : 0.0f, DW_OF(g, nd), F);
    graph_grad_ready(g, nd->param[0]);
    if (!nd->spec.nobias) {
        column_sums(dY, n, N, DB_OF(g, nd), graph_grad_add(g, nd->param[1]));
        graph_grad_ready(g, nd->param[1]);
    }
    if (nd->needs_dinput)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, F, N, 1.0f, dY, N, W_OF(g, nd), F,
                    0.0f, din->data, F);
}

/* ---- element-wise activations ---- */

HOT_LOOP static void relu_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const size_t m = (size_t)g->n * tensor_sample_size(in);
    const float *restrict x = in->data;
    float *restrict y = nd->out.data;
    for (size_t i = 0; i < m; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

HOT_LOOP static void relu_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const size_t m = (size_t)g->n * tensor_sample_size(in);
    const float *restrict y = nd->out.data, *restrict dy = nd->dout.data;
    float *restrict dx = din->data;
    for (size_t i = 0; i < m; i++) {
        const float d = dy[i]; /* loaded unconditionally so the loop vectorises */
        dx[i] = y[i] > 0.0f ? d : 0.0f;
    }
}

HOT_LOOP static void tanh_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const size_t m = (size_t)g->n * tensor_sample_size(in);
    const float *restrict x = in->data;
    float *restrict y = nd->out.data;
    for (size_t i = 0; i < m; i++) y[i] = fast_tanhf(x[i]);
}

static void tanh_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const size_t m = (size_t)g->n * tensor_sample_size(in);
    const float *restrict y = nd->out.data, *restrict dy = nd->dout.data;
    float *restrict dx = din->data;
    for (size_t i = 0; i < m; i++) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}

/* GELU, tanh approximation (as PyTorch's approximate="tanh") */
#define GELU_C 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

/* 0.5 (1 + tanh u) = 1 / (1 + e^-2u): GELU's tanh form as x s with
 * s = sigmoid(2u), one exp and one division an element (fast_tanhf computes
 * both of its branches, a polynomial and an exp, and selects) */
static inline float gelu_sigmoid(float x) {
    return 1.0f / (1.0f + fast_expf(-2.0f * GELU_C * (x + GELU_A * x * x * x)));
}

HOT_LOOP static void gelu_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const size_t m = (size_t)g->n * tensor_sample_size(in);
    const float *restrict xs = in->data;
    float *restrict y = nd->out.data;
    for (size_t i = 0; i < m; i++) y[i] = xs[i] * gelu_sigmoid(xs[i]);
}

/* d/dx x s(x) = s + x s (1 - s) 2 u'(x), u' = C (1 + 3 A x^2). (Recomputes
 * s: keeping forward's in scratch measured no faster, both passes are bound
 * by memory on this machine.) */
HOT_LOOP static void gelu_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const size_t m = (size_t)g->n * tensor_sample_size(in);
    const float *restrict xs = in->data, *restrict dy = nd->dout.data;
    float *restrict dx = din->data;
    for (size_t i = 0; i < m; i++) {
        const float x = xs[i], s = gelu_sigmoid(x);
        dx[i] = dy[i] * (s + 2.0f * GELU_C * x * s * (1.0f - s) * (1.0f + 3.0f * GELU_A * x * x));
    }
}

/* ---- dropout: inverted, so evaluation is the identity ---- */

static void dropout_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const size_t m = (size_t)g->n * tensor_sample_size(in);
    float *restrict mask = nd->scratch;
    const float p = nd->spec.p;
    if (!g->training || p == 0.0f) {
        for (size_t i = 0; i < m; i++) mask[i] = 1.0f;
    } else {
        const uint64_t key = rng_dropout_key(g->seed, g->step, (uint64_t)(nd - g->nodes), (uint64_t)g->rank);
        const float keep = 1.0f / (1.0f - p);
        for (size_t i = 0; i < m; i++) mask[i] = rng_hash_uniform(key, i) >= p ? keep : 0.0f;
    }
    for (size_t i = 0; i < m; i++) nd->out.data[i] = in->data[i] * mask[i];
}

static void dropout_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const size_t m = (size_t)g->n * tensor_sample_size(in);
    for (size_t i = 0; i < m; i++) din->data[i] = nd->dout.data[i] * nd->scratch[i];
}

/* ---- conv2d: im2col + sgemm, one sample at a time so the columns stay in cache ---- */

typedef struct conv_geom { int C, H, W, OC, K, S, P, OH, OW; } conv_geom_t;

static conv_geom_t conv_geom(const node_t *nd, const tensor_t *in) {
    return (conv_geom_t){.C = in->dim[1], .H = in->dim[2], .W = in->dim[3], .OC = nd->spec.n,
                         .K = nd->spec.k, .S = nd->spec.stride, .P = nd->spec.pad,
                         .OH = nd->out.dim[2], .OW = nd->out.dim[3]};
}

/* The output columns ow whose input column ow*S - P + kj lies inside [0, W):
 * [*lo, *hi). */
static void valid_cols(const conv_geom_t *q, int kj, int *lo, int *hi) {
    int a = q->P - kj, b = q->W + q->P - kj; /* S*ow in [a, b) */
    *lo = a <= 0 ? 0 : (a + q->S - 1) / q->S;
    *hi = b <= 0 ? 0 : (b + q->S - 1) / q->S;
    if (*hi > q->OW) *hi = q->OW;
    if (*lo > *hi) *lo = *hi;
}

/* col[(c*K + ki)*K + kj][oh*OW + ow] = x[c][oh*S - P + ki][ow*S - P + kj] or 0.
 * The padding is written apart from the copy, so at stride 1 each output row
 * is a memcpy (the per-element bounds test took 16% of the CNN's step). */
static void im2col(const conv_geom_t *q, const float *restrict x, float *restrict col, size_t ld) {
    for (int c = 0; c < q->C; c++)
        for (int ki = 0; ki < q->K; ki++)
            for (int kj = 0; kj < q->K; kj++) {
                float *restrict row = col + (size_t)((c * q->K + ki) * q->K + kj) * ld;
                int lo, hi;
                valid_cols(q, kj, &lo, &hi);
                for (int oh = 0; oh < q->OH; oh++) {
                    const int ih = oh * q->S - q->P + ki;
                    float *restrict r = row + oh * q->OW;
                    if (ih < 0 || ih >= q->H) {
                        memset(r, 0, (size_t)q->OW * sizeof(float));
                        continue;
                    }
                    const float *restrict xr = x + ((size_t)c * q->H + ih) * q->W - q->P + kj;
                    for (int ow = 0; ow < lo; ow++) r[ow] = 0.0f;
                    if (q->S == 1) /* a loop, not memcpy: rows are 14-28 floats, a call each cost 3% */
                        for (int ow = lo; ow < hi; ow++) r[ow] = xr[ow];
                    else
                        for (int ow = lo; ow < hi; ow++) r[ow] = xr[ow * q->S];
                    for (int ow = hi; ow < q->OW; ow++) r[ow] = 0.0f;
                }
            }
}

/* the adjoint of im2col: dx (zeroed here) += scattered columns */
static void col2im(const conv_geom_t *q, const float *restrict col, size_t ld, float *restrict dx) {
    memset(dx, 0, (size_t)q->C * q->H * q->W * sizeof(float));
    for (int c = 0; c < q->C; c++)
        for (int ki = 0; ki < q->K; ki++)
            for (int kj = 0; kj < q->K; kj++) {
                const float *restrict row = col + (size_t)((c * q->K + ki) * q->K + kj) * ld;
                int lo, hi;
                valid_cols(q, kj, &lo, &hi);
                for (int oh = 0; oh < q->OH; oh++) {
                    const int ih = oh * q->S - q->P + ki;
                    if (ih < 0 || ih >= q->H) continue;
                    float *restrict xr = dx + ((size_t)c * q->H + ih) * q->W - q->P + kj;
                    const float *restrict r = row + oh * q->OW;
                    if (q->S == 1)
                        for (int ow = lo; ow < hi; ow++) xr[ow] += r[ow];
                    else
                        for (int ow = lo; ow < hi; ow++) xr[ow * q->S] += r[ow];
                }
            }
}

/* Past the chunk's columns and product: the direct convolution's scratch. */
static float *direct_scratch(const graph_t *g, const node_t *nd, const conv_geom_t *q) {
    return nd->scratch + conv_chunk_floats(q->C * q->K * q->K, q->OC, q->OH * q->OW, g->batch);
}

/* Convolution runs G samples per matrix product (ops.h conv_chunk): their
 * columns side by side, [C*K*K][G*P], then one sgemm for the chunk; the
 * product [OC][G*P] is rearranged into NCHW with the bias added. Where it
 * can, the direct kernel (ops_conv.c) runs instead. */
static void conv_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const conv_geom_t q = conv_geom(nd, in);
    const int P = q.OH * q.OW, CKK = q.C * q.K * q.K, G = conv_chunk(CKK, q.OC, P, g->batch);
    const size_t in_s = tensor_sample_size(in), out_s = tensor_sample_size(&nd->out);
    const float *b = B_OF(g, nd);
    if (conv_direct_usable(q.OC, q.K, q.S, q.P)) {
        conv_direct_forward(in->data, g->n, q.C, q.H, q.W, W_OF(g, nd), b, q.OC, q.K, q.P, nd->out.data,
                            direct_scratch(g, nd, &q));
        return;
    }
    float *col = nd->scratch, *yb = nd->scratch + (size_t)CKK * G * P;
    for (int s0 = 0; s0 < g->n; s0 += G) {
        const int m = g->n - s0 < G ? g->n - s0 : G;
        const size_t L = (size_t)m * P;
        for (int j = 0; j < m; j++) im2col(&q, in->data + (s0 + j) * in_s, col + (size_t)j * P, L);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, q.OC, (int)L, CKK, 1.0f, W_OF(g, nd), CKK, col,
                    (int)L, 0.0f, yb, (int)L);
        for (int j = 0; j < m; j++)
            for (int oc = 0; oc < q.OC; oc++) {
                float *restrict y = nd->out.data + (s0 + j) * out_s + (size_t)oc * P;
                const float *restrict r = yb + (size_t)oc * L + (size_t)j * P;
                for (int p = 0; p < P; p++) y[p] = r[p] + b[oc];
            }
    }
}

static void conv_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const conv_geom_t q = conv_geom(nd, in);
    const int P = q.OH * q.OW, CKK = q.C * q.K * q.K, G = conv_chunk(CKK, q.OC, P, g->batch);
    const size_t in_s = tensor_sample_size(in), out_s = tensor_sample_size(&nd->out);
    float *col = nd->scratch, *yb = nd->scratch + (size_t)CKK * G * P, *dW = DW_OF(g, nd), *db = DB_OF(g, nd);
    const int add_w = graph_grad_add(g, nd->param[0]), add_b = graph_grad_add(g, nd->param[1]);
    const int dw_direct = conv_direct_usable(q.OC, q.K, q.S, q.P);
    const int dx_direct = nd->needs_dinput && conv_direct_usable(q.C, q.K, q.S, q.P);
    if (dw_direct) {
        conv_direct_dweight(in->data, nd->dout.data, g->n, q.C, q.H, q.W, q.OC, q.K, q.P, dW, add_w,
                            direct_scratch(g, nd, &q));
        /* db += dY 1, sample by sample (a product: a float sum loop does not vectorise) */
        for (int s = 0; s < g->n; s++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, q.OC, P, 1.0f, nd->dout.data + s * out_s, P, g->ones, 1,
                        s > 0 || add_b ? 1.0f : 0.0f, db, 1);
    }
    for (int s0 = 0; s0 < g->n && (!dw_direct || (nd->needs_dinput && !dx_direct)); s0 += G) {
        const int m = g->n - s0 < G ? g->n - s0 : G;
        const size_t L = (size_t)m * P;
        /* dY of the chunk as [OC][m*P]: one sample's is already that, in place */
        const float *dy = m == 1 ? nd->dout.data + s0 * out_s : yb;
        for (int j = 0; j < m; j++) {
            if (!dw_direct) im2col(&q, in->data + (s0 + j) * in_s, col + (size_t)j * P, L);
            for (int oc = 0; m > 1 && oc < q.OC; oc++)
                memcpy(yb + (size_t)oc * L + (size_t)j * P, nd->dout.data + (s0 + j) * out_s + (size_t)oc * P,
                       (size_t)P * sizeof(float));
        }
        if (!dw_direct) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, q.OC, CKK, (int)L, 1.0f, dy, (int)L, col, (int)L,
                        s0 > 0 || add_w ? 1.0f : 0.0f, dW, CKK);
            cblas_sgemv(CblasRowMajor, CblasNoTrans, q.OC, (int)L, 1.0f, dy, (int)L, g->ones, 1,
                        s0 > 0 || add_b ? 1.0f : 0.0f, db, 1);
        }
        if (!nd->needs_dinput || dx_direct) continue;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CKK, (int)L, q.OC, 1.0f, W_OF(g, nd), CKK, dy, (int)L,
                    0.0f, col, (int)L);
        for (int j = 0; j < m; j++) col2im(&q, col + (size_t)j * P, L, din->data + (s0 + j) * in_s);
    }
    if (dx_direct)
        conv_direct_dinput(nd->dout.data, g->n, q.C, q.H, q.W, W_OF(g, nd), q.OC, q.K, q.P, din->data,
                           direct_scratch(g, nd, &q));
    graph_grad_ready(g, nd->param[0]);
    graph_grad_ready(g, nd->param[1]);
}

/* ---- max-pool, no padding; the arg-max is kept for backward ---- */

/* 2x2 windows at stride 2 (every CNN here): the four candidates in raster
 * order with the generic loop's ties (the first maximum wins), as selects
 * the compiler can vectorise; the generic loop was 3.6% of the CNN's step. */
HOT_LOOP static void maxpool2_plane(const float *restrict x, int W, int OH, int OW, float *restrict y,
                                    int32_t *restrict idx) {
    for (int oh = 0; oh < OH; oh++) {
        const float *restrict r0 = x + (size_t)(2 * oh) * W, *restrict r1 = r0 + W;
        for (int ow = 0; ow < OW; ow++) {
            const int at = 2 * oh * W + 2 * ow;
            float best = r0[2 * ow];
            int bi = at;
            const float b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
            bi = b > best ? at + 1 : bi, best = b > best ? b : best;
            bi = c > best ? at + W : bi, best = c > best ? c : best;
            bi = d > best ? at + W + 1 : bi, best = d > best ? d : best;
            y[oh * OW + ow] = best;
            idx[oh * OW + ow] = bi;
        }
    }
}

static void maxpool_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const int C = in->dim[1], H = in->dim[2], W = in->dim[3];
    const int OH = nd->out.dim[2], OW = nd->out.dim[3], K = nd->spec.k, S = nd->spec.stride;
    if (K == 2 && S == 2) {
        for (int pl = 0; pl < g->n * C; pl++)
            maxpool2_plane(in->data + (size_t)pl * H * W, W, OH, OW, nd->out.data + (size_t)pl * OH * OW,
                           nd->index + (size_t)pl * OH * OW);
        return;
    }
    for (int pl = 0; pl < g->n * C; pl++) {
        const float *x = in->data + (size_t)pl * H * W;
        float *y = nd->out.data + (size_t)pl * OH * OW;
        int32_t *idx = nd->index + (size_t)pl * OH * OW;
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                int best = (oh * S) * W + ow * S;
                for (int ki = 0; ki < K; ki++)
                    for (int kj = 0; kj < K; kj++) {
                        int at = (oh * S + ki) * W + ow * S + kj;
                        if (x[at] > x[best]) best = at;
                    }
                y[oh * OW + ow] = x[best];
                idx[oh * OW + ow] = best;
            }
    }
}

static void maxpool_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const int C = in->dim[1], HW = in->dim[2] * in->dim[3], OHW = nd->out.dim[2] * nd->out.dim[3];
    memset(din->data, 0, (size_t)g->n * C * HW * sizeof(float));
    for (int pl = 0; pl < g->n * C; pl++) {
        float *dx = din->data + (size_t)pl * HW;
        const float *dy = nd->dout.data + (size_t)pl * OHW;
        const int32_t *idx = nd->index + (size_t)pl * OHW;
        for (int o = 0; o < OHW; o++) dx[idx[o]] += dy[o];
    }
}

/* ---- flatten: a view (graph.c aliases the buffers) unless its input feeds other layers too ---- */

static void flatten_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    if (!nd->views_input) memcpy(nd->out.data, in->data, (size_t)g->n * tensor_sample_size(in) * sizeof(float));
}

static void flatten_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    if (!nd->views_input && nd->needs_dinput)
        memcpy(din->data, nd->dout.data, (size_t)g->n * tensor_sample_size(in) * sizeof(float));
}

/* ---- add: y = a + b, the gradient passes to both ---- */

HOT_LOOP static void add_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const size_t m = (size_t)g->n * tensor_sample_size(in);
    const float *restrict a = in->data, *restrict b = nd->in2->data;
    float *restrict y = nd->out.data;
    for (size_t i = 0; i < m; i++) y[i] = a[i] + b[i];
}

static void add_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const size_t bytes = (size_t)g->n * tensor_sample_size(in) * sizeof(float);
    if (nd->needs_dinput) memcpy(din->data, nd->dout.data, bytes);
    if (nd->needs_dinput2) memcpy(nd->din2->data, nd->dout.data, bytes);
}

/* ---- fused softmax cross-entropy: out holds the probabilities ---- */

static void softmax_ce_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const int n = g->n * g->positions, C = g->classes;
    double loss = 0.0;
    for (int i = 0; i < n; i++) {
        const float *z = in->data + (size_t)i * C;
        float *p = nd->out.data + (size_t)i * C;
        float mx = -FLT_MAX;
        for (int c = 0; c < C; c++) mx = z[c] > mx ? z[c] : mx;
        memcpy(p, z, (size_t)C * sizeof *p);
        const float sum = exp_shifted(p, C, mx);
        const float inv = 1.0f / sum;
        for (int c = 0; c < C; c++) p[c] *= inv;
        /* log-sum-exp form: exact even where p[label] underflows */
        loss += (double)(logf(sum) + mx - z[g->labels[i]]);
    }
    g->loss = n ? (float)(loss / n) : 0.0f;
}

static void softmax_ce_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const int n = g->n * g->positions, C = g->classes;
    (void)in;
    const float s = n ? g->loss_scale / (float)n : 0.0f;
    for (int i = 0; i < n; i++) {
        const float *p = nd->out.data + (size_t)i * C;
        float *dz = din->data + (size_t)i * C;
        for (int c = 0; c < C; c++) dz[c] = p[c] * s;
        dz[g->labels[i]] -= s;
    }
}

const op_impl_t ops_cpu[OP_COUNT] = {
    [OP_LINEAR] = {linear_forward, linear_backward, NULL, NULL},
    [OP_RELU] = {relu_forward, relu_backward, NULL, NULL},
    [OP_GELU] = {gelu_forward, gelu_backward, NULL, NULL},
    [OP_TANH] = {tanh_forward, tanh_backward, NULL, NULL},
    [OP_DROPOUT] = {dropout_forward, dropout_backward, NULL, NULL},
    [OP_CONV2D] = {conv_forward, conv_backward, NULL, NULL},
    [OP_MAXPOOL] = {maxpool_forward, maxpool_backward, NULL, NULL},
    [OP_FLATTEN] = {flatten_forward, flatten_backward, NULL, NULL},
    [OP_SOFTMAX_CE] = {softmax_ce_forward, softmax_ce_backward, NULL, NULL},
    [OP_ADD] = {add_forward, add_backward, NULL, NULL},
    [OP_EMBED] = {embed_forward, embed_backward, NULL, NULL},
    [OP_POS_EMBED] = {pos_embed_forward, pos_embed_backward, NULL, NULL},
    [OP_LAYERNORM] = {layernorm_forward, layernorm_backward, NULL, NULL},
    [OP_ATTENTION] = {attention_forward, attention_backward, NULL, NULL},
    [OP_MATMUL] = {matmul_forward, matmul_backward, NULL, NULL},
};
