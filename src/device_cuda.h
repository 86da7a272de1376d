/* The CUDA side of the device layer. It lives in a plugin,
 * lib/libddp_cuda.so (device_cuda.cu, ops_cuda.cu, optim_cuda.cu), which
 * device.c loads only when a job asks for device = cuda: programs never
 * link CUDA, so a CUDA build starts and runs its CPU paths exactly as a
 * CPU-only build, on machines with or without a GPU. The plugin exports one
 * symbol, ddp_cuda_api; no CUDA types cross this header. */
#ifndef DDP_DEVICE_CUDA_H
#define DDP_DEVICE_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct op_impl;
struct optim;

typedef struct ddp_cuda_api {
    int (*open)(int gpu, int local_rank, int tf32, char *err, size_t errlen);
    int (*ordinal)(void);
    void *(*alloc)(size_t bytes);
    void (*free)(void *p);
    void *(*host_alloc)(size_t bytes);
    void (*host_free)(void *p);
    int (*to_host)(void *host, const void *src, size_t bytes);
    int (*from_host)(void *dst, const void *host, size_t bytes, int async);
    int (*copy)(void *dst, const void *src, size_t bytes);
    int (*memset0)(void *p, size_t bytes);
    int (*sync)(void);
    const char *(*error)(void);
    void *(*stream)(void);
    void *(*event_new)(void);
    void (*event_free)(void *e);
    void (*event_record)(void *e);
    void (*event_wait)(void *e);
    const struct op_impl *ops; /* the op table's CUDA column, OP_COUNT entries */
    void (*optim_update)(const struct optim *o, float *p, const float *g, float *m, float *v, size_t n, float lr);
} ddp_cuda_api_t;

#define DDP_CUDA_API_SYMBOL "ddp_cuda_api"

/* Inside the plugin: the handles bound to the compute stream. */
void *cuda_stream(void);
void *cuda_blas(void);
void *cuda_dnn(void);

#ifdef __cplusplus
}
#endif
#endif
