// The CUDA column of the op table: the same ops and layouts as ops_cpu.c
// (rows are samples, images NCHW, W as [out, in]), on the compute stream.
// Matrix products through cuBLAS (FP32 unless [train] tf32 = true),
// convolution through cuDNN, everything else as kernels here. cuBLAS is
// column-major: a row-major [r, c] matrix is its column-major transpose.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <float.h>
#include <stdio.h>

extern "C" {
#include "device_cuda.h"
#include "ops.h"
#include "rng.h"
}

#define W_OF(g, nd) ((g)->params + (g)->param[(nd)->param[0]].offset)
#define B_OF(g, nd) ((g)->params + (g)->param[(nd)->param[1]].offset)
#define DW_OF(g, nd) ((g)->grads + (g)->param[(nd)->param[0]].offset)
#define DB_OF(g, nd) ((g)->grads + (g)->param[(nd)->param[1]].offset)

static cudaStream_t stream(void) { return (cudaStream_t)cuda_stream(); }
static cublasHandle_t blas(void) { return (cublasHandle_t)cuda_blas(); }
static cudnnHandle_t dnn(void) { return (cudnnHandle_t)cuda_dnn(); }

static unsigned blocks(size_t n, unsigned t = 256) {
    size_t b = (n + t - 1) / t;
    return (unsigned)(b < 65535u * 16 ? (b ? b : 1) : 65535u * 16);
}
#define GRID_STRIDE(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

static const float ONE = 1.0f, ZERO = 0.0f;

// ---- linear: Y = X W^T + b ----

__global__ void k_bias_rows(float *y, const float *b, int n, int N) {
    GRID_STRIDE(i, (size_t)n * N) y[i] = b[i % N];
}

static void linear_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const int n = g->n, N = nd->spec.n, F = (int)tensor_sample_size(in);
    if (!n) return;
    k_bias_rows<<<blocks((size_t)n * N), 256, 0, stream()>>>(nd->out.data, B_OF(g, nd), n, N);
    cublasSgemm(blas(), CUBLAS_OP_T, CUBLAS_OP_N, N, n, F, &ONE, W_OF(g, nd), F, in->data, F, &ONE, nd->out.data, N);
}

static void linear_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const int n = g->n, N = nd->spec.n, F = (int)tensor_sample_size(in);
    const float *dY = nd->dout.data;
    // dW [N, F] = dY^T X
    cublasSgemm(blas(), CUBLAS_OP_N, CUBLAS_OP_T, F, N, n, &ONE, in->data, F, dY, N,
                graph_grad_add(g, nd->param[0]) ? &ONE : &ZERO, DW_OF(g, nd), F);
    graph_grad_ready(g, nd->param[0]);
    // db [N] = dY^T 1
    cublasSgemv(blas(), CUBLAS_OP_N, N, n, &ONE, dY, N, g->ones, 1, graph_grad_add(g, nd->param[1]) ? &ONE : &ZERO,
                DB_OF(g, nd), 1);
    graph_grad_ready(g, nd->param[1]);
    // dX [n, F] = dY W
    if (nd->needs_dinput)
        cublasSgemm(blas(), CUBLAS_OP_N, CUBLAS_OP_N, F, n, N, &ONE, W_OF(g, nd), F, dY, N, &ZERO, din->data, F);
}

// ---- element-wise activations ----

#define GELU_C 0.7978845608028654f
#define GELU_A 0.044715f

__global__ void k_relu(const float *x, float *y, size_t m) { GRID_STRIDE(i, m) y[i] = x[i] > 0.0f ? x[i] : 0.0f; }
__global__ void k_relu_b(const float *y, const float *dy, float *dx, size_t m) {
    GRID_STRIDE(i, m) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}
__global__ void k_tanh(const float *x, float *y, size_t m) { GRID_STRIDE(i, m) y[i] = tanhf(x[i]); }
__global__ void k_tanh_b(const float *y, const float *dy, float *dx, size_t m) {
    GRID_STRIDE(i, m) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}
__global__ void k_gelu(const float *x, float *y, size_t m) {
    GRID_STRIDE(i, m) {
        const float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(GELU_C * (v + GELU_A * v * v * v)));
    }
}
__global__ void k_gelu_b(const float *x, const float *dy, float *dx, size_t m) {
    GRID_STRIDE(i, m) {
        const float v = x[i], t = tanhf(GELU_C * (v + GELU_A * v * v * v));
        dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * v * v));
    }
}

static size_t rows(const graph_t *g, const tensor_t *t) { return (size_t)g->n * tensor_sample_size(t); }

#define ELEMENTWISE(name, fwd, bwd, bwd_reads)                                                                       \
    static void name##_forward(graph_t *g, node_t *nd, const tensor_t *in) {                                         \
        const size_t m = rows(g, in);                                                                                \
        if (m) fwd<<<blocks(m), 256, 0, stream()>>>(in->data, nd->out.data, m);                                      \
    }                                                                                                                \
    static void name##_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {                         \
        const size_t m = rows(g, in);                                                                                \
        (void)in;                                                                                                    \
        if (m) bwd<<<blocks(m), 256, 0, stream()>>>(bwd_reads, nd->dout.data, din->data, m);                        \
    }
ELEMENTWISE(relu, k_relu, k_relu_b, nd->out.data)
ELEMENTWISE(tanh, k_tanh, k_tanh_b, nd->out.data)
ELEMENTWISE(gelu, k_gelu, k_gelu_b, in->data)

// ---- dropout: the CPU's counter-based masks (rng.h), element for element ----

__global__ void k_dropout(const float *x, float *y, float *mask, size_t m, uint64_t key, float p, int active) {
    const float keep = 1.0f / (1.0f - p);
    GRID_STRIDE(i, m) {
        const float s = !active ? 1.0f : rng_hash_uniform(key, i) >= p ? keep : 0.0f;
        mask[i] = s;
        y[i] = x[i] * s;
    }
}
__global__ void k_mul(const float *a, const float *b, float *y, size_t m) { GRID_STRIDE(i, m) y[i] = a[i] * b[i]; }

static void dropout_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const size_t m = rows(g, in);
    const int active = g->training && nd->spec.p != 0.0f;
    const uint64_t key = rng_dropout_key(g->seed, g->step, (uint64_t)(nd - g->nodes), (uint64_t)g->rank);
    if (m) k_dropout<<<blocks(m), 256, 0, stream()>>>(in->data, nd->out.data, nd->scratch, m, key, nd->spec.p, active);
}

static void dropout_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const size_t m = rows(g, in);
    if (m) k_mul<<<blocks(m), 256, 0, stream()>>>(nd->dout.data, nd->scratch, din->data, m);
}

// ---- conv2d through cuDNN: descriptors, algorithms and workspace made once ----

typedef struct conv_state {
    cudnnTensorDescriptor_t x, y, b;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    void *ws;
    size_t ws_bytes;
    int n; // batch the tensor descriptors are set for
} conv_state_t;

#define DNN(call)                                                                                                    \
    do {                                                                                                             \
        cudnnStatus_t s_ = (call);                                                                                   \
        if (s_ != CUDNN_STATUS_SUCCESS) {                                                                            \
            snprintf(err, errlen, "layer conv: %s: %s", #call, cudnnGetErrorString(s_));                             \
            return -1;                                                                                               \
        }                                                                                                            \
    } while (0)

static void conv_set_batch(conv_state_t *c, const node_t *nd, const tensor_t *in, int n) {
    if (c->n == n) return;
    cudnnSetTensor4dDescriptor(c->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, in->dim[1], in->dim[2], in->dim[3]);
    cudnnSetTensor4dDescriptor(c->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, nd->out.dim[1], nd->out.dim[2],
                               nd->out.dim[3]);
    c->n = n;
}

static int conv_setup(graph_t *g, node_t *nd, const tensor_t *in, char *err, size_t errlen) {
    conv_state_t *c = (conv_state_t *)calloc(1, sizeof *c);
    if (!c) return snprintf(err, errlen, "out of memory"), -1;
    nd->aux = c;
    const layer_spec_t *l = &nd->spec;
    DNN(cudnnCreateTensorDescriptor(&c->x));
    DNN(cudnnCreateTensorDescriptor(&c->y));
    DNN(cudnnCreateTensorDescriptor(&c->b));
    DNN(cudnnCreateFilterDescriptor(&c->w));
    DNN(cudnnCreateConvolutionDescriptor(&c->conv));
    DNN(cudnnSetTensor4dDescriptor(c->b, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, l->n, 1, 1));
    DNN(cudnnSetFilter4dDescriptor(c->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, l->n, in->dim[1], l->k, l->k));
    DNN(cudnnSetConvolution2dDescriptor(c->conv, l->pad, l->pad, l->stride, l->stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                        CUDNN_DATA_FLOAT));
    // FP32 results, as on the CPU (cuDNN would otherwise pick TF32 on Hopper)
    DNN(cudnnSetConvolutionMathType(c->conv, CUDNN_FMA_MATH));
    conv_set_batch(c, nd, in, g->batch);
    int got = 0;
    cudnnConvolutionFwdAlgoPerf_t f[8];
    cudnnConvolutionBwdDataAlgoPerf_t d[8];
    cudnnConvolutionBwdFilterAlgoPerf_t w[8];
    DNN(cudnnGetConvolutionForwardAlgorithm_v7(dnn(), c->x, c->w, c->conv, c->y, 8, &got, f));
    c->fwd = got ? f[0].algo : CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
    DNN(cudnnGetConvolutionBackwardDataAlgorithm_v7(dnn(), c->w, c->y, c->conv, c->x, 8, &got, d));
    c->bwd_data = got ? d[0].algo : CUDNN_CONVOLUTION_BWD_DATA_ALGO_0;
    DNN(cudnnGetConvolutionBackwardFilterAlgorithm_v7(dnn(), c->x, c->y, c->conv, c->w, 8, &got, w));
    c->bwd_filter = got ? w[0].algo : CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0;
    size_t a = 0, b = 0, e = 0;
    DNN(cudnnGetConvolutionForwardWorkspaceSize(dnn(), c->x, c->w, c->conv, c->y, c->fwd, &a));
    DNN(cudnnGetConvolutionBackwardDataWorkspaceSize(dnn(), c->w, c->y, c->conv, c->x, c->bwd_data, &b));
    DNN(cudnnGetConvolutionBackwardFilterWorkspaceSize(dnn(), c->x, c->y, c->conv, c->w, c->bwd_filter, &e));
    c->ws_bytes = a > b ? (a > e ? a : e) : (b > e ? b : e);
    if (c->ws_bytes && cudaMalloc(&c->ws, c->ws_bytes) != cudaSuccess)
        return snprintf(err, errlen, "out of GPU memory for a %zu-byte cuDNN workspace", c->ws_bytes), -1;
    return 0;
}

static void conv_release(graph_t *g, node_t *nd) {
    (void)g;
    conv_state_t *c = (conv_state_t *)nd->aux;
    if (!c) return;
    if (c->x) cudnnDestroyTensorDescriptor(c->x);
    if (c->y) cudnnDestroyTensorDescriptor(c->y);
    if (c->b) cudnnDestroyTensorDescriptor(c->b);
    if (c->w) cudnnDestroyFilterDescriptor(c->w);
    if (c->conv) cudnnDestroyConvolutionDescriptor(c->conv);
    cudaFree(c->ws);
    free(c);
    nd->aux = NULL;
}

static void conv_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    conv_state_t *c = (conv_state_t *)nd->aux;
    if (!g->n) return;
    conv_set_batch(c, nd, in, g->n);
    cudnnConvolutionForward(dnn(), &ONE, c->x, in->data, c->w, W_OF(g, nd), c->conv, c->fwd, c->ws, c->ws_bytes,
                            &ZERO, c->y, nd->out.data);
    cudnnAddTensor(dnn(), &ONE, c->b, B_OF(g, nd), &ONE, c->y, nd->out.data);
}

static void conv_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    conv_state_t *c = (conv_state_t *)nd->aux;
    conv_set_batch(c, nd, in, g->n);
    cudnnConvolutionBackwardFilter(dnn(), &ONE, c->x, in->data, c->y, nd->dout.data, c->conv, c->bwd_filter, c->ws,
                                   c->ws_bytes, graph_grad_add(g, nd->param[0]) ? &ONE : &ZERO, c->w, DW_OF(g, nd));
    graph_grad_ready(g, nd->param[0]);
    cudnnConvolutionBackwardBias(dnn(), &ONE, c->y, nd->dout.data, graph_grad_add(g, nd->param[1]) ? &ONE : &ZERO,
                                 c->b, DB_OF(g, nd));
    graph_grad_ready(g, nd->param[1]);
    if (nd->needs_dinput)
        cudnnConvolutionBackwardData(dnn(), &ONE, c->w, W_OF(g, nd), c->y, nd->dout.data, c->conv, c->bwd_data, c->ws,
                                     c->ws_bytes, &ZERO, c->x, din->data);
}

// ---- max-pool, no padding; first maximum in scan order, as on the CPU ----

__global__ void k_maxpool(const float *x, float *y, int32_t *idx, int planes, int H, int W, int OH, int OW, int K,
                          int S) {
    GRID_STRIDE(o, (size_t)planes * OH * OW) {
        const int ow = (int)(o % OW), oh = (int)(o / OW % OH);
        const size_t pl = o / ((size_t)OH * OW);
        const float *xp = x + pl * H * W;
        int best = (oh * S) * W + ow * S;
        for (int ki = 0; ki < K; ki++)
            for (int kj = 0; kj < K; kj++) {
                const int at = (oh * S + ki) * W + ow * S + kj;
                if (xp[at] > xp[best]) best = at;
            }
        y[o] = xp[best];
        idx[o] = best;
    }
}

__global__ void k_maxpool_b(const float *dy, const int32_t *idx, float *dx, int planes, int HW, int OHW) {
    GRID_STRIDE(o, (size_t)planes * OHW) atomicAdd(dx + (o / OHW) * HW + idx[o], dy[o]);
}

static void maxpool_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const int planes = g->n * in->dim[1];
    const size_t m = (size_t)planes * nd->out.dim[2] * nd->out.dim[3];
    if (m)
        k_maxpool<<<blocks(m), 256, 0, stream()>>>(in->data, nd->out.data, nd->index, planes, in->dim[2], in->dim[3],
                                                   nd->out.dim[2], nd->out.dim[3], nd->spec.k, nd->spec.stride);
}

static void maxpool_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const int planes = g->n * in->dim[1], HW = in->dim[2] * in->dim[3], OHW = nd->out.dim[2] * nd->out.dim[3];
    cudaMemsetAsync(din->data, 0, (size_t)planes * HW * sizeof(float), stream());
    const size_t m = (size_t)planes * OHW;
    if (m) k_maxpool_b<<<blocks(m), 256, 0, stream()>>>(nd->dout.data, nd->index, din->data, planes, HW, OHW);
}

static void nop_forward(graph_t *g, node_t *nd, const tensor_t *in) { (void)g, (void)nd, (void)in; }
static void nop_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    (void)g, (void)nd, (void)in, (void)din;
}

// ---- fused softmax cross-entropy: one warp per row; the mean loss is
// summed in a fixed order by one block, so it is the same every run ----

__device__ float warp_max(float v) {
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ float warp_sum(float v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__global__ void k_softmax_ce(const float *z, const int32_t *labels, float *p, float *rowloss, int n, int C) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= n) return;
    const float *zr = z + (size_t)row * C;
    float *pr = p + (size_t)row * C;
    float mx = -FLT_MAX;
    for (int c = lane; c < C; c += 32) mx = fmaxf(mx, zr[c]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int c = lane; c < C; c += 32) sum += (pr[c] = expf(zr[c] - mx));
    sum = warp_sum(sum);
    const float inv = 1.0f / sum;
    for (int c = lane; c < C; c += 32) pr[c] *= inv;
    if (lane == 0) rowloss[row] = logf(sum) + mx - zr[labels[row]];
}

// loss[0] = mean of rowloss; loss[1] += it
__global__ void k_mean_loss(const float *rowloss, int n, float *loss) {
    __shared__ double part[256];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += rowloss[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w; w >>= 1) {
        if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const float mean = n ? (float)(part[0] / n) : 0.0f;
        loss[0] = mean;
        loss[1] += mean;
    }
}

__global__ void k_softmax_ce_b(const float *p, const int32_t *labels, float *dz, int n, int C, float s) {
    GRID_STRIDE(i, (size_t)n * C) {
        const int c = (int)(i % C);
        dz[i] = p[i] * s - (c == labels[i / C] ? s : 0.0f);
    }
}

static void softmax_ce_forward(graph_t *g, node_t *nd, const tensor_t *in) {
    const int n = g->n, C = g->classes;
    if (n) k_softmax_ce<<<(n + 7) / 8, 256, 0, stream()>>>(in->data, g->labels, nd->out.data, nd->scratch, n, C);
    k_mean_loss<<<1, 256, 0, stream()>>>(nd->scratch, n, g->loss_dev);
}

static void softmax_ce_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din) {
    const int n = g->n, C = g->classes;
    (void)in;
    const float s = n ? g->loss_scale / (float)n : 0.0f;
    if (n) k_softmax_ce_b<<<blocks((size_t)n * C), 256, 0, stream()>>>(nd->out.data, g->labels, din->data, n, C, s);
}

// in op_kind_t order (C++ has no array designators)
static_assert(OP_COUNT == 15, "a new op needs its CUDA entry here");
extern "C" const op_impl_t ops_cuda[OP_COUNT];
const op_impl_t ops_cuda[OP_COUNT] = {
    {linear_forward, linear_backward, NULL, NULL},       // OP_LINEAR
    {relu_forward, relu_backward, NULL, NULL},           // OP_RELU
    {gelu_forward, gelu_backward, NULL, NULL},           // OP_GELU
    {tanh_forward, tanh_backward, NULL, NULL},           // OP_TANH
    {dropout_forward, dropout_backward, NULL, NULL},     // OP_DROPOUT
    {conv_forward, conv_backward, conv_setup, conv_release}, // OP_CONV2D
    {maxpool_forward, maxpool_backward, NULL, NULL},     // OP_MAXPOOL
    {nop_forward, nop_backward, NULL, NULL},             // OP_FLATTEN
    {softmax_ce_forward, softmax_ce_backward, NULL, NULL}, // OP_SOFTMAX_CE
    // not on the GPU yet (graph_create says so; residual gradient sums are CPU-only too)
    {NULL, NULL, NULL, NULL}, // OP_ADD
    {NULL, NULL, NULL, NULL}, // OP_EMBED
    {NULL, NULL, NULL, NULL}, // OP_POS_EMBED
    {NULL, NULL, NULL, NULL}, // OP_LAYERNORM
    {NULL, NULL, NULL, NULL}, // OP_ATTENTION
    {NULL, NULL, NULL, NULL}, // OP_MATMUL
};
