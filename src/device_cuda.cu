// The CUDA device layer: one GPU per process, one compute stream on it,
// cuBLAS and cuDNN handles bound to that stream. Errors are kept as text
// naming the CUDA call, for device_error().
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <stdio.h>
#include <string.h>

#include "device_cuda.h"

static int g_dev = -1;
static cudaStream_t g_stream;
static cublasHandle_t g_blas;
static cudnnHandle_t g_dnn;
static char g_err[256];

static int fail(const char *what, cudaError_t rc) {
    snprintf(g_err, sizeof g_err, "%s: %s (%s, CUDA error %d)", what, cudaGetErrorString(rc), cudaGetErrorName(rc),
             (int)rc);
    return -1;
}
#define CK(call)                                                                                                       \
    do {                                                                                                               \
        cudaError_t rc_ = (call);                                                                                      \
        if (rc_ != cudaSuccess) return fail(#call, rc_);                                                               \
    } while (0)

static int cuda_open(int gpu, int local_rank, int tf32, char *err, size_t errlen) {
    if (g_dev >= 0) return 0;
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess) {
        snprintf(err, errlen, "[train] device = cuda: cudaGetDeviceCount: %s (%s, CUDA error %d)",
                 cudaGetErrorString(rc), cudaGetErrorName(rc), (int)rc);
        return -1;
    }
    if (n < 1) return snprintf(err, errlen, "[train] device = cuda: no CUDA device is present"), -1;
    const int d = gpu >= 0 ? gpu : local_rank % n;
    if (d >= n) return snprintf(err, errlen, "[train] gpu = %d: only %d CUDA device(s) are present", gpu, n), -1;
    if ((rc = cudaSetDevice(d)) != cudaSuccess || (rc = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking))) {
        snprintf(err, errlen, "[train] device = cuda: cannot use GPU %d: %s (%s)", d, cudaGetErrorString(rc),
                 cudaGetErrorName(rc));
        return -1;
    }
    cublasStatus_t bs = cublasCreate(&g_blas);
    if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetStream(g_blas, g_stream);
    // FP32 unless [train] tf32 asks for TF32: results must match the CPU's bounds
    if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetMathMode(g_blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return snprintf(err, errlen, "cuBLAS: %s (%s)", cublasGetStatusString(bs), cublasGetStatusName(bs)), -1;
    cudnnStatus_t ds = cudnnCreate(&g_dnn);
    if (ds == CUDNN_STATUS_SUCCESS) ds = cudnnSetStream(g_dnn, g_stream);
    if (ds != CUDNN_STATUS_SUCCESS) return snprintf(err, errlen, "cuDNN: %s", cudnnGetErrorString(ds)), -1;
    g_dev = d;
    return 0;
}

static int cuda_ordinal(void) { return g_dev; }
extern "C" void *cuda_stream(void) { return g_stream; }
extern "C" void *cuda_blas(void) { return g_blas; }
extern "C" void *cuda_dnn(void) { return g_dnn; }
static const char *cuda_error(void) { return g_err; }

static void *cuda_alloc(size_t bytes) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 256) != cudaSuccess) return NULL;
    if (cudaMemset(p, 0, bytes ? bytes : 256) != cudaSuccess) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_free(void *p) { cudaFree(p); }

static void *cuda_host_alloc(size_t bytes) {
    void *p = NULL;
    if (cudaMallocHost(&p, bytes ? bytes : 256) != cudaSuccess) return NULL;
    memset(p, 0, bytes ? bytes : 256);
    return p;
}

static void cuda_host_free(void *p) { cudaFreeHost(p); }

// Synchronous copies go through the compute stream, so they see its work.
static int cuda_to_host(void *host, const void *src, size_t bytes) {
    CK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, g_stream));
    CK(cudaStreamSynchronize(g_stream));
    return 0;
}

static int cuda_from_host(void *dst, const void *host, size_t bytes, int async) {
    CK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, g_stream));
    if (!async) CK(cudaStreamSynchronize(g_stream));
    return 0;
}

static int cuda_copy(void *dst, const void *src, size_t bytes) {
    CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_stream));
    return 0;
}

static int cuda_memset0(void *p, size_t bytes) {
    CK(cudaMemsetAsync(p, 0, bytes, g_stream));
    return 0;
}

static int cuda_sync(void) {
    CK(cudaStreamSynchronize(g_stream));
    CK(cudaGetLastError());
    return 0;
}

static void *cuda_event_new(void) {
    cudaEvent_t e;
    return cudaEventCreateWithFlags(&e, cudaEventDisableTiming) == cudaSuccess ? (void *)e : NULL;
}
static void cuda_event_free(void *e) { cudaEventDestroy((cudaEvent_t)e); }
static void cuda_event_record(void *e) { cudaEventRecord((cudaEvent_t)e, g_stream); }
static void cuda_event_wait(void *e) { cudaEventSynchronize((cudaEvent_t)e); }

extern "C" void optim_cuda_update(const struct optim *o, float *p, const float *g, float *m, float *v, size_t n,
                                  float lr);
extern "C" const struct op_impl ops_cuda[];

extern "C" __attribute__((visibility("default"))) const ddp_cuda_api_t ddp_cuda_api = {
    cuda_open,     cuda_ordinal,   cuda_alloc,   cuda_free,      cuda_host_alloc,  cuda_host_free,
    cuda_to_host,  cuda_from_host, cuda_copy,    cuda_memset0,   cuda_sync,        cuda_error,
    cuda_stream,   cuda_event_new, cuda_event_free, cuda_event_record, cuda_event_wait, ops_cuda,
    optim_cuda_update,
};
