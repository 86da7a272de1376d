/* The device layer: where memory lives and where work runs. A CPU and a CUDA
 * implementation (device_cuda.cu, built when nvcc is found); everything
 * above it (tensors, graph, optimiser, trainer) calls only these.
 *
 * CUDA: one process drives one GPU, chosen by device_open. Work runs in
 * order on one compute stream; copies named _async are queued on it, the
 * others return when done. A CPU-only build, or a CUDA build on a machine
 * without a GPU, runs every CPU path without touching CUDA. */
#ifndef DDP_DEVICE_H
#define DDP_DEVICE_H

#include <stddef.h>

#include "tensor.h"

struct optim;

/* Makes dev usable. For DEV_CUDA: loads the CUDA plugin (lib/libddp_cuda.so
 * beside the program's bin/, or $DDP_CUDA_LIB), then gpu >= 0 picks that GPU
 * and gpu < 0 picks local_rank modulo the GPUs present; tf32 lets matrix
 * products use TF32. 0, or -1 with err naming the CUDA error (no driver, no
 * device, bad index) or why the plugin did not load. */
int device_open(device_t dev, int gpu, int local_rank, int tf32, char *err, size_t errlen);
/* The GPU device_open chose (-1 for the CPU). */
int device_ordinal(device_t dev);

/* Zeroed memory, 256-byte aligned; NULL when out of memory. */
void *device_alloc(device_t dev, size_t bytes);
void device_free(device_t dev, void *p);
/* Page-locked host memory (plain memory on a CPU-only build), zeroed. */
void *device_host_alloc(size_t bytes);
void device_host_free(void *p);

/* Copies between host memory and dev (either side may be dev). */
int device_to_host(device_t dev, void *host, const void *src, size_t bytes);
int device_from_host(device_t dev, void *dst, const void *host, size_t bytes);
int device_from_host_async(device_t dev, void *dst, const void *host, size_t bytes);
int device_copy(device_t dev, void *dst, const void *src, size_t bytes); /* within dev */
int device_memset0(device_t dev, void *p, size_t bytes);                /* queued */
/* Waits for all queued work; 0, or -1 with the error in device_error(). */
int device_sync(device_t dev);
const char *device_error(void);

/* The compute stream (a cudaStream_t), or NULL on the CPU. */
void *device_stream(device_t dev);

/* Events on the compute stream: a marker that host code can wait for. */
typedef struct device_event device_event_t;
device_event_t *device_event_new(device_t dev);
void device_event_free(device_event_t *e);
void device_event_record(device_event_t *e);
void device_event_wait(device_event_t *e); /* host blocks until it passed */

/* The optimiser's update on device buffers (optim.c calls it). */
void device_optim_update(const struct optim *o, float *p, const float *g, float *m, float *v, size_t n, float lr);

/* Float helpers over tensor_alloc / tensor_free semantics. */
static inline float *device_alloc_floats(device_t dev, size_t n) {
    return (float *)device_alloc(dev, (n ? n : 1) * sizeof(float));
}

#endif
