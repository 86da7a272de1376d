/* CPU ops of sequence models (activations [batch, T, C], row-major): token
 * and positional embeddings, LayerNorm, causal multi-head self-attention and
 * a batched matrix product. Matrix work goes through OpenBLAS, per sample
 * and head with strided leading dimensions, so no head is copied out. */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "ops_cpu.h"
#include "simd.h"

#define LN_EPS 1e-5f /* PyTorch's LayerNorm default */

/* ---- token embedding: out[t] = W[id[t]]; ids arrive as floats ---- */

void embed_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const int C = nd->spec.n, V = (int)g->param[nd->param[0]].rows;
    const size_t m = (size_t)g->n * tensor_sample_size(in);
    const float *W = W_OF(g, nd);
    for (size_t i = 0; i < m; i++) {
        const int id = (int)in->data[i];
        float *y = nd->out.data + i * C;
        if (id >= 0 && id < V) memcpy(y, W + (size_t)id * C, (size_t)C * sizeof(float));
        else memset(y, 0, (size_t)C * sizeof(float)); /* never from our loaders, which check ids */
    }
}

void embed_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const int C = nd->spec.n, V = (int)g->param[nd->param[0]].rows;
    const size_t m = (size_t)g->n * tensor_sample_size(in);
    float *dW = DW_OF(g, nd);
    if (!graph_grad_add(g, nd->param[0])) memset(dW, 0, (size_t)V * C * sizeof(float));
    for (size_t i = 0; i < m; i++) { /* a scatter-add, in position order: deterministic */
        const int id = (int)in->data[i];
        if (id < 0 || id >= V) continue;
        const float *dy = nd->dout.data + i * C;
        float *restrict d = dW + (size_t)id * C;
        for (int c = 0; c < C; c++) d[c] += dy[c];
    }
    graph_grad_ready(g, nd->param[0]);
    if (nd->needs_dinput) memset(din->data, 0, m * sizeof(float)); /* ids have no gradient */
}

/* ---- learned positional embedding: out[t] = in[t] + P[t] ---- */

HOT_LOOP void pos_embed_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const size_t S = tensor_sample_size(in);
    const float *restrict P = W_OF(g, nd);
    for (int b = 0; b < g->n; b++) {
        const float *restrict x = in->data + b * S;
        float *restrict y = nd->out.data + b * S;
        for (size_t i = 0; i < S; i++) y[i] = x[i] + P[i];
    }
}

void pos_embed_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const size_t S = tensor_sample_size(in);
    column_sums(nd->dout.data, g->n, (int)S, DW_OF(g, nd), graph_grad_add(g, nd->param[0]));
    graph_grad_ready(g, nd->param[0]);
    if (nd->needs_dinput) memcpy(din->data, nd->dout.data, (size_t)g->n * S * sizeof(float));
}

/* ---- LayerNorm over C; scratch keeps each row's mean and 1/std ---- */

/* (the sums are `omp simd` reductions: without reassociation a float sum
 * stays scalar, and LayerNorm was 3% of a GPT step) */
void layernorm_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const int C = in->dim[2], rows = g->n * in->dim[1];
    const float *restrict w = W_OF(g, nd), *restrict bias = B_OF(g, nd);
    float *mean = nd->scratch, *rstd = nd->scratch + (size_t)in->dim[0] * in->dim[1];
    for (int r = 0; r < rows; r++) {
        const float *restrict x = in->data + (size_t)r * C;
        float *restrict y = nd->out.data + (size_t)r * C;
        float m = 0.0f, v = 0.0f;
#pragma omp simd reduction(+ : m)
        for (int c = 0; c < C; c++) m += x[c];
        m /= (float)C;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        const float s = 1.0f / sqrtf(v / (float)C + LN_EPS);
        for (int c = 0; c < C; c++) y[c] = (x[c] - m) * s * w[c] + bias[c];
        mean[r] = m;
        rstd[r] = s;
    }
}

void layernorm_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const int C = in->dim[2], rows = g->n * in->dim[1];
    const float *restrict w = W_OF(g, nd);
    float *restrict dw = DW_OF(g, nd), *restrict db = DB_OF(g, nd);
    const float *mean = nd->scratch, *rstd = nd->scratch + (size_t)in->dim[0] * in->dim[1];
    if (!graph_grad_add(g, nd->param[0])) memset(dw, 0, (size_t)C * sizeof(float));
    if (!graph_grad_add(g, nd->param[1])) memset(db, 0, (size_t)C * sizeof(float));
    for (int r = 0; r < rows; r++) {
        const float *restrict x = in->data + (size_t)r * C, *restrict dy = nd->dout.data + (size_t)r * C;
        const float m = mean[r], s = rstd[r];
        float a = 0.0f, b = 0.0f; /* means of dnorm and of dnorm x norm */
        for (int c = 0; c < C; c++) {
            dw[c] += (x[c] - m) * s * dy[c];
            db[c] += dy[c];
        }
#pragma omp simd reduction(+ : a, b)
        for (int c = 0; c < C; c++) {
            const float dn = dy[c] * w[c];
            a += dn;
            b += dn * (x[c] - m) * s;
        }
        if (!nd->needs_dinput) continue;
        a /= (float)C;
        b /= (float)C;
        float *restrict dx = din->data + (size_t)r * C;
        for (int c = 0; c < C; c++) dx[c] = (dy[c] * w[c] - a - (x[c] - m) * s * b) * s;
    }
    graph_grad_ready(g, nd->param[0]);
    graph_grad_ready(g, nd->param[1]);
}

/* ---- causal self-attention: per sample and head, S = Q K^T / sqrt(d),
 * P = softmax(S) over positions <= t (the max subtracted), out = P V; P is
 * kept in scratch for backward ---- */

typedef struct attn_geom { int T, C, H, hs; float scale; } attn_geom_t;

static attn_geom_t attn_geom(const node_t *nd, const tensor_t *in) {
    const int C = in->dim[2] / 3, H = nd->spec.n;
    return (attn_geom_t){.T = in->dim[1], .C = C, .H = H, .hs = C / H, .scale = 1.0f / sqrtf((float)(C / H))};
}

/* C = alpha op(A) op(B) + 0, row-major, the shorthand of the products below */
static void mm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
               float *C, int ldc) {
    if (M > 0 && N > 0 && K > 0)
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                    lda, B, ldb, 0.0f, C, ldc);
}

/* The causal mask leaves P (and dP, dS) zero above the diagonal, so every
 * product is split at h = T/2: the block of rows [0, h) x columns [h, T) is
 * never computed (the softmax loops write its zeros), a quarter of the work. */
void attention_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const attn_geom_t q = attn_geom(nd, in);
    const int T = q.T, C3 = 3 * q.C, h = T / 2, hs = q.hs;
    for (int b = 0; b < g->n; b++)
        for (int hd = 0; hd < q.H; hd++) {
            const float *Q = in->data + (size_t)b * T * C3 + hd * hs, *K = Q + q.C, *V = Q + 2 * q.C;
            float *P = nd->scratch + ((size_t)b * q.H + hd) * T * T;
            float *O = nd->out.data + (size_t)b * T * q.C + hd * hs;
            /* S = Q K^T / sqrt(d): rows [0, h) need columns [0, h) only */
            mm(0, 1, h, h, hs, q.scale, Q, C3, K, C3, P, T);
            mm(0, 1, T - h, T, hs, q.scale, Q + (size_t)h * C3, C3, K, C3, P + (size_t)h * T, T);
            for (int t = 0; t < T; t++) {
                float *row = P + (size_t)t * T, mx = -FLT_MAX;
                for (int j = 0; j <= t; j++) mx = row[j] > mx ? row[j] : mx;
                const float inv = 1.0f / exp_shifted(row, t + 1, mx);
                for (int j = 0; j <= t; j++) row[j] *= inv;
                for (int j = t + 1; j < T; j++) row[j] = 0.0f; /* the future is masked */
            }
            /* out = P V */
            mm(0, 0, h, hs, h, 1.0f, P, T, V, C3, O, q.C);
            mm(0, 0, T - h, hs, T, 1.0f, P + (size_t)h * T, T, V, C3, O + (size_t)h * q.C, q.C);
        }
}

void attention_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    if (!nd->needs_dinput) return;
    const attn_geom_t q = attn_geom(nd, in);
    const int T = q.T, C3 = 3 * q.C, h = T / 2, hs = q.hs;
    float *dS = nd->scratch + (size_t)in->dim[0] * q.H * T * T; /* a T x T tile */
    for (int b = 0; b < g->n; b++)
        for (int hd = 0; hd < q.H; hd++) {
            const size_t at = (size_t)b * T * C3 + hd * hs;
            const float *Q = in->data + at, *K = Q + q.C, *V = Q + 2 * q.C;
            float *dQ = din->data + at, *dK = dQ + q.C, *dV = dQ + 2 * q.C;
            const float *P = nd->scratch + ((size_t)b * q.H + hd) * T * T;
            const float *dO = nd->dout.data + (size_t)b * T * q.C + hd * hs;
            /* dP = dO V^T (lower part), dV = P^T dO: dV[0, h) takes every row of P, dV[h, T) rows [h, T) */
            mm(0, 1, h, h, hs, 1.0f, dO, q.C, V, C3, dS, T);
            mm(0, 1, T - h, T, hs, 1.0f, dO + (size_t)h * q.C, q.C, V, C3, dS + (size_t)h * T, T);
            mm(1, 0, h, hs, T, 1.0f, P, T, dO, q.C, dV, C3);
            mm(1, 0, T - h, hs, T - h, 1.0f, P + (size_t)h * T + h, T, dO + (size_t)h * q.C, q.C, dV + (size_t)h * C3, C3);
            /* softmax backward, in place: dS = P (dP - sum_j P dP) x scale */
            for (int t = 0; t < T; t++) {
                const float *p = P + (size_t)t * T;
                float *d = dS + (size_t)t * T, s = 0.0f;
                for (int j = 0; j <= t; j++) s += p[j] * d[j];
                for (int j = 0; j <= t; j++) d[j] = p[j] * (d[j] - s) * q.scale;
                for (int j = t + 1; j < T; j++) d[j] = 0.0f;
            }
            /* dQ = dS K (as out = P V), dK = dS^T Q (as dV) */
            mm(0, 0, h, hs, h, 1.0f, dS, T, K, C3, dQ, C3);
            mm(0, 0, T - h, hs, T, 1.0f, dS + (size_t)h * T, T, K, C3, dQ + (size_t)h * C3, C3);
            mm(1, 0, h, hs, T, 1.0f, dS, T, Q, C3, dK, C3);
            mm(1, 0, T - h, hs, T - h, 1.0f, dS + (size_t)h * T + h, T, Q + (size_t)h * C3, C3, dK + (size_t)h * C3, C3);
        }
}

/* ---- batched matrix product: out = a b (b^T when spec.k = 1), per sample ---- */

typedef struct mm_geom { int M, K, N, bt; } mm_geom_t;

static mm_geom_t mm_geom(const node_t *nd, const tensor_t *a) {
    return (mm_geom_t){.M = a->dim[1], .K = a->dim[2], .N = nd->out.dim[2], .bt = nd->spec.k == 1};
}

void matmul_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const mm_geom_t q = mm_geom(nd, in);
    const size_t as = (size_t)q.M * q.K, bs = (size_t)q.K * q.N, ys = (size_t)q.M * q.N;
    for (int b = 0; b < g->n; b++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, q.bt ? CblasTrans : CblasNoTrans, q.M, q.N, q.K, 1.0f,
                    in->data + b * as, q.K, nd->in2->data + b * bs, q.bt ? q.K : q.N, 0.0f, nd->out.data + b * ys, q.N);
}

void matmul_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const mm_geom_t q = mm_geom(nd, in);
    const size_t as = (size_t)q.M * q.K, bs = (size_t)q.K * q.N, ys = (size_t)q.M * q.N;
    for (int b = 0; b < g->n; b++) {
        const float *A = in->data + b * as, *Bm = nd->in2->data + b * bs, *dY = nd->dout.data + b * ys;
        if (nd->needs_dinput) /* dA = dY B^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, q.bt ? CblasNoTrans : CblasTrans, q.M, q.K, q.N, 1.0f, dY, q.N,
                        Bm, q.bt ? q.K : q.N, 0.0f, din->data + b * as, q.K);
        if (!nd->needs_dinput2) continue;
        if (q.bt) /* dB [N, K] = dY^T A */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, q.N, q.K, q.M, 1.0f, dY, q.N, A, q.K, 0.0f,
                        nd->din2->data + b * bs, q.K);
        else /* dB [K, N] = A^T dY */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, q.K, q.N, q.M, 1.0f, A, q.K, dY, q.N, 0.0f,
                        nd->din2->data + b * bs, q.N);
    }
}
